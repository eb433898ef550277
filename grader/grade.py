"""Autograde a class's submissions with nbgrader, several notebooks at once.

    python -m grader.grade SUBMISSIONS OUT [--workers N] [--scheduler ADDRESS] [--resume]
    (or: make grade SUBMISSIONS=... OUT=... [WORKERS=N] [SCHEDULER=...] [RESUME=1])

SUBMISSIONS is a folder or a .zip laid out as nbgrader's submitted/ directory:
    <student_id>/<assignment_id>/<assignment_id>.ipynb
OUT receives:
    grades.csv          one row per student x assignment found in the input
    cell_grades.csv     one row per graded cell
    verdicts.csv        one row per hidden check: points, score, verdict, what the kernel showed, message
    feedback/<student_id>/<assignment_id>/<assignment_id>.html
    autograded/...      the executed notebooks, as nbgrader left them
    timing.csv          per notebook: wall seconds, seconds its cells ran, the difference (machinery),
                        its worker and when it started (seconds after the run began, by the worker's
                        clock; negative for a notebook an earlier, interrupted run graded); grading.log's last line splits
                        the run's own time (workers and template, grading, stopping, merging)
    score_distribution.png, gradebook.db, grading.log

Each notebook is one task (grader/task.py), graded in its own private nbgrader course by a Dask
worker: `--workers N` local worker processes (default: the machine's cores; never more than the
notebooks to grade; each kernel's torch gets cores / N threads), or the workers of the Dask cluster
at `--scheduler`. A finished notebook is written at once as a part under OUT/.grading/; when all
are done the parts merge, in the input's order, into the outputs above (the same as a serial
run's), and .grading/ goes. An interrupted run keeps its parts: `--resume` grades only what is
missing (or changed).

Every student kernel runs in a sandbox (grader/sandbox.py: bubblewrap, no network, its own
process table and uid, a read-only root without the gradebook, solutions or other submissions,
limits on memory, processes and file size); without one the run refuses unless `--no-sandbox`.
While a run goes, OUT/grades-so-far.csv gets a row per finished notebook.

The input is never modified: it is copied (or unzipped) into a private working directory. A bad submission (unreadable, missing, looping, crashing its kernel, printing
50 MB) gets its own row and score and never stops the batch. The exit status is 0 unless the
grading machinery itself failed.

Scores come only from the trusted verdicts (grader/trusted.py, grader/scoring.py): the hidden
checks record what the learner's code returned, and this process judges those records after the
kernel has exited. Nothing the kernel reports (an exception or its absence) is a score.
"""

import argparse
import contextlib
import csv
import hashlib
import html
import io
import json
import os
import re
import shutil
import sqlite3
import sys
import tarfile
import tempfile
import time
import traceback
import zipfile
from dataclasses import asdict
from pathlib import Path

from tqdm import tqdm

from grader.assignments import SOLUTIONS, assignment_ids, budget_s
from grader.sandbox import DEFAULT_MEMORY_GIB, SandboxUnavailable, memory_bytes
from grader.sandbox import check as sandbox_check
from grader.task import Row, course_fingerprint, grade_task, usable_cores, warm_worker

STUDENT_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@+-]*$")
GRADE_COLUMNS = ["student_id", "assignment", "score", "max_score", "status", "needs_manual_grade", "message"]
CELL_COLUMNS = ["student_id", "assignment", "grade_id", "score", "max_score", "needs_manual_grade"]
VERDICT_COLUMNS = ["student_id", "assignment", "grade_id", "check", "points", "score", "verdict", "kernel", "message"]
TIMING_COLUMNS = ["student_id", "assignment", "status", "wall_s", "execute_s", "overhead_s", "judge_s", "worker",
                  "start_s"]


class GradingError(Exception):
    """The grading machinery itself failed (not a submission): exit non-zero."""


# ----------------------------------------------------------------------------- input

