"""The trusted-verdict protocol (grader/trusted.py, grader/hidden.py), in-process and fast.

A toy check stands in for a module's: the kernel-mode half runs with the "learner's" tricks in
place (patched comparisons, a lying Tensor subclass, a neutered check), the judge runs afterwards
without them, and only the judge's verdict counts."""

import json
import math
import re

import pytest
import torch

from grader.hidden import HiddenCellError, parse_hidden_cell
from grader.trusted import (
    LearnerRaised,
    Record,
    _decode,
    _Encoder,
    capture_records,
    judge,
    judge_saved,
    live,
    on_learner_side,
    record_and_judge,
    run_all,
    trusted_check,
)


@trusted_check(points=2)
def check_double(double, seed=0):
    """double(x) == 2 x, and its gradient is 2 (computed on the learner's side)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(3, 4, generator=g)
    out = double(x)
    if not isinstance(out, torch.Tensor) or out.shape != x.shape:
        raise AssertionError(f"double(x) must return a tensor of shape {tuple(x.shape)}")
    if not torch.allclose(out, 2 * x):
        raise AssertionError("double(x) is not 2 x")
    grad = on_learner_side("gradient", lambda: _grad(live(double), x))
    if not torch.equal(grad, torch.full_like(x, 2.0)):
        raise AssertionError("the gradient of double(x).sum() must be 2 everywhere")


def _grad(fn, x):
    leaf = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(fn(leaf).sum(), [leaf])
    return g


@trusted_check(points=1)
def check_triple(triple):
    out = triple(torch.ones(2))
    if not torch.equal(out, torch.full((2,), 3.0)):
        raise AssertionError("triple(ones) is not 3")


def honest(x):
    return 2 * x


def wrong(x):
    return 2 * x + 0.5


def kernel_then_judge(check, fn, during_kernel=None, seed=0):
    """Kernel mode (optionally with a trick active), then the judge with the trick gone."""
    with capture_records() as records:
        if during_kernel is not None:
            with during_kernel():
                kernel_error = _outcome(check, fn, seed)
        else:
            kernel_error = _outcome(check, fn, seed)
    record = records.get(check.__name__)
    record = None if record is None else Record.from_bytes(*record.to_bytes())
    return kernel_error, judge(check, record, seed)


def _outcome(check, fn, seed):
    try:
        check(fn, seed=seed)
    except AssertionError as exc:
        return str(exc)
    return None


class patched_compare:
    """What a learner's cell can do: every comparison says 'equal'."""

    def __enter__(self):
        self.saved = torch.allclose, torch.equal
        torch.allclose = lambda *a, **k: True
        torch.equal = lambda *a, **k: True

    def __exit__(self, *exc):
        torch.allclose, torch.equal = self.saved


class Liar(torch.Tensor):
    """A Tensor subclass whose comparisons always say 'equal'."""

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        if func in (torch.allclose, torch.equal, torch.Tensor.allclose, torch.Tensor.equal):
            return True
        return super().__torch_function__(func, types, args, kwargs or {})


def lying_wrong(x):
    return wrong(x).as_subclass(Liar)


# ----------------------------------------------------------------------------- verdicts


def test_honest_code_passes_in_both_modes():
    kernel_error, verdict = kernel_then_judge(check_double, honest)
    assert kernel_error is None and verdict.passed and verdict.score == 2


def test_wrong_code_fails_in_both_modes_with_the_same_message():
    kernel_error, verdict = kernel_then_judge(check_double, wrong)
    assert not verdict.passed and verdict.score == 0
    assert kernel_error == verdict.message == "double(x) is not 2 x"


def test_patched_comparisons_fool_the_kernel_but_not_the_judge():
    kernel_error, verdict = kernel_then_judge(check_double, wrong, during_kernel=patched_compare)
    assert kernel_error is None, "the trick should have fooled the kernel-mode run"
    assert not verdict.passed and verdict.message == "double(x) is not 2 x"


def test_a_lying_tensor_subclass_is_read_as_plain_numbers():
    assert lying_wrong(torch.ones(1)).equal(torch.zeros(1)), "the subclass should lie"
    kernel_error, verdict = kernel_then_judge(check_double, lying_wrong)
    assert kernel_error is not None and not verdict.passed
    enc = _Encoder()
    value = _decode(enc.encode(lying_wrong(torch.ones(2))), enc.tensors)
    assert type(value) is torch.Tensor and torch.equal(value, torch.full((2,), 2.5))


def test_a_neutered_check_leaves_no_record_and_fails():
    with capture_records() as records:
        pass  # the learner's import hook replaced the check: nothing ran, nothing was recorded
    verdict = judge(check_double, records.get("check_double"))
    assert not verdict.passed and "no result was recorded" in verdict.message


def test_the_judge_runs_no_learner_code():
    calls = []

    def spy(x):
        calls.append(1)
        return 2 * x

    _, verdict = kernel_then_judge(check_double, spy)
    n = len(calls)
    record = _record_of(check_double, double=spy)
    calls.clear()
    assert judge(check_double, record).passed and calls == [] and n == 2


