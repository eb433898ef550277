"""nbgrader's autograde and feedback without paying for a new Python and nbgrader each time.

`python -m nbgrader autograde ...` spends seconds importing nbgrader (nbconvert, jupyter_client,
SQLAlchemy, alembic) before it grades anything, and grading a notebook takes two such commands
(autograde, then feedback after the trusted verdicts). A grading worker instead starts this
server once: it imports nbgrader, then forks a child per command, so each command starts with
everything loaded. The child is what `nbgrader <command>` would be (same configuration,
grader/nbgrader_config.py, through nbgrader's own `NbGraderAPI`), in its own session so that a
wall-clock cap kills it, and the kernel it started, without touching the server.

Protocol (JSON lines): the client writes {"command", "assignment", "student", "root", "db",
"config", "env", "log"}; the server answers {"pid"} when the child starts and {"pid", "rc"} when
it ends. The child writes nbgrader's log to `log`.
"""

import json
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

GRADER_DIR = Path(__file__).resolve().parent


# ----------------------------------------------------------------------------- server side

def _child(req: dict) -> int:
    """Run one nbgrader command in this (forked) process; 0 if nbgrader reported success."""
    from nbgrader.apps.api import NbGraderAPI
    from traitlets.config import Config
    from traitlets.config.loader import PyFileConfigLoader

    os.environ.update(req.get("env", {}))
    os.chdir(req["root"])
    config = PyFileConfigLoader("nbgrader_config.py", path=str(GRADER_DIR)).load_config()
    config.CourseDirectory.root = req["root"]
    config.CourseDirectory.db_url = f"sqlite:///{req['db']}"
    extra = Config()
    for dotted, value in req.get("config", {}).items():  # e.g. {"Execute.timeout": 40}
        section, name = dotted.split(".")
        extra[section][name] = value
    config.merge(extra)
    api = NbGraderAPI(config=config)
    if req["command"] == "autograde":
        result = api.autograde(req["assignment"], req["student"], force=True, create=True)
    elif req["command"] == "generate_feedback":
        result = api.generate_feedback(req["assignment"], req["student"], force=True)
    elif req["command"] == "generate_assignment":
        result = api.generate_assignment(req["assignment"], force=True, create=True)
    else:
        raise ValueError(f"unknown command {req['command']!r}")
    sys.stdout.write(result.get("log", "") + "\n" + (result.get("error") or ""))
    sys.stdout.flush()
    return 0 if result.get("success") else 1


def _die_with_parent() -> None:
    """Linux: the kernel sends this process SIGKILL when its parent dies (a killed grading run
    leaves nothing running)."""
    try:
        import ctypes

        ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _watch_parent(children: dict) -> None:
    """If the grading worker that started this server dies, stop the running command and exit."""
    parent = os.getppid()
    while os.getppid() == parent:
        time.sleep(1)
    for pid in list(children):
        try:
            os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    os._exit(1)


def _warm_feedback() -> None:
    """Render one small feedback page here, in the server, with nbgrader's own feedback exporter.
    Every child forked after this inherits what the first page costs: the compiled regular
    expressions of the markdown renderer, pygments' Python lexer, the HTML parser and the CSS
    selectors that nbconvert runs over the page, and the loaded stylesheets (measured: a feedback
    page in a child 1.1 s cold, 0.4 s after this). Nothing is written to disk."""
    import base64

    import nbformat.v4 as nbf
    from nbconvert.exporters import HTMLExporter
    from nbgrader.converters.generate_feedback import GenerateFeedback
    from nbgrader.coursedir import CourseDirectory
    from traitlets.config import Config

    png = base64.b64encode(bytes.fromhex(
        "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
        "1f15c4890000000d49444154789c6360000002000100e221bc330000000049454e44ae426082")).decode()
    nb = nbf.new_notebook(cells=[
        nbf.new_markdown_cell("# Title\n\nText with `code`, *emphasis*, a [link](https://arxiv.org) and $x^2$.\n\n"
                              "| a | b |\n|---|---|\n| 1 | 2 |\n\n- item"),
        nbf.new_code_cell("import torch\n\ndef f(x: int) -> int:\n    return x + 1  # comment\nprint(f(1))",
                          outputs=[nbf.new_output("stream", name="stdout", text="2\n"),
                                   nbf.new_output("display_data", data={"image/png": png, "text/plain": "<Figure>"}),
                                   nbf.new_output("execute_result", data={"text/html": "<b>x</b>", "text/plain": "x"},
                                                  execution_count=1),
                                   nbf.new_output("error", ename="AssertionError", evalue="wrong",
                                                  traceback=["\x1b[0;31mAssertionError\x1b[0m: wrong"])],
                          metadata={"nbgrader": {"grade": True, "grade_id": "x", "points": 1, "score": 0, "solution": False,
                                                 "locked": True, "schema_version": 3}}),
    ], metadata={"language_info": {"name": "python", "pygments_lexer": "ipython3"}})
    config = Config()
    converter = GenerateFeedback(coursedir=CourseDirectory(config=config), config=config)
    exporter = HTMLExporter(parent=converter, config=converter.config)
    for pp in converter.preprocessors[1:]:  # GetGrades reads a gradebook; the rest only render
        exporter.register_preprocessor(pp)
    exporter.from_notebook_node(nb, resources={"nbgrader": {"notebook": "warm-up", "score": 0, "max_score": 1,
                                                            "late_penalty": 0}})


