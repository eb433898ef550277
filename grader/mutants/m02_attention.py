"""Known bugs for module 02: attention, masks and the online softmax, as learners write them.

Each mutant is a complete implementation with one mistake. The attention and online-softmax
bugs share a parametrised implementation (`_sdpa`, `_online`) so that each mutant differs from
a correct version in exactly the line its `why` names.
"""

import math

import torch

from grader.mutants import mutant

MUTANTS: list = []


# ---------------------------------------------------------------- scaled_dot_product_attention
def _sdpa(q, k, v, mask=None, bug=None):
    d = q.size(-1)
    kt = k.transpose(1, 2) if bug == "transpose_1_2" else k.transpose(-2, -1)  # (..., d, Tk)
    scores = q @ kt  # (..., Tq, Tk)
    if bug == "no_scale":
        pass
    elif bug == "scale_by_d":
        scores = scores / d
    elif bug == "scale_by_dv":
        scores = scores / math.sqrt(v.size(-1))
    else:
        scores = scores / math.sqrt(d)
    if mask is not None and bug not in ("mask_after_softmax", "mask_ignored"):
        if bug == "mask_inverted":
            scores = scores.masked_fill(mask, float("-inf"))
        elif bug == "mask_fill_zero":
            scores = scores.masked_fill(~mask, 0.0)
        else:
            scores = scores.masked_fill(~mask, float("-inf"))
    if bug == "softmax_dim":
        weights = torch.softmax(scores, dim=-2)
    elif bug == "manual_softmax":
        e = torch.exp(scores)
        weights = e / e.sum(-1, keepdim=True)
    else:
        weights = torch.softmax(scores, dim=-1)
    if bug == "mask_after_softmax" and mask is not None:
        weights = weights * mask
    if bug == "detached":
        return weights.detach() @ v, weights
    if bug == "returns_scores":
        return weights @ v, scores
    return weights @ v, weights


def _sdpa_mutant(bug, why):
    def fn(q, k, v, mask=None):
        return _sdpa(q, k, v, mask, bug=bug)

    return mutant("scaled_dot_product_attention", why, MUTANTS, name=f"sdpa_{bug}")(fn)


_sdpa_mutant("no_scale", "forgets to divide the scores by sqrt(d)")
_sdpa_mutant("scale_by_d", "divides the scores by d instead of sqrt(d)")
_sdpa_mutant("scale_by_dv", "takes d from v (v.size(-1)) instead of q, so it scales by sqrt(dv)")
_sdpa_mutant("transpose_1_2", "k.transpose(1, 2): right for (B, T, d), wrong once there is a head axis")
_sdpa_mutant("softmax_dim", "softmax over the query axis (dim=-2) instead of the key axis")
_sdpa_mutant("manual_softmax", "hand-written softmax exp(s) / sum exp(s) without subtracting the max: overflows")
_sdpa_mutant("mask_inverted", "masks where the mask is True (PyTorch's convention: True = may attend)")
_sdpa_mutant("mask_fill_zero", "fills masked scores with 0 instead of -inf, so masked keys keep weight")
_sdpa_mutant("mask_after_softmax", "multiplies the weights by the mask after the softmax: rows no longer sum to 1")
_sdpa_mutant("mask_ignored", "accepts the mask argument but never applies it")
_sdpa_mutant("returns_scores", "returns the pre-softmax scores as the weights")
_sdpa_mutant("detached", "detaches the weights (e.g. to plot them) before weights @ v: no gradient reaches q and k")


# --------------------------------------------------------------------------------- causal_mask
@mutant("causal_mask", "excludes the diagonal: a token cannot attend to itself (off by one)", MUTANTS)
def causal_excludes_self(t_q, t_k=None):
    t_k = t_q if t_k is None else t_k
    return torch.ones(t_q, t_k, dtype=torch.bool).tril(diagonal=t_k - t_q - 1)