def stage_input(submissions: Path, dest: Path) -> Path:
    """Copy or unzip the submissions into `dest`; return the folder that holds the student folders."""
    if not submissions.exists():
        raise GradingError(f"SUBMISSIONS={submissions} does not exist")
    if submissions.is_file():
        if not zipfile.is_zipfile(submissions):
            raise GradingError(f"SUBMISSIONS={submissions} is a file but not a zip archive")
        with zipfile.ZipFile(submissions) as zf:
            for info in zf.infolist():
                name = info.filename
                parts = Path(name).parts
                if info.is_dir() or not parts or parts[0] == "__MACOSX" or any(p.startswith(".") for p in parts):
                    continue
                target = (dest / name).resolve()
                if not target.is_relative_to(dest.resolve()):  # "zip slip": never write outside dest
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(zf.read(info))
    else:
        shutil.copytree(submissions, dest, ignore=shutil.ignore_patterns(".*", "__MACOSX", "__pycache__"))
    return _find_root(dest)


def _looks_like_root(folder: Path, known: set[str]) -> bool:
    return any(a.is_dir() and a.name in known for s in folder.iterdir() if s.is_dir() for a in s.iterdir())


def _find_root(folder: Path) -> Path:
    """Accept the tree itself or the tree wrapped in one folder (e.g. a zip of submitted/)."""
    known = set(assignment_ids())
    while not _looks_like_root(folder, known):
        children = [c for c in folder.iterdir() if c.is_dir()]
        if len(children) != 1:
            break
        folder = children[0]
    return folder


def discover(root: Path) -> list[tuple[str, str, Path | None, list[str]]]:
    """(student_id, assignment_id, notebook or None, notes) for everything in the input."""
    known = assignment_ids()
    found = []
    for sdir in sorted(p for p in root.iterdir() if p.is_dir()):
        sid = sdir.name
        loose = {p.stem: p for p in sdir.glob("*.ipynb") if p.stem in known}  # notebook without its folder
        names = sorted({p.name for p in sdir.iterdir() if p.is_dir()} | set(loose))
        for aid in names:
            if aid not in known:
                found.append((sid, aid, None, [f"unknown assignment folder '{aid}' (expected one of: {', '.join(known)})"]))
                continue
            adir = sdir / aid
            expected = adir / f"{aid}.ipynb"
            if expected.is_file():
                found.append((sid, aid, expected, []))
            elif aid in loose:
                found.append((sid, aid, loose[aid], [f"notebook found at {sid}/{aid}.ipynb instead of {sid}/{aid}/{aid}.ipynb"]))
            else:
                others = sorted(adir.glob("*.ipynb")) if adir.is_dir() else []
                if len(others) == 1:
                    found.append((sid, aid, others[0], [f"graded {others[0].name} (expected the name {aid}.ipynb)"]))
                else:
                    extra = f"; found {', '.join(p.name for p in others)}" if others else ""
                    found.append((sid, aid, None, [f"no notebook {aid}.ipynb in {sid}/{aid}/{extra}"]))
    return found


# ----------------------------------------------------------------------------- the run's template course

def build_template(log, assignments: list[str]) -> bytes:
    """A private nbgrader course for this run, as a tar: the instructor notebooks, the release of
    every module the batch names and a gradebook that knows those assignments. Each task grades in
    its own copy, so the gradebook rows of every part refer to the same assignments and cells and
    merge into one."""
    from grader.nbgrader_cli import nbgrader_env
    from grader.nbgrader_server import NbgraderServer

    with tempfile.TemporaryDirectory(prefix="deepdive-template-") as tmp:
        work = Path(tmp)
        shutil.copytree(SOLUTIONS, work / "solutions", ignore=shutil.ignore_patterns("__pycache__", ".ipynb_checkpoints"))
        server = NbgraderServer(nbgrader_env())
        try:
            for aid in assignments:
                rc = server.run("generate_assignment", aid, "", root=work, db=work / "gradebook.db",
                                log=work / "generate.log", timeout=600)
                if rc != 0 or not (work / "course" / aid / f"{aid}.ipynb").exists():
                    log.write((work / "generate.log").read_text())
                    raise GradingError(f"nbgrader generate_assignment {aid} failed; see grading.log")
        finally:
            server.close()
        if not assignments:  # a batch of unknown assignments only: their rows still need a gradebook
            from nbgrader.api import Gradebook

            (work / "course").mkdir()
            Gradebook(f"sqlite:///{work / 'gradebook.db'}").close()
        log.write((work / "generate.log").read_text() if (work / "generate.log").exists() else "")
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tf:
            for name in ("solutions", "course", "gradebook.db"):
                tf.add(work / name, arcname=name)
        return buf.getvalue()


