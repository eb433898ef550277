"""Hidden checks for module 02, scaled dot-product attention.

Oracles (grader/README.md, "Oracle rule"):
- `F.scaled_dot_product_attention` for outputs, with `attn_mask` (bool, True = may attend),
  `is_causal=True` (square causal) and `torch.nn.attention.bias.causal_lower_right`
  (end-aligned causal, the KV-cache case; PyTorch's `is_causal` is top-left aligned when Tq != Tk).
- Attention *weights* come from the same oracle: with v = the identity matrix (Tk, Tk),
  softmax(q k^T / sqrt(d)) @ I is the weight matrix itself.
- Masks are read off the oracle the same way (zero q and k give uniform weights over the
  allowed keys, so `weights > 0` is the oracle's mask), and `pad_sequence` for padding.
- Properties where no library function applies: weight rows sum to 1, masked weights are
  exactly 0, float64 `torch.autograd.gradcheck`, and that the online version never creates a
  (Tq, Tk)-sized tensor (every torch call it makes is watched by `deepdive.measure.LargestTensor`).
"""

import torch
import torch.nn.functional as F
from torch.nn.attention.bias import causal_lower_right
from torch.nn.utils.rnn import pad_sequence

from deepdive.measure import LargestTensor
from grader.checks._common import (
    assert_close,
    assert_gradients_match_finite_differences,
    assert_shape,
    generator,
)
from grader.trusted import LearnerRaised, live, on_learner_side, trusted_check


# --------------------------------------------------------------------------------------- helpers
def _qkv(g, batch, tq, tk, d, dv, dtype=torch.float32):
    q = torch.randn(*batch, tq, d, generator=g, dtype=dtype)
    k = torch.randn(*batch, tk, d, generator=g, dtype=dtype)
    v = torch.randn(*batch, tk, dv, generator=g, dtype=dtype)
    return q, k, v


def _random_mask(g, shape):
    """A random bool mask whose every row (last axis) keeps at least one key."""
    mask = torch.rand(*shape, generator=g) < 0.6
    first = torch.randint(shape[-1], tuple(shape[:-1]) + (1,), generator=g)
    return mask.scatter(-1, first, True)


def _oracle_weights(q, k, **kw):
    """softmax(q k^T / sqrt(d)) from the library: attention with v = identity returns the weights."""
    eye = torch.eye(k.size(-2), dtype=q.dtype).expand(*k.shape[:-1], k.size(-2))
    return F.scaled_dot_product_attention(q, k, eye, **kw)


def _oracle_mask(t_q, t_k, **kw):
    """The library's own mask: with q = k = 0 every allowed key gets the same weight > 0."""
    z_q, z_k = torch.zeros(t_q, 1), torch.zeros(t_k, 1)
    return _oracle_weights(z_q, z_k, **kw) > 0


def _grid(mask) -> str:
    return "\n".join("    " + " ".join("1" if x else "." for x in row) for row in mask.tolist())


def _close(actual, expected, what, **kw):
    """assert_close, with a plain message when the learner's tensor holds nan or inf."""
    if isinstance(actual, torch.Tensor) and actual.shape == expected.shape and not torch.isfinite(actual).all():
        raise AssertionError(
            f"{what}: contains nan or inf where the reference is finite. Either a row had every key masked "
            f"(all -inf has no softmax: is True 'may attend'?) or exp() overflowed (use torch.softmax)"
        )
    assert_close(actual, expected, what, **kw)


def _call_attention(fn, q, k, v, mask=None):
    args = f"q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}"
    args += "" if mask is None else f", mask {tuple(mask.shape)}"
    try:
        result = fn(q, k, v) if mask is None else fn(q, k, v, mask)
    except LearnerRaised as exc:  # say which inputs broke it, and where in the learner's code
        raise exc.explain(f"scaled_dot_product_attention({args})") from None
    if not (isinstance(result, tuple) and len(result) == 2):
        raise AssertionError(
            f"scaled_dot_product_attention must return a tuple (out, weights), got {type(result).__name__}"
        )
    return result