@mutant("causal_mask", "lets every token see one step into the future (off by one)", MUTANTS)
def causal_sees_next(t_q, t_k=None):
    t_k = t_q if t_k is None else t_k
    return torch.ones(t_q, t_k, dtype=torch.bool).tril(diagonal=t_k - t_q + 1)


@mutant("causal_mask", "aligned to the top-left (plain tril): wrong for a KV cache, where t_q < t_k", MUTANTS)
def causal_top_left(t_q, t_k=None):
    t_k = t_q if t_k is None else t_k
    return torch.ones(t_q, t_k, dtype=torch.bool).tril()


@mutant("causal_mask", "offset with the wrong sign: tril(t_q - t_k) instead of tril(t_k - t_q)", MUTANTS)
def causal_offset_sign(t_q, t_k=None):
    t_k = t_q if t_k is None else t_k
    return torch.ones(t_q, t_k, dtype=torch.bool).tril(diagonal=t_q - t_k)


@mutant("causal_mask", "triu instead of tril: every token sees the future and not the past", MUTANTS)
def causal_triu(t_q, t_k=None):
    t_k = t_q if t_k is None else t_k
    return torch.ones(t_q, t_k, dtype=torch.bool).triu(diagonal=t_k - t_q)


@mutant("causal_mask", "returns an additive float mask (0 / -inf), not a bool mask", MUTANTS)
def causal_additive_float(t_q, t_k=None):
    t_k = t_q if t_k is None else t_k
    allowed = torch.ones(t_q, t_k, dtype=torch.bool).tril(diagonal=t_k - t_q)
    return torch.zeros(t_q, t_k).masked_fill(~allowed, float("-inf"))


@mutant("causal_mask", "ignores t_k and always returns a square (t_q, t_q) mask", MUTANTS)
def causal_ignores_t_k(t_q, t_k=None):
    return torch.ones(t_q, t_q, dtype=torch.bool).tril()


# -------------------------------------------------------------------------------- padding_mask
@mutant("padding_mask", "True for the pad positions instead of the real tokens", MUTANTS)
def padding_inverted(lengths, max_len):
    return torch.arange(max_len)[None, :] >= torch.as_tensor(lengths)[:, None]


@mutant("padding_mask", "<= instead of <: one pad token per row counted as real (off by one)", MUTANTS)
def padding_off_by_one(lengths, max_len):
    return torch.arange(max_len)[None, :] <= torch.as_tensor(lengths)[:, None]


@mutant("padding_mask", "uses max(lengths) as the width instead of max_len", MUTANTS)
def padding_uses_longest(lengths, max_len):
    lengths = torch.as_tensor(lengths)
    return torch.arange(int(lengths.max()))[None, :] < lengths[:, None]


@mutant("padding_mask", "returns Hugging Face's 0/1 integer attention_mask instead of a bool mask", MUTANTS)
def padding_long_dtype(lengths, max_len):
    return (torch.arange(max_len)[None, :] < torch.as_tensor(lengths)[:, None]).long()