def _alembic_head() -> str:
    """The revision nbgrader stamps on a new gradebook. nbgrader's `get_alembic_version` asks for it by
    running the `alembic heads` command (3 s: a new Python importing alembic and nbgrader, for every
    new gradebook); this asks alembic's own API, in this process, for the same head of the same
    migration scripts (tests/test_nbgrader_server.py compares the two)."""
    from alembic.config import Config as AlembicConfig
    from alembic.script import ScriptDirectory
    from nbgrader.dbutil import _temp_alembic_ini

    with _temp_alembic_ini("sqlite:////tmp/gradebook.db") as ini:
        return ScriptDirectory.from_config(AlembicConfig(ini)).get_current_head()


def _warm_gradebook() -> None:
    """Open a throw-away gradebook and query it: SQLAlchemy configures nbgrader's mappers and the
    SQLite dialect once, here, instead of in every autograde and feedback child."""
    import tempfile

    from nbgrader.api import Gradebook

    with tempfile.TemporaryDirectory(prefix="deepdive-warm-") as tmp:
        with Gradebook(f"sqlite:///{tmp}/gradebook.db") as gb:
            gb.add_assignment("warm-up")
            gb.add_student("warm-up")
            gb.assignments, gb.students  # noqa: B018


def serve() -> None:
    import functools
    import threading

    import nbconvert.exporters  # noqa: F401
    import nbgrader.api
    import nbgrader.apps.api  # noqa: F401  (the seconds this server exists to pay once)
    import nbgrader.preprocessors  # noqa: F401

    import grader.preprocessors  # noqa: F401

    nbgrader.api.get_alembic_version = functools.cache(_alembic_head)
    try:
        _warm_gradebook()
        _warm_feedback()
    except Exception:  # noqa: BLE001  (a warm-up only: the real pages are rendered in the children)
        pass
    running: dict = {}
    threading.Thread(target=_watch_parent, args=(running,), daemon=True).start()
    requests, answers = sys.stdin, sys.stdout
    for line in requests:
        req = json.loads(line)
        pid = os.fork()
        if pid == 0:
            rc = 1
            try:
                os.setsid()
                _die_with_parent()
                fd = os.open(req["log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
                os.dup2(fd, 1)
                os.dup2(fd, 2)
                sys.stdout = os.fdopen(1, "w", buffering=1, closefd=False)
                sys.stderr = sys.stdout
                rc = _child(req)
            except BaseException:  # noqa: BLE001  (reported in the log; the server must go on)
                import traceback

                traceback.print_exc()
            finally:
                sys.stdout.flush()
                os._exit(rc)
        running[pid] = True
        answers.write(json.dumps({"pid": pid}) + "\n")
        answers.flush()
        _, status = os.waitpid(pid, 0)
        running.pop(pid, None)
        answers.write(json.dumps({"pid": pid, "rc": os.waitstatus_to_exitcode(status)}) + "\n")
        answers.flush()


# ----------------------------------------------------------------------------- client side

class NbgraderServer:
    """One server per grading worker process; `run` is one nbgrader command, with a wall-clock cap."""

    def __init__(self, env: dict):
        self.proc = subprocess.Popen([sys.executable, "-m", "grader.nbgrader_server"], env=env,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1)

    def _answer(self, deadline: float | None) -> dict | None:
        out = self.proc.stdout
        wait = None if deadline is None else max(deadline - time.monotonic(), 0)
        ready, _, _ = select.select([out], [], [], wait)
        if not ready:
            return None
        line = out.readline()
        if not line:
            raise RuntimeError(f"the nbgrader server exited (status {self.proc.poll()})")
        return json.loads(line)

    def run(self, command: str, assignment: str, student: str, root: Path, db: Path, log: Path,
            config: dict | None = None, env: dict | None = None, timeout: float | None = None) -> int:
        """The command's exit status (0: nbgrader succeeded). Raises subprocess.TimeoutExpired after
        killing the command's whole session when it runs past `timeout` seconds."""
        req = {"command": command, "assignment": assignment, "student": student, "root": str(root),
               "db": str(db), "config": config or {}, "env": env or {}, "log": str(log)}
        self.proc.stdin.write(json.dumps(req) + "\n")
        self.proc.stdin.flush()
        started = self._answer(None)
        deadline = None if timeout is None else time.monotonic() + timeout
        done = self._answer(deadline)
        if done is None:
            try:
                os.killpg(started["pid"], signal.SIGKILL)
            except ProcessLookupError:
                pass
            self._answer(None)  # the server has reaped it
            raise subprocess.TimeoutExpired(command, timeout)
        return done["rc"]

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()


if __name__ == "__main__":
    serve()
