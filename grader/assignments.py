"""Where things are: assignment ids, their notebooks, their checks and mutant catalogues."""

from importlib import import_module
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parent.parent
SOLUTIONS = ROOT / "solutions"
COURSE = ROOT / "course"

# Execution budget of each whole solution notebook on the 2-core CPU machine, in seconds
# (grader/README.md, "Time rule"). The grader derives its per-cell timeout and wall-clock cap from it.
BUDGET_S = {
    "01": 60, "02": 60, "03": 60, "04": 60, "05": 60,
    "06": 150, "07": 150, "08": 150, "09": 240, "10": 150, "11": 150,
}


def assignment_ids() -> list[str]:
    """Every assignment in `solutions/`, sorted: ['01_rnn_bottleneck', '02_attention', ...]."""
    return sorted(p.name for p in SOLUTIONS.iterdir() if p.is_dir() and (p / f"{p.name}.ipynb").exists())


def solution_notebook(assignment_id: str) -> Path:
    return SOLUTIONS / assignment_id / f"{assignment_id}.ipynb"


def course_notebook(assignment_id: str) -> Path:
    return COURSE / assignment_id / f"{assignment_id}.ipynb"


def budget_s(assignment_id: str) -> int:
    return BUDGET_S[assignment_id[:2]]


def _module_name(assignment_id: str) -> str:
    return "m" + assignment_id  # '01_attention' is not an identifier; 'm01_attention' is


def checks_module(assignment_id: str) -> ModuleType:
    """`grader.checks.mNN_topic`: the plain functions behind the notebook's hidden tests."""
    return import_module(f"grader.checks.{_module_name(assignment_id)}")


def mutants_module(assignment_id: str) -> ModuleType:
    """`grader.mutants.mNN_topic`: the known-bug catalogue for the module."""
    return import_module(f"grader.mutants.{_module_name(assignment_id)}")
