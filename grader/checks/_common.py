"""Assertion helpers for the hidden checks: failures must read well in a learner's feedback."""

from contextlib import ExitStack, contextmanager

import torch

from grader.trusted import LearnerRaised, live, on_learner_side


def generator(seed: int) -> torch.Generator:
    """A private CPU generator, so a check never depends on (or disturbs) the global RNG."""
    return torch.Generator().manual_seed(seed)


def learner_call(label: str, thunk, call: str | None = None):
    """on_learner_side(label, thunk), with the learner's exception worded with `call` (by default the label)."""
    try:
        return on_learner_side(label, thunk)
    except LearnerRaised as exc:
        raise exc.explain(call or label) from None


@contextmanager
def rng_kept():
    """On the learner's side: Trainer seeds torch, numpy and random globally; keep the notebook's random state as it
    was."""
    import random

    import numpy as np

    py, npy = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        try:
            yield
        finally:
            random.setstate(py)
            np.random.set_state(npy)


def int_rows(rows) -> list[list[int]]:
    """On the learner's side: rows of token ids (a tensor, an array, lists of either) as plain lists of
    ints, what a record may hold. TypeError / ValueError when they are not rows of integers."""
    rows = rows.tolist() if hasattr(rows, "tolist") else rows
    return [[int(x) for x in (row.tolist() if hasattr(row, "tolist") else row)] for row in rows]


