"""Hidden checks for module 03, multi-head attention.

Oracles (CURRICULUM.md, "Oracle rule"):
- `split_heads` / `merge_heads`: no library function splits heads, so mathematical properties.
  Head h of split_heads(x) is x[..., h*hs:(h+1)*hs] moved to axis 1; merge_heads undoes torch's
  own split (view + transpose) and equals transpose(1, 2) + reshape on a (B, nh, T, hs) tensor
  that the check makes.
- `repeat_kv`: `transformers.models.llama.modeling_llama.repeat_kv`.
- `MultiHeadAttention`: `nn.MultiheadAttention(batch_first=True)` with the same weights
  (`deepdive.oracles.torch_multihead_attention`), without and with bool masks (its bool masks mean
  "may NOT attend", so it gets `~mask`, or `key_padding_mask=~pad`); for GQA/MQA the same oracle with
  every K/V head's projection rows repeated for the query heads of its group (done here, not in
  deepdive, because it reveals repeat_kv's answer); cross-attention (`context=`) against the same
  oracle called with query = x and key = value = context.
- `mha_param_count`: `sum(p.numel())` over real library modules on the meta device
  (`nn.MultiheadAttention` when every query head has its own K/V head; `nn.Linear` layers of the
  sizes the design states for GQA/MQA), never the learner's class.

One bug costs points once: the MultiHeadAttention checks run the learner's forward with torch's own
split/merge/repeat of heads put in place of the notebook's split_heads, merge_heads and repeat_kv
(see `_library_helpers`), so only the class itself is judged.
"""

import math

import torch
import torch.nn.functional as F
from torch import nn

from deepdive.oracles import torch_multihead_attention
from grader.checks._common import assert_close, assert_shape, build_seeded, generator, swapped_globals_of
from grader.trusted import LearnerRaised, live, on_learner_side, trusted_check


def _args(*args, **kwargs) -> str:
    return ", ".join([*map(str, args), *(f"{k}={v}" for k, v in kwargs.items())])


