"""The student release: regenerated from solutions/, free of solutions and hidden tests, and
the zips carry what each audience needs."""

import functools
import os
import re
import subprocess
import zipfile
from pathlib import Path

import nbformat
import pytest

from grader import build
from grader.assignments import COURSE, ROOT, assignment_ids, solution_notebook
from grader.manual import is_answer_cell
from grader.reference import is_carried_cell

MARKERS = re.compile(r"BEGIN SOLUTION|END SOLUTION|BEGIN HIDDEN TESTS|END HIDDEN TESTS|\*\*Rubric: `")


@functools.cache
def solution_lines(aid: str) -> frozenset[str]:
    """Distinctive lines of the reference: inside solution regions and hidden-test regions. A carried cell's
    region is an earlier module's reference code (module 09's copy of 07's), so its lines are that module's,
    allowed in a later module's release like any given code (tests/test_capstone.py keeps the two copies equal)."""
    nb = nbformat.read(solution_notebook(aid), as_version=4)
    lines = set()
    for cell in nb.cells:
        if is_carried_cell(cell):
            continue
        for begin, end in (("### BEGIN SOLUTION", "### END SOLUTION"), ("### BEGIN HIDDEN TESTS", "### END HIDDEN TESTS")):
            for block in re.findall(re.escape(begin) + r"(.*?)" + re.escape(end), cell.source, re.S):
                for line in block.splitlines():
                    line = line.strip()
                    # short or generic lines ("return out", "pass") say nothing about the answer
                    if len(line) >= 24 and not line.startswith("#"):
                        lines.add(line)
        if is_answer_cell(cell):  # a hand-graded answer cell: in the instructor notebook, its rubric
            lines.update(line.strip() for line in cell.source.splitlines() if len(line.strip()) >= 24)
    return frozenset(lines)


def all_solution_lines() -> set[str]:
    return set().union(*(solution_lines(aid) for aid in assignment_ids()))


def secret_lines_for(relpath: str) -> set[str]:
    """The solution lines a released file must not contain: a module's notebook (course/NN_topic/...) may hold
    the answers of *earlier* modules as given code (grader/README.md: module 09 is given module 08's schedule;
    its carried cell holds module 07's GPT, which the release leaves to the learner's `%load`), never its own or a
    later module's; every other file none at all."""
    parts = Path(relpath).parts
    if len(parts) >= 2 and parts[0] == "course" and parts[1] in assignment_ids():
        return set().union(*(solution_lines(aid) for aid in assignment_ids() if aid >= parts[1]))
    return all_solution_lines()


@pytest.fixture(scope="module")
def regenerated(tmp_path_factory):
    dest = tmp_path_factory.mktemp("course")
    build.generate_release(dest)
    return dest


@pytest.fixture(scope="module")
def zips(tmp_path_factory):
    return build.build_release(tmp_path_factory.mktemp("dist"))


def test_every_assignment_has_a_student_notebook():
    assert assignment_ids(), "no assignments found in solutions/"
    for aid in assignment_ids():
        assert (COURSE / aid / f"{aid}.ipynb").exists(), f"course/{aid} missing: run `make student`"


@pytest.mark.skipif(os.environ.get("CI") == "true",
                    reason="CI: `make` has just regenerated course/ with the same code (comparing it with a second "
                           "generation would be comparing it with itself); test_committed_course_is_up_to_date compares "
                           "it with the commit")
def test_course_is_exactly_what_make_student_generates(regenerated):
    for aid in assignment_ids():
        fresh = sorted(p.relative_to(regenerated / aid) for p in (regenerated / aid).rglob("*") if p.is_file())
        committed = sorted(p.relative_to(COURSE / aid) for p in (COURSE / aid).rglob("*") if p.is_file())
        assert fresh == committed, f"course/{aid} has other files than solutions/ generates: run `make student`"
        for rel in fresh:
            assert (regenerated / aid / rel).read_bytes() == (COURSE / aid / rel).read_bytes(), (
                f"course/{aid}/{rel} differs from what solutions/ generates: run `make student` and commit"
            )


