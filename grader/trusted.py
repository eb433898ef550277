"""Verdicts that a student's code cannot fake: a check runs twice, once where the learner's code
lives and once where it cannot reach.

A hidden test cell runs inside the student's kernel, after the student's code, so anything it
computes there (a comparison, an exception, a printed "passed") is the student's to change: a
patched `torch.allclose`, a Tensor subclass whose `==` always says yes, an import hook that
replaces the checks, an exception handler that swallows every error. So a grade never comes
from there. Each check is written once, as an ordinary function, and runs in two modes:

- **kernel mode** (the hidden cell, and pytest): the check makes its inputs, calls the learner's
  code and judges the results as usual, raising `AssertionError` with a learner-readable
  message. Every value the learner's code hands back is converted to plain data (tensors,
  numbers, strings, tuples; an exception becomes its type and message) and appended to a
  *record*: the list of "what your code returned", in order. Under `make grade` the record is
  written, without pickle, to `$DEEPDIVE_RECORD_DIR/<check>.json` + `.safetensors`.
- **judge mode** (`judge()`, in the grading process, after the kernel has exited): the same
  check runs again from the same seed, in a process the learner's code never ran in. It makes
  its own inputs, computes its own oracle and does its own comparisons; each call of the
  learner's code returns the next recorded value instead of running anything. Its verdict and
  message are the grade.

The record holds only the learner's results, never inputs or verdicts, so forging one means
producing correct answers. A missing or truncated record (the check was neutered, the cell was
interrupted) fails. In kernel mode the learner's results also pass through the same conversion,
so both modes see identical data and an untampered kernel always agrees with the judge:
a disagreement is evidence of tampering, and `make grade` reports it.

Writing a check (see grader/README.md):

    @trusted_check(points=3)
    def check_causal_mask(causal_mask):        # parameters = graded names (+ seed)
        mask = causal_mask(4)                  # a learner call: run and recorded, or replayed
        ...

    grads = on_learner_side("gradients", lambda: ...live(rnn_forward)(...)...)

A graded name inside a check is a proxy: calling it is one recorded step. Anything that needs the
learner's live objects (autograd through their output, training their model) goes inside an
`on_learner_side` thunk, which runs only in kernel mode; `live(proxy)` gives the real object
there. A thunk must not draw from the check's generators (the judge does not run it) and must
return plain data.
"""

import contextvars
import functools
import inspect
import json
import os
import re
import stat
import sys
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import torch

RECORD_DIR_ENV = "DEEPDIVE_RECORD_DIR"
_GRADER_DIR = str(Path(__file__).resolve().parent)

# Limits on what a record may hold: a forged or runaway record must not exhaust the grader.
MAX_TENSOR_BYTES = 256 * 2**20  # all tensors of one record together
MAX_JSON_BYTES = 8 * 2**20
MAX_ITEMS = 10_000  # elements of one list / tuple / dict
MAX_DEPTH = 8
MAX_TEXT = 4_000  # characters kept of a string or an exception message
_TENSOR_DTYPES = {
    torch.float64, torch.float32, torch.float16, torch.bfloat16, torch.int64, torch.int32, torch.int16,
    torch.int8, torch.uint8, torch.bool,
}


class RecordError(Exception):
    """A record is missing, truncated or malformed: the check cannot be judged, so it fails."""


class NoRecord(RecordError):
    """No record at all: the check never ran to its end in the kernel (or was replaced)."""


class LearnerRaised(AssertionError):
    """The learner's code raised while a check called it. The same exception, as recorded, is
    raised in kernel mode and in judge mode, so a check that catches it words both alike."""

    def __init__(self, label: str, type_name: str, message: str, where: list[str]):
        self.label, self.type_name, self.message, self.where = label, type_name, message, where
        super().__init__(self.describe(label))

    def describe(self, call: str) -> str:
        """'<call> raised <Type>: <message>', with where it happened in the learner's code."""
        if self.type_name == "NotImplementedError":
            text = f"{call} raised NotImplementedError: replace `raise NotImplementedError()` with your code"
        else:
            text = f"{call} raised {self.type_name}: {self.message}".rstrip(": ")
        if self.where:
            text += "\n  in your code: " + "\n  in your code: ".join(self.where)
        return text

    def explain(self, call: str) -> AssertionError:
        return AssertionError(self.describe(call))


