"""One place declares the pins (pyproject.toml); environment.yml must agree with it."""

import re
import tomllib

from grader.assignments import ROOT

GRADING_CRITICAL = ["torch", "transformers", "datasets", "peft", "nbgrader", "nbconvert", "jupyterlab"]


def pyproject_pins() -> dict[str, str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = project["dependencies"] + [r for extra in project["optional-dependencies"].values() for r in extra]
    pins = {}
    for req in reqs:
        m = re.fullmatch(r"([A-Za-z0-9_.-]+)==([\w.+-]+)", req)
        assert m, f"pyproject.toml: {req!r} is not an exact pin (name==version)"
        pins[m[1].lower()] = m[2]
    return pins


def environment_pins() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "environment.yml").read_text().splitlines():
        m = re.fullmatch(r"\s*-\s*([A-Za-z0-9_.-]+)==([\w.+-]+)\s*", line)
        if m:
            pins[m[1].lower()] = m[2]
    return pins


def test_every_dependency_is_pinned_exactly_and_torch_is_the_cpu_one():
    pins = pyproject_pins()
    for name in GRADING_CRITICAL:
        assert name in pins, f"{name} must be pinned in pyproject.toml"
    assert pins["torch"] == "2.13.0", "torch must stay 2.13.0: other specs pull several GB of CUDA packages"


def test_environment_yml_agrees_with_pyproject():
    assert environment_pins() == pyproject_pins()
    assert re.search(r"^\s*-\s*python=3\.11\s*$", (ROOT / "environment.yml").read_text(), re.MULTILINE)


def test_installed_versions_match_the_pins():
    from importlib.metadata import version

    for name, pinned in pyproject_pins().items():
        installed = version(name).split("+")[0]  # torch reports 2.13.0+cpu
        assert installed == pinned, f"{name}: installed {installed}, pinned {pinned}; run `make setup`"
