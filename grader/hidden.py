"""The hidden test cells of an instructor notebook, read as plans the grader can judge.

A hidden cell is a comment saying what is checked, then, between the hidden-test markers, the
import of the module's checks and one call per check; a cell with several checks runs them inside
`with run_all():`, so that each is judged (and scored) even when an earlier one fails:

    # Hidden tests (run at grading): ...
    ### BEGIN HIDDEN TESTS
    from grader.checks import m02_attention as checks
    from grader.trusted import run_all
    with run_all():
        checks.check_causal_mask(causal_mask)
        checks.check_causal_mask_in_attention(causal_mask)
    ### END HIDDEN TESTS

`hidden_tests()` parses that (with `ast`, never by running it) from the trusted copy of the
notebook, checks that every call passes the graded names in the order the check's parameters
name them and that the cell's points are the sum of its checks' points, and returns what the
grader needs: which checks a cell holds, with which seed, worth how much. `judge_cell()` then
scores the cell from the records the kernel left, in this process (grader/trusted.py).
"""

import ast
from dataclasses import dataclass
from pathlib import Path

import nbformat

from grader.assignments import checks_module, solution_notebook
from grader.trusted import Verdict, judge_saved

BEGIN, END = "### BEGIN HIDDEN TESTS", "### END HIDDEN TESTS"


class HiddenCellError(Exception):
    """An instructor notebook's hidden cell does not follow the pattern: a course bug, not a learner's."""


@dataclass(frozen=True)
class CheckCall:
    check: object  # the @trusted_check function
    seed: int | None

    @property
    def name(self) -> str:
        return self.check.__name__


@dataclass(frozen=True)
class HiddenTest:
    grade_id: str
    points: float
    description: str  # the comment lines above the markers: what is checked, in words
    calls: tuple[CheckCall, ...]


@dataclass
class CellVerdict:
    grade_id: str
    points: float
    verdicts: list[Verdict]

    @property
    def score(self) -> float:
        return sum(v.score for v in self.verdicts)

    @property
    def passed(self) -> bool:
        return all(v.passed for v in self.verdicts)


def split_hidden_source(source: str) -> tuple[str, str]:
    """(the comment above the markers, the code between them)."""
    if BEGIN not in source or END not in source:
        raise HiddenCellError("hidden cell without both hidden-test markers")
    head, rest = source.split(BEGIN, 1)
    body, _ = rest.split(END, 1)
    return head.strip(), body.strip()


