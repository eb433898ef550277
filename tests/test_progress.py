"""`make progress` (deepdive/progress.py): the learner's table of exercises across the modules.

Fast tests read notebooks and judge hand-made outputs; the slow one is a learner who solved module 04
(its four exercises and its written report) and half of module 02, graded through the real grader from
a full checkout. (Module 04 rather than the issue's module 01: the same four exercises, and a written
answer, in a quarter of 01's seconds; each run of this learner executes it.)
(The student zip's visible-only run is in tests/test_student_zip.py, on a bare virtualenv.)
"""

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from deepdive import progress
from grader.assignments import COURSE, ROOT, solution_notebook

SOLVED = "04_positional_encoding"  # every exercise answered, and the report written
REPORT = "positions_report_answer"  # module 04's hand-graded answer cell
REPORT_TEXT = ("Within the training length every scheme with positions is near 1.0. Beyond it the learned rows "
               "were never trained and fall to chance; RoPE degrades least.")
SOLVED_02 = ["scaled_dot_product_attention", "causal_mask"]
BUG_02 = "padding_mask"  # `<=` for `<`: one position too many is "real" in every row


def _gid(cell) -> str:
    return cell.metadata.get("nbgrader", {}).get("grade_id", "")


def learner_course(dest: Path, source: Path = COURSE) -> Path:
    """A copy of `source` (a course/ folder) in which module 04 is solved (its exercises and the report) and
    module 02 half: two exercises right, one with a real bug, one untouched. Returns the copy."""
    course = dest / "course"
    shutil.copytree(source, course, ignore=shutil.ignore_patterns(".ipynb_checkpoints", "minigpt.py"))
    for aid in [SOLVED, "02_attention"]:
        answers = {_gid(c): c.source for c in nbformat.read(solution_notebook(aid), as_version=4).cells}
        path = course / aid / f"{aid}.ipynb"
        nb = nbformat.read(path, as_version=4)
        for cell in nb.cells:
            if not cell.metadata.get("nbgrader", {}).get("solution"):
                continue
            name = _gid(cell).removesuffix("_solution")
            if name == REPORT:  # the instructor notebook holds the rubric here: the learner writes their own
                cell.source = REPORT_TEXT
            elif aid == SOLVED or name in SOLVED_02:
                cell.source = answers[_gid(cell)]
            elif name == BUG_02:
                cell.source = answers[_gid(cell)].replace("positions[None, :] < lengths", "positions[None, :] <= lengths")
                assert cell.source != answers[_gid(cell)], "the module-02 reference changed: update the planted bug"
        nbformat.write(nb, path)
    return course


