"""A submission's score from the trusted verdicts, not from what its kernel reported.

After nbgrader has executed a submission (its kernel is gone by then), `score_submission`:

1. judges every hidden test cell in this process from the records the kernel left
   (grader/hidden.py, grader/trusted.py);
2. writes those scores into the gradebook, replacing nbgrader's "did the cell raise" scores;
3. rewrites each hidden cell of the executed notebook: its source becomes the cell's description
   (what is checked, in words; no code, no path under grader/) and its output the verdict, one
   line per check with its points and message, as an error when a check failed;
4. returns one verdict row per check, and notes where the kernel's own outcome disagreed with
   the verdict (a cell that passed there but failed here is what tampering looks like).

Visible test cells carry no points: they run in the learner's kernel and are feedback only.
"""

from dataclasses import dataclass
from pathlib import Path

import nbformat

from grader.hidden import CellVerdict, HiddenTest, judge_cell
from grader.manual import insert_rubrics

CODE_NOTE = "# The code of this hidden test stays with the grader; its verdict was judged outside your notebook."


@dataclass
class VerdictRow:
    student_id: str
    assignment: str
    grade_id: str
    check: str
    points: float
    score: float
    verdict: str  # "passed" | "failed"
    kernel: str  # what the learner's kernel showed for the cell: "passed", "failed" or "not run"
    message: str


def _grade_id(cell):
    return cell.metadata.get("nbgrader", {}).get("grade_id")


def _kernel_outcome(cell) -> str:
    if cell is None or cell.get("execution_count") is None and not cell.get("outputs"):
        return "not run"
    return "failed" if any(o.output_type == "error" for o in cell.outputs) else "passed"


def _fmt(points: float) -> str:
    return f"{points:g}"


def verdict_text(cell: CellVerdict) -> list[str]:
    lines = [f"Hidden test {cell.grade_id}: {_fmt(cell.score)} / {_fmt(cell.points)} points "
             "(judged by the grader, outside your notebook)"]
    for v in cell.verdicts:
        head = f"  {'passed' if v.passed else 'FAILED'}  {v.check} ({_fmt(v.points)} points)"
        if v.passed:
            lines.append(head)
        else:
            body = v.message.strip().splitlines() or [""]
            lines.append(f"{head}: {body[0]}")
            lines += [f"      {line}" for line in body[1:]]
    return lines


def verdict_outputs(cell: CellVerdict) -> list:
    lines = verdict_text(cell)
    if cell.passed:
        return [nbformat.v4.new_output("stream", name="stdout", text="\n".join(lines) + "\n")]
    failed = [v for v in cell.verdicts if not v.passed]
    first = failed[0].message.strip().splitlines()[0] if failed[0].message.strip() else "failed"
    return [nbformat.v4.new_output("error", ename="HiddenTestFailed", evalue=f"{failed[0].check}: {first}",
                                   traceback=lines)]


def score_submission(student_id: str, assignment: str, notebook: Path, tests: list[HiddenTest],
                     record_dir: Path, db: Path, rubrics: dict | None = None) -> tuple[list[VerdictRow], list[str]]:
    """Judge, store and show the hidden tests of one executed submission (see the module docstring),
    and put each hand-graded answer cell's rubric under it for the grader (`rubrics`: {grade id:
    (points, rubric)}, grader/manual.py; feedback pages leave them out). Returns (one row per check,
    notes for the instructor)."""
    from nbgrader.api import Gradebook, MissingEntry

    judged = [(test, judge_cell(test, record_dir)) for test in tests]  # never raises

    with Gradebook(f"sqlite:///{db}") as gb:  # the scores first: nothing below can leave the kernel's in place
        for test, verdict in judged:
            try:
                grade = gb.find_grade(test.grade_id, assignment, assignment, student_id)
            except MissingEntry as exc:
                raise RuntimeError(f"no gradebook entry for {test.grade_id} of {student_id}/{assignment}") from exc
            grade.auto_score = verdict.score
            grade.manual_score = None
            grade.needs_manual_grade = False
        gb.db.commit()

    nb = nbformat.read(notebook, as_version=4)
    cells = {_grade_id(c): c for c in nb.cells if _grade_id(c)}
    rows, notes = [], []
    for test, verdict in judged:
        cell = cells.get(test.grade_id)
        kernel = _kernel_outcome(cell)
        if kernel == "passed" and not verdict.passed:
            notes.append(f"{test.grade_id} passed in the submission's own kernel but failed the grader's verdict "
                         f"({_fmt(verdict.score)}/{_fmt(verdict.points)}): its code may have tampered with the tests")
        elif kernel == "failed" and verdict.passed:
            notes.append(f"{test.grade_id} failed in the submission's own kernel but passed the grader's verdict")
        for v in verdict.verdicts:
            rows.append(VerdictRow(student_id, assignment, test.grade_id, v.check, v.points, v.score,
                                   "passed" if v.passed else "failed", kernel, v.message))
        if cell is not None:
            cell.source = "\n".join(filter(None, [test.description, CODE_NOTE]))
            cell.outputs = verdict_outputs(verdict)
    if rubrics:
        insert_rubrics(nb, rubrics)
    notebook.chmod(0o644)  # nbgrader leaves executed notebooks read-only
    nbformat.write(nb, notebook)
    return rows, notes
