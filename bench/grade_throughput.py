"""Grading throughput: the same batch of module-02 submissions graded with 1 and with 2 workers.

    PYTHONPATH=. .venv/bin/python bench/grade_throughput.py [--copies 2] [--workers 1 2] [--no-sandbox]
                                                            [--cells] [--keep DIR]

The batch is tests/hostile.py's: the honest reference, one wrong function and that wrong function
with each trick (import hook, patched comparisons, lying Tensor subclass, swallowed exceptions,
all four), `--copies` times under different student ids. For each worker count it prints the
run's wall time, notebooks per minute, the speed-up over the first count, and from timing.csv
the median per notebook of: the grading wall time, the seconds the notebook's own cells ran,
and the difference (the machinery: kernel start, nbgrader, trusted verdicts, feedback page).
Two more columns split the run: "busy s", the notebooks' grading seconds summed and divided by
the worker count (the run's length if workers never waited and nothing else ran), and "outside
s", the rest (starting the workers, building the run's course, the last notebooks finishing one
by one, merging). "per-nb x" is the speed-up the notebooks alone allow: the first count's summed
seconds over this count's busy seconds; it is below the worker count when a notebook's own
cells run faster with more threads (a lone worker's kernel gets all the cores).
`--cells` adds, per code cell of the notebook, the median seconds it ran (from the executed
notebooks' execution metadata) for each worker count, the cells whose time grows most first: where
the workers get in each other's way. `--keep DIR` keeps the runs' outputs there.
It also checks that every run gave the same grades. Kernels run in the sandbox (grader/sandbox.py)
as in `make grade`; `--no-sandbox` measures the same batch without it.
"""

import argparse
import contextlib
import csv
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from hostile import hostile_submissions  # noqa: E402

AID = "02_attention"


def notebook_cell_seconds(path: Path) -> dict[str, tuple[float, str]]:
    """Per code cell of one executed notebook ('12 exercise_id' or '12' by position): (the seconds it ran,
    its first line), from nbclient's execution stamps in the cell's metadata."""
    from datetime import datetime

    out = {}
    code = [c for c in nbformat.read(path, as_version=4).cells if c.cell_type == "code"]
    for i, cell in enumerate(code):
        ex = cell.metadata.get("execution", {})
        if "iopub.execute_input" in ex and "shell.execute_reply" in ex:
            t = [datetime.fromisoformat(ex[k].replace("Z", "+00:00")) for k in ("iopub.execute_input", "shell.execute_reply")]
            name = f"{i:>2} {cell.metadata.get('nbgrader', {}).get('grade_id', '')}".rstrip()
            out[name] = ((t[1] - t[0]).total_seconds(), (cell.source.splitlines() or [""])[0])
    return out


def cell_seconds(autograded: Path) -> dict[str, list[float]]:
    """Per code cell ('12 exercise_id' or '12' by position), the seconds it ran in each executed notebook."""
    seen: dict[str, list[float]] = {}
    for path in sorted(autograded.glob("*/*/*.ipynb")):
        for name, (seconds, _) in notebook_cell_seconds(path).items():
            seen.setdefault(name, []).append(seconds)
    return seen


SPLIT = ("python start, exit", "workers and template", "grading", "tail", "stopping the workers", "merging")


def split_run(out: Path, timing: list[dict], wall: float) -> dict[str, float]:
    """The run's wall time in pieces: grading.log's last line (grader.grade.run_summary), the
    seconds before grade() began (Python, imports), and the tail: how long the grading phase
    went on after the first worker had run out of notebooks."""
    last = (out / "grading.log").read_text().strip().splitlines()[-1]
    split = {name: float(sec) for name, sec in re.findall(r"(?:^|, )([a-z ]+?) ([\d.]+) s", last.split(" s: ", 1)[1])}
    split["python start, exit"] = wall - sum(split.values())
    ends: dict[str, float] = {}
    for r in timing:
        ends[r["worker"]] = max(ends.get(r["worker"], 0.0), float(r["start_s"]) + float(r["wall_s"]))
    split["tail"] = max(ends.values()) - min(ends.values())
    return split


