"""Hidden checks of module 04 (`04_positional_encoding`): sinusoidal, learned and rotary positions.

Oracles (CURRICULUM.md, "Oracle rule"):
- `rope_cos_sin` and `apply_rope` against transformers' Llama: `LlamaRotaryEmbedding` (built from a
  tiny `LlamaConfig` with the asked head size and `rope_theta = base`; position_ids
  `arange(offset, offset + T)` for the KV-cache case) and `apply_rotary_pos_emb`. `apply_rope` is
  given the oracle's cos/sin, never the learner's `rope_cos_sin`, so one bug costs points once.
- `LearnedPositionalEmbedding` against `F.embedding` with the learner's recorded table: the output,
  and the gradient that reaches the table (autograd through the library, here in the grader).
- `sinusoidal_positions` has no library implementation: it is compared with the formula of
  Vaswani et al. (2017), PE[p, 2i] = sin(p / 10000^(2i/d)), PE[p, 2i+1] = cos(same), in float64.
- Properties of RoPE: every position's vector keeps its norm, and q_m . k_n depends only on m - n.

Everything runs on CPU in float32. The learner's module is built and run on the learner's side
(`on_learner_side`); only plain tensors come back, and every recorded value is checked for type and
shape before it is used.
"""

import torch
import torch.nn.functional as F
from torch import nn

from grader.checks._common import assert_close, assert_shape, build_seeded, generator
from grader.trusted import LearnerRaised, live, on_learner_side, trusted_check


def _result_pair(result, what):
    if not (isinstance(result, tuple) and len(result) == 2):
        raise AssertionError(f"{what} must return a tuple (cos, sin), got {type(result).__name__}")
    return result


# --------------------------------------------------------------------------------------------- sinusoidal_positions


def _sinusoid_formula(n_positions, d_model):
    """PE[p, 2i] = sin(p / 10000^(2i/d)), PE[p, 2i+1] = cos(p / 10000^(2i/d)), in float64."""
    p = torch.arange(n_positions, dtype=torch.float64)[:, None]  # (T, 1)
    two_i = torch.arange(0, d_model, 2, dtype=torch.float64)  # (d/2,)
    angle = p / 10000.0 ** (two_i / d_model)  # (T, d/2)
    pe = torch.empty(n_positions, d_model, dtype=torch.float64)
    pe[:, 0::2] = torch.sin(angle)
    pe[:, 1::2] = torch.cos(angle)
    return pe


@trusted_check(points=3)
def check_sinusoidal_positions(sinusoidal_positions):
    """Against the formula in float64 for several (n_positions, d_model), including one position,
    d_model = 2 and widths that are not powers of two."""
    for n, d in [(50, 16), (1, 8), (7, 2), (33, 6), (200, 64)]:
        call = f"sinusoidal_positions({n}, {d})"
        try:
            pe = sinusoidal_positions(n, d)
        except LearnerRaised as exc:
            raise exc.explain(call) from None
        assert_shape(pe, (n, d), call, "one row per position, one column per dimension: (n_positions, d_model)")
        if not pe.is_floating_point():
            raise AssertionError(f"{call}: expected a float tensor, got {pe.dtype}")
        expected = _sinusoid_formula(n, d)
        if n > 1 and torch.allclose(pe.double()[:, 0::2], expected[:, 1::2], atol=1e-4):
            raise AssertionError(f"{call}: sin and cos are swapped: even columns 0, 2, 4, ... hold sin, odd "
                                 "columns 1, 3, 5, ... hold cos")
        assert_close(pe, expected, call, atol=1e-4, rtol=0,
                     hint="column pair (2i, 2i+1) shares the frequency 1 / 10000^(2i / d_model), with 2i the even "
                          "column index (0, 2, 4, ...), positions 0 .. n_positions - 1, sin in even and cos in odd "
                          "columns (interleaved, not two halves)")


# --------------------------------------------------------------------------------------------- LearnedPositionalEmbedding


def _learner_learned(cls, seed, max_len, d_model, xs, cotangents):
    """On the learner's side: build the module, return its table, its outputs on `xs` and the
    gradient of <c, module(x)> with respect to the table (None where none reaches it)."""
    module = build_seeded(cls, seed, max_len, d_model)
    emb = getattr(module, "embedding", None)
    if not isinstance(emb, nn.Embedding):
        return {"embedding": type(emb).__name__}
    outs, grads = [], []
    for x, c in zip(xs, cotangents):
        out = module(x)
        grad = None
        if isinstance(out, torch.Tensor) and out.requires_grad and out.shape == c.shape:
            grad = torch.autograd.grad((out * c).sum(), emb.weight, allow_unused=True)[0]
        outs.append(out.detach() if isinstance(out, torch.Tensor) else out)
        grads.append(grad)
    return {"embedding": "Embedding", "weight": emb.weight.detach().clone(), "outputs": tuple(outs),
            "grads": tuple(grads)}