def read_scores(db: Path, rows: list[Row]) -> list[dict]:
    """Each row's score and one dict per graded cell: the autograded cells' points are the trusted
    verdicts' (checked against the gradebook: _trusted_or_flagged); a hand-graded answer cell has 0
    until a person grades it (grader/manual.py), and the row then says `needs_manual_grade`."""
    from nbgrader.api import Gradebook, MissingEntry

    from grader.manual import CellGrade, answer_grade, hand_summary

    cells = []
    with Gradebook(f"sqlite:///{db}") as gb:
        for row in rows:
            if row.assignment not in assignment_ids():
                continue
            assignment = gb.find_assignment(row.assignment)
            row.max_score = float(assignment.max_score)
            answers: list[CellGrade] = []
            if row.status != "graded":
                row.score = 0.0
                grades = [(gc.name, 0.0, float(gc.max_score)) for nb in assignment.notebooks for gc in nb.grade_cells]
            else:
                try:
                    sub = gb.find_submission(row.assignment, row.student_id)
                except MissingEntry:
                    row.status, row.message = "error", "no grades recorded by nbgrader"
                    continue
                grades = [(g.name, float(g.score), float(g.max_score)) for nb in sub.notebooks for g in nb.grades
                          if g.cell_type != "markdown"]
                answers = [answer_grade(g) for nb in sub.notebooks for g in nb.grades if g.cell_type == "markdown"]
                row.score = sum(score for _, score, _ in grades)
                grades = _trusted_or_flagged(row, grades)
                row.score += sum(a.score for a in answers)
                row.needs_manual_grade = any(a.needs_manual_grade for a in answers)
                row.hand = hand_summary(answers)
            waiting = {a.grade_id for a in answers if a.needs_manual_grade}
            for name, score, max_score in sorted(grades + [(a.grade_id, a.score, a.max_score) for a in answers]):
                cells.append({"student_id": row.student_id, "assignment": row.assignment, "grade_id": name,
                              "score": score, "max_score": max_score, "needs_manual_grade": name in waiting})
    return cells


def _trusted_or_flagged(row: Row, grades: list[tuple[str, float, float]]) -> list[tuple[str, float, float]]:
    """The gradebook's cell grades if they are possible and equal the trusted verdicts; otherwise
    the row is flagged and its scores are the verdicts' (the gradebook is not trusted)."""
    by_cell: dict[str, list[float]] = {}
    for v in row.verdicts:
        got = by_cell.setdefault(v["grade_id"], [0.0, 0.0])
        got[0] += float(v["score"])
        got[1] += float(v["points"])
    problems = [f"{name} {score:g}/{top:g}" for name, score, top in grades if not 0 <= score <= top]
    problems += [f"{name} {score:g} (its verdicts: {by_cell[name][0]:g})" for name, score, _ in grades
                 if name in by_cell and abs(score - by_cell[name][0]) > 1e-9]
    if not 0 <= row.score <= float(row.max_score):
        problems.append(f"total {row.score:g}/{float(row.max_score):g}")
    if not problems:
        return grades
    row.status = "flagged"
    row.score = sum(s for s, _ in by_cell.values())
    row.notes.append("the gradebook held impossible or altered scores (" + ", ".join(problems[:5])
                     + "): not trusted; these scores are the grader's own verdicts")
    maxima = {name: top for name, _, top in grades}
    return [(name, score, maxima.get(name, top)) for name, (score, top) in sorted(by_cell.items())]


# ----------------------------------------------------------------------------- outputs