def digest(folder: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            h.update(p.relative_to(folder).as_posix().encode() + p.read_bytes())
    return h.hexdigest()


# ----------------------------------------------------------------------------- reading and judging (fast)

def test_the_release_counts_as_not_started_and_an_edited_cell_as_attempted():
    nb = nbformat.read(COURSE / "02_attention" / "02_attention.ipynb", as_version=4)
    found = progress.exercises(nb)
    assert [e.name for e in found] == ["scaled_dot_product_attention", "causal_mask", "padding_mask",
                                       "online_softmax_attention"]
    assert not any(e.attempted for e in found), "an untouched release notebook must read as not started"
    cell = next(c for c in nb.cells if _gid(c) == "causal_mask_solution")
    cell.source = cell.source.replace("raise NotImplementedError()", "return None")
    assert [e.attempted for e in progress.exercises(nb)] == [False, True, False, False]


def test_every_course_notebook_has_exercises_with_visible_tests():
    for path in progress.find_notebooks(COURSE):
        nb = nbformat.read(path, as_version=4)
        found = progress.exercises(nb)
        assert found, f"{path.name}: no exercise cells found"
        for e in found:
            if e.kind == "exercise":
                assert progress._cell(nb, f"{e.name}_visible") is not None, f"{path.name}: {e.name} has no visible test"


def test_a_written_answer_reads_as_written_and_a_released_one_as_not_written():
    """The reports of modules 04, 08, 09 and 11 are answer cells a person grades: no visible test; the table
    says whether the learner wrote one (the cell differs from the release)."""
    answers = {path.parent.name: [e for e in progress.exercises(nbformat.read(path, as_version=4)) if e.kind == "answer"]
               for path in progress.find_notebooks(COURSE)}
    assert {m for m, found in answers.items() if found} == {"04_positional_encoding", "08_training_recipes",
                                                            "09_mini_gpt_capstone", "11_finetune_gpt2_t5"}
    nb = nbformat.read(COURSE / "04_positional_encoding" / "04_positional_encoding.ipynb", as_version=4)
    [found] = [e for e in progress.exercises(nb) if e.kind == "answer"]
    assert (found.name, found.status, found.attempted) == ("positions_report_answer", progress.NOT_WRITTEN, False)
    cell = next(c for c in nb.cells if _gid(c) == "positions_report_answer")
    cell.source = "Within the training length all three schemes reach ..."
    [found] = [e for e in progress.exercises(nb) if e.kind == "answer"]
    assert (found.status, found.attempted) == (progress.WRITTEN, True)
    assert found.status == "written: to be graded by hand"
    module = progress.Module("04_positional_encoding", "x", started=True, exercises=progress.exercises(nb))
    assert module.n_exercises == 4, "the module's count of exercises leaves the written answer out"
    report = progress.text_report([module], graded=False)
    assert "positions_report_answer" in report and "written: to be graded by hand" in report, report


def _executed(*outputs):
    """A notebook of one exercise ('f'): the solution cell's and the visible cell's outputs."""
    nb = nbformat.v4.new_notebook()
    for gid, outs in zip(["f_solution", "f_visible"], outputs):
        cell = nbformat.v4.new_code_cell("pass", execution_count=None if outs is None else 1, outputs=outs or [])
        cell.metadata["nbgrader"] = {"grade_id": gid, "solution": gid.endswith("solution")}
        nb.cells.append(cell)
    return nb


def _judged(attempted: bool, *outputs) -> progress.Exercise:
    ex = progress.Exercise(name="f", attempted=attempted)
    progress.judge(_executed(*outputs), [ex])
    return ex


def test_judge_reads_passed_failed_not_attempted_and_not_run():
    printed = [nbformat.v4.new_output("stream", name="stdout", text="f: visible tests passed; hidden ...\n")]
    error = [nbformat.v4.new_output("error", ename="AssertionError", evalue="f(2) should be\n[1, 0]\ngot\n[1, 1]",
                                    traceback=[])]
    assert _judged(True, [], printed).status == "passed"
    failed = _judged(True, [], error)
    assert (failed.status, failed.message) == ("failed", "AssertionError: f(2) should be (...)")
    assert "got\n[1, 1]" in failed.detail, "the whole message is kept for the page"
    own = _judged(True, [nbformat.v4.new_output("error", ename="SyntaxError", evalue="invalid syntax", traceback=[])],
                  error)
    assert own.message == "your cell raised SyntaxError: invalid syntax", "the learner's own cell's error comes first"
    assert _judged(False, [], error).status == "not attempted"
    assert _judged(True, [], None).status == "not run"
    silent = _judged(True, [], [])
    assert silent.status == "failed" and "no verdict" in silent.message


def test_cells_outside_the_exercises_that_raised_are_noted():
    nb = _executed([], [])
    nb.cells.insert(0, nbformat.v4.new_code_cell("plot()", execution_count=1, outputs=[nbformat.v4.new_output(
        "error", ename="FileNotFoundError", evalue="no data/build/sentiment: run make data\nmore", traceback=[])]))
    assert progress.other_errors(nb) == "1 other cell(s) raised, first cell 1: FileNotFoundError: no data/build/sentiment: run make data"
    assert progress.other_errors(_executed([], [])) == ""


def test_unreadable_and_metadata_less_notebooks_are_reported_not_fatal(tmp_path):
    course = tmp_path / "course"
    (course / "01_rnn_bottleneck").mkdir(parents=True)
    (course / "01_rnn_bottleneck" / "01_rnn_bottleneck.ipynb").write_text("{ not json")
    (course / "02_attention").mkdir()
    nbformat.write(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("x = 1")]),
                   course / "02_attention" / "02_attention.ipynb")
    modules, note = progress.collect(course, None, 60, None, echo=lambda s: None)
    assert modules[0].note.startswith("unreadable"), modules[0].note
    assert "nbgrader metadata is missing" in modules[1].note
    assert note == "" and not any(m.started for m in modules), "nothing runs when nothing was attempted"