@trusted_check(points=3)
def check_LearnedPositionalEmbedding(LearnedPositionalEmbedding, seed=0):
    """forward(x) = x + embedding(positions 0 .. T-1) against F.embedding with your module's own table,
    for several (max_len, d_model, B, T) including T = max_len; the gradient of a random loss reaches
    exactly the rows 0 .. T-1 of the table (summed over the batch), as autograd through F.embedding says."""
    g = generator(seed)
    cases = [(10, 8, 2, 7), (16, 12, 3, 16), (5, 4, 1, 1), (9, 6, 4, 3)]
    for max_len, d_model, B, T in cases:
        x = torch.randn(B, T, d_model, generator=g)
        c = torch.randn(B, T, d_model, generator=g)
        call = f"LearnedPositionalEmbedding({max_len}, {d_model}) on x {(B, T, d_model)}"
        try:
            rec = on_learner_side(f"LearnedPositionalEmbedding({max_len}, {d_model})", lambda args=(
                max_len, d_model, (x,), (c,)): _learner_learned(live(LearnedPositionalEmbedding), seed, *args))
        except LearnerRaised as exc:
            raise exc.explain(call) from None
        if not (isinstance(rec, dict) and rec.get("embedding") == "Embedding"):
            found = rec.get("embedding") if isinstance(rec, dict) else None
            raise AssertionError(f"LearnedPositionalEmbedding({max_len}, {d_model}) must keep its table in "
                                 f"self.embedding = nn.Embedding(max_len, d_model); found {found}")
        weight, outs, grads = rec.get("weight"), rec.get("outputs"), rec.get("grads")
        assert_shape(weight, (max_len, d_model), f"self.embedding.weight of {call}",
                     "nn.Embedding(max_len, d_model): one row per position")
        if not (isinstance(outs, tuple) and len(outs) == 1 and isinstance(grads, tuple) and len(grads) == 1):
            raise AssertionError(f"{call}: no output came back")
        out, grad = outs[0], grads[0]
        weight = weight.detach().float().requires_grad_(True)
        expected = x + F.embedding(torch.arange(T), weight)  # (B, T, C) + (T, C)
        assert_shape(out, (B, T, d_model), f"output of {call}", "forward returns x + position vectors, (B, T, C)")
        assert_close(out, expected, f"output of {call}",
                     hint="add row p of the table to position p of every sequence: positions "
                          "torch.arange(T) (0 .. T-1, along the time axis, not the batch axis)")
        (expected_grad,) = torch.autograd.grad((expected * c).sum(), weight)
        if grad is None:
            raise AssertionError(f"{call}: no gradient reaches self.embedding.weight: call self.embedding(positions) "
                                 "inside forward (no .detach(), .data or torch.no_grad())")
        assert_close(grad, expected_grad, f"gradient of the table for {call}",
                     hint="only rows 0 .. T-1 are used, each once per sequence")


@trusted_check(points=1)
def check_LearnedPositionalEmbedding_max_len(LearnedPositionalEmbedding, seed=0):
    """T = max_len works; T > max_len raises ValueError (a learned table has no row for it)."""
    g = generator(seed)
    max_len, d_model = 6, 4
    fits = torch.randn(2, max_len, d_model, generator=g)
    too_long = torch.randn(2, max_len + 3, d_model, generator=g)
    state = {}

    def build_and_run():
        state["module"] = build_seeded(live(LearnedPositionalEmbedding), seed, max_len, d_model)
        return state["module"](fits)

    try:
        out = on_learner_side("T = max_len", build_and_run)
    except LearnerRaised as exc:
        raise exc.explain(f"LearnedPositionalEmbedding({max_len}, {d_model}) on x {tuple(fits.shape)} (T = max_len)"
                          ) from None
    assert_shape(out, tuple(fits.shape), f"output for T = max_len = {max_len}")
    call = f"LearnedPositionalEmbedding({max_len}, {d_model}) on x {tuple(too_long.shape)}"
    try:
        on_learner_side("T > max_len", lambda: state["module"](too_long))
    except LearnerRaised as exc:
        if exc.type_name != "ValueError":
            raise AssertionError(
                f"{call} raised {exc.type_name}: {exc.message[:150]}. Check T against max_len at the start of "
                "forward and raise a ValueError that names both (nn.Embedding's IndexError does not say what is "
                "wrong)") from None
        return
    raise AssertionError(f"{call} returned a result for T = {max_len + 3} > max_len = {max_len}: a learned table "
                         "has no row for those positions, so forward must raise a ValueError (no clamping, no "
                         "wrapping around)")


