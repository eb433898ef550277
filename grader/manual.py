"""The learner's written work, graded by a person: answer cells, rubrics, the formgrader, the re-export.

    python -m grader.manual formgrader OUT [--port 8890]   # make formgrader OUT=<graded run>
    python -m grader.manual grades OUT                     # make grades OUT=<graded run>

Some outputs of the outline are the learner's own writing (module 04's report, 08's benchmark note,
09's capstone report, 11's reading of the architecture map and a paper's trade-off). Each is an
nbgrader "manually graded answer" cell: markdown, `grade` and `solution`, with points, grade id
`<name>_answer`. In the instructor notebook (solutions/) the cell holds its rubric; the release holds
nbgrader's "YOUR ANSWER HERE".

- `make grade` scores what it can: an answer cell the learner left as released gets 0 at once (nbgrader
  sees its checksum unchanged: "not written"); a written one gets 0 *pending*: the row's
  `needs_manual_grade` is true in grades.csv and cell_grades.csv and its message names the cells. Each
  executed notebook (OUT/autograded/) carries each answer cell's rubric in a cell just below it, for the
  grader; feedback pages never show it (grader.preprocessors.RemoveRubrics).
- `make formgrader OUT=...` opens nbgrader's formgrader on the graded run: Manage Assignments lists the
  graded modules (their instructor notebooks are copied to OUT/source/), Manual Grading every submission
  with its autograded score and the answer cells waiting for a person, each with its rubric under it.
  A class graded by several workers or on Dask has one merged gradebook (OUT/gradebook.db): the same.
- `make grades OUT=...` writes grades.csv, cell_grades.csv, the feedback pages and the score plot again
  from the gradebook: the autograded points from the trusted verdicts (verdicts.csv), the answer cells'
  points and the comments from the formgrader. A score the grader typed on an autograded cell in the
  formgrader is an instructor's decision: it is applied, and the row's message says so beside the verdict.
"""

import argparse
import csv
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import nbformat

from grader.assignments import ROOT, assignment_ids, solution_notebook
from grader.preprocessors import RUBRIC_TAG, is_answer_cell

# The message segments this module writes (grades.csv's `message`); `grades` replaces them on every export.
WAITING = "waiting for hand-grading:"
BY_HAND = "graded by hand:"
NOT_WRITTEN = "not written:"
SET_BY_HAND = "set by hand in the formgrader:"
SEGMENTS = (WAITING, BY_HAND, NOT_WRITTEN, SET_BY_HAND)
RUBRIC_HEAD = "**For the grader, not the learner** (this cell is left out of the feedback page):"


class ManualGradingError(Exception):
    """What the instructor must fix before the command can run (a missing file, a wrong folder)."""


# ----------------------------------------------------------------------------- answer cells and rubrics

def answer_cells(notebook: Path) -> dict[str, tuple[float, str]]:
    """{grade id: (points, rubric)} of an instructor notebook's answer cells, in notebook order (there an
    answer cell holds its rubric)."""
    nb = nbformat.read(notebook, as_version=4)
    return {c.metadata["nbgrader"]["grade_id"]: (float(c.metadata["nbgrader"].get("points", 0)), c.source)
            for c in nb.cells if is_answer_cell(c)}


def rubric_cell(grade_id: str, rubric: str):
    cell = nbformat.v4.new_markdown_cell(f"{RUBRIC_HEAD}\n\n{rubric.strip()}")
    cell.metadata["tags"] = [RUBRIC_TAG]
    cell.metadata["deepdive"] = {"rubric_for": grade_id}
    cell.id = f"rubric-{grade_id}".replace("_", "-")[:64]
    return cell


def insert_rubrics(nb, rubrics: dict[str, tuple[float, str]]) -> int:
    """Put each answer cell's rubric in a cell right below it (in place; a cell already there is
    replaced, so running it twice changes nothing). Returns how many were inserted."""
    nb.cells = [c for c in nb.cells if RUBRIC_TAG not in c.get("metadata", {}).get("tags", [])]
    cells, count = [], 0
    for cell in nb.cells:
        cells.append(cell)
        gid = cell.get("metadata", {}).get("nbgrader", {}).get("grade_id")
        if is_answer_cell(cell) and gid in rubrics:
            cells.append(rubric_cell(gid, rubrics[gid][1]))
            count += 1
    nb.cells = cells
    return count


# ----------------------------------------------------------------------------- a cell's grade

