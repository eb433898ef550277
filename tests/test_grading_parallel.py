"""Grading a class at once (issue 14): a batch graded by two local workers, from a zip, equals
the same batch graded serially; a run killed midway resumes with `--resume` to the same outputs,
grading only what was missing; and the same tasks run on a Dask cluster that the test starts
(two worker processes), as an instructor's cluster would run them."""

import os
import signal
import sqlite3
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import nbformat
import pytest
from hostile import hostile_submissions, perfect_submission
from test_grading import ADVERSARIAL_AID, gid, put, read_csv, run_grade, tree_digest

from grader.assignments import ROOT, course_notebook

pytestmark = pytest.mark.slow
AID = ADVERSARIAL_AID
SECOND = "03_multi_head_attention"
GRADED = 5  # notebooks in the batch that are graded (the missing one is a row, not a task)

GRADEBOOK = """
SELECT sa.student_id, a.name, n.name, bc.name, g.auto_score, g.manual_score, g.needs_manual_grade
FROM grade g JOIN submitted_notebook sn ON g.notebook_id = sn.id
JOIN submitted_assignment sa ON sn.assignment_id = sa.id JOIN assignment a ON sa.assignment_id = a.id
JOIN notebook n ON sn.notebook_id = n.id JOIN base_cell bc ON g.cell_id = bc.id ORDER BY 1, 2, 3, 4
"""


def graded_view(out: Path, students: set[str] | None = None) -> dict:
    """Everything a run decides: the three CSVs, which feedback pages and executed notebooks exist,
    what each graded cell of each executed notebook shows, and every grade in the gradebook.
    (Not the notebooks' other outputs: cells that print their own timings differ on every run.)"""
    keep = (lambda s: True) if students is None else (lambda s: s in students)
    view = {name: [r for r in read_csv(out / name) if keep(r["student_id"])]
            for name in ("grades.csv", "cell_grades.csv", "verdicts.csv")}
    view["files"] = sorted(str(p.relative_to(out)) for kind in ("feedback", "autograded")
                           for p in (out / kind).rglob("*") if p.is_file() and keep(p.relative_to(out / kind).parts[0]))
    cells = {}
    for path in sorted((out / "autograded").glob("*/*/*.ipynb")):
        if keep(path.parent.parent.name):
            nb = nbformat.read(path, as_version=4)
            cells[str(path.relative_to(out))] = [
                (gid(c), [o.get("text") or o.get("evalue") for o in c.outputs]) for c in nb.cells
                if c.cell_type == "code" and c.metadata.get("nbgrader", {}).get("grade")]
    view["graded cells"] = cells
    with sqlite3.connect(out / "gradebook.db") as con:
        view["gradebook"] = [r for r in con.execute(GRADEBOOK) if keep(r[0])]
    return view


@pytest.fixture(scope="module")
def batch(tmp_path_factory):
    """Module 02: the reference, a wrong answer, the stubs, a malformed file and a missing notebook;
    and module 03's stubs. Graded serially once: the run every other run is compared with."""
    base = tmp_path_factory.mktemp("parallel")
    subs = base / "submitted"
    put(subs, "reference", AID, perfect_submission(AID))
    put(subs, "wrong", AID, hostile_submissions(AID)["wrong_alone"])
    put(subs, "stubs", AID, nbformat.read(course_notebook(AID), as_version=4))
    put(subs, "stubs", SECOND, nbformat.read(course_notebook(SECOND), as_version=4))
    put(subs, "malformed", AID, raw='{"cells": [')
    (subs / "missing" / AID).mkdir(parents=True)
    before = tree_digest(subs)
    run_grade(subs, base / "serial", "--workers", "1")
    assert tree_digest(subs) == before, "grading modified the submissions folder"
    view = graded_view(base / "serial")
    assert {r["student_id"] for r in view["grades.csv"]} == {"reference", "wrong", "stubs", "malformed", "missing"}
    return base, subs, view


def test_two_workers_from_a_zip_give_the_serial_outputs(batch):
    base, subs, serial = batch
    archive = base / "submissions.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for p in sorted(subs.rglob("*")):
            zf.write(p, Path("submitted") / p.relative_to(subs))  # wrapped in one folder, as zips often are
    run_grade(archive, base / "parallel", "--workers", "2")
    students = {"reference", "wrong", "stubs", "malformed"}  # a zip keeps no empty folder: not "missing"
    parallel, serial = graded_view(base / "parallel"), graded_view(base / "serial", students)
    for key in serial:
        assert parallel[key] == serial[key], f"{key} differs between 1 and 2 workers"
    timing = read_csv(base / "parallel" / "timing.csv")
    assert len(timing) == GRADED, timing
    assert all(float(r["wall_s"]) >= float(r["execute_s"]) > 0 for r in timing if r["status"] == "graded"), timing
    assert 1 <= len({r["worker"] for r in timing}) <= 2 and all(float(r["start_s"]) >= 0 for r in timing), timing
    summary = (base / "parallel" / "grading.log").read_text().splitlines()[-1]
    assert summary.startswith(f"# run: {GRADED} notebook(s) graded on 2 worker(s) in "), summary


def _parts(out: Path) -> list[Path]:
    return sorted(p for p in (out / ".grading" / "parts").glob("*/*/result.json") if not p.parent.name.startswith("."))


def test_a_killed_run_resumes_to_the_same_outputs(batch):
    base, subs, serial = batch
    out = base / "killed"
    cmd = [sys.executable, "-m", "grader.grade", str(subs), str(out), "--workers", "2"]
    proc = subprocess.Popen(cmd, cwd=ROOT, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while not _parts(out):
            assert proc.poll() is None, "the run ended before it could be killed"
            time.sleep(0.2)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the dispatcher, its workers and their nbgrader servers
        proc.wait()
    kept = _parts(out)
    assert 0 < len(kept) < GRADED and not (out / "grades.csv").exists(), kept
    again = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    assert again.returncode == 2 and "--resume" in again.stderr, again.stderr
    resumed = run_grade(subs, out, "--workers", "2", "--resume")
    assert f"resuming: {len(kept)} of {GRADED} notebook(s) already graded" in resumed.stderr
    view = graded_view(out)
    for key in serial:
        assert view[key] == serial[key], f"{key} differs after a resume"
    assert not (out / ".grading").exists(), "a finished run leaves no state behind"
    done = subprocess.run([*cmd, "--resume"], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 2 and "no interrupted run" in done.stderr, done.stderr


def test_grading_on_a_dask_cluster(batch):
    """A cluster of two worker processes (what `dask worker` or dask-jobqueue would start, with
    this repository importable); grading connects to its scheduler's address."""
    from distributed import LocalCluster

    base, subs, serial = batch
    chosen = base / "dask-submitted"
    for student, aid in [("reference", AID), ("stubs", SECOND)]:
        put(chosen, student, aid, nbformat.read(subs / student / aid / f"{aid}.ipynb", as_version=4))
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        run_grade(chosen, base / "dask", "--scheduler", cluster.scheduler_address)
    view = graded_view(base / "dask")
    pairs = {("reference", AID), ("stubs", SECOND)}
    for key in ("grades.csv", "cell_grades.csv", "verdicts.csv"):
        assert view[key] == [r for r in serial[key] if (r["student_id"], r["assignment"]) in pairs], key
    assert view["gradebook"] == [r for r in serial["gradebook"] if (r[0], r[1]) in pairs]