@pytest.mark.skipif(os.environ.get("CI") != "true", reason="CI only: `make` has just regenerated course/")
def test_committed_course_is_up_to_date():
    """In CI `make` regenerates course/ before the tests, and rebuilds a checkpoint of data/models/ whose build
    inputs changed, so drift in either shows up as an uncommitted change."""
    status = subprocess.run(["git", "status", "--porcelain", "--", "course", "data/models"], cwd=ROOT,
                            capture_output=True, text=True)
    assert status.returncode == 0 and status.stdout == "", (
        f"course/ or data/models/ is stale in the commit (`make` changed them):\n{status.stdout}")


def test_course_has_no_solution_code_and_no_hidden_tests():
    assert all_solution_lines(), "found no solution lines to look for"
    for path in COURSE.rglob("*"):
        if path.is_file():
            text = path.read_text(errors="replace")
            assert not MARKERS.search(text), f"{path} contains a solution or hidden-test marker"
            leaked = [line for line in secret_lines_for(str(path.relative_to(ROOT))) if line in text]
            assert not leaked, f"{path} contains solution lines: {leaked[:3]}"


def test_student_zip_has_what_a_learner_needs_and_nothing_secret(zips):
    student, _ = zips
    with zipfile.ZipFile(student) as zf:
        names = zf.namelist()
        rel = {n.split("/", 1)[1] for n in names}
        for aid in assignment_ids():
            assert f"course/{aid}/{aid}.ipynb" in rel
        assert {"README.md", "pyproject.toml", "environment.yml", "deepdive/__init__.py"} <= rel
        assert any(n.startswith("data/") and n.endswith(".py") for n in rel), "data scripts missing"
        assert not any(n.startswith(("solutions/", "grader/", "tests/")) for n in rel)
        for name in names:
            text = zf.read(name).decode("utf-8", errors="replace")
            assert not MARKERS.search(text), f"{name} in the student zip has a solution/hidden-test marker"
            leaked = [line for line in secret_lines_for(name.split("/", 1)[1]) if line in text]
            assert not leaked, f"{name} in the student zip contains solution lines: {leaked[:3]}"


def test_instructor_zip_can_grade(zips):
    _, instructor = zips
    with zipfile.ZipFile(instructor) as zf:
        rel = {n.split("/", 1)[1] for n in zf.namelist()}
    needed = {"Makefile", "pyproject.toml", "README.md", "grader/grade.py", "grader/nbgrader_config.py"}
    needed |= {f"solutions/{aid}/{aid}.ipynb" for aid in assignment_ids()}
    assert needed <= rel, f"instructor zip lacks {sorted(needed - rel)}"


def test_zips_are_reproducible(zips, tmp_path):
    again = build.build_release(tmp_path)
    for first, second in zip(zips, again):
        assert Path(first).read_bytes() == Path(second).read_bytes(), f"{first.name} differs between two builds"


def test_notebooks_are_stored_without_outputs():
    for folder in ("solutions", "course"):
        for path in (ROOT / folder).rglob("*.ipynb"):
            nb = nbformat.read(path, as_version=4)
            for cell in nb.cells:
                if cell.cell_type == "code":
                    assert not cell.outputs and cell.execution_count is None, f"{path}: strip outputs (nbstripout)"


def test_the_helper_package_imports_nothing_the_student_zip_lacks():
    """A notebook's kernel starts in the notebook's folder, where a learner's `pip install -e .` makes
    only `deepdive` importable: an import of the repository's data/, grader/, tests/ or bench/ from a
    helper (even inside a function) breaks that module for every learner with the zip, while every test
    run from the repository passes (module 06's small_tokenizer did, importing data.build_models).
    deepdive/progress.py imports grader/ only when it finds a full checkout, by design."""
    import ast

    outside = {"data", "grader", "tests", "bench", "solutions"}
    found = []
    for path in sorted((ROOT / "deepdive").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) and node.level == 0 else [])
            for name in names:
                if name.split(".")[0] in outside and not (path.name == "progress.py" and name.startswith("grader")):
                    found.append(f"{path.relative_to(ROOT)}:{node.lineno}: import {name}")
    assert not found, "helpers import what the student zip's install does not provide:\n" + "\n".join(found)
