"""Grading one notebook: the unit of work that `grader.grade` hands to a worker.

A task is plain data in, plain data out, so that any worker can run it: a local worker process
or a Dask worker on another machine with the course environment installed. It gets the
submission's bytes and the run's *template* (a tar of a private nbgrader course: the instructor
notebooks, the releases and a gradebook, made once per run by the dispatcher), grades the
notebook in its own copy of that course (one submission cannot disturb another, and each
gradebook has one writer), and returns the row, the trusted verdicts, the executed notebook and
feedback page, its gradebook and its log. `grader.grade` writes that as a *part* and merges the
parts into one set of outputs.
"""

import atexit
import dataclasses
import hashlib
import io
import json
import os
import re
import shutil
import socket
import subprocess
import tarfile
import tempfile
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import nbformat

from grader.assignments import ROOT
from grader.nbgrader_cli import nbgrader_env
from grader.sandbox import PROCESSES, kernel_settings, write_kernelspec
from grader.sandbox import check as sandbox_check
from grader.submission import UnreadableNotebook, read_notebook, repair

TIMING_ENV = "DEEPDIVE_TIMING_FILE"
THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


@dataclass
class Row:
    student_id: str
    assignment: str
    score: float = 0.0
    max_score: float | str = ""
    status: str = "graded"
    message: str = ""
    notes: list = field(default_factory=list, repr=False)
    verdicts: list = field(default_factory=list, repr=False)
    judge_s: float = field(default=0.0, repr=False)  # seconds spent judging the records
    needs_manual_grade: bool = False  # an answer cell waits for a person (grader/manual.py)
    hand: str = field(default="", repr=False)  # the message's part about hand-graded cells