def _record_of(check, **kwargs):
    """The record a kernel-mode run leaves, after a real serialisation round trip."""
    with capture_records() as records:
        try:
            check(**kwargs)
        except AssertionError:
            pass
    return Record.from_bytes(*records[check.__name__].to_bytes())


def test_a_record_from_another_seed_does_not_pass():
    record = _record_of(check_double, double=honest, seed=1)
    assert not judge(check_double, record, seed=0).passed


def test_a_truncated_record_fails_with_a_reason():
    record = _record_of(check_double, double=honest)
    record.steps = record.steps[:1]
    verdict = judge(check_double, Record.from_bytes(*record.to_bytes()))
    assert not verdict.passed and "stopped before" in verdict.message


@pytest.mark.parametrize("forge", ["bad_json", "missing_tensor", "wrong_label", "not_a_list", "weird_value"])
def test_malformed_or_forged_records_fail_and_never_crash_the_judge(forge):
    meta, blob = _record_of(check_double, double=honest).to_bytes()
    data = json.loads(meta)
    if forge == "bad_json":
        meta = b"{not json"
    elif forge == "missing_tensor":
        data["steps"][0]["value"]["__tensor__"] = "t99"
    elif forge == "wrong_label":
        data["steps"][0]["label"] = "something_else"
    elif forge == "not_a_list":
        data["steps"] = {"label": "double"}
    elif forge == "weird_value":
        data["steps"][0]["value"] = {"__import__": "os"}
    if forge != "bad_json":
        meta = json.dumps(data).encode()
    try:
        record = Record.from_bytes(meta, blob)
    except Exception as exc:  # unreadable at load time: judge_saved turns that into a failed check
        assert forge in ("bad_json", "not_a_list"), exc
        return
    verdict = judge(check_double, record)
    assert not verdict.passed and verdict.message


def test_learner_exceptions_are_recorded_with_where_but_never_grader_paths():
    def broken(x):
        return x @ torch.ones(7)  # a shape error in the learner's code

    kernel_error, verdict = kernel_then_judge(check_double, broken)
    assert not verdict.passed and kernel_error == verdict.message
    assert "raised RuntimeError" in verdict.message and "x @ torch.ones(7)" in verdict.message
    assert "grader" not in verdict.message

    def stub(x):
        raise NotImplementedError()

    _, verdict = kernel_then_judge(check_double, stub)
    assert "replace `raise NotImplementedError()` with your code" in verdict.message


def test_exceptions_reach_the_check_as_learner_raised_in_both_modes():
    seen = []

    @trusted_check(points=1)
    def check_catches(fn):
        try:
            fn(1)
        except LearnerRaised as exc:
            seen.append((exc.type_name, exc.message))
            raise exc.explain("fn(1)") from None

    def bad(n):
        raise ValueError("nope")

    kernel_error, verdict = record_and_judge(check_catches, {"fn": bad})
    assert seen == [("ValueError", "nope"), ("ValueError", "nope")]
    assert kernel_error == verdict.message and verdict.message.startswith("fn(1) raised ValueError: nope")


def test_round_trip_of_plain_data():
    enc = _Encoder()
    value = (torch.arange(6).reshape(2, 3), [1.5, math.inf, None, True, "text"], {"k": torch.zeros(2, dtype=torch.bool)},
             torch.float16, torch.ones(2, requires_grad=True) * 2, torch.tensor(3.0, dtype=torch.bfloat16))
    record = Record("r", [{"label": "x", "value": enc.encode(value)}], enc.tensors)
    back = Record.from_bytes(*record.to_bytes())
    got = _decode(back.steps[0]["value"], back.tensors)
    assert torch.equal(got[0], value[0]) and got[1][:2] == [1.5, math.inf] and got[1][2:] == [None, True, "text"]
    assert torch.equal(got[2]["k"], value[2]["k"]) and got[3] is torch.float16
    assert got[4].requires_grad and torch.equal(got[4].detach(), torch.full((2,), 2.0))
    assert got[5].dtype == torch.bfloat16
    obj = _decode(enc.encode(object()), enc.tensors)
    assert type(obj).__name__ == "object" and not isinstance(obj, torch.Tensor)


