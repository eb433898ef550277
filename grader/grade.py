"""Autograde a class's submissions with nbgrader.

    python -m grader.grade SUBMISSIONS OUT        (or: make grade SUBMISSIONS=... OUT=...)

SUBMISSIONS is a folder or a .zip laid out as nbgrader's submitted/ directory:
    <student_id>/<assignment_id>/<assignment_id>.ipynb
OUT receives:
    grades.csv          one row per student x assignment found in the input
    cell_grades.csv     one row per graded cell
    verdicts.csv        one row per hidden check: points, score, verdict, what the kernel showed, message
    feedback/<student_id>/<assignment_id>/<assignment_id>.html
    autograded/...      the executed notebooks, as nbgrader left them
    score_distribution.png, gradebook.db, grading.log

The input is never modified: it is copied (or unzipped) into a private working course
directory. A bad submission (unreadable, missing, looping, crashing its kernel, printing
50 MB) gets its own row and score and never stops the batch. The exit status is 0 unless the
grading machinery itself failed.

Scores come only from the trusted verdicts (grader/trusted.py, grader/scoring.py): the hidden
checks record what the learner's code returned, and this process judges those records after the
kernel has exited. Nothing the kernel reports (an exception or its absence) is a score.
"""

import argparse
import csv
import html
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import nbformat
from tqdm import tqdm

from grader.assignments import SOLUTIONS, assignment_ids, budget_s
from grader.hidden import hidden_tests
from grader.nbgrader_cli import nbgrader
from grader.scoring import score_submission
from grader.submission import UnreadableNotebook, read_notebook, repair
from grader.trusted import RECORD_DIR_ENV

STUDENT_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@+-]*$")
GRADE_COLUMNS = ["student_id", "assignment", "score", "max_score", "status", "message"]
CELL_COLUMNS = ["student_id", "assignment", "grade_id", "score", "max_score"]
VERDICT_COLUMNS = ["student_id", "assignment", "grade_id", "check", "points", "score", "verdict", "kernel", "message"]


class GradingError(Exception):
    """The grading machinery itself failed (not a submission): exit non-zero."""


@dataclass
class Row:
    student_id: str
    assignment: str
    score: float = 0.0
    max_score: float | str = ""
    status: str = "graded"
    message: str = ""
    notes: list = field(default_factory=list, repr=False)
    verdicts: list = field(default_factory=list, repr=False)
    judge_s: float = field(default=0.0, repr=False)  # seconds spent judging the records (grading.log)


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


# ----------------------------------------------------------------------------- grading

def prepare_course(work: Path, log) -> tuple[dict, dict]:
    """A private nbgrader course: the instructor notebooks, a fresh gradebook, the release; and
    each assignment's hidden tests, read from the private copy before any submission runs."""
    shutil.copytree(SOLUTIONS, work / "solutions", ignore=shutil.ignore_patterns("__pycache__", ".ipynb_checkpoints"))
    releases = {}
    for aid in assignment_ids():
        result = nbgrader("generate_assignment", aid, "--force", root=work, db=work / "gradebook.db", log=log)
        release = work / "course" / aid / f"{aid}.ipynb"
        if result.returncode != 0 or not release.exists():
            raise GradingError(f"nbgrader generate_assignment {aid} failed; see grading.log")
        releases[aid] = nbformat.read(release, as_version=4)
    tests = {aid: hidden_tests(aid, work / "solutions" / aid / f"{aid}.ipynb") for aid in releases}
    return releases, tests


def _failure_summary(autograded: Path) -> str:
    """'x_hidden: AssertionError: ...; y_visible: CellTimeoutError' from the executed notebook."""
    nb = nbformat.read(autograded, as_version=4)
    failed = []
    for cell in nb.cells:
        meta = cell.metadata.get("nbgrader", {})
        if cell.cell_type != "code" or not meta.get("grade"):
            continue
        errors = [o for o in cell.outputs if o.output_type == "error"]
        if errors:
            err = errors[0]
            text = f"{err.ename}: {err.evalue}".strip().rstrip(":")
            failed.append(f"{meta['grade_id']}: {text.splitlines()[0][:160] if text else err.ename}")
    return "failed " + "; ".join(failed) if failed else ""