class Opaque:
    """What a learner's result decodes to when it is not plain data (a module, a numpy array, a
    generator, ...). Its class is named after the learner's type, so messages that print
    `type(x).__name__` read naturally ("expected a torch.Tensor, got ndarray")."""

    def __repr__(self):
        return f"<{type(self).__name__} returned by your code>"


@dataclass
class Verdict:
    check: str
    points: float
    passed: bool
    message: str

    @property
    def score(self) -> float:
        return self.points if self.passed else 0.0


# ----------------------------------------------------------------------------- encoding


def _opaque(type_name: str) -> Opaque:
    name = re.sub(r"\W", "_", str(type_name))[:60] or "object"
    return type(name, (Opaque,), {})()


def _text(value) -> str:
    text = str(value)
    return text if len(text) <= MAX_TEXT else text[:MAX_TEXT] + " ..."


def _plain_tensor(value: torch.Tensor) -> torch.Tensor:
    """A plain, contiguous CPU copy: subclasses and their overridden operators stay behind."""
    with torch._C.DisableTorchFunctionSubclass():
        t = value.detach()
        if t.layout != torch.strided:
            t = t.to_dense()
        t = t.to("cpu").clone().contiguous()
    return t.as_subclass(torch.Tensor)


class _Encoder:
    def __init__(self):
        self.tensors: dict[str, torch.Tensor] = {}
        self.nbytes = 0

    def encode(self, value, depth: int = 0):
        if depth > MAX_DEPTH:
            return {"__object__": "value nested too deeply"}
        if value is None or isinstance(value, bool | int | float):
            return value if not isinstance(value, int) or abs(value) < 2**63 else float(value)
        numpy = sys.modules.get("numpy")
        if numpy is not None and isinstance(value, numpy.generic):
            # A NumPy scalar (np.sum's np.int64, a float32 loss): judged by its value, as the Python number it
            # holds, since no notebook asks for Python ints or floats by type (grader/README.md: accept every
            # correct answer). Other NumPy values (arrays, complex numbers) stay opaque.
            kind = value.dtype.kind
            if kind == "b":
                return bool(value)
            if kind in "iu":
                return self.encode(int(value), depth)
            if kind == "f":
                return float(value)
        if isinstance(value, str):
            return {"__str__": _text(value)}
        if isinstance(value, torch.Tensor):
            return self._tensor(value)
        if isinstance(value, torch.dtype):
            return {"__dtype__": str(value).removeprefix("torch.")}
        if isinstance(value, tuple | list):
            if len(value) > MAX_ITEMS:
                return {"__object__": f"{type(value).__name__} of {len(value)} items"}
            items = [self.encode(v, depth + 1) for v in value]
            return {"__tuple__": items} if isinstance(value, tuple) else {"__list__": items}
        if isinstance(value, dict):
            if len(value) > MAX_ITEMS:
                return {"__object__": f"dict of {len(value)} items"}
            return {"__dict__": [[self.encode(k, depth + 1), self.encode(v, depth + 1)] for k, v in value.items()]}
        return {"__object__": type(value).__name__}

    def _tensor(self, value):
        try:
            dtype = value.dtype
            if dtype not in _TENSOR_DTYPES:
                return {"__object__": f"Tensor of dtype {dtype}"}
            t = _plain_tensor(value)
        except Exception as exc:  # meta tensors, tensors whose subclass breaks detach(), ...
            return {"__object__": f"Tensor that cannot be read ({type(exc).__name__})"}
        self.nbytes += t.numel() * t.element_size()
        if self.nbytes > MAX_TENSOR_BYTES:
            return {"__object__": "Tensor beyond the grader's size limit"}
        name = f"t{len(self.tensors)}"
        self.tensors[name] = t
        return {"__tensor__": name, "requires_grad": bool(value.requires_grad)}


