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
from grader.reference import reference_namespace
from grader.trusted import record_and_judge

SEEDS = (0, 1, 2, 3, 4)
MIN_MUTANTS = 8


def all_checks(assignment_id):
    module = checks_module(assignment_id)
    return [
        fn
        for name, fn in inspect.getmembers(module, inspect.isfunction)
        if name.startswith("check_") and fn.__module__ == module.__name__
    ]


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
            out += [pytest.param(aid, c, id=f"{aid}:{c.__name__}") for c in all_checks(aid)]
        else:
            out += [pytest.param(aid, m, id=f"{aid}:{m.name}") for m in mutants_module(aid).MUTANTS]
    return out


@pytest.mark.parametrize("assignment_id,check", cases("checks"))
def test_reference_passes_every_check_on_every_seed(assignment_id, check):
    seeds = SEEDS if "seed" in inspect.signature(check.body).parameters else (None,)
    for seed in seeds:
        run_check(check, reference_namespace(assignment_id), seed)


@pytest.mark.parametrize("assignment_id,mutant", cases("mutants"))
def test_mutant_fails_at_least_one_check(assignment_id, mutant):
    ns = reference_namespace(assignment_id)
    assert mutant.target in ns, f"mutant {mutant.name} targets {mutant.target!r}, which the notebook does not define"
    ns[mutant.target] = mutant.fn
    failures = []
    for check in all_checks(assignment_id):
        try:
            run_check(check, ns, seed=0)
        except AssertionError as exc:  # the trusted verdict says failed
            failures.append(f"{check.__name__}: {type(exc).__name__}: {str(exc)[:120]}")
            break  # one failing check is enough; the rest would only cost time
    assert failures, f"no check catches mutant {mutant.name} ({mutant.why})"
    print(f"{mutant.name} caught by {failures[0]}")


@pytest.mark.parametrize("assignment_id", assignment_ids())
def test_catalogue_is_large_enough(assignment_id):
    mutants = mutants_module(assignment_id).MUTANTS
    assert len(mutants) >= MIN_MUTANTS, f"{assignment_id}: {len(mutants)} mutants, want >= {MIN_MUTANTS}"
    assert len({m.name for m in mutants}) == len(mutants), "mutant names must be unique"


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