def _check_shapes(out, weights, q, k, v):
    *batch, tq, _ = q.shape
    tk, dv = k.size(-2), v.size(-1)
    assert_shape(weights, (*batch, tq, tk), "weights (..., Tq, Tk)",
                 "weights has one row per query and one column per key: q @ k.transpose(-2, -1)")
    assert_shape(out, (*batch, tq, dv), "out (..., Tq, dv)", "out = weights @ v")


def _check_rows_sum_to_one(weights, what):
    sums = weights.detach().sum(-1)
    if not torch.allclose(sums, torch.ones_like(sums), atol=1e-5):
        worst = (sums - 1).abs().max().item()
        raise AssertionError(
            f"{what}: every row of weights must sum to 1 (softmax over the key axis, dim=-1, after "
            f"masking); a row is off by {worst:.3g}"
        )


def _check_masked_are_zero(weights, mask, what):
    blocked = ~mask.expand_as(weights)
    leaked = weights.detach()[blocked]
    if leaked.numel() and (leaked != 0).any():
        raise AssertionError(
            f"{what}: weights at masked positions must be exactly 0, got values up to "
            f"{leaked.abs().max().item():.3g}. Fill the masked scores with float('-inf') before the "
            f"softmax (not 0, and not after it)"
        )


# ------------------------------------------------------------------ exercise 1: scaled_dot_product_attention
@trusted_check(points=3)
def check_scaled_dot_product_attention(scaled_dot_product_attention, seed=0):
    """Outputs and weights against F.scaled_dot_product_attention, without and with bool masks
    of several broadcast shapes; rows sum to 1; masked weights are exactly 0."""
    g = generator(seed)
    # (batch dims, Tq, Tk, d, dv): 3-D and 4-D (heads) inputs, Tq != Tk and d != dv so that a
    # transposed or mis-scaled computation cannot match by accident.
    cases = [((2,), 3, 5, 4, 6), ((2, 3), 4, 7, 16, 5), ((), 6, 6, 64, 64)]
    for batch, tq, tk, d, dv in cases:
        q, k, v = _qkv(g, batch, tq, tk, d, dv)
        what = f"q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}, no mask"
        out, weights = _call_attention(scaled_dot_product_attention, q, k, v)
        _check_shapes(out, weights, q, k, v)
        _close(weights, _oracle_weights(q, k), f"weights for {what}",
                     hint="scores = q @ k.transpose(-2, -1) / sqrt(d) with d = q.size(-1), softmax over the last axis")
        _check_rows_sum_to_one(weights, what)
        _close(out, F.scaled_dot_product_attention(q, k, v), f"out for {what}", hint="out = weights @ v")

    # Large scores (std 100, so some exceed 89 = log of float32's largest number): exp() overflows
    # unless the softmax subtracts the row maximum first (torch.softmax does).
    q, k, v = _qkv(g, (2,), 4, 6, 8, 3)
    q = 100 * q
    out, weights = _call_attention(scaled_dot_product_attention, q, k, v)
    if not torch.isfinite(out).all():
        raise AssertionError("out contains inf/nan for large scores: use torch.softmax (it subtracts the row max)")
    _close(out, F.scaled_dot_product_attention(q, k, v), "out for large scores (q scaled by 100)", atol=1e-4)

    # Bool masks, True = may attend, in the shapes real code passes them:
    # (Tq, Tk) shared by the batch; (B, 1, Tq, Tk) per example; (B, 1, 1, Tk) key padding.
    B, nh, tq, tk, d, dv = 2, 3, 4, 6, 8, 5
    q, k, v = _qkv(g, (B, nh), tq, tk, d, dv)
    for shape in [(tq, tk), (B, 1, tq, tk), (B, 1, 1, tk)]:
        mask = _random_mask(g, shape)
        what = f"mask of shape {shape} with q {tuple(q.shape)}"
        out, weights = _call_attention(scaled_dot_product_attention, q, k, v, mask)
        _check_shapes(out, weights, q, k, v)
        _check_masked_are_zero(weights, mask, what)
        _check_rows_sum_to_one(weights, what)
        _close(weights, _oracle_weights(q, k, attn_mask=mask), f"weights for {what}",
                     hint="True in the mask means 'may attend': mask out where mask is False")
        _close(out, F.scaled_dot_product_attention(q, k, v, attn_mask=mask), f"out for {what}")