def _decode(obj, tensors: dict[str, torch.Tensor], depth: int = 0):
    if depth > MAX_DEPTH + 1:
        raise RecordError("record nested too deeply")
    if obj is None or isinstance(obj, bool | int | float):
        return obj
    if isinstance(obj, dict) and len(obj) >= 1:
        if "__tensor__" in obj:
            t = tensors.get(obj["__tensor__"])
            if t is None:
                raise RecordError(f"record refers to a missing tensor {obj['__tensor__']!r}")
            t = t.clone()
            if obj.get("requires_grad") and t.is_floating_point():
                t.requires_grad_(True)
            return t
        if "__str__" in obj:
            return str(obj["__str__"])
        if "__tuple__" in obj:
            return tuple(_decode(v, tensors, depth + 1) for v in _as_list(obj["__tuple__"]))
        if "__list__" in obj:
            return [_decode(v, tensors, depth + 1) for v in _as_list(obj["__list__"])]
        if "__dict__" in obj:
            out = {}
            for pair in _as_list(obj["__dict__"]):
                if not (isinstance(pair, list) and len(pair) == 2):
                    raise RecordError("malformed dict in record")
                key = _decode(pair[0], tensors, depth + 1)
                out[key if isinstance(key, str | int | float | bool) or key is None else repr(key)] = _decode(
                    pair[1], tensors, depth + 1)
            return out
        if "__dtype__" in obj:
            dtype = getattr(torch, str(obj["__dtype__"]), None)
            return dtype if isinstance(dtype, torch.dtype) else _opaque("dtype")
        if "__object__" in obj:
            return _opaque(obj["__object__"])
    raise RecordError(f"malformed value in record: {str(obj)[:80]}")


def _as_list(obj) -> list:
    if not isinstance(obj, list) or len(obj) > MAX_ITEMS:
        raise RecordError("malformed list in record")
    return obj


def _learner_frames(tb) -> list[str]:
    """Where the learner's code raised: the last frames outside grader/ (never our source)."""
    frames = [f for f in traceback.extract_tb(tb) if not os.path.abspath(f.filename).startswith(_GRADER_DIR)]
    return [f"line {f.lineno} in {f.name}: {(f.line or '').strip()}"[:200] for f in frames[-3:]]


# ----------------------------------------------------------------------------- records


@dataclass
class Record:
    """What the learner's code returned during one run of one check, in call order."""

    check: str
    steps: list = field(default_factory=list)  # [{"label": ..., "value": ...} | {"label": ..., "raised": ...}]
    tensors: dict = field(default_factory=dict)

    def to_bytes(self) -> tuple[bytes, bytes]:
        from safetensors.torch import save

        meta = json.dumps({"check": self.check, "steps": self.steps}, allow_nan=True).encode()
        return meta, save(self.tensors) if self.tensors else b""

    @classmethod
    def from_bytes(cls, meta: bytes, blob: bytes) -> "Record":
        from safetensors.torch import load

        if len(meta) > MAX_JSON_BYTES or len(blob) > MAX_TENSOR_BYTES + MAX_JSON_BYTES:
            raise RecordError("record larger than the grader accepts")
        try:
            data = json.loads(meta.decode("utf-8"))
            tensors = load(blob) if blob else {}
        except Exception as exc:
            raise RecordError(f"record unreadable ({type(exc).__name__})") from exc
        if not isinstance(data, dict) or not isinstance(data.get("steps"), list):
            raise RecordError("record has no steps")
        return cls(str(data.get("check")), data["steps"], tensors)

    def write(self, folder: Path) -> None:
        """Write `<check>.safetensors` then `<check>.json`, each atomically: the JSON file exists
        only once the whole record does."""
        meta, blob = self.to_bytes()
        folder.mkdir(parents=True, exist_ok=True)
        for suffix, data in ((".safetensors", blob), (".json", meta)):
            tmp = folder / f".{self.check}{suffix}.tmp"
            tmp.write_bytes(data)
            os.replace(tmp, folder / f"{self.check}{suffix}")

    @classmethod
    def read(cls, folder: Path, check: str) -> "Record":
        meta_path, blob_path = folder / f"{check}.json", folder / f"{check}.safetensors"
        if not os.path.lexists(meta_path):
            raise NoRecord("no result was recorded")
        meta = _read_plain_file(meta_path, MAX_JSON_BYTES)
        blob = _read_plain_file(blob_path, MAX_TENSOR_BYTES + MAX_JSON_BYTES) if os.path.lexists(blob_path) else b""
        return cls.from_bytes(meta, blob)