# --------------------------------------------------------------------------------------------- rope (oracle)


def _llama_cos_sin(positions, head_dim, base):
    """transformers' LlamaRotaryEmbedding for the given positions: cos, sin (len(positions), head_dim)."""
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

    n_heads = 2
    config = LlamaConfig(hidden_size=head_dim * n_heads, num_attention_heads=n_heads, num_key_value_heads=n_heads,
                         head_dim=head_dim, rope_theta=float(base),
                         max_position_embeddings=int(positions.max()) + 1)
    rotary = LlamaRotaryEmbedding(config)
    if rotary.rope_type != "default":
        raise RuntimeError(f"the oracle's RoPE type is {rotary.rope_type}, not default")
    cos, sin = rotary(torch.zeros(1, dtype=torch.float32), positions[None])  # (1, T, hs) each
    return cos[0], sin[0]


def _llama_rotate(x, cos, sin):
    """transformers' apply_rotary_pos_emb on x (B, nh, T, hs) with cos/sin (T, hs)."""
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    out, _ = apply_rotary_pos_emb(x, x, cos[None], sin[None])  # cos (1, T, hs) -> (1, 1, T, hs) inside
    return out


# --------------------------------------------------------------------------------------------- rope_cos_sin


@trusted_check(points=3)
def check_rope_cos_sin(rope_cos_sin):
    """cos and sin against transformers' LlamaRotaryEmbedding for several head sizes and bases
    (10000, 500 and Llama 3's 500000), and the default base."""
    for n, hs, base in [(16, 8, None), (40, 64, 10000.0), (9, 6, 500.0), (25, 32, 500000.0), (1, 4, 10000.0)]:
        call = f"rope_cos_sin({n}, {hs})" if base is None else f"rope_cos_sin({n}, {hs}, base={base:g})"
        try:
            result = rope_cos_sin(n, hs) if base is None else rope_cos_sin(n, hs, base=base)
        except LearnerRaised as exc:
            raise exc.explain(call) from None
        cos, sin = _result_pair(result, call)
        hint_shape = "one row per position, head_dim columns: the head_dim / 2 frequencies, repeated (cat(freqs, freqs))"
        assert_shape(cos, (n, hs), f"cos of {call}", hint_shape)
        assert_shape(sin, (n, hs), f"sin of {call}", hint_shape)
        exp_cos, exp_sin = _llama_cos_sin(torch.arange(n), hs, 10000.0 if base is None else base)
        if n > 1 and torch.allclose(cos.float(), exp_sin, atol=1e-4):
            raise AssertionError(f"{call}: cos and sin are swapped: return (cos, sin)")
        hint = ("angle[p, j] = p * base^(-2i / head_dim) for the frequency index i = j mod (head_dim / 2): the first "
                "half and the second half repeat the same head_dim / 2 frequencies (rotate-half layout, not "
                "interleaved); positions 0 .. n_positions - 1; use the base argument")
        assert_close(cos, exp_cos, f"cos of {call}", atol=1e-4, rtol=0, hint=hint)
        assert_close(sin, exp_sin, f"sin of {call}", atol=1e-4, rtol=0, hint=hint)


# --------------------------------------------------------------------------------------------- apply_rope


def _call_rope(apply_rope, x, cos, sin, offset):
    call = f"apply_rope(x {tuple(x.shape)}, cos {tuple(cos.shape)}, sin {tuple(sin.shape)}"
    call += ")" if offset is None else f", offset={offset})"
    try:
        out = apply_rope(x, cos, sin) if offset is None else apply_rope(x, cos, sin, offset=offset)
    except LearnerRaised as exc:
        raise exc.explain(call) from None
    assert_shape(out, tuple(x.shape), call, "the rotated x has the shape of x, (B, nh, T, hs)")
    return out, call


