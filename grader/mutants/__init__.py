"""Known-bug catalogues: plausible wrong implementations that the hidden checks must catch.

Each `grader/mutants/mNN_topic.py` defines `MUTANTS`, a list of `Mutant`s. The test suite
swaps each mutant into a fresh reference namespace (grader.reference) under the name of the
graded function it imitates, runs every check of the module, and requires at least one to fail.
"""

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Mutant:
    name: str  # short id, e.g. "no_sqrt_scaling"
    target: str  # the graded name it replaces, e.g. "scaled_dot_product_attention"
    fn: Callable  # the buggy implementation (a function or a class)
    why: str  # the learner's mistake, in words


def mutant(target: str, why: str, catalogue: list):
    """Decorator: register the function below as a mutant of `target` in `catalogue`."""

    def register(fn):
        catalogue.append(Mutant(fn.__name__, target, fn, why))
        return fn

    return register