def build_seeded(cls, seed: int, *args, **kwargs):
    """On the learner's side: `cls(*args, **kwargs)` with its initial weights drawn from `seed`, the
    global RNG forked, so that neither the notebook's random state nor the check's generator moves."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return cls(*args, **kwargs)


@contextmanager
def swapped_globals(namespace, replacements: dict):
    """On the learner's side: while the block runs, the names of `replacements` that the notebook namespace
    `namespace` (a function's `__globals__`) defines are bound to the replacement objects (library-correct
    versions of the learner's other graded functions: one bug costs points once); restored afterwards,
    whatever happens. Only names the notebook defines are replaced (nothing is added to a namespace)."""
    saved = {n: namespace[n] for n in replacements if n in namespace} if isinstance(namespace, dict) else {}
    try:
        for name in saved:
            namespace[name] = replacements[name]
        yield
    finally:
        for name, value in saved.items():
            namespace[name] = value


def learner_namespaces(fn) -> list:
    """The module namespaces `fn` and the functions it wraps (functools.wraps' `__wrapped__`) read their
    globals from: for a learner's function, the notebook's. A decorated function's own `__globals__` are the
    decorator's module's (`@torch.no_grad()`: torch's); the notebook's are its `__wrapped__`'s."""
    out, seen = [], set()
    while fn is not None and id(fn) not in seen:
        seen.add(id(fn))
        namespace = getattr(fn, "__globals__", None)
        if isinstance(namespace, dict) and all(namespace is not n for n in out):
            out.append(namespace)
        fn = getattr(fn, "__wrapped__", None)
    return out


@contextmanager
def swapped_globals_of(fn, replacements: dict):
    """swapped_globals in every namespace `fn` reads its globals from, decorators followed (learner_namespaces):
    a library swap reaches the learner's function however it is written. Restored afterwards."""
    with ExitStack() as stack:
        for namespace in learner_namespaces(fn):
            stack.enter_context(swapped_globals(namespace, replacements))
        yield


def load_weights(module, weights: dict, layout: str = "") -> None:
    """On the learner's side: copy the check's tensors into the module's parameters, by name. `layout`
    (e.g. "tok_emb, pos_emb, ...") is named when a parameter is missing; by default the names asked for."""
    with torch.no_grad():
        for name, w in weights.items():
            try:
                p = module.get_parameter(name)
            except AttributeError:
                raise AttributeError(f"{type(module).__name__} has no parameter `{name}` (the layout asked for: "
                                     f"{layout or ', '.join(weights)})") from None
            if tuple(p.shape) != tuple(w.shape):
                raise ValueError(f"{type(module).__name__}.{name} has shape {tuple(p.shape)}, expected "
                                 f"{tuple(w.shape)}")
            p.copy_(w)


def assert_shape(t, expected: tuple, what: str, hint: str = "") -> None:
    if not isinstance(t, torch.Tensor):
        raise AssertionError(f"{what}: expected a torch.Tensor, got {type(t).__name__}")
    if tuple(t.shape) != tuple(expected):
        msg = f"{what}: expected shape {tuple(expected)}, got {tuple(t.shape)}"
        raise AssertionError(msg + (f" ({hint})" if hint else ""))


def assert_close(actual, expected, what: str, atol: float = 1e-5, rtol: float = 1e-4, hint: str = "") -> None:
    """Compare with the oracle; on failure say how far off and where, not just 'not equal'."""
    assert_shape(actual, tuple(expected.shape), what)
    actual = actual.detach().to(expected.dtype)
    expected = expected.detach()
    if not torch.isfinite(actual).all() and torch.isfinite(expected).all():
        bad = tuple(int(i) for i in torch.nonzero(~torch.isfinite(actual))[0])
        raise AssertionError(f"{what}: contains NaN or inf (first at index {bad}) where the reference is finite"
                             + (f". Hint: {hint}" if hint else ""))
    if not torch.allclose(actual, expected, atol=atol, rtol=rtol):
        diff = torch.nan_to_num((actual - expected).abs(), nan=float("inf"))
        idx = tuple(int(i) for i in torch.nonzero(diff == diff.max())[0])
        msg = (
            f"{what}: does not match the reference implementation; largest difference "
            f"{diff.max().item():.3g} at index {idx} (yours {actual[idx].item():.5g}, "
            f"expected {expected[idx].item():.5g})"
        )
        raise AssertionError(msg + (f". Hint: {hint}" if hint else ""))


def _outputs(result) -> tuple:
    return result if isinstance(result, tuple) else (result,)


def _learner_gradients(fn, inputs, rest, cotangents):
    """On the learner's side: d<c, fn(x)>/dx by autograd through the learner's own code."""
    leaves = tuple(t.clone().requires_grad_(True) for t in inputs)
    outs = _outputs(fn(*leaves, *rest))
    loss = sum((o * c).sum() for o, c in zip(outs, cotangents))
    grads = torch.autograd.grad(loss, leaves, allow_unused=True)
    return tuple(torch.zeros_like(x) if gr is None else gr for x, gr in zip(leaves, grads))


def assert_gradients_match_finite_differences(fn, inputs, rest, what, g, n_directions=3, eps=1e-6,
                                              atol=1e-6, rtol=1e-4, hint=""):
    """A float64 gradcheck whose verdict the judge makes, not the learner's kernel.

    `fn` is a graded name (a proxy), called as fn(*inputs, *rest); it returns a tensor or a tuple of
    tensors. For random cotangents c, the learner's side computes the gradient of <c, fn(x)> with
    autograd through the learner's code; for random directions u, the learner's own outputs at
    x + eps u and x - eps u give the central difference (<c, fn(x + eps u)> - <c, fn(x - eps u)>) / 2 eps.
    Both come back as plain numbers and the comparison happens here: the directional derivative
    that autograd claims, sum_i <grad_i, u_i>, must equal the one the forward pass shows.
    """
    outs = _outputs(fn(*inputs, *rest))
    if not all(isinstance(o, torch.Tensor) and o.is_floating_point() for o in outs):
        raise AssertionError(f"{what}: expected float tensors from float64 inputs, got "
                             f"{', '.join(type(o).__name__ if not isinstance(o, torch.Tensor) else str(o.dtype) for o in outs)}")
    cotangents = [torch.randn(o.shape, generator=g, dtype=torch.float64) for o in outs]
    try:
        grads = on_learner_side("gradients", lambda: _learner_gradients(live(fn), inputs, rest, cotangents))
    except LearnerRaised as exc:
        raise AssertionError(
            f"{what}: autograd could not compute gradients through your code ({exc.type_name}: "
            f"{exc.message[:200]}). Keep everything in torch ops on the inputs: no .detach(), .data, .item(), "
            "numpy or torch.no_grad()") from None
    # Every length and shape is checked before a zip: a record is data the learner controls.
    if not (isinstance(grads, tuple) and len(grads) == len(inputs)
            and all(isinstance(gr, torch.Tensor) and gr.shape == x.shape for gr, x in zip(grads, inputs))):
        raise AssertionError(f"{what}: no gradient of the right shape came back for every input")
    for _ in range(n_directions):
        u = [torch.randn(x.shape, generator=g, dtype=torch.float64) for x in inputs]
        plus = _outputs(fn(*(x + eps * d for x, d in zip(inputs, u)), *rest))
        minus = _outputs(fn(*(x - eps * d for x, d in zip(inputs, u)), *rest))
        for perturbed in (plus, minus):
            if len(perturbed) != len(outs) or any(
                    not isinstance(p, torch.Tensor) or p.shape != o.shape for p, o in zip(perturbed, outs)):
                raise AssertionError(f"{what}: your function returned outputs of other shapes for nearby inputs")
        numeric = sum(((p - m) * c).sum() for p, m, c in zip(plus, minus, cotangents)) / (2 * eps)
        analytic = sum((gr * d).sum() for gr, d in zip(grads, u))
        if not abs(numeric - analytic) <= atol + rtol * abs(numeric):
            raise AssertionError(
                f"{what}: the gradients autograd computes through your code disagree with finite "
                f"differences of your own outputs (directional derivative {float(analytic):.6g} from autograd, "
                f"{float(numeric):.6g} measured). Keep everything in torch ops on the inputs: no .detach(), "
                ".data, .item(), numpy or torch.no_grad()" + (f". Hint: {hint}" if hint else ""))