def grade_one(row: Row, notebook: Path, work: Path, release, tests, cell_timeout: int, cap: int, log) -> Row:
    try:
        nb = read_notebook(notebook)
    except UnreadableNotebook as exc:
        row.status, row.message = "unreadable", str(exc)
        return row
    row.notes += repair(nb, release)
    dest = work / "submitted" / row.student_id / row.assignment
    dest.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, dest / f"{row.assignment}.ipynb")
    records = work.parent / "records" / row.student_id / row.assignment  # where the checks leave results
    shutil.rmtree(records, ignore_errors=True)
    records.mkdir(parents=True)
    try:
        result = nbgrader("autograde", row.assignment, f"--student={row.student_id}", "--force",
                          f"--Execute.timeout={cell_timeout}", root=work, db=work / "gradebook.db",
                          timeout=cap, log=log, env={RECORD_DIR_ENV: str(records)})
    except subprocess.TimeoutExpired:
        row.status = "timeout"
        row.message = (f"grading stopped after {cap} s, the wall-clock cap per notebook; nothing was scored. "
                       "Make sure Kernel > Restart & Run All finishes quickly with the default settings")
        return row
    out = work / "autograded" / row.student_id / row.assignment / f"{row.assignment}.ipynb"
    if "Kernel died" in result.stdout or "DeadKernelError" in result.stdout:
        row.status = "kernel_died"
        row.message = ("the Python kernel died while the notebook ran (exit(), os._exit(), a crash or running out "
                       "of memory), so no test could be scored. Kernel > Restart & Run All reproduces it")
        return row
    if not out.exists() and "CellTimeoutError" in result.stdout:
        row.status = "timeout"
        row.message = (f"a cell ran past the per-cell limit of {cell_timeout} s and did not stop when interrupted, "
                       "so the notebook could not finish and nothing was scored")
        return row
    if not out.exists():
        tail = [ln for ln in result.stdout.splitlines() if "ERROR" in ln][-3:]
        row.status, row.message = "error", "nbgrader could not grade this notebook: " + " | ".join(tail)[:400]
        return row
    t0 = time.perf_counter()
    row.verdicts, disagreements = score_submission(row.student_id, row.assignment, out, tests, records,
                                                   work / "gradebook.db")
    row.judge_s = time.perf_counter() - t0
    row.notes += disagreements
    shutil.rmtree(records, ignore_errors=True)
    row.message = _failure_summary(out)
    if "Timeout waiting for execute reply" in result.stdout or "CellTimeoutError" in row.message:
        row.notes.append(f"a cell ran past the per-cell limit of {cell_timeout} s and was interrupted")
    return row


def read_scores(db: Path, rows: list[Row]) -> list[dict]:
    from nbgrader.api import Gradebook, MissingEntry

    cells = []
    with Gradebook(f"sqlite:///{db}") as gb:
        for row in rows:
            if row.assignment not in assignment_ids():
                continue
            assignment = gb.find_assignment(row.assignment)
            row.max_score = float(assignment.max_score)
            if row.status != "graded":
                row.score = 0.0
                grades = [(gc.name, 0.0, float(gc.max_score)) for nb in assignment.notebooks for gc in nb.grade_cells]
            else:
                try:
                    sub = gb.find_submission(row.assignment, row.student_id)
                except MissingEntry:
                    row.status, row.message = "error", "no grades recorded by nbgrader"
                    continue
                row.score = float(sub.score)
                grades = [(g.name, float(g.score), float(g.max_score)) for nb in sub.notebooks for g in nb.grades]
            for name, score, max_score in sorted(grades):
                cells.append({"student_id": row.student_id, "assignment": row.assignment, "grade_id": name,
                              "score": score, "max_score": max_score})
    return cells


# ----------------------------------------------------------------------------- outputs

def write_feedback(work: Path, out: Path, rows: list[Row], log) -> None:
    graded = sorted({r.assignment for r in rows if r.status == "graded"})
    for aid in graded:
        nbgrader("generate_feedback", aid, "--force", root=work, db=work / "gradebook.db", log=log)
    if (work / "feedback").exists():
        shutil.copytree(work / "feedback", out / "feedback", dirs_exist_ok=True)
    for row in rows:  # a page for every row, also those nbgrader could not grade
        page = out / "feedback" / row.student_id / row.assignment / f"{row.assignment}.html"
        if not page.exists():
            page.parent.mkdir(parents=True, exist_ok=True)
            page.write_text(
                f"<!doctype html><meta charset='utf-8'><title>{html.escape(row.assignment)}</title>"
                f"<h1>{html.escape(row.assignment)} — {html.escape(row.student_id)}</h1>"
                f"<p><b>Score:</b> {row.score} / {row.max_score} &nbsp; <b>Status:</b> {html.escape(row.status)}</p>"
                f"<p>{html.escape(row.message)}</p>", encoding="utf-8")
    for stamp in (out / "feedback").rglob("timestamp.txt"):
        stamp.unlink()  # nbgrader writes the time of grading: drop it so reruns give identical output


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