def _read_plain_file(path: Path, limit: int) -> bytes:
    """Read at most `limit` bytes of a regular file. The learner's code could have left a symlink,
    a pipe or a device (/dev/zero) under the record's name: those are refused, never followed."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError as exc:
        raise RecordError(f"record cannot be opened ({exc.strerror})") from exc
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            raise RecordError("record is not a plain file")
        data = f.read(limit + 1)
    if len(data) > limit:
        raise RecordError("record larger than the grader accepts")
    return data


# ----------------------------------------------------------------------------- the two modes


class _RecordEnded(Exception):
    """Judge mode asked for a step the kernel never recorded."""


class _Session:
    def __init__(self, check: str, record: Record | None = None):
        self.judging = record is not None
        self.record = record or Record(check)
        self.encoder = _Encoder()
        self.cursor = 0

    def step(self, label: str, thunk):
        if self.judging:
            return self._replay(label)
        entry: dict = {"label": label}
        try:
            value = thunk()
        except Exception as exc:  # the learner's error, recorded; KeyboardInterrupt & co. end the check
            entry["raised"] = {"type": type(exc).__name__, "message": _text(exc),
                               "where": _learner_frames(exc.__traceback__)}
            self.record.steps.append(entry)
            raise self._raised(label, entry["raised"]) from None
        entry["value"] = self.encoder.encode(value)
        self.record.tensors = self.encoder.tensors
        self.record.steps.append(entry)
        return _decode(entry["value"], self.record.tensors)

    def _replay(self, label: str):
        steps = self.record.steps
        if self.cursor >= len(steps):
            raise _RecordEnded(label)
        entry = steps[self.cursor]
        self.cursor += 1
        if not isinstance(entry, dict) or entry.get("label") != label:
            raise RecordError(f"recorded step {self.cursor} is not '{label}'")
        if "raised" in entry:
            raise self._raised(label, entry["raised"])
        if "value" not in entry:
            raise RecordError(f"recorded step {self.cursor} has no value")
        return _decode(entry["value"], self.record.tensors)

    @staticmethod
    def _raised(label, raised) -> LearnerRaised:
        if not isinstance(raised, dict):
            raise RecordError("malformed exception in record")
        where = raised.get("where") if isinstance(raised.get("where"), list) else []
        return LearnerRaised(label, _text(raised.get("type", "Exception")), _text(raised.get("message", "")),
                             [_text(w) for w in where[:3]])


_session: contextvars.ContextVar[_Session | None] = contextvars.ContextVar("deepdive_check_session", default=None)
_sink: contextvars.ContextVar[dict | None] = contextvars.ContextVar("deepdive_record_sink", default=None)
_failures: contextvars.ContextVar[list | None] = contextvars.ContextVar("deepdive_run_all", default=None)


class run_all:
    """`with run_all():` around a hidden cell's checks runs every one of them even when an earlier
    one fails (each is judged and scored on its own), then fails with all their messages."""

    def __enter__(self):
        self.failures: list[tuple[str, str]] = []
        self._token = _failures.set(self.failures)
        return self

    def __exit__(self, etype, exc, tb):
        _failures.reset(self._token)
        if etype is None and self.failures:
            raise AssertionError("\n\n".join(f"{name}: {message}" for name, message in self.failures))
        return False


def on_learner_side(label: str, thunk):
    """Run `thunk` (which may use `live(...)` objects) where the learner's code lives, and record
    what it returns; in judge mode return the recorded value instead of running it."""
    session = _session.get()
    if session is None:
        raise RuntimeError("on_learner_side() is only for use inside a @trusted_check")
    return session.step(label, thunk)


class Graded:
    """A graded name as a check sees it: calling it is one recorded learner step."""

    def __init__(self, name: str, obj=None, judging: bool = False):
        self._name, self._obj, self._judging = name, obj, judging

    def __call__(self, *args, **kwargs):
        return on_learner_side(self._name, lambda: self._obj(*args, **kwargs))

    def __repr__(self):
        return f"<your {self._name}>"


def live(graded: Graded):
    """The learner's real object behind a graded name: only inside an on_learner_side thunk."""
    if graded._judging:
        raise RuntimeError("live() used outside an on_learner_side thunk: the judge has no learner code")
    return graded._obj