@trusted_check(points=2)
def check_scaled_dot_product_attention_gradcheck(scaled_dot_product_attention, seed=0):
    """float64 gradcheck through out and weights, with and without a mask: the gradients autograd
    computes through your code agree with finite differences of your own outputs (judged by the
    grader from the numbers your code returns, see _common.assert_gradients_match_finite_differences)."""
    g = generator(seed)
    q, k, v = _qkv(g, (2,), 3, 4, 5, 2, dtype=torch.float64)
    mask = _random_mask(g, (3, 4))
    for m in (None, mask):
        what = f"gradcheck {'with' if m is not None else 'without'} a mask"
        rest = () if m is None else (m,)
        try:
            assert_gradients_match_finite_differences(scaled_dot_product_attention, (q, k, v), rest, what, g)
        except LearnerRaised as exc:
            raise exc.explain(f"scaled_dot_product_attention(float64 q, k, v{', mask' if rest else ''})") from None


# ------------------------------------------------------------------------------ exercise 2: causal_mask
@trusted_check(points=2)
def check_causal_mask(causal_mask):
    """The mask itself: bool, (t_q, t_k), equal to the library's causal masks (square:
    `is_causal`; t_q < t_k: `causal_lower_right`, the end-aligned KV-cache mask)."""
    for t_q, t_k in [(1, None), (5, None), (6, 6), (1, 7), (3, 8), (4, 5)]:
        mask = causal_mask(t_q) if t_k is None else causal_mask(t_q, t_k)
        t_k = t_q if t_k is None else t_k
        call = f"causal_mask({t_q}, {t_k})"
        assert_shape(mask, (t_q, t_k), call, "one row per query, one column per key")
        if mask.dtype != torch.bool:
            raise AssertionError(f"{call}: expected dtype torch.bool (True = may attend), got {mask.dtype}")
        if t_q == t_k:
            expected = _oracle_mask(t_q, t_k, is_causal=True)
        else:
            expected = _oracle_mask(t_q, t_k, attn_mask=causal_lower_right(t_q, t_k))
        if not torch.equal(mask.cpu(), expected):
            raise AssertionError(
                f"{call} is wrong. Query i may see keys 0 .. i + t_k - t_q (itself and the past; "
                f"the last query sees every key). Expected (1 = may attend):\n{_grid(expected)}\n"
                f"got:\n{_grid(mask.cpu())}"
            )


def _bool_mask(mask, call, meaning):
    if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool:
        raise AssertionError(f"{call}: expected a torch.bool tensor ({meaning}), got "
                             f"{getattr(mask, 'dtype', type(mask).__name__)}")
    return mask


@trusted_check(points=2)
def check_causal_mask_in_attention(causal_mask, seed=0):
    """Your causal mask used by the library's attention (F.scaled_dot_product_attention with
    attn_mask = your mask, so only the mask is judged here) equals is_causal=True over (B, nh)
    heads; with a KV cache (the last t_q queries over all t_k keys) it gives the last rows of the
    full causal attention."""
    g = generator(seed)
    T = 9
    q, k, v = _qkv(g, (2, 3), T, T, 8, 4)
    full = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # (2, 3, T, 4)
    mask = _bool_mask(causal_mask(T), f"causal_mask({T})", "True = may attend")
    assert_shape(mask, (T, T), f"causal_mask({T})", "one row per query, one column per key")
    _close(F.scaled_dot_product_attention(q, k, v, attn_mask=mask), full,
           f"attention with causal_mask({T}) over q {tuple(q.shape)}", hint="query i sees keys 0 .. i")
    for t_q in (1, 4):
        call = f"causal_mask({t_q}, {T})"
        mask = _bool_mask(causal_mask(t_q, T), call, "True = may attend")
        assert_shape(mask, (t_q, T), call, "one row per query, one column per key")
        out = F.scaled_dot_product_attention(q[..., -t_q:, :], k, v, attn_mask=mask)
        _close(out, full[..., -t_q:, :], f"KV-cache step with {call}: last {t_q} queries over {T} keys",
               hint="the mask must be aligned to the end: the last query sees every key")


