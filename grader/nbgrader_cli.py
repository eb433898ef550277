"""Run nbgrader commands with the course configuration (grader/nbgrader_config.py)."""

import os
import subprocess
import sys
from pathlib import Path

from grader.assignments import ROOT

GRADER_DIR = ROOT / "grader"


def nbgrader_env() -> dict:
    """Environment for nbgrader and the kernels it starts.

    - JUPYTER_CONFIG_PATH makes nbgrader load grader/nbgrader_config.py;
    - PYTHONPATH lets hidden test cells `import grader.checks` and nbgrader load our preprocessors;
    - the interpreter's bin/ goes first on PATH because nbgrader shells out to `alembic`.
    """
    env = dict(os.environ)
    env["JUPYTER_CONFIG_PATH"] = os.pathsep.join(filter(None, [str(GRADER_DIR), env.get("JUPYTER_CONFIG_PATH")]))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    # Graded checks run on CPU whatever the grading machine has (grader/README.md, "Time rule").
    env["DEEPDIVE_DEVICE"] = "cpu"
    env["CUDA_VISIBLE_DEVICES"] = ""
    env.pop("DEEPDIVE_RECORD_DIR", None)  # set per submission by grader.grade, never inherited
    for key, value in dask_worker_tuning().items():  # the kernel runs as a learner's would
        if env.get(key) == value:
            env.pop(key)
    env.setdefault("PYTHONHASHSEED", "0")
    return env


def dask_worker_tuning() -> dict:
    """The variables a Dask nanny puts in its worker's environment to tune the worker itself
    (`distributed.nanny.pre-spawn-environ`: MALLOC_TRIM_THRESHOLD_=65536, one OpenMP/MKL/OpenBLAS
    thread; and PYTHONHASHSEED=6640), empty outside a Dask worker. A kernel must not inherit them:
    with MALLOC_TRIM_THRESHOLD_ glibc hands memory back to the system on every free, and a torch
    training step runs 1.6-2.5x slower (measured: module 08's step 30 -> 75 ms). The kernels' thread
    counts are set per notebook instead (grader.task)."""
    if "distributed" not in sys.modules:
        return {}
    import dask.config

    tuning = {key: str(value) for key, value in (dask.config.get("distributed.nanny.pre-spawn-environ") or {}).items()}
    return {**tuning, "PYTHONHASHSEED": "6640"}  # distributed.nanny sets this one itself when it is unset or 0


def nbgrader(*args: str, root: Path, db: Path, timeout: float | None = None, log=None,
             env: dict | None = None) -> subprocess.CompletedProcess:
    """`nbgrader <args>` on the course root `root` with gradebook `db`; output captured.

    Runs in its own process group so that a wall-clock timeout also kills the kernel it started.
    `env` adds variables for nbgrader and the kernels it starts (e.g. where checks record results).
    Raises subprocess.TimeoutExpired after killing the group.
    """
    cmd = [
        sys.executable, "-m", "nbgrader", *args,
        f"--CourseDirectory.root={root}",
        f"--CourseDirectory.db_url=sqlite:///{db}",
    ]
    proc = subprocess.Popen(
        cmd, cwd=root, env={**nbgrader_env(), **(env or {})}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True, start_new_session=True,
    )
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, 9)
        proc.communicate()
        raise
    if log is not None:
        log.write(f"$ {' '.join(cmd)}\n{out}\n")
    return subprocess.CompletedProcess(cmd, proc.returncode, out, "")
