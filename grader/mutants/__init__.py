"""Known-bug catalogues: plausible wrong implementations that the hidden checks must catch.

Each `grader/mutants/mNN_topic.py` defines `MUTANTS`, a list of `Mutant`s, grouped under one banner
per graded name, at least 3 per graded name. The test suite (tests/test_checks.py) builds each
mutant from a fresh reference namespace (grader.reference), swaps it in under the graded name it
imitates, runs the checks of that name first and then the module's other checks, and requires at
least one trusted verdict to fail.

One registration path, three forms:

    @mutant("causal_mask", "excludes the diagonal (off by one)", MUTANTS)
    def causal_excludes_self(t_q, t_k=None):          # a small function, written out whole
        ...

    @mutant("MultiHeadAttention", "scales by d_model instead of the head size", MUTANTS, from_reference=True)
    def mha_scale_by_d_model(ref):                   # a class or model: built from the reference
        class Mutated(ref["MultiHeadAttention"]):    # subclass it and change the one buggy line,
            def _scale(self): ...                    # never a copy of the solution
        return Mutated

    edit_mutant("train", "resumes at step 0", MUTANTS,   # a long function whose bug is one line:
                old='start = load_checkpoint(',         # the reference's solution cell, read from the
                new='load_checkpoint(')                 # notebook, with that line changed (`old` must
                                                        # occur exactly once), run into the namespace
"""

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Mutant:
    name: str  # short id, e.g. "no_sqrt_scaling"
    target: str  # the graded name it replaces, e.g. "scaled_dot_product_attention"
    build: Callable[[dict], Any]  # reference namespace -> the buggy implementation (function or class)
    why: str  # the learner's mistake, in words

    def apply(self, ns: dict) -> dict:
        """Replace the graded name in the reference namespace `ns` by this mutant (built from `ns`
        first), in place: the reference's other definitions that call the name now call the mutant,
        as a learner's own functions call each other. Returns `ns`."""
        if self.target not in ns:
            raise KeyError(f"mutant {self.name} targets {self.target!r}, which the notebook does not define")
        ns[self.target] = self.build(ns)
        return ns


def mutant(target: str, why: str, catalogue: list, *, from_reference: bool = False, name: str | None = None):
    """Decorator: register the function (or class) below as a mutant of `target` in `catalogue`.

    With `from_reference=True` the decorated function takes the reference namespace and returns
    the buggy replacement (a subclass or wrapper of the reference that changes one line).
    """

    def register(obj):
        build = obj if from_reference else (lambda ns, _obj=obj: _obj)
        catalogue.append(Mutant(name or obj.__name__, target, build, why))
        return obj

    return register


def edit_mutant(target: str, why: str, catalogue: list, *, old: str = "", new: str = "", name: str,
                edits: tuple = ()) -> None:
    """Register a mutant that is the reference's `<target>_solution` cell (read from the instructor notebook)
    with the text `old`, which must occur exactly once, replaced by `new`, executed into the namespace. For a
    long function (a training loop) whose bug is one line that no wrapper or subclass can reach. A bug that moves
    a line gives `edits` instead: (old, new) pairs applied in order, each old occurring exactly once."""
    changes = tuple(edits) or ((old, new),)

    def build(ns: dict):
        from grader.reference import solution_source

        assignment_id = ns["__name__"].removeprefix("reference_")
        source = solution_source(assignment_id, f"{target}_solution")
        for before, after in changes:
            if source.count(before) != 1:
                raise ValueError(f"mutant {name}: {before!r} occurs {source.count(before)} times in {target}_solution "
                                 "(expected exactly once): update the mutant to the notebook")
            source = source.replace(before, after)
        exec(compile(source, f"<mutant {name}>", "exec"), ns)
        return ns[target]

    catalogue.append(Mutant(name, target, build, why))
