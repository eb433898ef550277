"""The hidden checks, tested without a notebook: every check passes on the reference (on every
seed), every known-bug mutant fails at least one check, and every check is wired into a hidden
test cell of its notebook.

Each check runs as grading runs it (grader/trusted.py): in kernel mode, recording what the
learner's code returned, then judged from that record after a real serialisation round trip. The
trusted verdict is what must pass (reference) or fail (mutants), and the kernel-mode outcome must
agree with it: an untampered kernel and the judge never disagree."""

import inspect
import re

import nbformat
import pytest

from grader.assignments import assignment_ids, checks_module, mutants_module, solution_notebook
from grader.hidden import hidden_tests
from grader.manual import is_answer_cell
from grader.reference import is_carried_cell, reference_namespace
from grader.trusted import record_and_judge

SEEDS = (0, 1, 2, 3, 4)
MIN_MUTANTS_PER_NAME = 3


def all_checks(assignment_id):
    module = checks_module(assignment_id)
    return [
        fn
        for name, fn in inspect.getmembers(module, inspect.isfunction)
        if name.startswith("check_") and fn.__module__ == module.__name__
    ]


def graded_names(assignment_id) -> list[str]:
    """The graded API of a notebook: X for every solution cell `X_solution`, in notebook order (a carried cell,
    an earlier module's code without points, is not one: grader.reference.is_carried_cell)."""
    nb = nbformat.read(solution_notebook(assignment_id), as_version=4)
    ids = [c.metadata.get("nbgrader", {}).get("grade_id", "") for c in nb.cells
           if c.cell_type == "code" and c.metadata.get("nbgrader", {}).get("solution") and not is_carried_cell(c)]
    return [i.removesuffix("_solution") for i in ids]


def checks_for(assignment_id, target):
    """Every check of the module, the target's own first (`check_<target>`, `check_<target>_*`), then
    the other checks that take it: a mutant is caught where its exercise is judged, cheaply."""
    def rank(check):
        own = check.__name__ == f"check_{target}" or check.__name__.startswith(f"check_{target}_")
        return (0 if own else 1 if target in check.graded_names else 2)
    return sorted(all_checks(assignment_id), key=rank)


def run_check(check, ns, seed):
    """Run `check` as grading does, with the graded names it asks for taken from the namespace
    `ns`; raise AssertionError with the trusted verdict's message if it fails."""
    kernel_error, verdict = record_and_judge(check, {name: ns[name] for name in check.graded_names}, seed)
    assert (kernel_error is None) == verdict.passed, (
        f"{check.__name__}: the kernel-mode run and the trusted verdict disagree "
        f"(kernel: {kernel_error or 'passed'}; judge: {verdict.message})")
    if not verdict.passed:
        raise AssertionError(verdict.message)


def cases(kind):
    out = []
    for aid in assignment_ids():
        if kind == "checks":
            # A training check's seed-0 run on the reference is what the graded reference notebook runs in
            # `make test` (tests/test_grading.py: full marks = every check passed, judged by the trusted side):
            # `make test` deselects it here so that the same training runs once; `make test-fast` keeps it.
            out += [pytest.param(aid, c, id=f"{aid}:{c.__name__}",
                                 marks=[pytest.mark.graded_reference] if trains(c) else [])
                    for c in all_checks(aid)]
        else:
            out += [pytest.param(aid, m, id=f"{aid}:{m.name}") for m in mutants_module(aid).MUTANTS]
    return out


def trains(check) -> bool:
    """A check that trains a model for its verdict (minutes over five seeds): `check_*_trained`."""
    return check.__name__.endswith("_trained")


@pytest.mark.parametrize("assignment_id,check", cases("checks"))
def test_reference_passes_every_check_on_every_seed(assignment_id, check):
    """Every seed for every check, except that a training check runs its first seed here and the
    other four in the calibration tier below (`make test-calibration`): those thresholds were set
    over five seeds by the benches under bench/, and the graded reference trains once more."""
    seeds = SEEDS if "seed" in inspect.signature(check.body).parameters else (None,)
    for seed in seeds[:1] if trains(check) else seeds:
        run_check(check, reference_namespace(assignment_id), seed)


@pytest.mark.calibration
@pytest.mark.parametrize("assignment_id,check", [c for c in cases("checks") if trains(c.values[1])])
def test_reference_passes_every_training_check_on_the_other_seeds(assignment_id, check):
    for seed in SEEDS[1:]:
        run_check(check, reference_namespace(assignment_id), seed)