@dataclass
class CellGrade:
    grade_id: str
    score: float
    max_score: float
    answer: bool  # a hand-graded answer cell
    state: str  # answer cells: "graded" | "waiting" | "not written"; others: "auto" | "set by hand"
    verdict: float | None = None  # autograded cells: the trusted verdicts' points

    @property
    def needs_manual_grade(self) -> bool:
        return self.state == "waiting"


def answer_grade(grade) -> CellGrade:
    """An answer cell's grade from the gradebook: the formgrader's score once a person gave one; 0 at
    once for an answer left as released (nbgrader's auto_score 0); 0 pending otherwise."""
    top, extra = float(grade.max_score), float(grade.extra_credit or 0)
    if grade.manual_score is not None:
        return CellGrade(grade.name, float(grade.manual_score) + extra, top, True, "graded")
    if grade.auto_score is None:
        return CellGrade(grade.name, 0.0, top, True, "waiting")
    return CellGrade(grade.name, float(grade.auto_score), top, True, "not written")


def auto_grade(grade, verdict: float) -> CellGrade:
    """An autograded cell: its trusted verdict, unless the grader typed another score in the formgrader."""
    top, extra = float(grade.max_score), float(grade.extra_credit or 0)
    if grade.manual_score is not None:
        return CellGrade(grade.name, float(grade.manual_score) + extra, top, False, "set by hand", verdict)
    return CellGrade(grade.name, verdict + extra, top, False, "auto", verdict)


def hand_summary(cells: list[CellGrade]) -> str:
    """The message segments for the cells a person grades or changed; '' when there are none."""
    def named(state):
        return [c for c in cells if c.state == state]

    parts = []
    if waiting := named("waiting"):
        parts.append(f"{WAITING} " + ", ".join(f"{c.grade_id} ({c.max_score:g} points)" for c in waiting)
                     + ": 0 points until a grader scores them (make formgrader, then make grades)")
    if graded := named("graded"):
        parts.append(f"{BY_HAND} " + ", ".join(f"{c.grade_id} {c.score:g}/{c.max_score:g}" for c in graded))
    if unwritten := named("not written"):
        parts.append(f"{NOT_WRITTEN} " + ", ".join(f"{c.grade_id} (0/{c.max_score:g})" for c in unwritten))
    if changed := named("set by hand"):
        parts.append(f"{SET_BY_HAND} " + ", ".join(f"{c.grade_id} {c.score:g}/{c.max_score:g} (verdict {c.verdict:g})"
                                                   for c in changed))
    return "; ".join(parts)


def without_hand_segments(message: str) -> str:
    return "; ".join(p for p in message.split("; ") if p and not p.startswith(SEGMENTS))


# ----------------------------------------------------------------------------- make grades

def _read_csv(path: Path) -> list[dict]:
    with path.open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def _require(out: Path, *names: str) -> None:
    if not out.is_dir():
        raise ManualGradingError(f"OUT={out} is not a folder: give the OUT of a finished `make grade` run")
    if (out / ".grading").exists():
        raise ManualGradingError(f"{out} holds an unfinished grading run: finish it first "
                                 "(make grade ... RESUME=1), then grade by hand")
    missing = [n for n in names if not (out / n).exists()]
    if missing:
        raise ManualGradingError(f"{out} has no {', '.join(missing)}: give the OUT folder of a finished "
                                 "`make grade` run")