def fallback_page(out: Path, row: Row) -> None:
    """A feedback page for a row nbgrader could not grade (unreadable, missing, timed out, ...)."""
    page = out / "feedback" / row.student_id / row.assignment / f"{row.assignment}.html"
    if not page.exists():
        page.parent.mkdir(parents=True, exist_ok=True)
        page.write_text(
            f"<!doctype html><meta charset='utf-8'><title>{html.escape(row.assignment)}</title>"
            f"<h1>{html.escape(row.assignment)} — {html.escape(row.student_id)}</h1>"
            f"<p><b>Score:</b> {row.score} / {row.max_score} &nbsp; <b>Status:</b> {html.escape(row.status)}</p>"
            f"<p>{html.escape(row.message)}</p>", encoding="utf-8")


def plot_distribution(cells: list[dict], path: Path) -> None:
    """One panel per assignment: for each exercise, how many submissions got full, partial or no points."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    aids = sorted({c["assignment"] for c in cells})
    if not aids:
        return
    fig, axes = plt.subplots(len(aids), 1, figsize=(9, 1.2 + 0.5 * max(len({c["grade_id"] for c in cells}), 4) * len(aids) / 2), squeeze=False)
    for ax, aid in zip(axes[:, 0], aids):
        per: dict[str, dict[str, list[float]]] = {}
        for c in cells:
            if c["assignment"] == aid:
                ex = re.sub(r"_(visible|hidden)$", "", c["grade_id"])
                acc = per.setdefault(ex, {}).setdefault(c["student_id"], [0.0, 0.0])
                acc[0] += c["score"]
                acc[1] += c["max_score"]
        names = sorted(per)
        full = [sum(s >= m > 0 for s, m in per[n].values()) for n in names]
        zero = [sum(s == 0 for s, m in per[n].values()) for n in names]
        part = [len(per[n]) - f - z for n, f, z in zip(names, full, zero)]
        y = range(len(names))
        ax.barh(y, full, color="tab:green", label="full points")
        ax.barh(y, part, left=full, color="tab:orange", label="partial")
        ax.barh(y, zero, left=[f + p for f, p in zip(full, part)], color="tab:red", label="no points")
        ax.set_yticks(list(y), names)
        ax.invert_yaxis()
        ax.set_xlabel("submissions")
        ax.set_title(f"{aid}: points per exercise ({len(next(iter(per.values())))} submissions)")
        ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_csv(path: Path, columns: list[str], rows: list[dict]) -> None:
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


# ----------------------------------------------------------------------------- running the tasks

STATE = ".grading"  # inside OUT while a run is unfinished: the template, the manifest and one part per notebook
SO_FAR = "grades-so-far.csv"  # inside OUT while a run is unfinished: a row per notebook finished


def _part_dir(state: Path, sid: str, aid: str) -> Path:
    return state / "parts" / sid / aid


def write_part(state: Path, result: dict) -> None:
    """A finished notebook's result, written so that it is either all there or not at all."""
    row = result["row"]
    final = _part_dir(state, row["student_id"], row["assignment"])
    tmp = final.parent / f".{final.name}.{os.getpid()}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    for rel, data in result["files"].items():
        (tmp / "files" / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp / "files" / rel).write_bytes(data)
    tmp.mkdir(parents=True, exist_ok=True)
    if result["db"]:  # none when the machinery failed before nbgrader ran
        (tmp / "gradebook.db").write_bytes(result["db"])
    (tmp / "nbgrader.log").write_text(result["log"], encoding="utf-8")
    meta = {k: v for k, v in result.items() if k not in ("files", "db", "log")}
    (tmp / "result.json").write_text(json.dumps(meta, indent=1), encoding="utf-8")
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    _so_far(state.parent / SO_FAR, row)