# ----------------------------------------------------------------------------- main

def grade(submissions: Path, out: Path, cell_timeout: int | None = None, notebook_cap: int | None = None,
          overwrite: bool = False) -> list[Row]:
    if out.exists() and (out / "grades.csv").exists() and not overwrite:
        raise GradingError(f"{out} already holds grades.csv; choose a new OUT folder (or pass --overwrite)")
    out.mkdir(parents=True, exist_ok=True)
    log = (out / "grading.log").open("w", encoding="utf-8")
    with tempfile.TemporaryDirectory(prefix="deepdive-grade-") as tmp:
        work = Path(tmp) / "course"
        work.mkdir()
        root = stage_input(submissions, Path(tmp) / "input")
        found = discover(root)
        if not found:
            raise GradingError(f"no <student_id>/<assignment_id>/ folders found in {submissions}")
        releases, tests = prepare_course(work, log)
        rows = []
        bar = tqdm(found, desc="grading", unit="notebook", file=sys.stderr)
        for sid, aid, notebook, notes in bar:
            bar.set_postfix_str(f"{sid}/{aid}")
            row = Row(sid, aid, notes=list(notes))
            t0 = time.perf_counter()
            if not STUDENT_ID.match(sid):
                row.status, row.message = "error", "student folder name must be letters, digits and _.@+- only"
            elif aid not in releases:
                row.status = "unknown_assignment"
            elif notebook is None:
                row.status = "missing"
            else:
                budget = budget_s(aid)
                try:
                    row = grade_one(row, notebook, work, releases[aid], tests[aid], cell_timeout or 2 * budget,
                                    notebook_cap or 4 * budget + 60, log)
                except Exception as exc:  # one broken submission must never stop the batch
                    log.write(traceback.format_exc())
                    row.status, row.message = "error", f"could not grade: {type(exc).__name__}: {exc}"[:300]
            log.write(f"# {sid}/{aid}: {row.status} in {time.perf_counter() - t0:.1f} s "
                      f"(trusted verdicts {row.judge_s:.2f} s)\n")
            rows.append(row)
        cells = read_scores(work / "gradebook.db", rows)
        for row in rows:
            row.message = "; ".join(filter(None, [*row.notes, row.message])).replace("\n", " ")
        write_feedback(work, out, rows, log)
        if (work / "autograded").exists():
            shutil.copytree(work / "autograded", out / "autograded", dirs_exist_ok=True)
            for path in (out / "autograded").rglob("*"):  # nbgrader leaves them read-only
                path.chmod(0o755 if path.is_dir() else 0o644)
        shutil.copy(work / "gradebook.db", out / "gradebook.db")
    log.close()
    write_csv(out / "grades.csv", GRADE_COLUMNS, [asdict(r) for r in rows])
    write_csv(out / "cell_grades.csv", CELL_COLUMNS, cells)
    write_csv(out / "verdicts.csv", VERDICT_COLUMNS, [asdict(v) for r in rows for v in r.verdicts])
    plot_distribution(cells, out / "score_distribution.png")
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("submissions", type=Path, help="folder or .zip: <student_id>/<assignment_id>/<notebook>.ipynb")
    parser.add_argument("out", type=Path, help="output folder for grades.csv, cell_grades.csv, feedback/, ...")
    parser.add_argument("--cell-timeout", type=int, default=None,
                        help="seconds one cell may run before it is interrupted (default: 2x the module's budget)")
    parser.add_argument("--notebook-timeout", type=int, default=None,
                        help="wall-clock cap in seconds for one notebook (default: 4x the module's budget + 60)")
    parser.add_argument("--overwrite", action="store_true", help="allow writing into an OUT that already has grades")
    args = parser.parse_args(argv)
    t0 = time.perf_counter()
    try:
        rows = grade(args.submissions, args.out, args.cell_timeout, args.notebook_timeout, args.overwrite)
    except GradingError as exc:
        print(f"grading failed: {exc}", file=sys.stderr)
        return 2
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