@trusted_check(points=3)
def check_apply_rope(apply_rope, seed=0):
    """Against transformers' apply_rotary_pos_emb, with cos/sin from LlamaRotaryEmbedding (not from your
    rope_cos_sin), for several head sizes and bases, tables longer than T, and position offsets
    (the KV-cache case: x holds positions offset .. offset + T - 1)."""
    g = generator(seed)
    # (B, nh, T, hs, base, n_positions in the table, offset or None for the default)
    cases = [
        (2, 3, 5, 8, 10000.0, 5, None),
        (1, 2, 7, 16, 10000.0, 12, None),
        (2, 2, 4, 6, 500.0, 4, 0),
        (2, 4, 6, 32, 500.0, 20, 9),
        (1, 2, 1, 64, 500000.0, 40, 39),
        (3, 1, 3, 8, 10000.0, 16, 5),
    ]
    for B, nh, T, hs, base, n_positions, offset in cases:
        x = torch.randn(B, nh, T, hs, generator=g)
        cos, sin = _llama_cos_sin(torch.arange(n_positions), hs, base)  # the whole table (n_positions, hs)
        out, call = _call_rope(apply_rope, x, cos, sin, offset)
        start = offset or 0
        exp_cos, exp_sin = _llama_cos_sin(torch.arange(start, start + T), hs, base)  # rows start .. start + T - 1
        hints = ["x * cos + rotate_half(x) * sin with rotate_half(x) = cat(-x2, x1) over the last axis, "
                 "x1 and x2 its first and second halves"]
        if n_positions > T:
            hints.append(f"the table has {n_positions} rows for T = {T}: use rows offset .. offset + T - 1")
        assert_close(out, _llama_rotate(x, exp_cos, exp_sin), call, hint="; ".join(hints))


@trusted_check(points=2)
def check_apply_rope_properties(apply_rope, seed=0):
    """RoPE is a rotation: every position's vector keeps its norm. Relative positions: with the same q
    and k vectors at every position, the scores q_m . k_n depend only on m - n; and q placed at
    position m, k at n (through offset) give the same dot product for every (m, n) with the same m - n.
    cos/sin come from LlamaRotaryEmbedding."""
    g = generator(seed)
    T, hs, base = 12, 16, 10000.0
    cos, sin = _llama_cos_sin(torch.arange(64), hs, base)
    x = torch.randn(2, 3, T, hs, generator=g)
    out, call = _call_rope(apply_rope, x, cos, sin, None)
    norms, expected_norms = out.norm(dim=-1), x.norm(dim=-1)
    if not torch.allclose(norms, expected_norms, rtol=1e-4, atol=1e-5):
        worst = (norms - expected_norms).abs().max().item()
        raise AssertionError(f"{call}: RoPE must keep the length of every (position, head) vector (it is a rotation); "
                             f"a norm changed by {worst:.3g}. Each pair (x[j], x[j + hs/2]) is rotated by one angle: "
                             "cos multiplies both, sin multiplies the other one with a minus sign on one side")

    q = torch.randn(hs, generator=g)
    k = torch.randn(hs, generator=g)
    rq, _ = _call_rope(apply_rope, q.expand(1, 1, T, hs).clone(), cos, sin, None)  # (1, 1, T, hs)
    rk, _ = _call_rope(apply_rope, k.expand(1, 1, T, hs).clone(), cos, sin, None)
    scores = rq[0, 0] @ rk[0, 0].T  # (T, T): scores[m, n] = q_m . k_n
    scale = 1e-4 * (1 + scores.abs().max().item())
    for d in range(-T + 1, T):
        diagonal = torch.diagonal(scores, offset=-d)  # every (m, n) with m - n = d
        if (diagonal - diagonal[0]).abs().max().item() > scale:
            raise AssertionError(
                f"with the same q at every position and the same k at every position, q_m . k_n must depend only on "
                f"m - n; for m - n = {d} it ranges from {diagonal.min().item():.4g} to {diagonal.max().item():.4g}. "
                "Rotate every position p by its own angles (row p of cos and sin)")

    dots = []
    for m, n in [(5, 2), (20, 17), (40, 37)]:  # m - n = 3 everywhere
        rq, _ = _call_rope(apply_rope, q.reshape(1, 1, 1, hs), cos, sin, m)
        rk, _ = _call_rope(apply_rope, k.reshape(1, 1, 1, hs), cos, sin, n)
        dots.append((m, n, (rq * rk).sum().item()))
    if max(d for *_, d in dots) - min(d for *_, d in dots) > scale:
        shown = ", ".join(f"q_{m} . k_{n} = {d:.4g}" for m, n, d in dots)
        raise AssertionError(f"q placed at position m and k at n (offset=m, offset=n) must give the same dot product "
                             f"whenever m - n is the same; got {shown}")