def print_cells(per_count: dict[int, dict[str, list[float]]], top: int = 12) -> None:
    counts = sorted(per_count)
    names = set().union(*(set(v) for v in per_count.values()))
    med = {(w, n): statistics.median(per_count[w][n]) for w in counts for n in names if per_count[w].get(n)}
    grow = sorted(names, key=lambda n: med.get((counts[-1], n), 0) - med.get((counts[0], n), 0), reverse=True)
    print(f"\nseconds per code cell (median over the notebooks), the {top} that grow most first")
    print(f"{'cell':<34}" + "".join(f"{f'{w} worker(s)':>13}" for w in counts))
    for n in grow[:top]:
        print(f"{n:<34}" + "".join(f"{med.get((w, n), float('nan')):>13.3f}" for w in counts))
    print(f"{'all cells':<34}" + "".join(f"{sum(med.get((w, n), 0) for n in names):>13.3f}" for w in counts))


def rows(path: Path) -> list[dict]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--copies", type=int, default=2, help="copies of the hostile batch (7 notebooks each)")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--no-sandbox", action="store_true", help="grade without the kernels' sandbox")
    parser.add_argument("--cells", action="store_true", help="print seconds per code cell for each worker count")
    parser.add_argument("--keep", type=Path, help="keep the submissions and each run's outputs in this new folder")
    args = parser.parse_args(argv)
    if args.keep and args.keep.exists():
        parser.error(f"{args.keep} exists: --keep takes a new folder")
    if args.keep:
        args.keep.mkdir(parents=True)
    with (contextlib.nullcontext(str(args.keep)) if args.keep else tempfile.TemporaryDirectory(prefix="throughput-")) as tmp:
        subs = Path(tmp) / "submitted"
        for copy in range(args.copies):
            for student, nb in hostile_submissions(AID).items():
                (subs / f"{student}_{copy}" / AID).mkdir(parents=True)
                nbformat.write(nb, subs / f"{student}_{copy}" / AID / f"{AID}.ipynb")
        n = len(list(subs.glob("*/*/*.ipynb")))
        print(f"{n} module-02 notebooks; machine: {subprocess.check_output(['nproc']).decode().strip()} cores; "
              f"sandbox {'off' if args.no_sandbox else 'on'}")
        print(f"{'workers':>7} {'wall s':>8} {'nb/min':>7} {'speed-up':>8} {'per nb s':>9} {'cells s':>8} "
              f"{'overhead s':>10} {'busy s':>7} {'outside s':>9} {'per-nb x':>8}")
        first, first_busy, grades, cells, splits = None, None, None, {}, {}
        for workers in args.workers:
            out = Path(tmp) / f"out-{workers}"
            t0 = time.perf_counter()
            result = subprocess.run([sys.executable, "-m", "grader.grade", str(subs), str(out), "--workers",
                                     str(workers), *(["--no-sandbox"] if args.no_sandbox else [])], cwd=ROOT, capture_output=True, text=True)
            wall = time.perf_counter() - t0
            if result.returncode != 0:
                print(result.stdout, result.stderr, sep="\n")
                return result.returncode
            timing = rows(out / "timing.csv")
            first = first or wall
            med = {k: statistics.median(float(r[k]) for r in timing) for k in ("wall_s", "execute_s", "overhead_s")}
            busy = sum(float(r["wall_s"]) for r in timing) / workers
            first_busy = first_busy or busy
            print(f"{workers:>7} {wall:>8.1f} {60 * n / wall:>7.1f} {first / wall:>7.2f}x {med['wall_s']:>9.2f} "
                  f"{med['execute_s']:>8.2f} {med['overhead_s']:>10.2f} {busy:>7.1f} {wall - busy:>9.1f} "
                  f"{first_busy / busy:>7.2f}x")
            now = [(r["student_id"], r["score"], r["status"]) for r in rows(out / "grades.csv")]
            if grades is not None and now != grades:
                print("the grades differ between worker counts:", now, grades)
                return 1
            grades = now
            cells[workers] = cell_seconds(out / "autograded")
            splits[workers] = split_run(out, timing, wall)
        print(f"\nwhere each run's time went (s): {', '.join(SPLIT)}")
        for workers, split in splits.items():
            print(f"{workers:>7} " + " ".join(f"{split.get(k, float('nan')):>8.1f}" for k in SPLIT))
        if args.cells:
            print_cells(cells)
    return 0


if __name__ == "__main__":
    sys.exit(main())