def test_a_missing_course_folder_says_what_to_do(tmp_path):
    done = subprocess.run([sys.executable, "-m", "deepdive.progress", "--course", str(tmp_path / "nope")],
                          capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 2 and "pass --course DIR" in done.stderr, done.stderr


# ----------------------------------------------------------------------------- the learner (slow)

@pytest.mark.slow
def test_a_learner_who_solved_04_and_half_of_02_gets_the_graders_verdicts(tmp_path):
    course = learner_course(tmp_path)
    before = digest(course)
    done = subprocess.run([sys.executable, "-m", "deepdive.progress", "--course", str(course)],
                          capture_output=True, text=True, cwd=ROOT, timeout=600)
    print(done.stdout)
    assert done.returncode == 0, done.stderr[-3000:]
    assert digest(course) == before, "make progress must never modify the learner's notebooks (or their folders)"
    report = json.loads((tmp_path / "progress" / "progress.json").read_text())
    assert report["graded"], "a full checkout grades the learner's notebooks"
    modules = {m["module"]: m for m in report["modules"]}
    m04, m02 = modules[SOLVED], modules["02_attention"]
    code = [e for e in m04["exercises"] if e["kind"] == "exercise"]
    [report_row] = [e for e in m04["exercises"] if e["kind"] == "answer"]
    assert [e["status"] for e in code] == ["passed"] * 4
    assert all(e["score"] == e["max_score"] > 0 for e in code), "the reference solutions of module 04 get full marks"
    assert report_row["status"] == progress.WRITTEN and report_row["score"] is None, report_row
    assert m04["score"] == sum(e["max_score"] for e in code) == m04["max_score"] - report_row["max_score"], (
        "module 04's score: every autograded point, the report's points waiting for a person")
    status = {e["name"]: e for e in m02["exercises"]}
    assert [status[n]["status"] for n in SOLVED_02] == ["passed", "passed"]
    assert status[BUG_02]["status"] == "failed" and "padding_mask([2, 4], 5) should be" in status[BUG_02]["message"]
    assert status["online_softmax_attention"]["status"] == "not attempted"
    assert [status[n]["score"] == status[n]["max_score"] for n in SOLVED_02] == [True, True]
    assert status[BUG_02]["score"] == 0 and status["online_softmax_attention"]["score"] == 0
    assert m02["score"] == sum(status[n]["max_score"] for n in SOLVED_02) < m02["max_score"]
    for m in (m04, m02):
        assert Path(m["feedback"]).is_file(), f"{m['module']}: no feedback page at {m['feedback']}"
    assert not any(m["started"] for name, m in modules.items() if name not in (m04["module"], m02["module"]))
    for words in ["padding_mask([2, 4], 5) should be (...)", "not attempted", "not started", "by hand / 3",
                  "feedback/learner/02_attention/02_attention.html"]:
        assert words in done.stdout, f"the printed table lacks {words!r}"
    page = (tmp_path / "progress" / "progress.html").read_text()
    assert "online_softmax_attention" in page and "02_attention.html" in page


def test_from_a_notebook_cell_the_report_shows_as_a_page(tmp_path, monkeypatch):
    import IPython.display

    shown = []
    monkeypatch.setattr(IPython.display, "display", shown.append)
    course = tmp_path / "course"
    shutil.copytree(COURSE / "03_multi_head_attention", course / "03_multi_head_attention")
    progress.show_progress("--course", str(course), "--out", str(tmp_path / "report"))
    assert len(shown) == 1 and isinstance(shown[0], IPython.display.HTML)
    assert "03_multi_head_attention" in shown[0].data and "not started" in shown[0].data


def _kernels_of(pid: int) -> list[int]:
    """Pids of ipykernel processes whose parent is `pid`."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            stat = (proc / "stat").read_text()
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid and b"ipykernel" in (proc / "cmdline").read_bytes():
                found.append(int(proc.name))
        except (OSError, ValueError, IndexError):
            pass
    return found


def test_running_a_notebook_leaves_no_kernel_behind(tmp_path):
    """One kernel per notebook, shut down when it is done: eleven kernels of 0.4-0.6 GB each alive at
    once is what a client given its own kernel manager leaves (nbclient shuts down only kernels it made)."""
    folder = tmp_path / "01_x"
    folder.mkdir()
    nbformat.write(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("import os; print(os.getcwd())")]),
                   folder / "01_x.ipynb")
    executed, note = progress.run_visible(folder / "01_x.ipynb", cell_timeout=60)
    assert note == "" and "deepdive-progress-" in executed.cells[0].outputs[0].text, "it runs in a private copy"
    assert not _kernels_of(os.getpid()), "the notebook's kernel is still running after run_visible returned"


def _tiny_course(root: Path) -> Path:
    """A course of one module, 01_tiny, whose one exercise `f` is answered (its cell differs from the
    checksum the 'release' recorded) and whose visible test passes."""
    from nbgrader.utils import compute_checksum

    cells = [nbformat.v4.new_code_cell("def f():\n    raise NotImplementedError()"),
             nbformat.v4.new_code_cell("assert f() == 1\nprint('f: visible tests passed')")]
    for cell, gid in zip(cells, ["f_solution", "f_visible"]):
        cell.metadata["nbgrader"] = {"grade_id": gid, "solution": gid == "f_solution", "grade": False,
                                     "locked": gid == "f_visible", "schema_version": 3}
        cell.metadata["nbgrader"]["checksum"] = compute_checksum(cell)
    cells[0].source = "def f():\n    return 1"
    folder = root / "course" / "01_tiny"
    folder.mkdir(parents=True)
    nbformat.write(nbformat.v4.new_notebook(cells=cells), folder / "01_tiny.ipynb")
    return root / "course"


def test_when_the_grader_fails_the_visible_tests_still_run(tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("gradebook locked\nmore")

    monkeypatch.setattr(progress, "grade_modules", broken)
    said = []
    modules, note = progress.collect(_tiny_course(tmp_path), tmp_path / "graded", 60, None, echo=said.append)
    assert note == "the grader failed (RuntimeError: gradebook locked); visible tests only", note
    assert [(e.name, e.status) for e in modules[0].exercises] == [("f", "passed")]
    assert modules[0].score is None and any("running the visible tests only" in s for s in said)
