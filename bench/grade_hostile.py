"""Grade the hostile module-02 batch (tests/hostile.py) and print each submission's score.

    .venv/bin/python bench/grade_hostile.py [--out DIR]

The batch is the honest reference, one wrong function (attention without the 1/sqrt(d) scaling)
and that wrong function with each trick a student could use to fake the hidden checks. A trick
must never score above the wrong function alone (tests/test_grading.py asserts it; this prints
the numbers, and the seconds per notebook from grading.log, for notes and reports).
"""

import argparse
import csv
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from hostile import TRICKS, hostile_submissions  # noqa: E402

AID = "02_attention"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=None, help="keep the grading output here (default: a temp dir)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="hostile-") as tmp:
        subs = Path(tmp) / "submitted"
        for student, nb in hostile_submissions(AID).items():
            (subs / student / AID).mkdir(parents=True)
            nbformat.write(nb, subs / student / AID / f"{AID}.ipynb")
        out = args.out or Path(tmp) / "out"
        result = subprocess.run([sys.executable, "-m", "grader.grade", str(subs), str(out)], cwd=ROOT,
                                capture_output=True, text=True)
        if result.returncode != 0:
            print(result.stdout, result.stderr, sep="\n")
            return result.returncode
        with (out / "grades.csv").open(newline="") as f:
            rows = {r["student_id"]: r for r in csv.DictReader(f)}
        seconds = dict(re.findall(r"^# (\S+)/" + AID + r": \w+ in ([\d.]+) s", (out / "grading.log").read_text(), re.M))
        tampered = {s: "yes" if "passed in the submission's own kernel" in r["message"] else "" for s, r in rows.items()}
        print(f"{'student':24} {'score':>9}  {'kernel lied (noted)':>20}  {'seconds':>8}")
        for student in ["honest_reference", "wrong_alone", *TRICKS]:
            r = rows[student]
            print(f"{student:24} {float(r['score']):>4g} / {float(r['max_score']):g}  {tampered[student]:>20}  "
                  f"{float(seconds.get(student, 'nan')):>8.1f}")
        print(result.stdout.strip().splitlines()[-2])
    return 0


if __name__ == "__main__":
    sys.exit(main())