def usable_cores() -> int:
    """The cores this process may run on: its CPU affinity (what a Slurm job, `taskset` or a
    container allows), not every core the machine has."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def course_fingerprint() -> str:
    """A digest of the code that grades (grader/, deepdive/): a worker must run the same course
    version as the dispatcher, or its verdicts are not the course's."""
    h = hashlib.sha256()
    for folder in ("grader", "deepdive"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            h.update(str(path.relative_to(ROOT)).encode())
            h.update(path.read_bytes())
    return h.hexdigest()[:16]


# ----------------------------------------------------------------------------- per worker process

_local = threading.local()  # one nbgrader server per worker thread
_templates: dict = {}  # digest -> (folder, releases, hidden tests, rubrics), unpacked once per process
_lock = threading.Lock()
_FINGERPRINT = None


def _server():
    from grader.nbgrader_server import NbgraderServer

    if getattr(_local, "server", None) is None or _local.server.proc.poll() is not None:
        _local.server = NbgraderServer(nbgrader_env())
    return _local.server


def warm_worker(assignments: list[str], threads: int | None = None, sandbox: int | None = None) -> None:
    """Load in this worker, before its first notebook, what grading the batch's modules needs:
    torch (with this worker's share of the cores), nbgrader's gradebook, those modules' checks and
    the nbgrader server (which warms its own renderer), and checks the sandbox (memory `sandbox`
    bytes) can start on this machine. The dispatcher runs this while it builds
    the template, so the first notebook on each worker starts like every other one."""
    from grader.assignments import checks_module

    try:
        import nbgrader.api  # noqa: F401  (the judge's gradebook: 1.3 s of imports)
        import torch

        torch.set_num_threads(_threads({"threads": threads}))
        nbformat.validate(nbformat.v4.new_notebook())  # compiles the notebook schema's validator
        for aid in assignments:
            checks_module(aid)
        _server()
        if sandbox:
            sandbox_check(sandbox)
    except Exception:  # noqa: BLE001  (a warm-up only: the first task meets the same error and reports it)
        pass


def _template(blob: bytes):
    from grader.hidden import hidden_tests
    from grader.manual import answer_cells

    digest = hashlib.sha256(blob).hexdigest()
    with _lock:
        if digest not in _templates:
            folder = Path(tempfile.mkdtemp(prefix="deepdive-template-"))
            with tarfile.open(fileobj=io.BytesIO(blob)) as tf:
                tf.extractall(folder, filter="data")
            aids = sorted(p.name for p in (folder / "course").iterdir() if p.is_dir())
            releases = {aid: nbformat.read(folder / "course" / aid / f"{aid}.ipynb", as_version=4) for aid in aids}
            tests = {aid: hidden_tests(aid, folder / "solutions" / aid / f"{aid}.ipynb") for aid in aids}
            rubrics = {aid: answer_cells(folder / "solutions" / aid / f"{aid}.ipynb") for aid in aids}
            _templates[digest] = (folder, releases, tests, rubrics)
        return _templates[digest]


@atexit.register
def _remove_folders() -> None:
    """This process's unpacked templates and kernel spec go when it exits."""
    for folder, *_ in _templates.values():
        shutil.rmtree(folder, ignore_errors=True)
    if getattr(_kernelspec, "folder", None) is not None:
        shutil.rmtree(_kernelspec.folder, ignore_errors=True)


def _kernelspec() -> Path:
    """This process's Jupyter data folder with the sandbox's kernel spec (written once)."""
    with _lock:
        if getattr(_kernelspec, "folder", None) is None:
            _kernelspec.folder = write_kernelspec(Path(tempfile.mkdtemp(prefix="deepdive-kernelspec-")))
        return _kernelspec.folder


def _threads(spec: dict) -> int:
    if spec.get("threads"):
        return int(spec["threads"])
    try:  # on a Dask cluster: the machine's cores shared among the worker's task threads
        from distributed import get_worker

        worker = get_worker()
        return max(1, usable_cores() // getattr(getattr(worker, "state", worker), "nthreads", 1))
    except (ImportError, ValueError):
        return 1


# ----------------------------------------------------------------------------- one notebook

def _failure_summary(autograded: Path) -> str:
    """'x_hidden: AssertionError: ...; y_visible: CellTimeoutError' from the executed notebook."""
    nb = nbformat.read(autograded, as_version=4)
    failed = []
    for cell in nb.cells:
        meta = cell.metadata.get("nbgrader", {})
        if cell.cell_type != "code" or not meta.get("grade"):
            continue
        errors = [o for o in cell.outputs if o.output_type == "error"]
        if errors:
            err = errors[0]
            text = f"{err.ename}: {err.evalue}".strip().rstrip(":")
            failed.append(f"{meta['grade_id']}: {text.splitlines()[0][:160] if text else err.ename}")
    return "failed " + "; ".join(failed) if failed else ""


_LIMITS = {  # what an error output says when the kernel ran into one of the sandbox's limits
    "memory": (re.compile(r"MemoryError|can't allocate memory|Cannot allocate memory|std::bad_alloc"),
               "a cell ran out of the sandbox's memory ({gib:g} GiB of address space per kernel; "
               "an instructor can raise it with --sandbox-memory)"),
    "processes": (re.compile(r"Resource temporarily unavailable|can't start new thread|BlockingIOError"),
                  f"a cell hit the sandbox's limit of {PROCESSES} processes and threads"),
    "file size": (re.compile(r"File too large"), "a cell wrote a file past the sandbox's 1 GiB file-size limit"),
}


def _limit_notes_in(text: str, memory: int | None) -> list[str]:
    if not memory:
        return []
    return [note.format(gib=memory / 2**30) for pattern, note in _LIMITS.values() if pattern.search(text)]


def _limit_notes(autograded: Path, memory: int | None) -> list[str]:
    """Notes for the row when an error output shows a sandbox limit at work."""
    nb = nbformat.read(autograded, as_version=4)
    errors = " ".join(f"{o.get('ename', '')}: {o.get('evalue', '')}" for c in nb.cells if c.cell_type == "code"
                      for o in c.get("outputs", []) if o.output_type == "error")
    return _limit_notes_in(errors, memory)


def grade_one(row: Row, notebook: Path, work: Path, release, tests, cell_timeout: int, cap: int,
              threads: int, server, log_path: Path, phases: dict, sandbox_memory: int | None = None,
              rubrics: dict | None = None) -> tuple[Row, float]:
    """Autograde one notebook in the course `work`; (row, seconds its cells ran). With
    `sandbox_memory` (bytes) its kernel runs in the sandbox, with that much address space. `rubrics`
    ({answer cell: (points, rubric)}) go under the answer cells of the executed notebook."""
    # Imported here, not at the top: the dispatcher imports this module and needs no torch.
    from grader.scoring import score_submission
    from grader.trusted import RECORD_DIR_ENV

    try:
        nb = read_notebook(notebook)
    except UnreadableNotebook as exc:
        row.status, row.message = "unreadable", str(exc)
        return row, 0.0
    row.notes += repair(nb, release)
    dest = work / "submitted" / row.student_id / row.assignment
    dest.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, dest / f"{row.assignment}.ipynb")
    records = work.parent / "records"  # where the checks leave results, outside the course
    records.mkdir()
    timing = work.parent / "timing.json"
    env = {RECORD_DIR_ENV: str(records), TIMING_ENV: str(timing), **{v: str(threads) for v in THREAD_VARS}}
    config = {"Execute.timeout": cell_timeout}
    if sandbox_memory:  # the kernel starts in a sandbox of its own (grader/sandbox.py)
        more_config, more_env = kernel_settings(work.parent / "kernel", records, sandbox_memory, _kernelspec())
        config.update(more_config)
        env.update(more_env)
    run = dict(assignment=row.assignment, student=row.student_id, root=work, db=work / "gradebook.db",
               log=log_path, env=env)
    start = log_path.stat().st_size if log_path.exists() else 0
    t0 = time.perf_counter()
    try:
        server.run("autograde", config=config, timeout=cap, **run)
        phases["autograde"] = time.perf_counter() - t0
    except subprocess.TimeoutExpired:
        row.status = "timeout"
        row.message = (f"grading stopped after {cap} s, the wall-clock cap per notebook; nothing was scored. "
                       "Make sure Kernel > Restart & Run All finishes quickly with the default settings")
        return row, 0.0
    with log_path.open(encoding="utf-8", errors="replace") as f:
        f.seek(start)
        output = f.read()
    execute_s = json.loads(timing.read_text())["execute_s"] if timing.exists() else 0.0
    out = work / "autograded" / row.student_id / row.assignment / f"{row.assignment}.ipynb"
    if "Kernel died" in output or "DeadKernelError" in output:
        row.status = "kernel_died"
        cause = ("a crash or running out of memory" if not sandbox_memory else
                 f"a crash, or one of the sandbox's limits: {sandbox_memory / 2**30:g} GiB of memory, {PROCESSES} "
                 "processes and threads")
        row.message = (f"the Python kernel died while the notebook ran (exit(), os._exit(), {cause}), so no test "
                       "could be scored. Kernel > Restart & Run All reproduces it")
        return row, execute_s
    if not out.exists() and "CellTimeoutError" in output:
        row.status = "timeout"
        row.message = (f"a cell ran past the per-cell limit of {cell_timeout} s and did not stop when interrupted, "
                       "so the notebook could not finish and nothing was scored")
        return row, execute_s
    if not out.exists() and "nbclient/client.py" in output:  # the kernel broke the messaging while cells ran
        errors = [ln.strip() for ln in output.splitlines() if re.match(r"\s*\w+(Error|Exception): ", ln)]
        row.status = "kernel_error"
        row.message = ("the notebook's kernel stopped answering properly while its cells ran"
                       + (f" ({errors[-1][:200]})" if errors else "") + ", so no test could be scored"
                       + "".join(f"; {note}" for note in _limit_notes_in(output, sandbox_memory)))
        return row, execute_s
    if not out.exists():
        tail = [ln for ln in output.splitlines() if "ERROR" in ln][-3:]
        row.status, row.message = "error", "nbgrader could not grade this notebook: " + " | ".join(tail)[:400]
        return row, execute_s
    t0 = time.perf_counter()
    row.verdicts, disagreements = score_submission(row.student_id, row.assignment, out, tests, records,
                                                   work / "gradebook.db", rubrics)
    row.judge_s = time.perf_counter() - t0
    row.notes += disagreements
    row.message = _failure_summary(out)
    row.notes += _limit_notes(out, sandbox_memory)
    if "Timeout waiting for execute reply" in output or "CellTimeoutError" in row.message:
        row.notes.append(f"a cell ran past the per-cell limit of {cell_timeout} s and was interrupted")
    phases["judge"] = row.judge_s
    t0 = time.perf_counter()
    server.run("generate_feedback", timeout=cap, **run)
    phases["feedback"] = time.perf_counter() - t0
    return row, execute_s


def grade_task(spec: dict, template: bytes) -> dict:
    """Grade spec's notebook (spec: student_id, assignment, name, notebook bytes, notes,
    cell_timeout, cap, threads) in a private copy of the template course. Never raises for a bad
    submission: the row says what happened."""
    global _FINGERPRINT
    t0, started = time.perf_counter(), time.time()
    if _FINGERPRINT is None:
        _FINGERPRINT = course_fingerprint()
    sid, aid = spec["student_id"], spec["assignment"]
    row = Row(sid, aid, notes=list(spec["notes"]))
    files: dict[str, bytes] = {}
    execute_s, db, phases = 0.0, b"", {}
    with tempfile.TemporaryDirectory(prefix="deepdive-task-") as tmp:
        log_path = Path(tmp) / "nbgrader.log"
        try:
            folder, releases, tests, rubrics = _template(template)
            threads = _threads(spec)
            import torch

            torch.set_num_threads(threads)  # the judge in this process, beside other workers
            work = Path(tmp) / "course"
            shutil.copytree(folder, work)
            notebook = Path(tmp) / "input" / spec["name"]
            notebook.parent.mkdir()
            notebook.write_bytes(spec["notebook"])
            server = _server()
            phases["setup"] = time.perf_counter() - t0
            if spec.get("sandbox"):
                sandbox_check(spec["sandbox"])  # on a cluster: this worker's machine
            row, execute_s = grade_one(row, notebook, work, releases[aid], tests[aid], spec["cell_timeout"],
                                       spec["cap"], threads, server, log_path, phases, spec.get("sandbox"),
                                       rubrics[aid])
            for kind in ("autograded", "feedback"):
                base = work / kind / sid / aid
                for path in sorted(base.rglob("*")) if base.is_dir() else []:
                    if path.is_file() and path.name != "timestamp.txt":  # nbgrader's time of grading
                        files[f"{kind}/{sid}/{aid}/{path.relative_to(base)}"] = path.read_bytes()
            db = (work / "gradebook.db").read_bytes()
        except Exception as exc:  # the machinery failed on this notebook: its row says so, the batch goes on
            row.status, row.message = "error", f"could not grade: {type(exc).__name__}: {exc}"[:300]
            with log_path.open("a") as f:
                f.write(traceback.format_exc())
        log = log_path.read_text(encoding="utf-8", errors="replace") if log_path.exists() else ""
    row.verdicts = [dataclasses.asdict(v) if dataclasses.is_dataclass(v) else v for v in row.verdicts]
    return {"row": dataclasses.asdict(row), "files": files, "db": db, "log": log, "sha256": spec["sha256"],
            "execute_s": execute_s, "phases": {k: round(v, 3) for k, v in phases.items()}, "wall_s": round(time.perf_counter() - t0, 3), "fingerprint": _FINGERPRINT,
            "started": started, "worker": f"{socket.gethostname()}:{os.getpid()}"}