# ----------------------------------------------------------------------------- exercise 3: padding_mask
@trusted_check(points=2)
def check_padding_mask(padding_mask, seed=0):
    """bool (B, max_len), True for real tokens, equal to what pad_sequence produces."""
    g = generator(seed)
    cases = [([3, 1, 0, 5], 7), ([4, 2], 4), (torch.randint(1, 12, (5,), generator=g).tolist(), 12)]
    for lengths, max_len in cases:
        call = f"padding_mask(torch.tensor({lengths}), max_len={max_len})"
        mask = padding_mask(torch.tensor(lengths), max_len)
        assert_shape(mask, (len(lengths), max_len), call, "shape (B, max_len), even when max_len > max(lengths)")
        if mask.dtype != torch.bool:
            raise AssertionError(f"{call}: expected dtype torch.bool (True = real token), got {mask.dtype}")
        rows = pad_sequence([torch.ones(n) for n in lengths], batch_first=True)  # (B, max(lengths))
        expected = F.pad(rows, (0, max_len - rows.size(1))).bool()  # (B, max_len)
        if not torch.equal(mask.cpu(), expected):
            raise AssertionError(
                f"{call} is wrong: row b must be True at positions 0 .. lengths[b] - 1 (the real tokens) "
                f"and False after. Expected:\n{_grid(expected)}\ngot:\n{_grid(mask.cpu())}"
            )


@trusted_check(points=2)
def check_padding_mask_in_attention(padding_mask, seed=0):
    """A right-padded batch, with your padding mask as a key-padding mask (B, 1, 1, T) in the
    library's attention (F.scaled_dot_product_attention, so only the mask is judged here), alone and
    combined with the library's causal mask: outputs at real positions equal attention over the
    unpadded sequence."""
    g = generator(seed)
    B, nh, T, d, dv = 3, 2, 7, 8, 5
    lengths = [7, 2, 5]
    q, k, v = _qkv(g, (B, nh), T, T, d, dv)
    call = f"padding_mask(torch.tensor({lengths}), {T})"
    keep = _bool_mask(padding_mask(torch.tensor(lengths), T), call, "True = real token")
    assert_shape(keep, (B, T), call, "shape (B, max_len)")
    keep = keep[:, None, None, :]  # (B, 1, 1, T): broadcast over heads and queries
    causal = torch.ones(T, T, dtype=torch.bool).tril()  # (T, T), the library's is_causal mask
    for is_causal in (False, True):
        mask = keep & causal if is_causal else keep  # (B, 1, T, T) or (B, 1, 1, T)
        label = f"{call} {'& causal mask ' if is_causal else ''}in attention"
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # (B, nh, T, dv)
        for b, n in enumerate(lengths):
            ref = F.scaled_dot_product_attention(q[b, :, :n], k[b, :, :n], v[b, :, :n], is_causal=is_causal)
            _close(out[b, :, :n], ref, f"{label}: example {b} (length {n}), real positions",
                   hint="True for the first lengths[b] positions of row b, False for the padding after them")