# -------------------------------------------------------------------- online_softmax_attention
def _online(q, k, v, block_size=64, causal=False, bug=None):
    Tq, d = q.shape[-2:]
    Tk, dv = k.size(-2), v.size(-1)
    scale = 1.0 if bug == "no_scale" else 1.0 / math.sqrt(d)
    m = q.new_full((*q.shape[:-1], 1), float("-inf"))  # (..., Tq, 1) running max
    row_sum = q.new_zeros((*q.shape[:-1], 1))  # (..., Tq, 1) running sum
    acc = q.new_zeros((*q.shape[:-1], dv))  # (..., Tq, dv) running numerator
    offset = 0 if bug == "causal_top_left" else Tk - Tq
    q_pos = torch.arange(Tq)[:, None] + offset  # (Tq, 1)
    stop = Tk - block_size + 1 if bug == "drops_last_block" else Tk
    for start in range(0, max(stop, 0), block_size):
        kb = k[..., start:start + block_size, :]  # (..., Bk, d)
        vb = v[..., start:start + block_size, :]  # (..., Bk, dv)
        s = (q @ kb.transpose(-2, -1)) * scale  # (..., Tq, Bk)
        if causal:
            first = 0 if bug == "causal_local_positions" else start
            k_pos = torch.arange(first, first + kb.size(-2))[None, :]  # (1, Bk)
            s = s.masked_fill(k_pos > q_pos, float("-inf"))
        if bug == "block_max_only":
            m_blk = s.amax(-1, keepdim=True)
            p = torch.exp(s - m_blk)
            row_sum = row_sum + p.sum(-1, keepdim=True)
            acc = acc + p @ vb
            continue
        m_new = torch.maximum(m, s.amax(-1, keepdim=True))  # (..., Tq, 1)
        alpha = torch.exp(m_new - m) if bug == "alpha_inverted" else torch.exp(m - m_new)
        p = torch.exp(s - m_new)  # (..., Tq, Bk)
        row_sum = (row_sum if bug in ("no_rescale", "rescale_output_only") else alpha * row_sum) + p.sum(-1, keepdim=True)
        acc = (acc if bug in ("no_rescale", "rescale_sum_only") else alpha * acc) + p @ vb
        m = m_new
    return acc if bug == "no_final_division" else acc / row_sum


def _online_mutant(bug, why):
    def fn(q, k, v, block_size=64, causal=False):
        return _online(q, k, v, block_size, causal, bug=bug)

    return mutant("online_softmax_attention", why, MUTANTS, name=f"online_{bug}")(fn)


_online_mutant("no_rescale", "never rescales the running sum and output when the running max grows")
_online_mutant("rescale_sum_only", "rescales the running sum but not the output accumulator")
_online_mutant("rescale_output_only", "rescales the output accumulator but not the running sum")
_online_mutant("alpha_inverted", "rescales by exp(m_new - m_old) instead of exp(m_old - m_new)")
_online_mutant("block_max_only", "subtracts each block's own max and adds blocks up without any correction")
_online_mutant("causal_local_positions",
               "causal mask built from positions inside the block (0..Bk-1): it forgets the mask across blocks")
_online_mutant("causal_top_left", "causal mask not aligned to the end: wrong when Tq < Tk (KV cache)")
_online_mutant("drops_last_block", "loops over Tk // block_size full blocks and drops the shorter last block")
_online_mutant("no_final_division", "forgets to divide the accumulated output by the running sum")
_online_mutant("no_scale", "forgets the 1 / sqrt(d) scaling inside the blocks")


@mutant("online_softmax_attention",
        "computes the whole (Tq, Tk) score matrix and one softmax: right numbers, O(T^2) memory", MUTANTS)
def online_full_matrix(q, k, v, block_size=64, causal=False):
    Tq, d = q.shape[-2:]
    Tk = k.size(-2)
    scores = q @ k.transpose(-2, -1) / math.sqrt(d)  # (..., Tq, Tk): exactly what must not exist
    if causal:
        allowed = torch.ones(Tq, Tk, dtype=torch.bool).tril(diagonal=Tk - Tq)
        scores = scores.masked_fill(~allowed, float("-inf"))
    return torch.softmax(scores, dim=-1) @ v


@mutant("online_softmax_attention",
        "concatenates the blocks' scores and takes one softmax at the end: blocks, but still O(T^2)", MUTANTS)
def online_concat_blocks(q, k, v, block_size=64, causal=False):
    Tq, d = q.shape[-2:]
    Tk = k.size(-2)
    q_pos = torch.arange(Tq)[:, None] + (Tk - Tq)
    blocks = []
    for start in range(0, Tk, block_size):
        kb = k[..., start:start + block_size, :]
        s = q @ kb.transpose(-2, -1) / math.sqrt(d)  # (..., Tq, Bk)
        if causal:
            k_pos = torch.arange(start, start + kb.size(-2))[None, :]
            s = s.masked_fill(k_pos > q_pos, float("-inf"))
        blocks.append(s)
    return torch.softmax(torch.cat(blocks, dim=-1), dim=-1) @ v  # the cat rebuilds (..., Tq, Tk)