def export(out: Path, log=sys.stderr) -> list[dict]:
    """grades.csv, cell_grades.csv, the feedback pages and score_distribution.png of the graded run in
    `out`, written again with the hand grades of its gradebook. Returns the new grades.csv rows."""
    from nbgrader.api import Gradebook, MissingEntry

    from grader.grade import CELL_COLUMNS, GRADE_COLUMNS, plot_distribution, write_csv

    _require(out, "grades.csv", "cell_grades.csv", "verdicts.csv", "gradebook.db")
    rows = _read_csv(out / "grades.csv")
    old_cells = _read_csv(out / "cell_grades.csv")
    verdicts: dict[tuple[str, str, str], float] = {}
    for v in _read_csv(out / "verdicts.csv"):
        key = (v["student_id"], v["assignment"], v["grade_id"])
        verdicts[key] = verdicts.get(key, 0.0) + float(v["score"])
    known = set(assignment_ids())
    cells, feedback = [], []
    with Gradebook(f"sqlite:///{out / 'gradebook.db'}") as gb:
        for row in rows:
            sid, aid = row["student_id"], row["assignment"]
            if row["status"] not in ("graded", "flagged") or aid not in known:
                cells += [c for c in old_cells if (c["student_id"], c["assignment"]) == (sid, aid)]
                continue
            try:
                sub = gb.find_submission(aid, sid)
            except MissingEntry:
                raise ManualGradingError(f"the gradebook has no submission {sid}/{aid}, which grades.csv lists: "
                                         f"is {out / 'gradebook.db'} the gradebook of this run?") from None
            graded: list[CellGrade] = []
            replaced = False
            for nb in sub.notebooks:
                for g in nb.grades:
                    if g.cell_type == "markdown":
                        graded.append(answer_grade(g))
                        continue
                    verdict = verdicts.get((sid, aid, g.name), 0.0)
                    if g.auto_score is None or abs(float(g.auto_score) - verdict) > 1e-9:
                        g.auto_score, replaced = verdict, True  # the feedback page shows the trusted points
                    graded.append(auto_grade(g, verdict))
            if replaced:
                gb.db.commit()
            row["score"] = sum(c.score for c in graded)
            row["needs_manual_grade"] = str(any(c.needs_manual_grade for c in graded))
            row["message"] = "; ".join(filter(None, [without_hand_segments(row.get("message", "")),
                                                     hand_summary(graded)]))
            cells += [{"student_id": sid, "assignment": aid, "grade_id": c.grade_id, "score": c.score,
                       "max_score": c.max_score, "needs_manual_grade": c.needs_manual_grade}
                      for c in sorted(graded, key=lambda c: c.grade_id)]
            if any(c.answer or c.state == "set by hand" for c in graded):
                feedback.append((sid, aid))
    problems = regenerate_feedback(out, feedback, log)
    for sid, aid, why in problems:
        row = next(r for r in rows if (r["student_id"], r["assignment"]) == (sid, aid))
        row["message"] = "; ".join(filter(None, [row["message"], f"the feedback page could not be written again: {why}"]))
    write_csv(out / "grades.csv", GRADE_COLUMNS, rows)
    write_csv(out / "cell_grades.csv", CELL_COLUMNS, cells)
    for c in cells:
        c["score"], c["max_score"] = float(c["score"]), float(c["max_score"])
    plot_distribution(cells, out / "score_distribution.png")
    return rows


def regenerate_feedback(out: Path, which: list[tuple[str, str]], log) -> list[tuple[str, str, str]]:
    """nbgrader's generate_feedback for each (student, assignment) from the gradebook (course config:
    without the rubric cells). Returns (student, assignment, why) for every page it could not write;
    the old page then stays."""
    from grader.nbgrader_cli import nbgrader_env
    from grader.nbgrader_server import NbgraderServer

    if not which:
        return []
    problems = []
    server = NbgraderServer(nbgrader_env())
    try:
        with tempfile.TemporaryDirectory(prefix="deepdive-feedback-") as tmp:
            logfile = Path(tmp) / "feedback.log"
            for sid, aid in which:
                if not (out / "autograded" / sid / aid / f"{aid}.ipynb").exists():
                    problems.append((sid, aid, f"autograded/{sid}/{aid}/{aid}.ipynb is missing"))
                    continue
                rc = server.run("generate_feedback", aid, sid, root=out, db=out / "gradebook.db", log=logfile,
                                timeout=300)
                (out / "feedback" / sid / aid / "timestamp.txt").unlink(missing_ok=True)
                if rc != 0:
                    tail = [ln for ln in logfile.read_text(errors="replace").splitlines() if "ERROR" in ln][-2:]
                    problems.append((sid, aid, f"nbgrader generate_feedback exited {rc}: {' | '.join(tail)}"[:300]))
            if logfile.exists():
                log.write(logfile.read_text(errors="replace")[-4000:] if problems else "")
    finally:
        server.close()
    return problems


# ----------------------------------------------------------------------------- make formgrader

FORMGRADER_CONFIG = '''\
# Written by `make formgrader` (grader/manual.py): nbgrader's formgrader on this graded run.
# After grading by hand, `make grades OUT=<this folder>` writes grades.csv, cell_grades.csv and the
# feedback pages again from the gradebook.
import sys

sys.path.insert(0, {root!r})  # grader.preprocessors, for the feedback pages
c = get_config()  # noqa: F821
load_subconfig({config!r})  # noqa: F821  the course's settings (feedback preprocessors and the rest)
c.CourseDirectory.root = {out!r}
c.CourseDirectory.db_url = {db!r}
c.CourseDirectory.source_directory = "source"  # the instructor notebooks of the graded modules
c.CourseDirectory.release_directory = "release"
c.CourseDirectory.submitted_directory = "autograded"  # what was graded: Manage Submissions lists it
c.CourseDirectory.autograded_directory = "autograded"
c.CourseDirectory.feedback_directory = "feedback"
'''