def _so_far(path: Path, row: dict) -> None:
    """Append a finished notebook's row to OUT/grades-so-far.csv (the trusted verdicts' sum), so
    that a run which dies leaves every finished grade readable on disk; grades.csv replaces it."""
    new = not path.exists()
    score = sum(float(v["score"]) for v in row["verdicts"])
    top = sum(float(v["points"]) for v in row["verdicts"])
    with path.open("a", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        if new:
            writer.writerow(GRADE_COLUMNS)
        writer.writerow([row["student_id"], row["assignment"], f"{score:g}", f"{top:g}" if top else "",
                         row["status"], "", str(row["message"]).replace("\n", " ")[:300]])
        f.flush()
        os.fsync(f.fileno())


def read_part(state: Path, sid: str, aid: str) -> dict | None:
    path = _part_dir(state, sid, aid) / "result.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else None


@contextlib.contextmanager
def dask_client(workers: int, scheduler: str | None):
    """A Dask client: on the cluster at `scheduler`, or on `workers` local worker processes with
    one task thread each."""
    import logging

    import dask
    from distributed import Client, LocalCluster

    if scheduler:
        try:
            client = Client(scheduler, timeout="30s")
        except OSError as exc:
            raise GradingError(f"could not reach the Dask scheduler at {scheduler}: {exc}") from exc
        with client:
            yield client
        return
    # worker-saturation 1.0: a worker holds only the notebook it grades, the rest wait at the
    # scheduler in start_priority order (Dask's default 1.1 hands one worker two of them at once,
    # so the second of two long notebooks could wait behind the first while another worker idles).
    with dask.config.set({"distributed.scheduler.worker-saturation": 1.0}), \
            LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None,
                         silence_logs=logging.ERROR) as cluster, Client(cluster) as client:
        yield client


def warm_workers(client, assignments: list[str], threads: int | None, sandbox: int | None = None) -> list:
    """One warm-up task per worker (grader.task.warm_worker), ahead of every notebook. The dispatcher
    does not wait for them, but must hold the futures: Dask forgets a task nobody holds."""
    return [client.submit(warm_worker, assignments, threads, sandbox, workers=[address], allow_other_workers=False,
                          pure=False, key=f"warm-up-{address}") for address in client.scheduler_info()["workers"]]


def start_priority(spec: dict) -> int:
    """A notebook's module's time budget: the longer, the sooner it starts."""
    return budget_s(spec["assignment"])


def longest_first(specs: list[dict]) -> list[dict]:
    """The notebooks in the order they should start: the modules with the longest time budget first
    (input order among equals), so a class's last minutes are not one worker alone on module 09
    while the others sit idle. Where each result goes does not depend on it. Both are needed: the
    priority orders what waits at the scheduler, and the submission order decides what idle workers
    take first (each submit reaches the scheduler on its own: with only the priority, bench/grade_order.py's
    module-07 notebook started at 20.9 s instead of 8.1 s, after the module-02 ones submitted before it)."""
    return sorted(specs, key=lambda spec: -start_priority(spec))


def run_tasks(client, specs: list[dict], template: bytes, state: Path, fingerprint: str, done: int,
              total: int) -> None:
    """Grade every spec on the workers; each result is written as a part the moment it arrives."""
    from distributed import as_completed

    bar = tqdm(total=total, initial=done, desc="grading", unit="notebook", file=sys.stderr)
    shared = client.scatter(template, broadcast=True)
    futures = {client.submit(grade_task, spec, shared, key=f"grade-{spec['student_id']}-{spec['assignment']}-"
                             f"{spec['sha256'][:12]}", pure=False, priority=start_priority(spec)): spec
               for spec in longest_first(specs)}
    for future in as_completed(futures):
        spec = futures[future]
        try:
            result = future.result()
        except Exception as exc:  # e.g. the worker died (out of memory) on this notebook several times
            row = Row(spec["student_id"], spec["assignment"], notes=list(spec["notes"]), status="error",
                      message=f"the grading worker failed on this notebook: {type(exc).__name__}: {exc}"[:300])
            result = {"row": asdict(row), "files": {}, "db": b"", "log": traceback.format_exc(),
                      "sha256": spec["sha256"], "execute_s": 0.0, "phases": {}, "wall_s": 0.0, "fingerprint": fingerprint}
        if result["fingerprint"] != fingerprint:
            raise GradingError(f"a worker runs another version of the course (code {result['fingerprint']}, "
                               f"here {fingerprint}): install this repository's version on every worker")
        write_part(state, result)
        bar.update(1)
        bar.set_postfix_str(f"{spec['student_id']}/{spec['assignment']}")
    bar.close()


# ----------------------------------------------------------------------------- merging the parts

PART_TABLES = ["submitted_assignment", "submitted_notebook", "grade", "comment"]