# ------------------------------------------------------------------- exercise 4: online_softmax_attention
@trusted_check(points=3)
def check_online_softmax_attention(online_softmax_attention, seed=0):
    """Against F.scaled_dot_product_attention for several block sizes (1, not dividing Tk,
    larger than Tk, the default), causal square (is_causal) and causal KV-cache shapes
    (causal_lower_right), and large scores."""
    g = generator(seed)
    cases = [
        # (batch, Tq, Tk, d, dv, block_size, causal, q scale)
        ((2,), 10, 37, 8, 5, 7, False, 1.0),
        ((2,), 10, 37, 8, 5, 1, False, 1.0),
        ((2,), 10, 37, 8, 5, 64, False, 1.0),
        ((2, 3), 12, 12, 8, 8, 5, True, 1.0),
        ((2, 3), 12, 12, 8, 8, 1, True, 1.0),
        ((2,), 4, 13, 8, 6, 3, True, 1.0),
        ((1,), 1, 9, 4, 4, 2, True, 1.0),
        ((2,), 16, 16, 8, 8, 4, False, 30.0),
        ((2,), 16, 16, 8, 8, 4, True, 30.0),
        ((2,), 20, 150, 16, 8, None, False, 1.0),
    ]
    for batch, tq, tk, d, dv, block, causal, scale in cases:
        q, k, v = _qkv(g, batch, tq, tk, d, dv)
        q = scale * q
        kwargs = {"causal": causal} if block is None else {"block_size": block, "causal": causal}
        args = ", ".join(f"{name}={value}" for name, value in kwargs.items())
        what = f"online_softmax_attention(q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}, {args})"
        what += f" with q scaled by {scale:g}" if scale != 1 else ""
        out = online_softmax_attention(q, k, v, **kwargs)
        if not causal:
            expected = F.scaled_dot_product_attention(q, k, v)
        elif tq == tk:
            expected = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            expected = F.scaled_dot_product_attention(q, k, v, attn_mask=causal_lower_right(tq, tk))
        assert_shape(out, (*batch, tq, dv), what)
        if not torch.isfinite(out).all():
            raise AssertionError(f"{what} contains inf/nan: subtract the running max before exp()")
        hints = []
        if block is not None and tk % block:
            hints.append(f"Tk = {tk} is not a multiple of block_size = {block}: is the last, shorter block included?")
        if causal:
            hints.append("causal: compare absolute key positions (block start + j) with end-aligned query "
                         "positions (i + Tk - Tq)")
        hints.append("when the running max grows, rescale both the running sum and the output by exp(m_old - m_new)")
        _close(out, expected, what, atol=1e-5 if scale == 1 else 1e-4, hint=" ".join(hints))


def _watched(fn, *args, **kwargs):
    """On the learner's side: call fn under the watch; (its output, the largest tensor's numel, shape, op)."""
    watch = LargestTensor()
    with watch:
        out = fn(*args, **kwargs)
    return out, watch.numel, watch.shape or (), watch.op or ""


@trusted_check(points=2)
def check_online_softmax_attention_no_full_matrix(online_softmax_attention):
    """online_softmax_attention never creates a tensor as large as the (Tq, Tk) score matrix.

    Every torch call made during the call is watched; with Tq = Tk = 256, nh = 2, d = dv = 8 and
    block_size = 32 the scores of one block are (2, 256, 32) = 16384 numbers, the full matrix
    (2, 256, 256) = 131072. The limit, a quarter of the full matrix (32768), leaves a 2x margin
    above one block and catches the full score matrix, the full causal mask (bool counts too:
    it is still O(T^2) memory) and a concatenation of all blocks' scores.
    """
    nh, T, d, block = 2, 256, 8, 32
    limit = nh * T * T // 4
    g = generator(0)
    q, k, v = _qkv(g, (nh,), T, T, d, d)
    for causal in (False, True):
        # The watch must run beside the learner's code, so its numbers are what that kernel
        # reports (see grader/README.md, "what the design cannot stop"); the output is judged here.
        out, numel, shape, op = on_learner_side(
            "online_softmax_attention, watched", lambda causal=causal: _watched(
                live(online_softmax_attention), q, k, v, block_size=block, causal=causal))
        if not (isinstance(numel, int) and isinstance(op, str) and isinstance(shape, tuple)):
            raise AssertionError("the watch over online_softmax_attention reported no sizes")
        if numel >= limit:
            raise AssertionError(
                f"online_softmax_attention(causal={causal}) built a tensor of shape {shape} "
                f"({numel} numbers, returned by {op}) for Tq = Tk = {T}, block_size = {block}. "
                f"It must only ever hold one block of scores, (..., Tq, block_size) = {(nh, T, block)}, "
                f"never the full (Tq, Tk) matrix or a (Tq, Tk) mask"
            )
        expected = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
        _close(out, expected, f"online_softmax_attention(causal={causal}) with Tq = Tk = {T}, block_size = {block}")