def parse_hidden_cell(assignment_id: str, grade_id: str, source: str, points: float) -> HiddenTest:
    module = checks_module(assignment_id)
    module_name = module.__name__.rsplit(".", 1)[-1]
    description, body = split_hidden_source(source)
    where = f"{assignment_id}:{grade_id}"
    try:
        tree = ast.parse(body)
    except SyntaxError as exc:
        raise HiddenCellError(f"{where}: hidden code does not parse: {exc}") from exc
    calls, bare, blocks = [], [], []
    for stmt in tree.body:
        if isinstance(stmt, ast.ImportFrom) and stmt.module == "grader.checks" and [
                (a.name, a.asname) for a in stmt.names] == [(module_name, "checks")]:
            continue
        if isinstance(stmt, ast.ImportFrom) and stmt.module == "grader.trusted" and [
                (a.name, a.asname) for a in stmt.names] == [("run_all", None)]:
            continue
        if (isinstance(stmt, ast.With) and len(stmt.items) == 1 and stmt.items[0].optional_vars is None
                and ast.unparse(stmt.items[0].context_expr) == "run_all()"):
            blocks.append(stmt.body)
        else:
            bare.append(stmt)
    if len(blocks) > 1 or (blocks and bare) or len(bare) > 1:
        raise HiddenCellError(f"{where}: a hidden cell holds one check call, or several inside one "
                              "`with run_all():` block (so each is judged even when an earlier one fails)")
    statements = blocks[0] if blocks else bare
    if not grade_id.endswith("_hidden"):
        raise HiddenCellError(f"{where}: a hidden cell's grade id is `<graded name>_hidden`")
    exercise = grade_id.removesuffix("_hidden")
    for stmt in statements:
        call = stmt.value if isinstance(stmt, ast.Expr) else None
        if not (isinstance(call, ast.Call) and isinstance(call.func, ast.Attribute)
                and isinstance(call.func.value, ast.Name) and call.func.value.id == "checks"):
            raise HiddenCellError(f"{where}: only `from grader.checks import {module_name} as checks` and "
                                  f"`checks.check_...(...)` calls may stand in a hidden cell, found: "
                                  f"{ast.unparse(stmt)}")
        check = getattr(module, call.func.attr, None)
        if not callable(getattr(check, "body", None)):
            raise HiddenCellError(f"{where}: {call.func.attr} is not a @trusted_check in {module.__name__}")
        if not (check.__name__ == f"check_{exercise}" or check.__name__.startswith(f"check_{exercise}_")):
            raise HiddenCellError(f"{where}: {check.__name__} is not a check of {exercise} (the naming rule: "
                                  f"the cell {exercise}_hidden calls check_{exercise} or check_{exercise}_<aspect>)")
        names = [a.id if isinstance(a, ast.Name) else None for a in call.args]
        if names != check.graded_names:
            raise HiddenCellError(f"{where}: {check.__name__} takes ({', '.join(check.graded_names)}) in this "
                                  f"order; the cell passes ({', '.join(map(str, names))})")
        seed = None
        for kw in call.keywords:
            if kw.arg != "seed" or not isinstance(kw.value, ast.Constant) or not isinstance(kw.value.value, int):
                raise HiddenCellError(f"{where}: {check.__name__}: only a literal seed=<int> may be passed")
            seed = kw.value.value
        calls.append(CheckCall(check, seed))
    if not calls:
        raise HiddenCellError(f"{where}: the hidden cell calls no check")
    if len({c.name for c in calls}) != len(calls):
        raise HiddenCellError(f"{where}: a check is called twice (its record would be overwritten)")
    total = sum(float(c.check.points) for c in calls)
    if total != float(points):
        raise HiddenCellError(f"{where}: the cell is worth {points} points but its checks add up to {total}")
    return HiddenTest(grade_id, float(points), description, tuple(calls))


def is_hidden_cell(cell) -> bool:
    meta = cell.metadata.get("nbgrader", {})
    return cell.cell_type == "code" and bool(meta.get("grade")) and BEGIN in cell.source


def hidden_tests(assignment_id: str, notebook: Path | None = None) -> list[HiddenTest]:
    """Every hidden test of the instructor notebook (default: solutions/), in notebook order."""
    nb = nbformat.read(notebook or solution_notebook(assignment_id), as_version=4)
    tests = [parse_hidden_cell(assignment_id, c.metadata["nbgrader"]["grade_id"], c.source,
                               c.metadata["nbgrader"]["points"]) for c in nb.cells if is_hidden_cell(c)]
    solved = {c.metadata["nbgrader"].get("grade_id", "").removesuffix("_solution") for c in nb.cells
              if c.cell_type == "code" and c.metadata.get("nbgrader", {}).get("solution")}
    for t in tests:
        if t.grade_id.removesuffix("_hidden") not in solved:
            raise HiddenCellError(f"{assignment_id}: {t.grade_id} has no {t.grade_id.removesuffix('_hidden')}_solution "
                                  "cell (the naming rule: X_solution, X_visible, X_hidden)")
    names = [c.name for t in tests for c in t.calls]
    if len(set(names)) != len(names):
        raise HiddenCellError(f"{assignment_id}: a check is called from two hidden cells")
    return tests


def judge_cell(test: HiddenTest, record_dir: Path) -> CellVerdict:
    """Score one hidden cell from the records in `record_dir`, in this (trusted) process."""
    return CellVerdict(test.grade_id, test.points, [judge_saved(c.check, record_dir, c.seed) for c in test.calls])
