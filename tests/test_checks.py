"""The hidden checks, tested without a notebook: every check passes on the reference (on every
seed), every known-bug mutant fails at least one check, and every check is wired into a hidden
test cell of its notebook."""

import inspect
import re

import nbformat
import pytest

from grader.assignments import assignment_ids, checks_module, mutants_module, solution_notebook
from grader.reference import reference_namespace

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
    """Call `check` with the graded names it asks for, taken from the namespace `ns`."""
    params = inspect.signature(check).parameters
    kwargs = {name: ns[name] for name in params if name != "seed"}
    if "seed" in params:
        kwargs["seed"] = seed
    check(**kwargs)


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
    seeds = SEEDS if "seed" in inspect.signature(check).parameters else (None,)
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
        except Exception as exc:  # a crash fails the hidden cell just like a wrong answer
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