# ----------------------------------------------------------------------------------- split_heads
def _torch_split(x, n_heads):
    """torch's view + transpose: (B, T, C) -> (B, nh, T, hs)."""
    B, T, C = x.shape
    return x.view(B, T, n_heads, C // n_heads).transpose(1, 2)


@trusted_check(points=2)
def check_split_heads(split_heads, seed=0):
    """Shape (B, nh, T, hs) and the defining property: head h is channels h*hs .. (h+1)*hs - 1 of
    every token, for several sizes with B, T, nh and hs all different (and nh = 1)."""
    g = generator(seed)
    for B, T, C, nh in [(2, 5, 12, 3), (3, 4, 16, 8), (1, 7, 6, 1), (2, 3, 30, 5), (4, 6, 6, 2)]:
        hs = C // nh
        x = torch.randn(B, T, C, generator=g)
        call = f"split_heads(x of shape {(B, T, C)}, n_heads={nh})"
        try:
            out = split_heads(x.clone(), nh)
        except LearnerRaised as exc:
            raise exc.explain(call) from None
        if isinstance(out, torch.Tensor) and tuple(out.shape) == (B, T, nh, hs) and T != nh:
            raise AssertionError(f"{call}: expected shape (B, nh, T, hs) = {(B, nh, T, hs)}, got {tuple(out.shape)} "
                                 "= (B, T, nh, hs): transpose(1, 2) to put the head axis before time")
        assert_shape(out, (B, nh, T, hs), f"{call} (B, nh, T, hs)",
                     "view x as (B, T, nh, hs), then transpose(1, 2); hs = C // n_heads")
        if out.dtype != x.dtype:
            raise AssertionError(f"{call}: returned dtype {out.dtype}, the input was {x.dtype}: only move numbers")
        for h in range(nh):
            if not torch.equal(out[:, h], x[:, :, h * hs:(h + 1) * hs]):
                hint = "head h must hold channels h*hs .. (h+1)*hs - 1 of every token, in time order"
                if torch.equal(out, x.view(B, nh, T, hs)):
                    hint = ("you viewed x straight as (B, nh, T, hs): that cuts the flat memory into nh blocks of "
                            "T*hs numbers and mixes time steps with heads. View as (B, T, nh, hs), then transpose(1, 2)")
                raise AssertionError(f"{call}: head {h} holds the wrong numbers: {hint}")


# ----------------------------------------------------------------------------------- merge_heads
@trusted_check(points=2)
def check_merge_heads(merge_heads, seed=0):
    """merge_heads on a (B, nh, T, hs) tensor equals transpose(1, 2) + reshape to (B, T, nh*hs), and it
    inverts torch's own split (view + transpose, a non-contiguous input), for several sizes."""
    g = generator(seed)
    for B, nh, T, hs in [(2, 3, 5, 4), (3, 8, 4, 2), (1, 1, 7, 6), (2, 5, 3, 6)]:
        C = nh * hs
        y = torch.randn(B, nh, T, hs, generator=g)  # e.g. the per-head outputs att @ v
        x = torch.randn(B, T, C, generator=g)
        for inp, what, expected in [(y, f"merge_heads(y of shape {(B, nh, T, hs)})", y.transpose(1, 2).reshape(B, T, C)),
                                    (_torch_split(x, nh), f"merge_heads(split of x {(B, T, C)} into {nh} heads)", x)]:
            try:
                out = merge_heads(inp.clone())  # clone keeps the strides: the split stays non-contiguous
            except LearnerRaised as exc:
                if "view" in exc.message:
                    raise AssertionError(exc.describe(what) + "\n  After transpose(1, 2) the tensor is not contiguous "
                                         "in memory: use .reshape(B, T, C), or .contiguous().view(B, T, C)") from None
                raise exc.explain(what) from None
            assert_shape(out, (B, T, C), f"{what} (B, T, C)", "C = nh * hs: one row of all heads per token")
            if not torch.equal(out, expected):
                hint = "transpose(1, 2) back to (B, T, nh, hs) first, then reshape to (B, T, nh * hs)"
                if torch.equal(out, inp.reshape(B, T, C)):
                    hint = ("you reshaped (B, nh, T, hs) straight to (B, T, C) without transposing back: that "
                            "mixes heads and time. " + hint)
                raise AssertionError(f"{what}: wrong numbers; token t must be [head 0 | head 1 | ...] of that "
                                     f"token. {hint}")


# ------------------------------------------------------------------------------------- repeat_kv
@trusted_check(points=2)
def check_repeat_kv(repeat_kv, seed=0):
    """Against transformers' Llama repeat_kv: (B, n_kv, T, hs) -> (B, n_kv * n_rep, T, hs), each K/V
    head repeated n_rep times consecutively; GQA, MQA (n_kv = 1) and n_rep = 1."""
    from transformers.models.llama.modeling_llama import repeat_kv as llama_repeat_kv

    g = generator(seed)
    for B, n_kv, T, hs, n_rep in [(2, 2, 5, 4, 3), (1, 1, 6, 8, 4), (3, 4, 2, 3, 2), (2, 3, 4, 5, 1)]:
        x = torch.randn(B, n_kv, T, hs, generator=g)
        call = f"repeat_kv(x of shape {(B, n_kv, T, hs)}, n_rep={n_rep})"
        try:
            out = repeat_kv(x.clone(), n_rep)
        except LearnerRaised as exc:
            raise exc.explain(call) from None
        assert_shape(out, (B, n_kv * n_rep, T, hs), f"{call} (B, n_kv * n_rep, T, hs)",
                     "repeat along the head axis, dim=1")
        expected = llama_repeat_kv(x, n_rep)
        if not torch.equal(out, expected):
            hint = ("K/V head j must fill heads j*n_rep .. (j+1)*n_rep - 1 (heads 0,0,1,1 for n_kv = 2, n_rep = 2): "
                    "x[:, :, None].expand(B, n_kv, n_rep, T, hs).reshape(...), or repeat_interleave(n_rep, dim=1)")
            if torch.equal(out, x.repeat(1, n_rep, 1, 1)):
                hint = "you tiled the heads (0,1,0,1: x.repeat) instead of repeating each one in place. " + hint
            raise AssertionError(f"{call}: wrong head order. {hint}")


# ---------------------------------------------------------------------------- MultiHeadAttention
_HELPERS = {
    "split_heads": _torch_split,
    "merge_heads": lambda y: y.transpose(1, 2).reshape(y.size(0), y.size(2), y.size(1) * y.size(3)),
    "repeat_kv": lambda x, n_rep: torch.repeat_interleave(x, n_rep, dim=1),  # = transformers' repeat_kv
}
_USED_LIBRARY = ("(This check ran your forward with torch's own head split, merge and K/V repeat in place of "
                 "your split_heads, merge_heads and repeat_kv, so a bug there costs points only in their own checks.)")


def _library_helpers(cls):
    """On the learner's side: while the block runs, the notebook's split_heads / merge_heads / repeat_kv,
    as seen by `cls.forward` (decorators followed), are torch's correct versions (restored afterwards)."""
    return swapped_globals_of(getattr(cls, "forward", None), _HELPERS)


def _layout(d_model, n_heads, n_kv, bias) -> dict:
    """The state_dict the design asks for: name -> shape."""
    kv = n_kv * (d_model // n_heads)
    shapes = {"q_proj": (d_model, d_model), "k_proj": (kv, d_model), "v_proj": (kv, d_model),
              "out_proj": (d_model, d_model)}
    out = {f"{name}.weight": shape for name, shape in shapes.items()}
    if bias:
        out.update({f"{name}.bias": shape[:1] for name, shape in shapes.items()})
    return out


def _random_weights(g, d_model, n_heads, n_kv, bias) -> dict:
    """The check's own weights, loaded into the learner's module (so that a record cannot choose easy
    ones); the scale keeps the attention scores of order 1 so that every head matters."""
    return {name: torch.randn(shape, generator=g) * (1 / math.sqrt(d_model) if name.endswith("weight") else 0.2)
            for name, shape in _layout(d_model, n_heads, n_kv, bias).items()}


def _check_layout(shapes, d_model, n_heads, n_kv, bias, call):
    if not (isinstance(shapes, dict) and all(isinstance(k, str) for k in shapes)):
        raise AssertionError(f"{call}: no state_dict came back")
    hs = d_model // n_heads
    for name, shape in _layout(d_model, n_heads, n_kv, bias).items():
        if name not in shapes:
            what = "bias" if name.endswith("bias") else "weight"
            raise AssertionError(
                f"{call} has no parameter {name}: the projections are nn.Linear sub-modules named q_proj, "
                f"k_proj, v_proj and out_proj" + (" (with bias=True each has a bias)" if what == "bias" else ""))
        got = shapes[name]
        if not (isinstance(got, tuple) and all(isinstance(i, int) for i in got)) or got != shape:
            extra = ""
            if name.startswith(("k_proj", "v_proj")):
                extra = (f": K and V have n_kv_heads = {n_kv} heads of hs = {hs}, so {name[:6]} maps d_model = "
                         f"{d_model} to n_kv_heads * hs = {n_kv * hs} features")
            raise AssertionError(f"{call}: {name} has shape {got}, expected {shape}{extra}")
    if not bias:
        present = sorted(n for n in shapes if n.endswith(".bias") and n.split(".")[0] in
                         ("q_proj", "k_proj", "v_proj", "out_proj"))
        if present:
            raise AssertionError(f"{call}: bias=False, but your module has {', '.join(present)}: "
                                 "pass bias=bias to every nn.Linear")


def _expand_kv(t, n_kv, n_rep):
    """Rows of a K/V projection (n_kv * hs, ...) -> (n_kv * n_rep * hs, ...): KV head j's rows repeated
    for the n_rep query heads of its group, so a plain MHA computes grouped-query attention."""
    return t.unflatten(0, (n_kv, -1)).repeat_interleave(n_rep, dim=0).flatten(0, 1)


class _Projections(nn.Module):
    def __init__(self, d_model, bias):
        super().__init__()
        for name in ("q_proj", "k_proj", "v_proj", "out_proj"):
            setattr(self, name, nn.Linear(d_model, d_model, bias=bias))


def _oracle(weights, d_model, n_heads, n_kv, bias) -> nn.MultiheadAttention:
    n_rep = n_heads // n_kv
    full = _Projections(d_model, bias)
    with torch.no_grad():
        for name in ("q_proj", "k_proj", "v_proj", "out_proj"):
            lin = getattr(full, name)
            for part in ("weight", "bias") if bias else ("weight",):
                value = weights[f"{name}.{part}"]
                getattr(lin, part).copy_(_expand_kv(value, n_kv, n_rep) if name in ("k_proj", "v_proj") else value)
    return torch_multihead_attention(full, n_heads)


def _oracle_forward(mha, x, mask, n_heads):
    """nn.MultiheadAttention with our bool mask (True = may attend); its bool masks mean the opposite."""
    B, T, _ = x.shape
    with torch.no_grad():
        if mask is None:
            return mha(x, x, x, need_weights=False)[0]
        if mask.dim() == 2:  # (T, T), shared by the batch
            return mha(x, x, x, attn_mask=~mask, need_weights=False)[0]
        if mask.shape[1:3] == (1, 1):  # (B, 1, 1, T): key padding
            return mha(x, x, x, key_padding_mask=~mask[:, 0, 0], need_weights=False)[0]
        per_head = mask.expand(B, n_heads, T, T).reshape(B * n_heads, T, T)  # nn.MultiheadAttention's layout
        return mha(x, x, x, attn_mask=~per_head, need_weights=False)[0]


def _manual(weights, x, mask, n_heads, n_kv, scale=None, use_mask=True):
    """Attention from the same weights with F.scaled_dot_product_attention, for diagnosing a mismatch."""
    def lin(name, t):
        return F.linear(t, weights[f"{name}.weight"], weights.get(f"{name}.bias"))

    with torch.no_grad():
        q = _torch_split(lin("q_proj", x), n_heads)
        k, v = (_torch_split(lin(n, x), n_kv).repeat_interleave(n_heads // n_kv, dim=1) for n in ("k_proj", "v_proj"))
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask if use_mask else None, scale=scale)
        return lin("out_proj", _HELPERS["merge_heads"](y))


def _diagnose(out, weights, x, mask, n_heads, n_kv) -> str:
    d_model = x.size(-1)
    close = lambda ref: out.shape == ref.shape and torch.allclose(out, ref, atol=1e-4, rtol=1e-3)
    if close(_manual(weights, x, mask, n_heads, n_kv, scale=1 / math.sqrt(d_model))):
        return "your output is attention scaled by 1/sqrt(d_model): scale by 1/sqrt(head size), hs = d_model // n_heads"
    if mask is not None and close(_manual(weights, x, mask, n_heads, n_kv, use_mask=False)):
        return "your output is attention without the mask: the mask was ignored"
    if mask is not None:
        return ("True in the mask means 'may attend': fill the scores where the mask is False with -inf before the "
                "softmax; the mask broadcasts to (B, nh, T, T)")
    return ("q, k, v = the projections of x split into heads; scores q @ k^T / sqrt(hs) per head; softmax over the "
            "keys (dim=-1); weights @ v; merge the heads; then out_proj")


_CAUSAL = "causal (T, T)"
_PADDING = "padding (B, 1, 1, T)"
_BOTH = "causal & padding (B, 1, T, T)"
_PER_HEAD = "random per head (B, nh, T, T)"


def _make_mask(kind, g, B, T, n_heads):
    if kind is None:
        return None
    causal = torch.ones(T, T, dtype=torch.bool).tril()  # (T, T)
    lengths = torch.randint(1, T + 1, (B,), generator=g)
    lengths[0] = T - 1  # at least one padded sequence
    pad = (torch.arange(T)[None, :] < lengths[:, None])[:, None, None, :]  # (B, 1, 1, T), True = real token
    if kind == _CAUSAL:
        return causal
    if kind == _PADDING:
        return pad
    if kind == _BOTH:
        return causal & pad  # (B, 1, T, T)
    return (torch.rand(B, n_heads, T, T, generator=g) < 0.5) | torch.eye(T, dtype=torch.bool)  # (B, nh, T, T)


def _learner_build(state, cls, d_model, n_heads, kwargs, build_seed):
    """On the learner's side: build the module from its own seed; return its state_dict's shapes."""
    state["module"] = build_seeded(cls, build_seed, d_model, n_heads, **kwargs)
    return {name: tuple(t.shape) for name, t in state["module"].state_dict().items()}


def _learner_forward(state, weights, inputs, train=False, run_seed=0):
    """On the learner's side: load the check's weights, run forward on the check's inputs."""
    module = state["module"]
    module.load_state_dict(weights, strict=False)
    module.train(train)
    outs = []
    with torch.random.fork_rng(devices=[]), torch.no_grad(), _library_helpers(type(module)):
        torch.manual_seed(run_seed)
        for x, mask in inputs:
            outs.append(module(x) if mask is None else module(x, mask))
    return tuple(outs)


def _built_learner_module(MultiHeadAttention, d_model, n_heads, kwargs, build_seed):
    """Build the learner's module on its side (kept in `state`) and check its parameter layout; returns
    (call, state)."""
    call = f"MultiHeadAttention({_args(d_model, n_heads, **kwargs)})"
    state = {}
    try:
        shapes = on_learner_side(f"{call}: state_dict shapes", lambda: _learner_build(
            state, live(MultiHeadAttention), d_model, n_heads, kwargs, build_seed))
    except LearnerRaised as exc:
        raise exc.explain(call) from None
    n_kv = kwargs["n_kv_heads"]
    _check_layout(shapes, d_model, n_heads, n_heads if n_kv is None else n_kv, kwargs["bias"], call)
    return call, state


def _run_learner_module(MultiHeadAttention, g, cfg, mask_kinds, train=False, build_seed=0):
    """Build the learner's module for one configuration, load weights, run it on inputs; returns
    (weights, [(x, mask, kind)], outputs) after checking the layout and the output shapes."""
    B, T, d_model, n_heads, n_kv, bias, dropout = cfg
    kwargs = {"n_kv_heads": n_kv, "bias": bias} | ({"dropout": dropout} if dropout else {})
    call, state = _built_learner_module(MultiHeadAttention, d_model, n_heads, kwargs, build_seed)

    weights = _random_weights(g, d_model, n_heads, n_heads if n_kv is None else n_kv, bias)
    inputs = [(torch.randn(B, T, d_model, generator=g), _make_mask(kind, g, B, T, n_heads), kind)
              for kind in mask_kinds]
    mode = "train()" if train else "eval()"
    try:
        outs = on_learner_side(f"{call}.{mode} forward", lambda: _learner_forward(
            state, {k: w.clone() for k, w in weights.items()},
            [(x.clone(), None if m is None else m.clone()) for x, m, _ in inputs], train, run_seed=build_seed + 1))
    except LearnerRaised as exc:
        raise AssertionError(exc.describe(f"{call}.{mode}, forward(x of shape {(B, T, d_model)}[, mask])")
                             + f"\n{_USED_LIBRARY}") from None
    if not (isinstance(outs, tuple) and len(outs) == len(inputs)):
        raise AssertionError(f"{call}: forward gave no output for every input")
    for (_, _, kind), out in zip(inputs, outs):
        assert_shape(out, (B, T, d_model), f"{call}(x {(B, T, d_model)}, mask={kind}) output (B, T, C)",
                     "merge the heads back to (B, T, C) and apply out_proj")
    return call, weights, inputs, outs


def _compare_with_oracle(call, weights, inputs, outs, d_model, n_heads, n_kv, bias, what=""):
    n_kv = n_heads if n_kv is None else n_kv
    mha = _oracle(weights, d_model, n_heads, n_kv, bias)
    for (x, mask, kind), out in zip(inputs, outs):
        expected = _oracle_forward(mha, x, mask, n_heads)
        if torch.isfinite(out).all() and torch.allclose(out, expected, atol=1e-5, rtol=1e-4):
            continue
        hint = _diagnose(out, weights, x, mask, n_heads, n_kv) + " " + _USED_LIBRARY
        if not torch.isfinite(out).all():
            hint = "nan/inf: a row with every key masked has no softmax; is True 'may attend'? " + hint
        assert_close(out, expected, f"{call}{what} with mask={kind}", atol=1e-5, hint=hint)
        raise AssertionError(f"{call}{what} with mask={kind}: does not match the reference. {hint}")


@trusted_check(points=4)
def check_MultiHeadAttention(MultiHeadAttention, seed=0):
    """Multi-head attention (n_kv_heads None or = n_heads) against nn.MultiheadAttention(batch_first=True)
    with the same weights: sub-module names and shapes; no mask, a causal (T, T) mask, a padding mask
    (B, 1, 1, T), both combined and a random per-head (B, nh, T, T) mask; bias on and off; several sizes
    including one head. The weights are the check's own, loaded into your module; your forward runs with
    torch's split/merge of heads in place of your split_heads/merge_heads (so only the class is judged)."""
    g = generator(seed)
    all_masks = [None, _CAUSAL, _PADDING, _BOTH, _PER_HEAD]
    configs = [  # (B, T, d_model, n_heads, n_kv_heads, bias, dropout), mask kinds
        ((2, 5, 12, 3, None, True, 0.0), all_masks),
        ((3, 4, 16, 8, None, False, 0.0), [None, _CAUSAL, _PER_HEAD]),
        ((1, 6, 8, 1, None, True, 0.0), [None, _CAUSAL]),
        ((2, 7, 32, 4, 4, False, 0.0), [None, _BOTH]),
    ]
    for i, (cfg, kinds) in enumerate(configs):
        call, weights, inputs, outs = _run_learner_module(MultiHeadAttention, g, cfg, kinds, build_seed=100 + i)
        _compare_with_oracle(call, weights, inputs, outs, *cfg[2:6])


@trusted_check(points=3)
def check_MultiHeadAttention_gqa(MultiHeadAttention, seed=0):
    """Grouped-query (n_kv_heads = 2, 4) and multi-query (n_kv_heads = 1) attention: k_proj and v_proj
    map d_model to n_kv_heads * hs, and the output equals nn.MultiheadAttention whose K/V projection rows
    are repeated for the query heads of each group (query head h reads K/V head h // (n_heads // n_kv_heads)),
    with and without masks. Your forward runs with torch's head split/merge/repeat in place of yours."""
    g = generator(seed)
    configs = [
        ((2, 5, 24, 6, 2, True, 0.0), [None, _CAUSAL, _PADDING]),
        ((3, 4, 16, 4, 1, False, 0.0), [None, _CAUSAL]),
        ((2, 6, 32, 8, 4, True, 0.0), [_BOTH]),
    ]
    for i, (cfg, kinds) in enumerate(configs):
        call, weights, inputs, outs = _run_learner_module(MultiHeadAttention, g, cfg, kinds, build_seed=200 + i)
        _compare_with_oracle(call, weights, inputs, outs, *cfg[2:6])


@trusted_check(points=1)
def check_MultiHeadAttention_dropout(MultiHeadAttention, seed=0):
    """dropout: in eval() mode a module built with dropout=0.5 equals nn.MultiheadAttention (dropout is
    off in eval); in train() mode it must actually drop (outputs differ from eval's), and with dropout=0.0
    train() equals the oracle."""
    g = generator(seed)
    for dropout in (0.5, 0.0):
        cfg = (2, 6, 16, 4, None, True, dropout)
        for train in (False, True):
            call, weights, inputs, outs = _run_learner_module(MultiHeadAttention, g, cfg, [None, _CAUSAL],
                                                              train=train, build_seed=300)
            if train and dropout:
                mha = _oracle(weights, 16, 4, 4, True)
                for (x, mask, kind), out in zip(inputs, outs):
                    if not torch.isfinite(out).all():
                        raise AssertionError(f"{call}.train() with mask={kind}: output contains nan or inf")
                    if torch.allclose(out, _oracle_forward(mha, x, mask, 4), atol=1e-4):
                        raise AssertionError(
                            f"{call}.train(): the output equals the output without dropout: apply "
                            "nn.Dropout(dropout) to the attention weights (it is active in train() mode only)")
            else:
                _compare_with_oracle(call, weights, inputs, outs, 16, 4, None, True, what=f".{'train' if train else 'eval'}()")


# ------------------------------------------------------------------ MultiHeadAttention: cross-attention
_CROSS_TQ_TK = "random (Tq, Tk)"
_CROSS_PADDING = "context padding (B, 1, 1, Tk)"
_CROSS_PER_HEAD = "random per head (B, nh, Tq, Tk)"


def _make_cross_mask(kind, g, B, t_q, t_k, n_heads):
    """A bool mask for cross-attention, True = may attend; every query keeps at least one key."""
    if kind is None:
        return None
    if kind == _CROSS_PADDING:  # the context's pad tokens hidden from every head and query
        lengths = torch.randint(1, t_k + 1, (B,), generator=g)
        lengths[0] = max(1, t_k - 2)  # at least one padded context
        return (torch.arange(t_k)[None, :] < lengths[:, None])[:, None, None, :]  # (B, 1, 1, Tk)
    shape = (t_q, t_k) if kind == _CROSS_TQ_TK else (B, n_heads, t_q, t_k)
    mask = torch.rand(shape, generator=g) < 0.5
    mask[..., torch.randint(0, t_k, (), generator=g)] = True  # one key every query may read
    return mask


def _learner_cross_forward(state, weights, inputs, run_seed=0):
    """On the learner's side: load the check's weights, run forward(x[, mask], context=context) in eval()."""
    module = state["module"]
    module.load_state_dict(weights, strict=False)
    module.eval()
    outs = []
    with torch.random.fork_rng(devices=[]), torch.no_grad(), _library_helpers(type(module)):
        torch.manual_seed(run_seed)
        for x, mask, context in inputs:
            outs.append(module(x, context=context) if mask is None else module(x, mask, context=context))
    return tuple(outs)


def _oracle_cross_forward(mha, x, context, mask, n_heads):
    """nn.MultiheadAttention(query=x, key=value=context) with our bool mask (True = may attend)."""
    B, t_q, _ = x.shape
    t_k = context.size(1)
    with torch.no_grad():
        if mask is None:
            return mha(x, context, context, need_weights=False)[0]
        if mask.dim() == 2:  # (Tq, Tk), shared by the batch
            return mha(x, context, context, attn_mask=~mask, need_weights=False)[0]
        if mask.shape[1:3] == (1, 1):  # (B, 1, 1, Tk): the context's padding
            return mha(x, context, context, key_padding_mask=~mask[:, 0, 0], need_weights=False)[0]
        per_head = mask.expand(B, n_heads, t_q, t_k).reshape(B * n_heads, t_q, t_k)
        return mha(x, context, context, attn_mask=~per_head, need_weights=False)[0]


def _manual_cross(weights, q_src, k_src, v_src, mask, n_heads, n_kv):
    """Attention from the same weights with F.scaled_dot_product_attention, queries / keys / values
    projected from the given sequences (for diagnosing a mismatch); None when the shapes do not fit."""
    def lin(name, t):
        return F.linear(t, weights[f"{name}.weight"], weights.get(f"{name}.bias"))

    try:
        with torch.no_grad():
            q = _torch_split(lin("q_proj", q_src), n_heads)
            k = _torch_split(lin("k_proj", k_src), n_kv).repeat_interleave(n_heads // n_kv, dim=1)
            v = _torch_split(lin("v_proj", v_src), n_kv).repeat_interleave(n_heads // n_kv, dim=1)
            return lin("out_proj", _HELPERS["merge_heads"](F.scaled_dot_product_attention(q, k, v, attn_mask=mask)))
    except RuntimeError:
        return None


def _diagnose_cross(out, weights, x, context, mask, n_heads, n_kv) -> str:
    def close(ref):
        return ref is not None and out.shape == ref.shape and torch.allclose(out, ref, atol=1e-4, rtol=1e-3)

    suspects = [
        ((x, x, x, mask), "your output is self-attention over x: context was ignored. Project the keys and values "
                          "from context"),
        ((x, x, context, mask), "your keys come from x: project the keys from context (k_proj(context))"),
        ((x, context, x, mask), "your values come from x: project the values from context (v_proj(context))"),
        ((context, context, context, mask), "your queries come from context too: project the queries from x "
                                            "(q_proj(x)); only keys and values come from context"),
    ]
    if mask is not None:
        suspects.append(((x, context, context, None), "your output is cross-attention without the mask: pass the "
                                                      "mask on when context is given too"))
    for (q_src, k_src, v_src, m), hint in suspects:
        if close(_manual_cross(weights, q_src, k_src, v_src, m, n_heads, n_kv)):
            return hint
    return ("queries = q_proj(x), keys = k_proj(context), values = v_proj(context), split into heads; scores "
            "(B, nh, Tq, Tk), masked where the mask (broadcast to (B, nh, Tq, Tk)) is False, softmax over the keys; "
            "weights @ v; merge the heads; out_proj")


def _check_cross_config(MultiHeadAttention, g, cfg, kinds, build_seed):
    """Build the learner's module for one configuration, load the check's weights, run cross-attention on
    the check's inputs and compare with nn.MultiheadAttention(x, context, context)."""
    B, t_q, t_k, d_model, n_heads, n_kv, bias = cfg
    call, state = _built_learner_module(MultiHeadAttention, d_model, n_heads, {"n_kv_heads": n_kv, "bias": bias},
                                        build_seed)
    n_kv = n_heads if n_kv is None else n_kv
    weights = _random_weights(g, d_model, n_heads, n_kv, bias)
    inputs = [(torch.randn(B, t_q, d_model, generator=g), _make_cross_mask(kind, g, B, t_q, t_k, n_heads),
               torch.randn(B, t_k, d_model, generator=g), kind) for kind in kinds]
    what = f"{call}.forward(x {(B, t_q, d_model)}[, mask], context={(B, t_k, d_model)})"
    try:
        outs = on_learner_side(f"{call}: cross-attention forward", lambda: _learner_cross_forward(
            state, {k: w.clone() for k, w in weights.items()},
            [(x.clone(), None if m is None else m.clone(), c.clone()) for x, m, c, _ in inputs], run_seed=build_seed + 1))
    except LearnerRaised as exc:
        raise AssertionError(
            exc.describe(what) + "\n  With context given, keys and values come from context (Tk tokens), queries "
            "from x (Tq tokens): the scores are (B, nh, Tq, Tk) and the output (B, Tq, C). " + _USED_LIBRARY) from None
    if not (isinstance(outs, tuple) and len(outs) == len(inputs)):
        raise AssertionError(f"{call}: forward gave no output for every input")
    mha = _oracle(weights, d_model, n_heads, n_kv, bias)
    for (x, mask, context, kind), out in zip(inputs, outs):
        where = f"{call}(x {(B, t_q, d_model)}, mask={kind}, context={(B, t_k, d_model)})"
        assert_shape(out, (B, t_q, d_model), f"{where} output (B, Tq, C)",
                     "one output per query, so (B, Tq, C): queries come from x, keys and values from context")
        expected = _oracle_cross_forward(mha, x, context, mask, n_heads)
        if torch.isfinite(out).all() and torch.allclose(out, expected, atol=1e-5, rtol=1e-4):
            continue
        hint = _diagnose_cross(out, weights, x, context, mask, n_heads, n_kv) + " " + _USED_LIBRARY
        assert_close(out, expected, where, atol=1e-5, hint=hint)
        raise AssertionError(f"{where}: does not match the reference. {hint}")


@trusted_check(points=3)
def check_MultiHeadAttention_cross(MultiHeadAttention, seed=0):
    """Cross-attention, forward(x, mask, context=context): queries from x (B, Tq, C), keys and values from
    context (B, Tk, C), output (B, Tq, C), against nn.MultiheadAttention(query=x, key=context, value=context)
    with the same weights; Tq < Tk, Tq > Tk and Tq = Tk (context a different sequence); no mask, a (Tq, Tk)
    mask, the context's padding mask (B, 1, 1, Tk) and a per-head (B, nh, Tq, Tk) mask; MHA, GQA and MQA.
    Your forward runs with torch's head split/merge/repeat in place of yours."""
    g = generator(seed)
    configs = [  # (B, Tq, Tk, d_model, n_heads, n_kv_heads, bias), mask kinds
        ((2, 5, 5, 16, 4, None, True), [None, _CROSS_TQ_TK]),  # first: Tq = Tk, where a mix-up still runs
        ((2, 3, 7, 12, 3, None, True), [None, _CROSS_TQ_TK, _CROSS_PADDING, _CROSS_PER_HEAD]),
        ((3, 6, 4, 16, 4, None, False), [None, _CROSS_PADDING]),
        ((2, 4, 6, 24, 6, 2, True), [None, _CROSS_PADDING, _CROSS_PER_HEAD]),
        ((1, 5, 3, 8, 4, 1, False), [None, _CROSS_TQ_TK]),
    ]
    for i, (cfg, kinds) in enumerate(configs):
        _check_cross_config(MultiHeadAttention, g, cfg, kinds, build_seed=400 + 2 * i)


# -------------------------------------------------------------------------------- mha_param_count
def _library_count(d_model, n_heads, n_kv, bias) -> int:
    """Parameters of real library modules, built on the meta device (no memory)."""
    if n_kv is None or n_kv == n_heads:
        modules = [nn.MultiheadAttention(d_model, n_heads, bias=bias, device="meta")]
    else:
        kv = n_kv * (d_model // n_heads)
        modules = [nn.Linear(d_model, out, bias=bias, device="meta") for out in (d_model, kv, kv, d_model)]
    return sum(p.numel() for m in modules for p in m.parameters())


@trusted_check(points=2)
def check_mha_param_count(mha_param_count):
    """Equal to sum(p.numel()) of real modules: nn.MultiheadAttention for multi-head attention, and
    nn.Linear layers q (C -> C), k and v (C -> n_kv * hs), out (C -> C) for GQA/MQA; with and without
    bias, from tiny sizes to d_model = 4096. The answer is a Python int."""
    cases = [(12, 3, None, True), (12, 3, None, False), (16, 4, 4, True), (24, 6, 2, True), (24, 6, 2, False),
             (32, 8, 1, True), (32, 8, 1, False), (768, 12, None, True), (4096, 32, 8, False), (4096, 32, 1, True)]
    for d_model, n_heads, n_kv, bias in cases:
        call = f"mha_param_count({_args(d_model, n_heads, n_kv_heads=n_kv, bias=bias)})"
        try:
            n = mha_param_count(d_model, n_heads, n_kv_heads=n_kv, bias=bias)
        except LearnerRaised as exc:
            raise exc.explain(call) from None
        if not isinstance(n, int) or isinstance(n, bool):
            raise AssertionError(f"{call} returned {type(n).__name__} {n!r}: return a Python int (use // for the "
                                 "head size, and int(...) around a tensor)")
        expected = _library_count(d_model, n_heads, n_kv, bias)
        if n != expected:
            raise AssertionError(
                f"{call} = {n}, but the real modules have {expected} parameters. Count four nn.Linear layers: "
                "q_proj and out_proj map C -> C; k_proj and v_proj map C -> n_kv_heads * hs (hs = C // n_heads); "
                "each weight is (out, in) and, with bias=True, each bias has `out` numbers")
