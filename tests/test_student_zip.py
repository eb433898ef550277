"""The student zip alone, on a machine without this repository: unpacked into an empty folder, set
up by following its README's commands exactly, it runs a course notebook.

Why: a learner gets nothing but `dist/transformer-deep-dive-student.zip`. Every other test runs
inside the repository, with its `.venv`, `PYTHONPATH=.` and the built `data/`; a file missing from
the zip, a README command that only works in the repository or a package the course needs but
`pyproject.toml` does not install passes them all and breaks every learner's first hour.

How: the zip is built from the current tree (`grader.build.build_release`, what `make release`
writes now) and unpacked under pytest's tmp_path. The set-up commands are read out of the zip's
README (the fenced bash block under "## Set up (once)"), not copied here, so the test follows
whatever the README tells a learner, and each is run with bash in the unpacked folder, in an
environment that cannot see the repository (`bare_env`). Module 02 (no data needed) is then
executed by that virtualenv's own jupyter, once with the reference solution pasted into every
solution cell and once as shipped.

The set-up is a module-scoped fixture (`student_copy`) so that further learner-facing checks in the
same unpacked folder (e.g. `.venv/bin/python -m deepdive.progress`) are one more test function
each. Each step prints its seconds (`pytest -s` shows them). Measured on the 2-core course machine
(shared): venv 3 s, torch 16-20 s, `pip install -e .` 57-65 s (wheels from the machine's pip indexes
and cache), data 5 s, tiny models 5-8 s, each module-02 run 4-7 s: 100-120 s in all.
"""

import json
import os
import re
import shlex
import subprocess
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

import nbformat
import pytest

from grader.build import build_release

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
PREFIX = "transformer-deep-dive"  # the zip's top-level folder
SETUP_HEADING = "## Set up (once)"
AID = "02_attention"  # needs no data: the quickest notebook that uses torch, deepdive and visible tests
SOLUTION_MARKERS = {"### BEGIN SOLUTION", "### END SOLUTION"}
PASSED = "visible tests passed"
NOT_WRITTEN = re.compile(r"is not written yet: replace `raise NotImplementedError\(\)`")
STEP_TIMEOUT = 1800  # s; a cold pip cache can make an install take minutes, a hung one must not hang CI
NOTEBOOK_TIMEOUT = 600  # s per cell, as generous as nbgrader's; module 02's slowest cell takes seconds
# Appended to the executed notebook: which python the kernel is, and where it imported deepdive from.
KERNEL_PROBE = """import json, sys, deepdive
print("KERNEL " + json.dumps({"python": sys.executable, "deepdive": deepdive.__file__}))"""


# ------------------------------------------------------------------------------------- the README
def fenced_bash_blocks(markdown: str) -> list[tuple[str, list[str]]]:
    """Every ```bash block of `markdown` as (the nearest heading above it, its commands). Comment-only
    and blank lines are dropped; a line ending in a backslash continues on the next."""
    blocks, heading, block = [], "", None
    for line in markdown.splitlines():
        if block is None:
            if line.startswith("#"):
                heading = line.strip()
            elif line.strip() == "```bash":
                block = []
        elif line.strip() == "```":
            commands = []
            for raw in block:
                if commands and commands[-1].endswith("\\"):
                    commands[-1] = commands[-1][:-1] + " " + raw.strip()
                elif raw.strip() and not raw.strip().startswith("#"):
                    commands.append(raw.strip())
            blocks.append((heading, commands))
            block = None
        else:
            block.append(line)
    return blocks


def setup_commands(readme: str) -> list[str]:
    """The commands of the README's set-up block, in order."""
    blocks = [cmds for heading, cmds in fenced_bash_blocks(readme) if heading == SETUP_HEADING]
    assert len(blocks) == 1 and blocks[0], (
        f"the student README must have exactly one ```bash block of commands under {SETUP_HEADING!r} "
        f"(found {len(blocks)}): it is what a learner copies, and what this test runs")
    return blocks[0]


def tiny_variant(command: str, out: Path) -> str:
    """A README command that runs data/build_models.py, at toy sizes into `out` (its comment dropped)."""
    return shlex.join([*shlex.split(command, comments=True), "--tiny", "--no-progress", "--out", str(out)])


