"""The learner's written work (issue 30): answer cells with rubrics in the instructor notebooks, nothing of
the rubric in the release, the rubric under each answer for the grader and never on a feedback page, and the
grade message's hand-graded part. The grading end to end is in tests/test_grading.py
(test_hand_grades_reach_every_output) and the formgrader in a browser in tests/test_browser.py."""

import copy
import re
import subprocess
import sys

import nbformat
import pytest

from grader.assignments import ROOT, assignment_ids, course_notebook, solution_notebook
from grader.manual import (
    BY_HAND,
    NOT_WRITTEN,
    RUBRIC_HEAD,
    WAITING,
    CellGrade,
    answer_cells,
    hand_summary,
    insert_rubrics,
    is_answer_cell,
    without_hand_segments,
)
from grader.preprocessors import RUBRIC_TAG, RemoveRubrics
from grader.submission import repair

# The outline's written outputs (issue 30) and the points of each answer cell.
WRITTEN = {
    "04_positional_encoding": {"positions_report_answer": 3},
    "08_training_recipes": {"benchmark_note_answer": 4},
    "09_mini_gpt_capstone": {"capstone_report_answer": 4, "ablation_report_answer": 3},
    "11_finetune_gpt2_t5": {"architecture_map_answer": 2, "paper_summary_answer": 3},
}


def _gid(cell):
    return cell.get("metadata", {}).get("nbgrader", {}).get("grade_id")


def test_the_outlines_written_outputs_are_answer_cells_with_their_points():
    found = {aid: {gid: points for gid, (points, _) in answer_cells(solution_notebook(aid)).items()}
             for aid in assignment_ids()}
    assert {aid: cells for aid, cells in found.items() if cells} == WRITTEN


@pytest.mark.parametrize("aid", sorted(WRITTEN))
def test_each_answer_cell_has_a_rubric_a_prompt_and_a_table_before_it(aid):
    """The instructor's answer cell is its rubric, in the shape grader/manual.py shows the grader: a head
    naming the cell and its points, one point per full-marks criterion, and what loses points. Above it: a
    prompt that says the cell is graded by hand and for how many points, and the code that prints the
    learner's numbers."""
    nb = nbformat.read(solution_notebook(aid), as_version=4)
    for i, cell in enumerate(nb.cells):
        if not is_answer_cell(cell):
            continue
        gid, points = _gid(cell), cell.metadata["nbgrader"]["points"]
        assert cell.metadata["nbgrader"]["locked"] is False and not cell.metadata["nbgrader"].get("task")
        assert cell.source.startswith(f"**Rubric: `{gid}` ({points:g} points).**"), cell.source[:120]
        criteria = cell.source.split("A full-marks answer (one point each):")[1].split("Loses points:")[0]
        bullets = [ln for ln in criteria.splitlines() if ln.startswith("- ")]
        assert len(bullets) == points, f"{gid}: {len(bullets)} one-point criteria for {points} points"
        assert re.search(r"Loses points:\n(- .+\n?)+", cell.source), f"{gid}: no 'Loses points' list"
        prompt = nb.cells[i - 1]
        assert prompt.cell_type == "markdown" and "nbgrader" not in prompt.metadata
        assert f"graded by hand ({points:g} points)" in prompt.source, f"{gid}: the prompt does not say so"
        assert any(c.cell_type == "code" for c in nb.cells[:i - 1]), f"{gid}: no measured numbers above it"


@pytest.mark.parametrize("aid", sorted(WRITTEN))
def test_the_release_holds_an_empty_answer_and_no_rubric(aid):
    release = nbformat.read(course_notebook(aid), as_version=4)
    answers = {_gid(c): c for c in release.cells if is_answer_cell(c)}
    assert set(answers) == set(WRITTEN[aid])
    assert all(c.source == "YOUR ANSWER HERE" for c in answers.values())
    text = course_notebook(aid).read_text()
    for gid, (_, rubric) in answer_cells(solution_notebook(aid)).items():
        leaked = [ln for ln in rubric.splitlines() if len(ln.strip()) >= 24 and ln.strip() in text]
        assert not leaked, f"{aid}: the release contains lines of {gid}'s rubric: {leaked[:2]}"


