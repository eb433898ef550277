"""Where a graded notebook spends its seconds: the slowest code cells of each executed notebook of a run.

    make grade SUBMISSIONS=<dir> OUT=/tmp/g WORKERS=1        # e.g. the reference of every module
    .venv/bin/python bench/notebook_cells.py /tmp/g [--student reference] [--top 8]

Reads OUT/autograded/<student>/<assignment>/*.ipynb (nbclient's execution stamps in each cell's
metadata) and OUT/timing.csv; prints, per notebook, its executed seconds, its share of the module's
time budget and its `--top` slowest cells (position among the code cells, grade id, first line), hidden-check cells
included: they run in the student's kernel and count towards the budget. `make test` keeps its graded
reference run under pytest's temporary folder (`.../grading0/out`), so the table of a CI run can be
printed from there afterwards.
"""

import argparse
import csv
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from grade_throughput import notebook_cell_seconds  # noqa: E402  (the throughput bench's per-cell reader)

from grader.assignments import budget_s  # noqa: E402


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out", type=Path, help="a graded run's OUT folder")
    p.add_argument("--student", default="reference", help="whose notebooks (default: reference)")
    p.add_argument("--top", type=int, default=8, help="cells per notebook (default 8)")
    args = p.parse_args(argv)
    timing = {}
    if (args.out / "timing.csv").exists():
        with (args.out / "timing.csv").open(newline="") as f:
            timing = {r["assignment"]: r for r in csv.DictReader(f) if r["student_id"] == args.student}
    paths = sorted((args.out / "autograded" / args.student).glob("*/*.ipynb"))
    if not paths:
        sys.exit(f"no executed notebooks under {args.out / 'autograded' / args.student}: is {args.out} a graded run?")
    for path in paths:
        aid = path.parent.name
        cells = notebook_cell_seconds(path)
        total = sum(sec for sec, _ in cells.values())
        executed = float(timing[aid]["execute_s"]) if aid in timing else total
        print(f"\n{aid}: executed in {executed:.1f} s = {executed / budget_s(aid):.0%} of its {budget_s(aid)} s budget "
              f"(cells {total:.1f} s)")
        for name, (sec, line) in sorted(cells.items(), key=lambda kv: -kv[1][0])[: args.top]:
            print(f"  {sec:7.2f} s  cell {name:<36} {line[:70]}")


if __name__ == "__main__":
    main()