@pytest.mark.parametrize("assignment_id,mutant", cases("mutants"))
def test_mutant_fails_at_least_one_check(assignment_id, mutant):
    ns = mutant.apply(reference_namespace(assignment_id))
    failures = []
    for check in checks_for(assignment_id, mutant.target):
        try:
            run_check(check, ns, seed=0)
        except AssertionError as exc:  # the trusted verdict says failed
            failures.append(f"{check.__name__}: {type(exc).__name__}: {str(exc)[:120]}")
            break  # one failing check is enough; the rest would only cost time
    assert failures, f"no check catches mutant {mutant.name} ({mutant.why})"
    print(f"{mutant.name} caught by {failures[0]}")


@pytest.mark.parametrize("assignment_id", assignment_ids())
def test_every_graded_name_has_at_least_3_mutants(assignment_id):
    mutants = mutants_module(assignment_id).MUTANTS
    assert len({m.name for m in mutants}) == len(mutants), "mutant names must be unique"
    names = graded_names(assignment_id)
    unknown = sorted({m.target for m in mutants} - set(names))
    assert not unknown, f"{assignment_id}: mutants target names that are not graded: {unknown}"
    counts = {name: sum(m.target == name for m in mutants) for name in names}
    short = {name: n for name, n in counts.items() if n < MIN_MUTANTS_PER_NAME}
    assert not short, f"{assignment_id}: want >= {MIN_MUTANTS_PER_NAME} mutants per graded name, have {short}"


@pytest.mark.parametrize("assignment_id", assignment_ids())
def test_every_graded_name_has_solution_visible_and_hidden_cells(assignment_id):
    """The naming rule: graded name X has the cells X_solution, X_visible, X_hidden, in this order and
    next to each other, and X is what the solution cell defines."""
    nb = nbformat.read(solution_notebook(assignment_id), as_version=4)
    ids = [c.metadata.get("nbgrader", {}).get("grade_id") for c in nb.cells]
    ns = reference_namespace(assignment_id)
    for name in graded_names(assignment_id):
        i = ids.index(f"{name}_solution")
        assert ids[i:i + 3] == [f"{name}_solution", f"{name}_visible", f"{name}_hidden"], (
            f"{assignment_id}: {name}_solution must be followed by {name}_visible and {name}_hidden, got {ids[i:i + 3]}")
        assert name in ns, f"{assignment_id}: the cell {name}_solution does not define {name}"
    answers = {c.metadata["nbgrader"]["grade_id"] for c in nb.cells if is_answer_cell(c)}
    assert all(a.endswith("_answer") for a in answers), f"{assignment_id}: an answer cell's id is <name>_answer: {answers}"
    carried = {c.metadata["nbgrader"]["grade_id"] for c in nb.cells if is_carried_cell(c)}
    graded = {i for i in ids if i} - answers - carried - {f"{n}_{kind}" for n in graded_names(assignment_id)
                                                          for kind in ("solution", "visible", "hidden")}
    assert not graded, f"{assignment_id}: grade ids outside the naming rule: {sorted(graded)}"


@pytest.mark.parametrize("assignment_id", assignment_ids())
def test_every_check_is_called_from_a_hidden_test_cell(assignment_id):
    nb = nbformat.read(solution_notebook(assignment_id), as_version=4)
    hidden = "\n".join(c.source for c in nb.cells if "BEGIN HIDDEN TESTS" in c.source)
    called = set(re.findall(r"\b(check_\w+)\(", hidden))
    defined = {c.__name__ for c in all_checks(assignment_id)}
    assert defined - called == set(), f"checks never called from a hidden test cell: {sorted(defined - called)}"
    assert called - defined == set(), f"hidden cells call undefined checks: {sorted(called - defined)}"


@pytest.mark.parametrize("assignment_id", assignment_ids())
def test_every_check_is_trusted_and_hidden_cells_follow_the_pattern(assignment_id):
    """Every check_* is a @trusted_check; hidden_tests() parses every hidden cell (graded names in the
    order the check names them, a check called once, the cell's points = the sum of its checks')."""
    for check in all_checks(assignment_id):
        assert callable(getattr(check, "body", None)) and check.points > 0, (
            f"{check.__name__} is not declared with @trusted_check(points=...)")
    tests = hidden_tests(assignment_id)
    assert tests, f"{assignment_id} has no hidden test cell"