def merge_gradebooks(template_db: Path, parts: list[Path], dest: Path) -> None:
    """One gradebook: the template's assignments, then each part's student and submission rows.
    Every part started from the same template, so their rows refer to the same cells."""
    shutil.copy(template_db, dest)
    con = sqlite3.connect(dest)
    try:
        for part in parts:
            con.execute("ATTACH DATABASE ? AS part", (str(part),))
            con.execute("INSERT OR IGNORE INTO student SELECT * FROM part.student")
            for table in PART_TABLES:
                con.execute(f"INSERT INTO {table} SELECT * FROM part.{table}")
            con.commit()
            con.execute("DETACH DATABASE part")
    finally:
        con.close()


def merge(out: Path, state: Path, rows: list[Row], results: dict, log, began: float) -> list[dict]:
    """Write every output of the run from its parts: the order is the input's, whatever order
    the workers finished in, so a parallel run's outputs equal a serial run's."""
    with tempfile.TemporaryDirectory(prefix="deepdive-merge-") as tmp:
        with tarfile.open(state / "template.tar") as tf:
            tf.extract("gradebook.db", tmp, filter="data")
        parts = [db for r in rows if (r.student_id, r.assignment) in results
                 if (db := _part_dir(state, r.student_id, r.assignment) / "gradebook.db").exists()]
        merge_gradebooks(Path(tmp) / "gradebook.db", parts, out / "gradebook.db")
    cells = read_scores(out / "gradebook.db", rows)
    timing = []
    for row in rows:
        row.message = "; ".join(filter(None, [*row.notes, row.message, row.hand])).replace("\n", " ")
        result = results.get((row.student_id, row.assignment))
        if result is not None:
            part = _part_dir(state, row.student_id, row.assignment)
            log.write((part / "nbgrader.log").read_text(encoding="utf-8"))
            if (part / "files").is_dir():
                shutil.copytree(part / "files", out, dirs_exist_ok=True)
            wall, execute = result["wall_s"], result["execute_s"]
            timing.append({"student_id": row.student_id, "assignment": row.assignment, "status": row.status,
                           "wall_s": f"{wall:.2f}", "execute_s": f"{execute:.2f}",
                           "overhead_s": f"{wall - execute:.2f}", "judge_s": f"{row.judge_s:.2f}",
                           "worker": result.get("worker", ""),
                           "start_s": f"{result['started'] - began:.2f}" if "started" in result else ""})
            phases = ", ".join(f"{k} {v:.2f} s" for k, v in result.get("phases", {}).items())
            log.write(f"# {row.student_id}/{row.assignment}: {row.status} in {wall:.1f} s "
                      f"(cells {execute:.1f} s; {phases})\n")
        else:
            log.write(f"# {row.student_id}/{row.assignment}: {row.status}\n")
        fallback_page(out, row)
    write_csv(out / "grades.csv", GRADE_COLUMNS, [asdict(r) for r in rows])
    write_csv(out / "cell_grades.csv", CELL_COLUMNS, cells)
    write_csv(out / "verdicts.csv", VERDICT_COLUMNS, [v for r in rows for v in r.verdicts])
    write_csv(out / "timing.csv", TIMING_COLUMNS, timing)
    plot_distribution(cells, out / "score_distribution.png")
    return cells


# ----------------------------------------------------------------------------- main

def run_summary(began: float, marks: dict[str, float], graded: int, workers: int | None) -> str:
    """'# run: 28 notebook(s) graded on 2 worker(s) in 89.5 s: workers and template 6.5 s, grading 80.0 s, ...'"""
    parts, last = [], began
    for name, at in marks.items():
        parts.append(f"{name} {at - last:.1f} s")
        last = at
    on = f"{workers} worker(s)" if workers else "the cluster"
    return f"# run: {graded} notebook(s) graded on {on} in {last - began:.1f} s: {', '.join(parts)}\n"


