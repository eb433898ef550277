"""Known bugs of module 07: the config, the attention (causal mask, KV cache, scale, heads), the block
(norms, residuals, the cache passed on), the GPT (positions, loss, tying, ln_f), the four sampling
functions, generate and the GPT-2 weight copy.

GPTConfig, CausalSelfAttention, Block and GPT mutants are built from the reference namespace: a dataclass
subclass that changes one field, or a subclass of the reference's class with the one method that holds
the bug written out. The small sampling functions are written out
whole, with the bug in them. Some generate mutants wrap the reference and change one argument.

Left out on purpose: "exact GELU instead of the tanh approximation" is not a learner bug here, because
the MLP is given code in this module (module 05's FeedForward mutants cover the activation).
"""

import dataclasses
import math

import torch
import torch.nn.functional as F

from grader.mutants import mutant

MUTANTS: list = []


# -------------------------------------------------------------------------------------------- GPTConfig
@mutant("GPTConfig", "vocab_size 50256 (forgets <|endoftext|>: 50,000 merges + 256 bytes)", MUTANTS,
        from_reference=True)
def config_vocab_50256(ref):
    @dataclasses.dataclass
    class Mutated(ref["GPTConfig"]):
        vocab_size: int = 50256

    return Mutated


@mutant("GPTConfig", "block_size 512 (BERT's context length, not GPT-2's 1024)", MUTANTS, from_reference=True)
def config_block_512(ref):
    @dataclasses.dataclass
    class Mutated(ref["GPTConfig"]):
        block_size: int = 512

    return Mutated


@mutant("GPTConfig", "no validation: n_embd not divisible by n_head is accepted", MUTANTS, from_reference=True)
def config_no_validation(ref):
    @dataclasses.dataclass
    class Mutated(ref["GPTConfig"]):
        def __post_init__(self):
            pass

    return Mutated


@mutant("GPTConfig", "n_head defaults to 8 (the original transformer's) instead of 12", MUTANTS, from_reference=True)
def config_n_head_8(ref):
    @dataclasses.dataclass
    class Mutated(ref["GPTConfig"]):
        n_head: int = 8

    return Mutated


