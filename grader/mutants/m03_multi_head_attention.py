"""Known bugs for module 03: splitting and merging heads, sharing K/V heads, the attention module and its
parameter count, as learners write them.

Small functions are written out whole. MultiHeadAttention mutants are built from the reference class
(`from_reference=True`): a subclass that changes the one step holding the bug (an argument passed on
wrongly, a sub-module swapped, or the one method `attention_weights`), never a copy of the solution.
"""

import math

import torch
from torch import nn

from grader.mutants import mutant

MUTANTS: list = []


# ----------------------------------------------------------------------------------- split_heads
@mutant("split_heads", "x.view(B, nh, T, hs) straight away: right shape, but time steps and heads are mixed",
        MUTANTS)
def split_view_without_transpose(x, n_heads):
    B, T, C = x.shape
    return x.view(B, n_heads, T, C // n_heads)


@mutant("split_heads", "forgets the transpose: returns (B, T, nh, hs)", MUTANTS)
def split_no_transpose(x, n_heads):
    B, T, C = x.shape
    return x.view(B, T, n_heads, C // n_heads)


@mutant("split_heads", "views as (B, T, hs, nh): head h takes every nh-th channel instead of a block", MUTANTS)
def split_strided_channels(x, n_heads):
    B, T, C = x.shape
    return x.view(B, T, C // n_heads, n_heads).permute(0, 3, 1, 2)


@mutant("split_heads", "hard-codes the notebook's head count (4) instead of using n_heads", MUTANTS)
def split_hardcoded_heads(x, n_heads):
    B, T, C = x.shape
    return x.view(B, T, 4, C // 4).transpose(1, 2)


@mutant("split_heads", "transpose(1, 3) instead of (1, 2): head size and time swapped", MUTANTS)
def split_wrong_transpose(x, n_heads):
    B, T, C = x.shape
    return x.view(B, T, n_heads, C // n_heads).transpose(1, 3)


# ----------------------------------------------------------------------------------- merge_heads
@mutant("merge_heads", "reshapes (B, nh, T, hs) straight to (B, T, C) without transposing back", MUTANTS)
def merge_without_transpose(x):
    B, nh, T, hs = x.shape
    return x.reshape(B, T, nh * hs)


@mutant("merge_heads", "transpose(1, 2) then .view: fails, the transposed tensor is not contiguous", MUTANTS)
def merge_view_after_transpose(x):
    B, nh, T, hs = x.shape
    return x.transpose(1, 2).view(B, T, nh * hs)


@mutant("merge_heads", "permute(0, 2, 3, 1): head size outside the head index, channels interleaved", MUTANTS)
def merge_interleaved(x):
    B, nh, T, hs = x.shape
    return x.permute(0, 2, 3, 1).reshape(B, T, nh * hs)


@mutant("merge_heads", "averages the heads instead of concatenating them: (B, T, hs)", MUTANTS)
def merge_mean_of_heads(x):
    return x.mean(dim=1)


# ------------------------------------------------------------------------------------- repeat_kv
@mutant("repeat_kv", "tiles the heads with x.repeat (0 1 0 1) instead of repeating each in place (0 0 1 1)",
        MUTANTS)
def repeat_tiled(x, n_rep):
    return x.repeat(1, n_rep, 1, 1)


@mutant("repeat_kv", "expands a new axis before the K/V head axis: tiles (0 1 0 1) too", MUTANTS)
def repeat_expand_outer(x, n_rep):
    B, n_kv, T, hs = x.shape
    return x[:, None].expand(B, n_rep, n_kv, T, hs).reshape(B, n_kv * n_rep, T, hs)


@mutant("repeat_kv", "repeat_interleave along the time axis (dim=2) instead of the head axis", MUTANTS)
def repeat_time_axis(x, n_rep):
    return torch.repeat_interleave(x, n_rep, dim=2)


@mutant("repeat_kv", "forgets it: returns x unchanged whatever n_rep is", MUTANTS)
def repeat_ignores_n_rep(x, n_rep):
    return x


# ---------------------------------------------------------------------------- MultiHeadAttention
@mutant("MultiHeadAttention", "scales the scores by 1/sqrt(d_model) instead of 1/sqrt(head size)", MUTANTS,
        from_reference=True)
def mha_scale_by_d_model(ref):
    class Mutated(ref["MultiHeadAttention"]):
        def __init__(self, d_model, n_heads, n_kv_heads=None, bias=True, dropout=0.0):
            super().__init__(d_model, n_heads, n_kv_heads, bias, dropout)
            self.head_size = d_model  # used only by attention_weights' scaling from here on

    return Mutated


@mutant("MultiHeadAttention", "accepts the mask argument but never applies it", MUTANTS, from_reference=True)
def mha_mask_ignored(ref):
    class Mutated(ref["MultiHeadAttention"]):
        def forward(self, x, mask=None):
            return super().forward(x)

    return Mutated


@mutant("MultiHeadAttention", "inverts the mask (nn.MultiheadAttention's convention: True = may NOT attend)",
        MUTANTS, from_reference=True)
def mha_mask_inverted(ref):
    class Mutated(ref["MultiHeadAttention"]):
        def forward(self, x, mask=None):
            return super().forward(x, None if mask is None else ~mask)

    return Mutated


@mutant("MultiHeadAttention", "softmax over the queries (dim=-2) instead of the keys", MUTANTS,
        from_reference=True)
def mha_softmax_over_queries(ref):
    class Mutated(ref["MultiHeadAttention"]):
        def attention_weights(self, q, k, mask=None):
            scores = q @ k.transpose(-2, -1) / math.sqrt(self.head_size)
            if mask is not None:
                scores = scores.masked_fill(~mask, float("-inf"))
            return torch.softmax(scores, dim=-2)

    return Mutated


@mutant("MultiHeadAttention", "ignores n_kv_heads: full-size K/V heads, so GQA/MQA are plain MHA", MUTANTS,
        from_reference=True)
def mha_ignores_n_kv_heads(ref):
    class Mutated(ref["MultiHeadAttention"]):
        def __init__(self, d_model, n_heads, n_kv_heads=None, bias=True, dropout=0.0):
            super().__init__(d_model, n_heads, None, bias, dropout)

    return Mutated


@mutant("MultiHeadAttention", "GQA with k_proj and v_proj sized d_model -> d_model instead of n_kv_heads * hs",
        MUTANTS, from_reference=True)
def mha_gqa_kv_full_width(ref):
    class Mutated(ref["MultiHeadAttention"]):
        def __init__(self, d_model, n_heads, n_kv_heads=None, bias=True, dropout=0.0):
            super().__init__(d_model, n_heads, n_kv_heads, bias, dropout)
            self.k_proj = nn.Linear(d_model, d_model, bias=bias)
            self.v_proj = nn.Linear(d_model, d_model, bias=bias)

    return Mutated


@mutant("MultiHeadAttention", "ignores bias=False: every projection keeps a bias", MUTANTS, from_reference=True)
def mha_bias_ignored(ref):
    class Mutated(ref["MultiHeadAttention"]):
        def __init__(self, d_model, n_heads, n_kv_heads=None, bias=True, dropout=0.0):
            super().__init__(d_model, n_heads, n_kv_heads, True, dropout)

    return Mutated


@mutant("MultiHeadAttention", "F.dropout(weights, p) without training=self.training: drops in eval() too",
        MUTANTS, from_reference=True)
def mha_dropout_in_eval(ref):
    class AlwaysDropout(nn.Dropout):
        def forward(self, t):
            return nn.functional.dropout(t, self.p, training=True)

    class Mutated(ref["MultiHeadAttention"]):
        def __init__(self, d_model, n_heads, n_kv_heads=None, bias=True, dropout=0.0):
            super().__init__(d_model, n_heads, n_kv_heads, bias, dropout)
            self.attn_dropout = AlwaysDropout(dropout)

    return Mutated


@mutant("MultiHeadAttention", "stores the dropout rate but never applies dropout", MUTANTS, from_reference=True)
def mha_dropout_never_applied(ref):
    class Mutated(ref["MultiHeadAttention"]):
        def __init__(self, d_model, n_heads, n_kv_heads=None, bias=True, dropout=0.0):
            super().__init__(d_model, n_heads, n_kv_heads, bias, dropout)
            self.attn_dropout = nn.Identity()

    return Mutated


# Cross-attention (context given): each of these is the reference when context is None, so only
# check_MultiHeadAttention_cross can catch them.
def _attend(module, q_src, k_src, v_src, mask, repeat=True):
    """The reference module's projections and attention_weights, with queries, keys and values projected
    from the sequences given (torch's own view/transpose for the heads): the place a cross-attention bug
    sits, written once for the mutants below."""
    B, nh, n_kv, hs = q_src.size(0), module.n_heads, module.n_kv_heads, module.head_size

    def heads(t, n):  # (B, T, n * hs) -> (B, n, T, hs)
        return t.view(B, t.size(1), n, hs).transpose(1, 2)

    q = heads(module.q_proj(q_src), nh)
    k, v = heads(module.k_proj(k_src), n_kv), heads(module.v_proj(v_src), n_kv)
    if repeat:
        k, v = (t.repeat_interleave(nh // n_kv, dim=1) for t in (k, v))
    y = module.attn_dropout(module.attention_weights(q, k, mask)) @ v  # (B, nh, Tq, hs)
    return module.out_proj(y.transpose(1, 2).reshape(B, y.size(2), nh * hs))


@mutant("MultiHeadAttention", "cross-attention: takes context but never uses it (self-attention over x)", MUTANTS,
        from_reference=True)
def mha_cross_context_ignored(ref):
    class Mutated(ref["MultiHeadAttention"]):
        def forward(self, x, mask=None, context=None):
            return super().forward(x, mask)

    return Mutated


@mutant("MultiHeadAttention", "cross-attention: `if context is not None: x = context`, so the queries come from "
        "context too (one output per context token)", MUTANTS, from_reference=True)
def mha_cross_queries_from_context(ref):
    class Mutated(ref["MultiHeadAttention"]):
        def forward(self, x, mask=None, context=None):
            return super().forward(x if context is None else context, mask, context)

    return Mutated


@mutant("MultiHeadAttention", "cross-attention: keys projected from x, values from context", MUTANTS,
        from_reference=True)
def mha_cross_keys_from_x(ref):
    class Mutated(ref["MultiHeadAttention"]):
        def forward(self, x, mask=None, context=None):
            if context is None:
                return super().forward(x, mask)
            return _attend(self, x, x, context, mask)

    return Mutated


@mutant("MultiHeadAttention", "cross-attention: values projected from x, keys from context", MUTANTS,
        from_reference=True)
def mha_cross_values_from_x(ref):
    class Mutated(ref["MultiHeadAttention"]):
        def forward(self, x, mask=None, context=None):
            if context is None:
                return super().forward(x, mask)
            return _attend(self, x, context, x, mask)

    return Mutated


@mutant("MultiHeadAttention", "cross-attention in a branch of its own that drops the mask", MUTANTS,
        from_reference=True)
def mha_cross_mask_dropped(ref):
    class Mutated(ref["MultiHeadAttention"]):
        def forward(self, x, mask=None, context=None):
            return super().forward(x, mask if context is None else None, context)

    return Mutated


@mutant("MultiHeadAttention", "cross-attention in a branch of its own that forgets repeat_kv (GQA breaks)",
        MUTANTS, from_reference=True)
def mha_cross_no_repeat_kv(ref):
    class Mutated(ref["MultiHeadAttention"]):
        def forward(self, x, mask=None, context=None):
            if context is None:
                return super().forward(x, mask)
            return _attend(self, x, context, context, mask, repeat=False)

    return Mutated


# ------------------------------------------------------------------------------- mha_param_count
@mutant("mha_param_count", "forgets out_proj's bias: counts 3 biases", MUTANTS)
def count_forgets_out_bias(d_model, n_heads, n_kv_heads=None, bias=True):
    n_kv_heads = n_heads if n_kv_heads is None else n_kv_heads
    kv = n_kv_heads * (d_model // n_heads)
    return 2 * d_model * d_model + 2 * kv * d_model + ((d_model + 2 * kv) if bias else 0)


@mutant("mha_param_count", "ignores n_kv_heads: counts K/V projections as C x C", MUTANTS)
def count_ignores_kv_heads(d_model, n_heads, n_kv_heads=None, bias=True):
    return 4 * d_model * d_model + (4 * d_model if bias else 0)


@mutant("mha_param_count", "ignores bias=False: always counts the biases", MUTANTS)
def count_ignores_bias_flag(d_model, n_heads, n_kv_heads=None, bias=True):
    n_kv_heads = n_heads if n_kv_heads is None else n_kv_heads
    kv = n_kv_heads * (d_model // n_heads)
    return 2 * d_model * d_model + 2 * kv * d_model + 2 * d_model + 2 * kv


@mutant("mha_param_count", "counts K/V biases as d_model wide even when there are fewer K/V heads", MUTANTS)
def count_kv_bias_full_width(d_model, n_heads, n_kv_heads=None, bias=True):
    n_kv_heads = n_heads if n_kv_heads is None else n_kv_heads
    kv = n_kv_heads * (d_model // n_heads)
    return 2 * d_model * d_model + 2 * kv * d_model + (4 * d_model if bias else 0)


@mutant("mha_param_count", "head size with / instead of //: returns a float", MUTANTS)
def count_returns_float(d_model, n_heads, n_kv_heads=None, bias=True):
    n_kv_heads = n_heads if n_kv_heads is None else n_kv_heads
    kv = n_kv_heads * (d_model / n_heads)
    return 2 * d_model * d_model + 2 * kv * d_model + ((2 * d_model + 2 * kv) if bias else 0)