def _specs(found, cell_timeout, notebook_cap, sandbox_memory=None) -> tuple[list[Row], list[dict]]:
    """Rows that need no grading (bad folder names, unknown assignments, missing notebooks) and
    one task spec per notebook to grade (its "threads" set once the number of workers is known)."""
    direct, specs = [], []
    known = set(assignment_ids())
    for sid, aid, notebook, notes in found:
        row = Row(sid, aid, notes=list(notes))
        if not STUDENT_ID.match(sid):
            row.status, row.message = "error", "student folder name must be letters, digits and _.@+- only"
        elif aid not in known:
            row.status = "unknown_assignment"
        elif notebook is None:
            row.status = "missing"
        else:
            data = notebook.read_bytes()
            budget = budget_s(aid)
            specs.append({"student_id": sid, "assignment": aid, "name": notebook.name, "notebook": data,
                          "sha256": hashlib.sha256(data).hexdigest(), "notes": list(notes),
                          "cell_timeout": cell_timeout or 2 * budget, "cap": notebook_cap or 4 * budget + 60,
                          "threads": None, "sandbox": sandbox_memory})
            continue
        direct.append(row)
    return direct, specs


def grade(submissions: Path, out: Path, cell_timeout: int | None = None, notebook_cap: int | None = None,
          overwrite: bool = False, workers: int | None = None, scheduler: str | None = None,
          resume: bool = False, sandbox: bool = True, sandbox_memory_gib: float | None = None) -> list[Row]:
    """Grade every notebook under `submissions` into `out`. With `sandbox` (the default) every
    kernel runs in grader/sandbox.py's sandbox; refuses (GradingError) where none can be made."""
    began = time.time()
    state = out / STATE
    memory = None
    if sandbox:
        memory = memory_bytes(sandbox_memory_gib)
        try:
            sandbox_check(memory, torch=False)  # each worker checks its own machine, with torch
        except SandboxUnavailable as exc:
            raise GradingError(f"no sandbox for the student kernels: {exc}") from None
    if resume and not (state / "manifest.json").exists():
        finished = " (it holds a finished run)" if (out / "grades.csv").exists() else ""
        raise GradingError(f"--resume: {out} holds no interrupted run to finish{finished}")
    if not resume and not overwrite:
        if (out / "grades.csv").exists():
            raise GradingError(f"{out} already holds grades.csv; choose a new OUT folder (or pass --overwrite)")
        if state.exists():
            raise GradingError(f"{out} holds an unfinished grading run: add --resume to finish it "
                               "(only what is missing is graded), or choose a new OUT folder")
    if overwrite and not resume:
        shutil.rmtree(state, ignore_errors=True)
        (out / SO_FAR).unlink(missing_ok=True)
    cores = usable_cores()
    workers = workers or cores
    options = {"cell_timeout": cell_timeout, "notebook_cap": notebook_cap, "course": course_fingerprint(),
               "sandbox": memory}
    out.mkdir(parents=True, exist_ok=True)
    log = (out / "grading.log").open("a" if resume else "w", encoding="utf-8")
    with tempfile.TemporaryDirectory(prefix="deepdive-grade-") as tmp:
        root = stage_input(submissions, Path(tmp) / "input")
        found = discover(root)
        if not found:
            raise GradingError(f"no <student_id>/<assignment_id>/ folders found in {submissions}")
        direct, specs = _specs(found, cell_timeout, notebook_cap, memory)
        if resume:
            manifest = json.loads((state / "manifest.json").read_text())
            if manifest["options"] != options:
                raise GradingError(f"--resume needs the options and course version of the interrupted run "
                                   f"({manifest['options']}; now {options}): grade into a new OUT instead")
        kept = {(s["student_id"], s["assignment"]) for s in specs
                if (read_part(state, s["student_id"], s["assignment"]) or {}).get("sha256") == s["sha256"]}
        todo = [s for s in specs if (s["student_id"], s["assignment"]) not in kept]
        # No more local workers than notebooks: an idle worker's start-up would only take cores from the others
        # (one module-02 notebook: 21.9 s on one worker, 29.5 s on two). Each kernel gets its worker's share.
        workers = max(1, min(workers, len(todo)))
        threads = None if scheduler else max(1, cores // workers)
        for spec in todo:
            spec["threads"] = threads
        if resume:
            print(f"resuming: {len(kept)} of {len(specs)} notebook(s) already graded in {out}", file=sys.stderr)
        # The workers start, and load torch, the checks and nbgrader, while the template is built.
        with dask_client(workers, scheduler) if todo else contextlib.nullcontext() as client:
            warming = warm_workers(client, sorted({s["assignment"] for s in todo}), threads, memory) if todo else []
            if resume:
                template = (state / "template.tar").read_bytes()
            else:
                state.mkdir(parents=True)
                known = set(assignment_ids())
                template = build_template(log, sorted({aid for _, aid, _, _ in found if aid in known}))
                (state / "template.tar").write_bytes(template)
                (state / "manifest.json").write_text(json.dumps({"options": options}, indent=1))
            marks = {"workers and template": time.time()}
            if todo:
                run_tasks(client, todo, template, state, options["course"], done=len(kept), total=len(specs))
            marks["grading"] = time.time()
            del warming
        marks["stopping the workers"] = time.time()
    results = {(s["student_id"], s["assignment"]): read_part(state, s["student_id"], s["assignment"]) for s in specs}
    by_key = {(r.student_id, r.assignment): r for r in direct}
    by_key.update({key: Row(**result["row"]) for key, result in results.items()})
    rows = [by_key[sid, aid] for sid, aid, _, _ in found]
    merge(out, state, rows, results, log, began)
    marks["merging"] = time.time()
    log.write(run_summary(began, marks, len(todo), workers if not scheduler else None))
    log.close()
    shutil.rmtree(state)
    (out / SO_FAR).unlink(missing_ok=True)
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("submissions", type=Path, help="folder or .zip: <student_id>/<assignment_id>/<notebook>.ipynb")
    parser.add_argument("out", type=Path, help="output folder for grades.csv, cell_grades.csv, feedback/, ...")
    parser.add_argument("--cell-timeout", type=int, default=None,
                        help="seconds one cell may run before it is interrupted (default: 2x the module's budget)")
    parser.add_argument("--notebook-timeout", type=int, default=None,
                        help="wall-clock cap in seconds for one notebook (default: 4x the module's budget + 60)")
    parser.add_argument("--workers", type=int, default=None,
                        help="notebooks graded at once on this machine (default: its cores; never more than the "
                             "notebooks); each kernel's torch gets cores / workers threads")
    parser.add_argument("--scheduler", default=None,
                        help="address of a Dask scheduler (tcp://host:8786): grade on that cluster's workers, "
                             "which need this course installed (README, 'Grading on a cluster')")
    parser.add_argument("--resume", action="store_true",
                        help="finish an interrupted run into the same OUT: grade only what is missing")
    parser.add_argument("--overwrite", action="store_true", help="allow writing into an OUT that already has grades")
    parser.add_argument("--no-sandbox", action="store_true",
                        help="run the student kernels with the grader's own permissions, network and processes "
                             "(only for submissions you trust; grader/sandbox.py says what the sandbox stops)")
    parser.add_argument("--sandbox-memory", type=float, default=None, metavar="GIB",
                        help=f"address space of each sandboxed kernel, GiB (default {DEFAULT_MEMORY_GIB:g}, or "
                             "$DEEPDIVE_SANDBOX_MEMORY)")
    args = parser.parse_args(argv)
    if args.workers is not None and args.workers < 1:
        parser.error("--workers must be at least 1")
    t0 = time.perf_counter()
    try:
        rows = grade(args.submissions, args.out, args.cell_timeout, args.notebook_timeout, args.overwrite,
                     args.workers, args.scheduler, args.resume, not args.no_sandbox, args.sandbox_memory)
    except GradingError as exc:
        print(f"grading failed: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"\ninterrupted: every notebook graded so far is kept in {args.out / STATE} (its rows in "
              f"{args.out / SO_FAR}); run the same command with --resume to grade only the rest", file=sys.stderr)
        return 130
    elapsed = time.perf_counter() - t0
    by_status: dict[str, int] = {}
    for r in rows:
        by_status[r.status] = by_status.get(r.status, 0) + 1
    print(f"graded {len(rows)} notebook(s) in {elapsed:.1f} s "
          f"({elapsed / max(len(rows), 1):.1f} s each): {json.dumps(by_status)}")
    print(f"results: {args.out / 'grades.csv'}, {args.out / 'cell_grades.csv'}, {args.out / 'feedback'}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