# --------------------------------------------------------------------------------- CausalSelfAttention
# Built from the reference: a subclass of the reference's class with forward written out around the bug.
def _heads(attn, x):
    """q, k, v (B, nh, T, hs) of the new tokens, as the reference splits them."""
    B, T, C = x.shape
    return (t.view(B, T, attn.n_head, C // attn.n_head).transpose(1, 2) for t in attn.c_attn(x).split(C, dim=2))


def _with_past(k, v, past):
    if past is not None:
        k, v = torch.cat([past[0], k], dim=2), torch.cat([past[1], v], dim=2)
    return k, v


def _finish(attn, att, v, x):
    B, T, C = x.shape
    y = (att.softmax(dim=-1) @ v).transpose(1, 2).reshape(B, T, C)
    return attn.c_proj(y)


def _end_aligned(T, T_all):
    return torch.ones(T, T_all, dtype=torch.bool).tril(diagonal=T_all - T)


def _attention(ref, forward):
    """The reference's CausalSelfAttention with `forward` in place of its own."""
    return type("MutatedAttention", (ref["CausalSelfAttention"],), {"forward": forward})


@mutant("CausalSelfAttention", "no causal mask: every position attends to the whole sequence", MUTANTS,
        from_reference=True)
def attn_no_causal_mask(ref):
    def forward(self, x, past=None):
        q, k, v = _heads(self, x)
        k, v = _with_past(k, v, past)
        att = (q @ k.transpose(-2, -1)) / math.sqrt(q.size(-1))
        return _finish(self, att, v, x), (k, v)

    return _attention(ref, forward)


@mutant("CausalSelfAttention", "the causal mask aligned to the start: ones(T, T_all).tril() (query i sees keys "
        "0 .. i, not 0 .. T_past + i)", MUTANTS, from_reference=True)
def attn_mask_aligned_to_start(ref):
    def forward(self, x, past=None):
        q, k, v = _heads(self, x)
        k, v = _with_past(k, v, past)
        T, T_all = q.size(2), k.size(2)
        att = (q @ k.transpose(-2, -1)) / math.sqrt(q.size(-1))
        att = att.masked_fill(~torch.ones(T, T_all, dtype=torch.bool).tril(), float("-inf"))
        return _finish(self, att, v, x), (k, v)

    return _attention(ref, forward)


@mutant("CausalSelfAttention", "the (T, T) causal mask only without a cache: fine one token at a time, wrong for a "
        "chunk after a cache", MUTANTS, from_reference=True)
def attn_mask_ignores_past(ref):
    def forward(self, x, past=None):
        q, k, v = _heads(self, x)
        k, v = _with_past(k, v, past)
        T = q.size(2)
        att = (q @ k.transpose(-2, -1)) / math.sqrt(q.size(-1))
        if past is None:
            att = att.masked_fill(~torch.ones(T, T, dtype=torch.bool).tril(), float("-inf"))
        return _finish(self, att, v, x), (k, v)

    return _attention(ref, forward)


@mutant("CausalSelfAttention", "the cache concatenated along the head axis (dim=1) instead of time (dim=2)", MUTANTS,
        from_reference=True)
def attn_cache_wrong_axis(ref):
    def forward(self, x, past=None):
        q, k, v = _heads(self, x)
        if past is not None:
            k, v = torch.cat([past[0], k], dim=1), torch.cat([past[1], v], dim=1)  # the bug: dim=1 is the heads
        T, T_all = q.size(2), k.size(2)
        att = (q @ k.transpose(-2, -1)) / math.sqrt(q.size(-1))
        att = att.masked_fill(~_end_aligned(T, T_all), float("-inf"))
        return _finish(self, att, v, x), (k, v)

    return _attention(ref, forward)


@mutant("CausalSelfAttention", "the cached keys and values appended after the new ones: cat([k, past_k])", MUTANTS,
        from_reference=True)
def attn_past_after_new(ref):
    def forward(self, x, past=None):
        q, k, v = _heads(self, x)
        if past is not None:
            k, v = torch.cat([k, past[0]], dim=2), torch.cat([v, past[1]], dim=2)  # the bug: the new ones first
        T, T_all = q.size(2), k.size(2)
        att = (q @ k.transpose(-2, -1)) / math.sqrt(q.size(-1))
        att = att.masked_fill(~_end_aligned(T, T_all), float("-inf"))
        return _finish(self, att, v, x), (k, v)

    return _attention(ref, forward)


@mutant("CausalSelfAttention", "scores scaled by 1/hs instead of 1/sqrt(hs)", MUTANTS, from_reference=True)
def attn_scale_by_hs(ref):
    def forward(self, x, past=None):
        q, k, v = _heads(self, x)
        k, v = _with_past(k, v, past)
        T, T_all = q.size(2), k.size(2)
        att = (q @ k.transpose(-2, -1)) / q.size(-1)
        att = att.masked_fill(~_end_aligned(T, T_all), float("-inf"))
        return _finish(self, att, v, x), (k, v)

    return _attention(ref, forward)


@mutant("CausalSelfAttention", "heads merged without the transpose: (B, nh, T, hs).reshape(B, T, C)", MUTANTS,
        from_reference=True)
def attn_merge_without_transpose(ref):
    def forward(self, x, past=None):
        B, T, C = x.shape
        q, k, v = _heads(self, x)
        k, v = _with_past(k, v, past)
        att = (q @ k.transpose(-2, -1)) / math.sqrt(q.size(-1))
        att = att.masked_fill(~_end_aligned(T, k.size(2)), float("-inf"))
        y = (att.softmax(dim=-1) @ v).reshape(B, T, C)  # the bug: heads and time mixed up
        return self.c_proj(y), (k, v)

    return _attention(ref, forward)


# ------------------------------------------------------------------------------------------------ Block
def _block(ref, forward):
    """The reference's Block with `forward` in place of its own."""
    return type("MutatedBlock", (ref["Block"],), {"forward": forward})


@mutant("Block", "post-norm blocks: x = ln_1(x + attn(x)), x = ln_2(x + mlp(x))", MUTANTS, from_reference=True)
def block_post_norm(ref):
    def forward(self, x, past=None):
        a, kv = self.attn(x, past)
        x = self.ln_1(x + a)
        return self.ln_2(x + self.mlp(x)), kv

    return _block(ref, forward)


@mutant("Block", "the residual around the norm: x = ln_1(x), then x = x + attn(x) (the stream is normalised)",
        MUTANTS, from_reference=True)
def block_residual_around_norm(ref):
    def forward(self, x, past=None):
        x = self.ln_1(x)
        a, kv = self.attn(x, past)
        x = x + a
        x = self.ln_2(x)
        return x + self.mlp(x), kv

    return _block(ref, forward)


@mutant("Block", "one LayerNorm for both branches: ln_1 before the MLP too (ln_2 unused)", MUTANTS,
        from_reference=True)
def block_shared_norm(ref):
    def forward(self, x, past=None):
        a, kv = self.attn(self.ln_1(x), past)
        x = x + a
        return x + self.mlp(self.ln_1(x)), kv

    return _block(ref, forward)


@mutant("Block", "past not handed on to the attention: the cache is dropped inside the block", MUTANTS,
        from_reference=True)
def block_drops_past(ref):
    def forward(self, x, past=None):
        a, kv = self.attn(self.ln_1(x))
        x = x + a
        return x + self.mlp(self.ln_2(x)), kv

    return _block(ref, forward)


# -------------------------------------------------------------------------------------------------- GPT
@mutant("GPT", "positions not offset with a cache: wpe(arange(T)) for the new tokens, whatever T_past is", MUTANTS,
        from_reference=True)
def gpt_positions_not_offset(ref):
    class Mutated(ref["GPT"]):
        def forward(self, idx, targets=None, past_key_values=None, use_cache=False):
            wpe = self.transformer.wpe
            T_past = 0 if past_key_values is None else past_key_values[0][0].size(2)
            original = wpe.forward
            wpe.forward = lambda pos: original(pos - T_past)  # the bug: positions restart at 0
            try:
                return super().forward(idx, targets, past_key_values, use_cache)
            finally:
                del wpe.forward

    return Mutated


@mutant("GPT", "targets shifted again inside forward: logits[:, :-1] against targets[:, 1:]", MUTANTS,
        from_reference=True)
def gpt_targets_shifted_twice(ref):
    class Mutated(ref["GPT"]):
        def forward(self, idx, targets=None, past_key_values=None, use_cache=False):
            logits, _, present = super().forward(idx, None, past_key_values, use_cache)
            loss = None
            if targets is not None:
                loss = F.cross_entropy(logits[:, :-1].reshape(-1, logits.size(-1)), targets[:, 1:].reshape(-1),
                                       ignore_index=-100)
            return logits, loss, present

    return Mutated


@mutant("GPT", "lm_head not tied to wte (two separate (V, C) matrices)", MUTANTS, from_reference=True)
def gpt_untied(ref):
    class Mutated(ref["GPT"]):
        def __init__(self, config):
            super().__init__(config)
            self.transformer.wte.weight = torch.nn.Parameter(self.lm_head.weight.detach().clone())

    return Mutated


@mutant("GPT", "no final LayerNorm: lm_head reads the residual stream as it leaves the last block", MUTANTS,
        from_reference=True)
def gpt_no_ln_f(ref):
    class Mutated(ref["GPT"]):
        def forward(self, idx, targets=None, past_key_values=None, use_cache=False):
            ln_f = self.transformer.ln_f
            ln_f.forward = lambda x: x  # the bug: ln_f skipped
            try:
                return super().forward(idx, targets, past_key_values, use_cache)
            finally:
                del ln_f.forward

    return Mutated


@mutant("GPT", "every block gets the whole past_key_values tuple (block i's cache not picked out)", MUTANTS,
        from_reference=True)
def gpt_past_not_per_layer(ref):
    class Mutated(ref["GPT"]):
        def forward(self, idx, targets=None, past_key_values=None, use_cache=False):
            if past_key_values is not None:  # the bug, as a learner writes it: the first layer's cache for all
                past_key_values = tuple(past_key_values[0] for _ in past_key_values)
            return super().forward(idx, targets, past_key_values, use_cache)

    return Mutated


# ------------------------------------------------------------------------------------ apply_temperature
@mutant("apply_temperature", "multiplies by the temperature", MUTANTS)
def temperature_multiplies(logits, temperature):
    if temperature <= 0:
        raise ValueError("temperature must be > 0")
    return logits * temperature


@mutant("apply_temperature", "divides the probabilities, not the logits (returns softmax(logits) / T)", MUTANTS)
def temperature_on_probabilities(logits, temperature):
    if temperature <= 0:
        raise ValueError("temperature must be > 0")
    return logits.softmax(dim=-1) / temperature


@mutant("apply_temperature", "no ValueError for temperature <= 0", MUTANTS)
def temperature_no_error(logits, temperature):
    return logits / temperature


@mutant("apply_temperature", "returns the logits unchanged", MUTANTS)
def temperature_ignored(logits, temperature):
    if temperature <= 0:
        raise ValueError("temperature must be > 0")
    return logits


# ----------------------------------------------------------------------------------------- top_k_filter
# transformers keeps every logit equal to the k-th largest (ties kept), so the tie bug is the opposite of
# "keeps more than k on ties": keeping exactly k by index drops tied tokens.
@mutant("top_k_filter", "keeps exactly k tokens by index (scatter of topk's indices): drops tokens tied with the "
        "k-th", MUTANTS)
def top_k_exactly_k(logits, k):
    if k >= logits.size(-1):
        return logits
    keep = torch.zeros_like(logits, dtype=torch.bool).scatter(-1, logits.topk(k, dim=-1).indices, True)
    return logits.masked_fill(~keep, float("-inf"))


@mutant("top_k_filter", "keeps k + 1 tokens (compares with the (k+1)-th largest)", MUTANTS)
def top_k_keeps_k_plus_1(logits, k):
    if k + 1 >= logits.size(-1):
        return logits
    kth = logits.topk(k + 1, dim=-1).values[..., -1:]
    return logits.masked_fill(logits < kth, float("-inf"))


@mutant("top_k_filter", "filtered logits set to 0 instead of -inf (they can still be sampled)", MUTANTS)
def top_k_zero_fill(logits, k):
    if k >= logits.size(-1):
        return logits
    kth = logits.topk(k, dim=-1).values[..., -1:]
    return logits.masked_fill(logits < kth, 0.0)


@mutant("top_k_filter", "the threshold of row 0 used for every row", MUTANTS)
def top_k_first_row_threshold(logits, k):
    if k >= logits.size(-1):
        return logits
    flat = logits.reshape(-1, logits.size(-1))
    kth = flat[0].topk(k).values[-1]
    return logits.masked_fill(logits < kth, float("-inf"))


# ----------------------------------------------------------------------------------------- top_p_filter
def _sorted_probs(logits):
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
    return sorted_logits.softmax(dim=-1), order


@mutant("top_p_filter", "drops the token that crosses p (keeps only tokens whose cumulative sum stays <= p)", MUTANTS)
def top_p_drops_crossing(logits, p):
    probs, order = _sorted_probs(logits)
    drop = probs.cumsum(dim=-1) > p
    drop[..., 0] = False
    return logits.masked_fill(drop.scatter(-1, order, drop), float("-inf"))


@mutant("top_p_filter", "cumulative sum over the sorted logits instead of the probabilities", MUTANTS)
def top_p_cumsum_logits(logits, p):
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
    before = sorted_logits.cumsum(dim=-1) - sorted_logits
    drop = before >= p
    return logits.masked_fill(drop.scatter(-1, order, drop), float("-inf"))


@mutant("top_p_filter", "forgets to un-sort: the mask made in sorted order is applied in vocabulary order", MUTANTS)
def top_p_not_unsorted(logits, p):
    probs, _ = _sorted_probs(logits)
    drop = (probs.cumsum(dim=-1) - probs) >= p
    return logits.masked_fill(drop, float("-inf"))


@mutant("top_p_filter", "shifts the mask right but forgets to keep the first token: keeps nothing when the top token "
        "alone exceeds p", MUTANTS)
def top_p_can_keep_nothing(logits, p):
    probs, order = _sorted_probs(logits)
    drop = probs.cumsum(dim=-1) > p
    drop[..., 1:] = drop[..., :-1].clone()  # (the missing line: drop[..., 0] = False)
    return logits.masked_fill(drop.scatter(-1, order, drop), float("-inf"))


# ----------------------------------------------------------------------------- apply_repetition_penalty
def _seen(logits, idx):
    return torch.zeros_like(logits, dtype=torch.bool).scatter(1, idx, True)


@mutant("apply_repetition_penalty", "divides every seen logit, negative ones too (which makes them more likely)",
        MUTANTS)
def repetition_divides_negatives(logits, idx, penalty):
    return torch.where(_seen(logits, idx), logits / penalty, logits)


@mutant("apply_repetition_penalty", "penalises once per occurrence (a token seen 3 times is divided 3 times)", MUTANTS)
def repetition_per_occurrence(logits, idx, penalty):
    out = logits.clone()
    for b in range(idx.size(0)):
        for t in idx[b].tolist():
            out[b, t] = out[b, t] / penalty if out[b, t] > 0 else out[b, t] * penalty
    return out


@mutant("apply_repetition_penalty", "the tokens of every row penalised in every row", MUTANTS)
def repetition_all_rows(logits, idx, penalty):
    seen = _seen(logits, idx).any(dim=0, keepdim=True)  # (1, V): the bug, rows merged
    return torch.where(seen, torch.where(logits > 0, logits / penalty, logits * penalty), logits)


@mutant("apply_repetition_penalty", "penalises every token, seen or not", MUTANTS)
def repetition_all_tokens(logits, idx, penalty):
    return torch.where(logits > 0, logits / penalty, logits * penalty)


# --------------------------------------------------------------------------------------------- generate
@mutant("generate", "does not pass the generator to torch.multinomial (runs are not reproducible)", MUTANTS,
        from_reference=True)
def generate_ignores_generator(ref):
    reference = ref["generate"]

    def generate(model, idx, max_new_tokens, generator=None, **kwargs):
        return reference(model, idx, max_new_tokens, generator=None, **kwargs)

    return generate


@mutant("generate", "argmax always: greedy even when sampling is asked", MUTANTS, from_reference=True)
def generate_always_greedy(ref):
    reference = ref["generate"]

    def generate(model, idx, max_new_tokens, temperature=1.0, **kwargs):
        return reference(model, idx, max_new_tokens, temperature=0, **kwargs)

    return generate


@mutant("generate", "ignores temperature (always samples at 1.0)", MUTANTS, from_reference=True)
def generate_ignores_temperature(ref):
    reference = ref["generate"]

    def generate(model, idx, max_new_tokens, temperature=1.0, **kwargs):
        return reference(model, idx, max_new_tokens, temperature=1.0 if temperature else 0, **kwargs)

    return generate


def _last_logits(model, idx, past, use_cache):
    """One model call as a learner might write it with the bug named by the caller."""
    if use_cache and past is not None:
        logits, _, past = model(idx[:, -1:], past_key_values=past, use_cache=True)
    else:
        logits, _, past = model(idx[:, -model.config.block_size:], use_cache=use_cache)
    return logits[:, -1, :], past


@mutant("generate", "ignores the cache's point: feeds the whole sequence again together with past_key_values",
        MUTANTS)
@torch.no_grad()
def generate_whole_sequence_with_past(model, idx, max_new_tokens, temperature=1.0, top_k=None, top_p=None,
                                      repetition_penalty=1.0, use_cache=True, generator=None):
    model.eval()
    past = None
    for _ in range(max_new_tokens):
        logits, _, past = model(idx, past_key_values=past, use_cache=use_cache)
        logits = logits[:, -1, :]
        next_token = logits.argmax(-1, keepdim=True) if temperature == 0 else torch.multinomial(
            (logits / temperature).softmax(-1), 1, generator=generator)
        idx = torch.cat([idx, next_token], dim=1)
    return idx


@mutant("generate", "samples from the raw logits (clamped to be non-negative) instead of softmax probabilities",
        MUTANTS, from_reference=True)
def generate_no_softmax(ref):
    @torch.no_grad()
    def generate(model, idx, max_new_tokens, temperature=1.0, top_k=None, top_p=None, repetition_penalty=1.0,
                 use_cache=True, generator=None):
        model.eval()
        past = None
        for _ in range(max_new_tokens):
            logits, past = _last_logits(model, idx, past, use_cache)
            if repetition_penalty != 1.0:
                logits = ref["apply_repetition_penalty"](logits, idx, repetition_penalty)
            if temperature == 0:
                next_token = logits.argmax(-1, keepdim=True)
            else:
                logits = ref["apply_temperature"](logits, temperature)
                if top_k is not None:
                    logits = ref["top_k_filter"](logits, top_k)
                if top_p is not None:
                    logits = ref["top_p_filter"](logits, top_p)
                weights = torch.nan_to_num(logits, neginf=0.0).clamp(min=0) + 1e-9  # the bug: no softmax
                next_token = torch.multinomial(weights, 1, generator=generator)
            idx = torch.cat([idx, next_token], dim=1)
        return idx

    return generate


@mutant("generate", "appends the new token along the batch axis (dim=0)", MUTANTS)
@torch.no_grad()
def generate_wrong_axis(model, idx, max_new_tokens, temperature=1.0, top_k=None, top_p=None, repetition_penalty=1.0,
                        use_cache=True, generator=None):
    model.eval()
    for _ in range(max_new_tokens):
        logits, _ = _last_logits(model, idx, None, False)
        next_token = logits.argmax(dim=-1)  # (B,)
        idx = torch.cat([idx, next_token[None]], dim=0)  # the bug: a new row instead of a new column
    return idx


# ------------------------------------------------------------------------------------ load_gpt2_weights
_CONV1D = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")


@mutant("load_gpt2_weights", "transposes only where the shapes differ: the square attn.c_proj is copied as it is "
        "(no error, wrong numbers)", MUTANTS)
def load_square_not_transposed(model, hf_model):
    theirs = hf_model.state_dict()
    with torch.no_grad():
        for name, p in model.named_parameters():
            w = theirs[name]
            p.copy_(w.t() if w.shape != p.shape else w)
    return model


@mutant("load_gpt2_weights", "transposes every 2-D weight, the embeddings too", MUTANTS)
def load_transposes_embeddings(model, hf_model):
    theirs = hf_model.state_dict()
    with torch.no_grad():
        for name, p in model.named_parameters():
            w = theirs[name]
            p.copy_(w.t() if w.dim() == 2 else w)
    return model


@mutant("load_gpt2_weights", "copies the blocks and the embeddings, forgets ln_f", MUTANTS)
def load_skips_ln_f(model, hf_model):
    theirs = hf_model.state_dict()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.startswith("transformer.ln_f"):
                continue
            w = theirs[name]
            p.copy_(w.t() if name.endswith(_CONV1D) else w)
    return model


@mutant("load_gpt2_weights", "copies the weights only, the biases stay as they were", MUTANTS)
def load_skips_biases(model, hf_model):
    theirs = hf_model.state_dict()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(".bias"):
                continue
            w = theirs[name]
            p.copy_(w.t() if name.endswith(_CONV1D) else w)
    return model


@mutant("load_gpt2_weights", "lm_head assigned a new Parameter of its own (a copy of GPT-2's): no longer tied to wte",
        MUTANTS)
def load_unties_lm_head(model, hf_model):
    theirs = hf_model.state_dict()
    with torch.no_grad():
        for name, p in model.named_parameters():
            w = theirs[name]
            p.copy_(w.t() if name.endswith(_CONV1D) else w)
    model.lm_head.weight = torch.nn.Parameter(theirs["lm_head.weight"].clone())
    return model