def trusted_check(points: float):
    """Declare a hidden check worth `points`. Calling the decorated function runs it in kernel
    mode (and writes its record when $DEEPDIVE_RECORD_DIR is set); `judge()` replays it."""

    def wrap(body):
        sig = inspect.signature(body)
        graded = [name for name in sig.parameters if name != "seed"]

        @functools.wraps(body)
        def check(*args, **kwargs):
            bound = sig.bind(*args, **kwargs)
            bound.apply_defaults()
            session = _Session(body.__name__)
            call = {name: Graded(name, bound.arguments[name]) if name in graded else value
                    for name, value in bound.arguments.items()}
            token = _session.set(session)
            try:
                return body(**call)
            except Exception as exc:
                failures = _failures.get()
                if failures is None:
                    raise
                failures.append((body.__name__, str(exc) if isinstance(exc, AssertionError)
                                 else f"{type(exc).__name__}: {exc}"))
            finally:
                _session.reset(token)
                _keep(session.record)

        check.points = points
        check.body = body
        check.graded_names = graded
        return check

    return wrap


def _keep(record: Record) -> None:
    sink = _sink.get()
    if sink is not None:
        sink[record.check] = record
        return
    folder = os.environ.get(RECORD_DIR_ENV)
    if folder:
        try:
            record.write(Path(folder))
        except OSError as exc:  # never hide the check's own outcome behind a disk error
            print(f"[grader] could not save the result of {record.check}: {exc}")


class capture_records:
    """`with capture_records() as records:` keeps kernel-mode records in memory (for tests)."""

    def __enter__(self) -> dict:
        self.records: dict = {}
        self._token = _sink.set(self.records)
        return self.records

    def __exit__(self, *exc):
        _sink.reset(self._token)
        return False


def judge(check, record: Record | None, seed: int | None = None) -> Verdict:
    """The trusted verdict: replay `check` against `record` in this process, from `seed`.

    Never raises: a malformed record, or a step the kernel never reached, is a failed check
    with a message saying so."""
    name, points = check.__name__, float(check.points)
    if record is None:
        return Verdict(name, points, False, _NO_RECORD)
    session = _Session(name, record)
    call = {n: Graded(n, judging=True) for n in check.graded_names}
    if "seed" in inspect.signature(check.body).parameters and seed is not None:
        call["seed"] = seed
    token = _session.set(session)
    try:
        check.body(**call)
    except AssertionError as exc:
        return Verdict(name, points, False, str(exc))
    except _RecordEnded as exc:
        return Verdict(name, points, False,
                       f"no result was recorded for the step '{exc}': the hidden test stopped before it in your "
                       "notebook (a cell was interrupted, the kernel stopped, or the test was altered)")
    except RecordError as exc:
        return Verdict(name, points, False, f"the result your notebook recorded could not be used: {exc}")
    except Exception as exc:  # the recorded data broke the check: the learner's result was unusable
        return Verdict(name, points, False,
                       f"your code's results could not be checked ({type(exc).__name__}: {_text(exc)[:300]})")
    finally:
        _session.reset(token)
    return Verdict(name, points, True, "passed")


_NO_RECORD = ("no result was recorded: this hidden test did not run to completion in your notebook "
              "(a cell was interrupted or the kernel stopped), or its code was replaced")


def judge_saved(check, folder: Path, seed: int | None = None) -> Verdict:
    """`judge` on the record that kernel mode wrote into `folder`."""
    try:
        record = Record.read(folder, check.__name__)
    except NoRecord:
        return judge(check, None, seed)
    except RecordError as exc:
        return Verdict(check.__name__, float(check.points), False,
                       f"the result your notebook recorded could not be used: {exc}")
    return judge(check, record, seed)


def record_and_judge(check, kwargs: dict, seed: int | None = None) -> tuple[str | None, Verdict]:
    """Both modes in one go, through real serialisation: (kernel-mode failure message or None,
    trusted verdict). What the test suite runs for every check, reference and mutant."""
    if seed is not None and "seed" in inspect.signature(check.body).parameters:
        kwargs = {**kwargs, "seed": seed}
    kernel_error = None
    with capture_records() as records:
        try:
            check(**kwargs)
        except AssertionError as exc:
            kernel_error = str(exc)
        except Exception as exc:  # in a notebook this fails the hidden cell too
            kernel_error = f"{type(exc).__name__}: {exc}"
    record = records.get(check.__name__)
    if record is not None:
        record = Record.from_bytes(*record.to_bytes())
    return kernel_error, judge(check, record, kwargs.get("seed"))