def prepare_formgrader(out: Path) -> list[str]:
    """Make the graded run `out` a course folder nbgrader's formgrader opens: its config, and the
    instructor notebooks of the graded modules under source/ (Manage Assignments lists those). The
    rubric cells of the executed notebooks are (re)inserted from the instructor notebooks. Returns the
    graded modules."""
    from nbgrader.api import Gradebook

    _require(out, "gradebook.db", "autograded", "grades.csv")
    out = out.resolve()
    with Gradebook(f"sqlite:///{out / 'gradebook.db'}") as gb:
        graded = sorted(a.name for a in gb.assignments if a.name in set(assignment_ids()))
    if not graded:
        raise ManualGradingError(f"the gradebook in {out} lists no course module: was anything graded?")
    for aid in graded:
        dest = out / "source" / aid / f"{aid}.ipynb"
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(solution_notebook(aid), dest)
        rubrics = answer_cells(solution_notebook(aid))
        for executed in sorted((out / "autograded").glob(f"*/{aid}/{aid}.ipynb")) if rubrics else []:
            nb = nbformat.read(executed, as_version=4)
            before = [c.source for c in nb.cells]
            insert_rubrics(nb, rubrics)
            if [c.source for c in nb.cells] != before:
                executed.chmod(0o644)
                nbformat.write(nb, executed)
    (out / "nbgrader_config.py").write_text(FORMGRADER_CONFIG.format(
        root=str(ROOT), config=str(ROOT / "grader" / "nbgrader_config.py"), out=str(out), db=f"sqlite:///{out / 'gradebook.db'}"), encoding="utf-8")
    return graded


def _free_port(preferred: int) -> int:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", preferred))
            return preferred
        except OSError:
            s.bind(("127.0.0.1", 0))
            return s.getsockname()[1]


def formgrader_command(out: Path, port: int, extra: list[str] | None = None) -> list[str]:
    """The Jupyter server that serves the formgrader on `out` (run it with cwd=out: nbgrader reads the
    course's config from there)."""
    return [sys.executable, "-m", "jupyter_server", f"--ServerApp.root_dir={out.resolve()}",
            "--ServerApp.default_url=/formgrader", f"--ServerApp.port={port}", "--ServerApp.port_retries=0",
            *(["--ServerApp.allow_root=True"] if hasattr(os, "geteuid") and os.geteuid() == 0 else []),
            *(extra or [])]


def formgrader(out: Path, port: int, no_browser: bool) -> int:
    graded = prepare_formgrader(out)
    port = _free_port(port)
    print(f"formgrader on {out}: {len(graded)} graded module(s) ({', '.join(graded)}).\n"
          f"Open the URL below (it ends in /formgrader): 'Manual Grading' lists every submission; an answer\n"
          f"cell's rubric is the cell under it. Stop with Ctrl-C, then run: make grades OUT={out}", flush=True)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    cmd = formgrader_command(out, port, ["--no-browser"] if no_browser else [])
    try:
        return subprocess.call(cmd, cwd=out.resolve(), env=env)
    except KeyboardInterrupt:
        return 0


# ----------------------------------------------------------------------------- command line

def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    fg = sub.add_parser("formgrader", help="open nbgrader's formgrader on a graded run")
    fg.add_argument("out", type=Path, help="the OUT folder of a finished `make grade` run")
    fg.add_argument("--port", type=int, default=8890, help="port of the Jupyter server (default 8890, or a free one)")
    fg.add_argument("--no-browser", action="store_true", help="print the URL only")
    gr = sub.add_parser("grades", help="write grades.csv, cell_grades.csv and the feedback pages again, with "
                                       "the hand grades")
    gr.add_argument("out", type=Path, help="the OUT folder of a finished `make grade` run")
    args = parser.parse_args(argv)
    try:
        if args.command == "formgrader":
            return formgrader(args.out, args.port, args.no_browser)
        rows = export(args.out)
    except ManualGradingError as exc:
        print(f"{args.command}: {exc}", file=sys.stderr)
        return 2
    waiting = [r for r in rows if r.get("needs_manual_grade") == "True"]
    print(f"wrote {args.out / 'grades.csv'}, {args.out / 'cell_grades.csv'} and the feedback pages: {len(rows)} row(s), "
          f"{len(waiting)} still waiting for hand-grading"
          + (": " + ", ".join(f"{r['student_id']}/{r['assignment']}" for r in waiting[:10]) if waiting else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