def test_records_are_written_and_read_from_a_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("DEEPDIVE_RECORD_DIR", str(tmp_path))
    _outcome(check_double, honest, 0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["check_double.json", "check_double.safetensors"]
    assert judge_saved(check_double, tmp_path).passed
    (tmp_path / "check_double.json").write_text("[]")
    assert not judge_saved(check_double, tmp_path).passed
    assert "no result was recorded" in judge_saved(check_triple, tmp_path).message


def test_run_all_runs_every_check_then_fails_with_all_messages():
    ran = []

    def triple(x):
        ran.append("triple")
        return 3 * x

    with pytest.raises(AssertionError) as info:
        with run_all():
            check_double(wrong)
            check_triple(triple)
    assert ran == ["triple"], "the second check must run although the first failed"
    assert str(info.value) == "check_double: double(x) is not 2 x"
    with pytest.raises(AssertionError):  # outside run_all a failure stops at once
        check_double(wrong)


# ----------------------------------------------------------------------------- hidden cells


def _cell(body: str, head: str = "# what is checked") -> str:
    return f"{head}\n### BEGIN HIDDEN TESTS\n{body}\n### END HIDDEN TESTS"


IMPORT = "from grader.checks import m02_attention as checks\n"


def test_a_well_formed_hidden_cell_is_parsed():
    test = parse_hidden_cell("02_attention", "causal_mask_hidden", _cell(
        IMPORT + "from grader.trusted import run_all\nwith run_all():\n"
        "    checks.check_causal_mask(causal_mask)\n"
        "    checks.check_causal_mask_in_attention(causal_mask, seed=3)"), 4)
    assert [(c.name, c.seed) for c in test.calls] == [("check_causal_mask", None), ("check_causal_mask_in_attention", 3)]
    assert test.description == "# what is checked"


@pytest.mark.parametrize("body,points,words", [
    ("checks.check_causal_mask_in_attention(padding_mask)", 2, "in this order"),
    ("checks.check_nothing(causal_mask)", 2, "not a @trusted_check"),
    ("checks.check_causal_mask(causal_mask)\nprint('hi')", 2, "one check call"),
    ("checks.check_causal_mask(causal_mask)\nchecks.check_padding_mask(padding_mask)", 4, "with run_all()"),
    ("checks.check_causal_mask(causal_mask)", 3, "add up to 2"),
    ("checks.check_causal_mask(causal_mask, seed=x)", 2, "literal seed"),
    ("import os", 2, "only"),
])
def test_malformed_hidden_cells_are_refused(body, points, words):
    with pytest.raises(HiddenCellError, match=words.replace("(", r"\(").replace(")", r"\)")):
        parse_hidden_cell("02_attention", "causal_mask_hidden", _cell(IMPORT + body), points)


@pytest.mark.parametrize("grade_id,body,words", [
    # the naming rule: X_hidden calls only check_X / check_X_<aspect>
    ("causal_mask_hidden", "checks.check_padding_mask(padding_mask)", "not a check of causal_mask"),
    ("padding_mask_hidden", "checks.check_padding_mask_in_attention(padding_mask)\n", None),
    ("causal_mask_tests", "checks.check_causal_mask(causal_mask)", "<graded name>_hidden"),
])
def test_a_hidden_cell_may_only_call_checks_of_its_own_exercise(grade_id, body, words):
    from grader.assignments import checks_module
    points = sum(getattr(checks_module("02_attention"), name).points for name in
                 re.findall(r"check_\w+", body))
    if words is None:  # an aspect check of the cell's own exercise is fine
        assert parse_hidden_cell("02_attention", grade_id, _cell(IMPORT + body), points).calls
        return
    with pytest.raises(HiddenCellError, match=words):
        parse_hidden_cell("02_attention", grade_id, _cell(IMPORT + body), points)


@pytest.mark.parametrize("aid,check_name", [("01_rnn_bottleneck", "check_rnn_forward"),
                                            ("02_attention", "check_scaled_dot_product_attention_gradcheck")])
def test_a_record_without_gradients_fails_closed(aid, check_name):
    """A hand-written record whose 'gradients' steps hold nothing must not skip the comparison."""
    from grader.assignments import checks_module
    from grader.reference import reference_namespace

    check = getattr(checks_module(aid), check_name)
    ns = reference_namespace(aid)
    record = _record_of(check, **{n: ns[n] for n in check.graded_names})
    assert judge(check, record).passed
    empty = _Encoder().encode(((True, True), ()) if aid.startswith("01") else ())
    steps = [{"label": s["label"], "value": empty} if s["label"] == "gradients" else s for s in record.steps]
    assert steps != record.steps
    verdict = judge(check, Record(record.check, steps, record.tensors))
    assert not verdict.passed and "gradient" in verdict.message



@pytest.mark.parametrize("kind", ["symlink", "fifo", "device"])
def test_records_that_are_not_plain_files_are_refused_without_reading(tmp_path, kind):
    """The learner's code can leave anything under a record's name; the grader must not hang on
    /dev/zero or a pipe, nor follow a link to another file."""
    import os

    target = tmp_path / "check_double.json"
    if kind == "symlink":
        secret = tmp_path / "secret.json"
        secret.write_text(json.dumps({"check": "check_double", "steps": []}))
        target.symlink_to(secret)
    elif kind == "fifo":
        os.mkfifo(target)
    else:
        target.symlink_to("/dev/zero")
    verdict = judge_saved(check_double, tmp_path)
    assert not verdict.passed and "could not be used" in verdict.message