def _executed_with_answer(aid: str, text: str):
    nb = nbformat.read(course_notebook(aid), as_version=4)
    for cell in nb.cells:
        if is_answer_cell(cell):
            cell.source = text
    return nb


def test_the_rubric_goes_under_each_answer_once_and_never_onto_a_feedback_page():
    aid = "11_finetune_gpt2_t5"
    rubrics = answer_cells(solution_notebook(aid))
    nb = _executed_with_answer(aid, "my answer")
    assert insert_rubrics(nb, rubrics) == len(rubrics)
    once = [c.source for c in nb.cells]
    insert_rubrics(nb, rubrics)
    assert [c.source for c in nb.cells] == once, "inserting the rubrics twice changed the notebook"
    for i, cell in enumerate(nb.cells):
        if is_answer_cell(cell):
            below = nb.cells[i + 1]
            assert RUBRIC_TAG in below.metadata["tags"] and below.source.startswith(RUBRIC_HEAD)
            assert rubrics[_gid(cell)][1].strip() in below.source
    kept, _ = RemoveRubrics().preprocess(copy.deepcopy(nb), {})
    assert not any(RUBRIC_TAG in c.metadata.get("tags", []) for c in kept.cells)
    assert len(kept.cells) == len(nb.cells) - len(rubrics)


def test_a_deleted_answer_cell_is_put_back_empty_and_said():
    aid = "04_positional_encoding"
    release = nbformat.read(course_notebook(aid), as_version=4)
    nb = copy.deepcopy(release)
    nb.cells = [c for c in nb.cells if _gid(c) != "positions_report_answer"]
    notes = repair(nb, release)
    [cell] = [c for c in nb.cells if _gid(c) == "positions_report_answer"]
    assert cell.cell_type == "markdown" and cell.source == "YOUR ANSWER HERE"
    assert any("answer cell(s) missing" in n and "positions_report_answer" in n for n in notes), notes


def test_the_hand_graded_part_of_a_message_is_replaced_not_repeated():
    cells = [CellGrade("a_answer", 0.0, 3.0, True, "waiting"), CellGrade("b_answer", 0.0, 2.0, True, "not written"),
             CellGrade("c_hidden", 5.0, 5.0, False, "auto", 5.0)]
    first = "; ".join(["failed x_hidden: AssertionError: wrong", hand_summary(cells)])
    assert WAITING in first and NOT_WRITTEN in first and "a_answer (3 points)" in first
    cells[0] = CellGrade("a_answer", 2.5, 3.0, True, "graded")
    again = "; ".join(filter(None, [without_hand_segments(first), hand_summary(cells)]))
    assert again == f"failed x_hidden: AssertionError: wrong; {BY_HAND} a_answer 2.5/3; {NOT_WRITTEN} b_answer (0/2)"
    assert hand_summary([CellGrade("c_hidden", 5.0, 5.0, False, "auto", 5.0)]) == ""


@pytest.mark.parametrize("command", ["formgrader", "grades"])
def test_the_commands_say_what_to_do_without_a_graded_run(tmp_path, command):
    missing = subprocess.run([sys.executable, "-m", "grader.manual", command, str(tmp_path / "nowhere")], cwd=ROOT,
                             capture_output=True, text=True)
    assert missing.returncode == 2 and "is not a folder: give the OUT of a finished `make grade` run" in missing.stderr
    (tmp_path / "grades.csv").write_text("student_id\n")
    empty = subprocess.run([sys.executable, "-m", "grader.manual", command, str(tmp_path)], cwd=ROOT,
                           capture_output=True, text=True)
    assert empty.returncode == 2 and "give the OUT folder of a finished `make grade` run" in empty.stderr, empty.stderr

