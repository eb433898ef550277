"""Longest first: a two-worker run on a class batch whose long notebook comes last in the input.

    PYTHONPATH=. .venv/bin/python bench/grade_order.py [--long 1] [--short 8] [--workers 2]

The batch: `--short` module-02 references (students a0, a1, ...) and `--long` module-07 references
(students z0, ...: last in the input's order). Graded twice: as `make grade` does (the longest
module first, grader.grade.longest_first), and with every notebook given the same priority (the
input's order). Prints each run's wall time, grading.log's split of it and when each notebook
started on which worker, and checks that both runs gave the same grades.
"""

import argparse
import csv
import sys
import tempfile
import time
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from hostile import perfect_submission  # noqa: E402

import grader.grade as grading  # noqa: E402

SHORT, LONG = "02_attention", "07_decoder_gpt"


def batch(folder: Path, short: int, long: int) -> Path:
    for student, aid in [(f"a{i}", SHORT) for i in range(short)] + [(f"z{i}", LONG) for i in range(long)]:
        (folder / student / aid).mkdir(parents=True)
        nbformat.write(perfect_submission(aid), folder / student / aid / f"{aid}.ipynb")
    return folder


def run(subs: Path, out: Path, workers: int, longest_first: bool) -> list:
    kept = grading.start_priority
    if not longest_first:
        grading.start_priority = lambda spec: 0
    try:
        t0 = time.perf_counter()
        rows = grading.grade(subs, out, workers=workers)
        wall = time.perf_counter() - t0
    finally:
        grading.start_priority = kept
    with (out / "timing.csv").open(newline="") as f:
        timing = list(csv.DictReader(f))
    print(f"\n{'longest first' if longest_first else 'input order'}: {wall:.1f} s")
    print((out / "grading.log").read_text().strip().splitlines()[-1])
    for r in sorted(timing, key=lambda r: float(r["start_s"])):
        print(f"  {r['student_id']:>4}/{r['assignment']:<16} worker {r['worker']:<12} "
              f"{float(r['start_s']):6.1f} -> {float(r['start_s']) + float(r['wall_s']):6.1f} s")
    return [(r.student_id, r.score, r.status) for r in rows]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--short", type=int, default=8, help="module-02 notebooks (first in the input)")
    parser.add_argument("--long", type=int, default=1, help="module-07 notebooks (last in the input)")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="grade-order-") as tmp:
        subs = batch(Path(tmp) / "submitted", args.short, args.long)
        first = run(subs, Path(tmp) / "longest-first", args.workers, True)
        second = run(subs, Path(tmp) / "input-order", args.workers, False)
    if first != second:
        print("the grades differ between the two orders:", first, second)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