# ---------------------------------------------------------------------------------- the bare machine
def bare_env() -> dict[str, str]:
    """The environment of a learner's fresh shell: this one without anything that leads to the
    repository (its `.venv/bin` on PATH, PYTHONPATH, VIRTUAL_ENV, DEEPDIVE_*_DIR, any variable naming
    the repository), HOME kept (the pip cache), offline for the Hugging Face hub as CI is."""
    repo = str(ROOT)
    env = {k: v for k, v in os.environ.items()
           if repo not in v and k not in {"PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "CONDA_PREFIX"}}
    path = os.environ.get("PATH", "").split(os.pathsep)
    env["PATH"] = os.pathsep.join(p for p in path if p and repo not in p)
    env["HF_HUB_OFFLINE"] = "1"
    return env


def tail(text: str, n: int = 40) -> str:
    return "\n".join(text.rstrip().splitlines()[-n:])


@dataclass(frozen=True)
class StudentCopy:
    """The unpacked student zip after its README's set-up: the folder, its virtualenv and the bare
    environment the set-up ran in (run further learner commands with `run`)."""

    root: Path
    venv: Path
    env: dict

    @property
    def bin(self) -> Path:
        return self.venv / "bin"

    def run(self, step: str, command: str, timeout: int = STEP_TIMEOUT, cwd: Path | None = None,
            extra_env: dict | None = None, check: bool = True) -> subprocess.CompletedProcess:
        """`command` with bash in the unpacked folder (or `cwd`), as a learner would type it; prints its
        seconds and (with `check`) asserts that it succeeds, naming the step and showing its last lines."""
        t0 = time.perf_counter()
        env = {**self.env, **(extra_env or {})}
        try:
            result = subprocess.run(["bash", "-c", command], cwd=cwd or self.root, env=env,
                                    capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired as e:
            out = e.stdout.decode(errors="replace") if isinstance(e.stdout, bytes) else (e.stdout or "")
            pytest.fail(f"{step}: `{command}` did not finish within {timeout} s on the unpacked student zip; "
                        f"a learner would be stuck here. Last output:\n{tail(out)}")
        print(f"[student zip] {step}: {time.perf_counter() - t0:6.1f} s   $ {command}")
        assert result.returncode == 0 or not check, (
            f"{step}: `{command}` failed (exit {result.returncode}) in the unpacked student zip {self.root}, "
            f"with only what the zip and its README give a learner. What they would see:\n"
            f"{tail(result.stdout + result.stderr)}")
        return result


@pytest.fixture(scope="module")
def student_copy(tmp_path_factory, request) -> StudentCopy:
    """The student zip built from this tree, unpacked into an empty folder outside the repository and
    set up by running its README's set-up commands, one by one, exactly as written; except the one that
    starts JupyterLab (it blocks): that one is checked to exist in the new venv, and the notebook tests
    run the same venv's jupyter headlessly."""
    t0 = time.perf_counter()
    student_zip, _ = build_release(tmp_path_factory.mktemp("dist"))
    unpacked = tmp_path_factory.mktemp("bare")
    assert not unpacked.is_relative_to(ROOT), f"{unpacked} is inside the repository: unpack it elsewhere"
    with zipfile.ZipFile(student_zip) as zf:
        zf.extractall(unpacked)
    root = unpacked / PREFIX
    assert (root / "README.md").is_file(), f"the student zip has no {PREFIX}/README.md: no set-up steps"
    print(f"\n[student zip] build and unpack: {time.perf_counter() - t0:6.1f} s -> {root}")

    readme = (root / "README.md").read_text()
    commands = setup_commands(readme)
    venvs = [m.group(1) for c in commands if (m := re.search(r"-m\s+venv\s+(\S+)", c))]
    assert len(venvs) == 1, f"the README's set-up should create one virtualenv (`-m venv .venv`): {venvs}"
    copy = StudentCopy(root=root, venv=root / venvs[0], env=bare_env())

    for i, command in enumerate(commands, 1):
        words = shlex.split(command, comments=True)
        if len(words) >= 2 and Path(words[0]).name == "jupyter" and words[1] == "lab":
            # It blocks until the learner stops it: check that it is there and what it opens; the notebook
            # tests run the same venv's jupyter headlessly.
            copy.run(f"set-up {i} (jupyter lab: --version)", f"{shlex.quote(words[0])} lab --version")
            for arg in words[2:]:
                if arg.startswith("--notebook-dir="):
                    folder = arg.split("=", 1)[1]
                    assert (root / folder).is_dir(), f"the README opens JupyterLab on {folder!r}: not in zip"
        else:
            copy.run(f"set-up {i}", command)
    assert (copy.bin / "python").exists(), f"the README's set-up left no {copy.bin / 'python'}"

    # The full model build (data/build_models.py, 5-10 min on 2 cores) is the README's own command outside
    # the set-up block: too long for `make test`. Its --tiny variant (toy sizes, seconds) runs the same
    # script in the same bare venv, into a folder of its own so data/models/ stays as a learner's would be.
    builds = [c for heading, cmds in fenced_bash_blocks(readme) if heading != SETUP_HEADING
              for c in cmds if "data/build_models.py" in c]
    assert builds, "the student README shows no command that builds the models (data/build_models.py)"
    tiny_out = tmp_path_factory.mktemp("tiny-models")
    for command in builds:
        copy.run("models, --tiny variant", tiny_variant(command, tiny_out))
    families = ("distilbert", "distilgpt2", "t5")
    missing = [f for f in families if not (tiny_out / f / "build_info.json").exists()]
    assert not missing, f"data/build_models.py --tiny in the bare venv built no {missing}"
    total = time.perf_counter() - t0
    print(f"[student zip] set-up total: {total:6.1f} s")
    capture = request.config.pluginmanager.getplugin("capturemanager")
    with capture.global_and_fixture_disabled():  # in every CI log, not only under `pytest -s`
        print(f"\n[student zip] a learner's set-up (README's commands, the shipped checkpoints verified, the "
              f"build script's --tiny run): {total:.1f} s (target <= 180 s)")
    return copy


# ------------------------------------------------------------------------------------- the notebook
def grade_id(cell) -> str | None:
    return cell.metadata.get("nbgrader", {}).get("grade_id")


def paste_solutions(nb, reference) -> list[str]:
    """Replace every solution cell of `nb` by the reference cell with the same grade id, its solution
    markers dropped: what a learner who got every exercise right hands in. Returns the grade ids."""
    answers = {grade_id(c): c.source for c in reference.cells if grade_id(c)}
    pasted = []
    for cell in nb.cells:
        if cell.metadata.get("nbgrader", {}).get("solution"):
            gid = grade_id(cell)
            assert gid in answers, f"solution cell {gid!r} of the student notebook has no reference solution"
            lines = answers[gid].splitlines()
            cell.source = "\n".join(line for line in lines if line.strip() not in SOLUTION_MARKERS)
            pasted.append(gid)
    assert pasted, f"the student notebook of {AID} has no solution cells (nbgrader metadata solution: true)"
    return pasted


def execute(copy: StudentCopy, nb, folder: Path, step: str):
    """`nb` saved as <folder>/<AID>/<AID>.ipynb and executed by the student venv's own jupyter (so the
    kernel is that venv's python), every cell run even after an error; returns the executed notebook. In a
    folder of its own, as deepdive.progress does: the unpacked course/ stays as shipped for later tests."""
    src = folder / AID / f"{AID}.ipynb"
    src.parent.mkdir(parents=True)
    nbformat.write(nb, src)
    out = folder / "executed"
    command = shlex.join([str(copy.bin / "jupyter"), "nbconvert", "--to", "notebook", "--execute",
                          "--allow-errors", f"--ExecutePreprocessor.timeout={NOTEBOOK_TIMEOUT}",
                          "--output-dir", str(out), str(src)])
    copy.run(step, command, cwd=src.parent)
    return nbformat.read(out / src.name, as_version=4)


def text_of(cell) -> str:
    return "".join(o.get("text", "") for o in cell.get("outputs", []) if o.output_type == "stream")


def errors_of(cell) -> list[str]:
    return [f"{o.ename}: {o.evalue}" for o in cell.get("outputs", []) if o.output_type == "error"]


def shipped_notebook(copy: StudentCopy):
    return nbformat.read(copy.root / "course" / AID / f"{AID}.ipynb", as_version=4)


def test_module_02_with_pasted_solutions_passes_every_visible_test(student_copy, tmp_path):
    """With a correct solution in every exercise, module 02 runs top to bottom in the bare venv's kernel:
    no cell raises, every visible test prints that it passed, and the kernel is that venv's python with
    `deepdive` from the unpacked folder (an editable install of the zip), not from this repository."""
    nb = shipped_notebook(student_copy)
    pasted = paste_solutions(nb, nbformat.read(ROOT / "solutions" / AID / f"{AID}.ipynb", as_version=4))
    nb.cells.append(nbformat.v4.new_code_cell(KERNEL_PROBE, metadata={"tags": ["kernel-probe"]}))
    done = execute(student_copy, nb, tmp_path, f"notebook {AID}, solutions pasted ({len(pasted)} cells)")

    raised = [f"cell {i} ({grade_id(c) or 'no grade id'}): {err}" for i, c in enumerate(done.cells)
              for err in errors_of(c)]
    assert not raised, ("with the reference solutions pasted in, these cells raised in the unpacked zip "
                        "(a learner with correct answers would see the same):\n" + "\n".join(raised))
    visible = [c for c in done.cells if (grade_id(c) or "").endswith("_visible")]
    assert len(visible) == len(pasted), f"expected a visible test per exercise {pasted}, found {len(visible)}"
    silent = [grade_id(c) for c in visible if PASSED not in text_of(c)]
    assert not silent, f"these visible tests did not print {PASSED!r} with correct solutions: {silent}"

    probe = json.loads(text_of(done.cells[-1]).split("KERNEL ", 1)[1])
    assert Path(probe["python"]).parent == student_copy.bin, (
        f"the notebook's kernel ran {probe['python']}, not the student venv's python in {student_copy.bin}")
    deepdive = Path(probe["deepdive"]).resolve()
    assert deepdive.is_relative_to(student_copy.root.resolve()) and not deepdive.is_relative_to(ROOT), (
        f"the kernel imported deepdive from {deepdive}, not from the unpacked zip {student_copy.root}")


def test_module_02_as_shipped_fails_its_first_visible_test_with_a_hint(student_copy, tmp_path):
    """The notebook as a learner first opens it: the first visible test fails and says what to do
    (replace `raise NotImplementedError()`), rather than a bare NotImplementedError."""
    done = execute(student_copy, shipped_notebook(student_copy), tmp_path, f"notebook {AID}, as shipped")
    first = next(c for c in done.cells if (grade_id(c) or "").endswith("_visible"))
    errors = errors_of(first)
    assert errors and NOT_WRITTEN.search(errors[0]), (
        f"the first visible test of the shipped {AID} ({grade_id(first)}) should fail with '... is not "
        f"written yet: replace `raise NotImplementedError()` ...'; it gave {errors or 'no error'}; output:\n"
        f"{tail(text_of(first))}")


def test_module_06_helpers_import_from_a_notebook_folder(student_copy):
    """Module 06's `small_tokenizer()` trains its tokenizer with the course's WordPiece code. In
    JupyterLab a kernel starts in the notebook's folder (course/06_encoder_mlm), where only what
    `pip install -e .` installed is importable: `deepdive`, not the repository's `data/` scripts (the
    training code once lived in data/build_models.py, and module 06 failed in the zip with "No module
    named 'data'"; it is deepdive.wordpiece now)."""
    code = "from deepdive.encoders import small_tokenizer; print('vocabulary', len(small_tokenizer()))"
    command = shlex.join([str(student_copy.bin / "python"), "-c", code])
    notebook_folder = student_copy.root / "course" / "06_encoder_mlm"
    result = student_copy.run("module 06 small_tokenizer()", command, cwd=notebook_folder, check=False)
    output = result.stdout + result.stderr
    assert result.returncode == 0 and "vocabulary 160" in output, (
        f"module 06's small_tokenizer() failed in the unpacked zip, run from the notebook's folder:\n{tail(output)}")


def test_progress_in_the_zip_runs_the_visible_tests_only(student_copy, tmp_path):
    """`python -m deepdive.progress`, as the student README says, in the unpacked zip: the untouched
    course reads as not started; a learner who solved module 04 and half of 02 (a copy of the zip's
    course/, tests/test_progress.py's learner) gets each exercise's visible test, and no grading:
    the zip has no grader and no hidden checks. The learner's notebooks are not modified."""
    from tests.test_progress import REPORT, SOLVED, SOLVED_02, digest, learner_course

    python = student_copy.bin / "python"
    fresh = student_copy.run("progress, nothing started", f"{python} -m deepdive.progress")
    assert "not started" in fresh.stdout and "passed" not in fresh.stdout.split("module ")[0], tail(fresh.stdout)
    course = learner_course(tmp_path, source=student_copy.root / "course")
    before = digest(course)
    done = student_copy.run("progress, 04 solved and half of 02", f"{python} -m deepdive.progress --course {course}")
    print(done.stdout)
    assert digest(course) == before, "deepdive.progress modified the learner's notebooks"
    report = json.loads((tmp_path / "progress" / "progress.json").read_text())
    assert not report["graded"], "the student zip has no grader: progress must run the visible tests only"
    status = {(m["module"], e["name"]): e["status"] for m in report["modules"] for e in m["exercises"]}
    assert [s for (aid, name), s in status.items() if aid == SOLVED and name != REPORT] == ["passed"] * 4, status
    assert status[SOLVED, REPORT] == "written: to be graded by hand", status
    assert [status["02_attention", n] for n in SOLVED_02] == ["passed", "passed"]
    assert status["02_attention", "padding_mask"] == "failed"
    assert status["02_attention", "online_softmax_attention"] == "not attempted"
    assert "the hidden checks run when your notebook is graded" in done.stdout
