"""Known bugs of module 06: the masking rule, the encoder, pooling, the masked-LM training loop.

Functions are written out whole with the bug in them; the Encoder mutants subclass the reference and
override the one method holding the bug (or pass one wrong argument to the reference's __init__); the
train_mlm mutants wrap the reference loop and change what one of its collaborators sees (mask_tokens or
the optimiser, as the loop's globals hold them), so that no solution is pasted here.

Every train_mlm mutant is caught by check_train_mlm's exact two-step replay (the library's AdamW steps on
the batches the loop was given); those that break learning also miss check_train_mlm_trained's threshold.
Loss on every position (no -100) still learns context at 40% masking and lands near the threshold, so only
the replay catches it (calibration next to MAX_VAL_LOSS in grader/checks/m06_encoder_mlm.py).
"""

import functools
from contextlib import contextmanager

import torch
from torch import nn

from grader.mutants import mutant

MUTANTS: list = []


# ------------------------------------------------------------------------------------------ mask_tokens
@mutant("mask_tokens", "every selected token becomes [MASK] (no random, no unchanged 10%)", MUTANTS)
def mask_all_selected(input_ids, mask_token_id, vocab_size, special_token_ids=(), mlm_probability=0.15,
                      generator=None):
    special = torch.isin(input_ids, torch.tensor(list(special_token_ids), dtype=input_ids.dtype))
    probs = torch.full(input_ids.shape, mlm_probability).masked_fill(special, 0.0)
    selected = torch.bernoulli(probs, generator=generator).bool()
    labels = input_ids.clone()
    labels[~selected] = -100
    inputs = input_ids.clone()
    inputs[selected] = mask_token_id
    return inputs, labels


@mutant("mask_tokens", "special tokens can be selected (special_token_ids ignored)", MUTANTS)
def mask_specials_selected(input_ids, mask_token_id, vocab_size, special_token_ids=(), mlm_probability=0.15,
                           generator=None):
    selected = torch.bernoulli(torch.full(input_ids.shape, mlm_probability), generator=generator).bool()
    labels = input_ids.clone()
    labels[~selected] = -100
    inputs = input_ids.clone()
    replaced = torch.bernoulli(torch.full(input_ids.shape, 0.8), generator=generator).bool() & selected
    inputs[replaced] = mask_token_id
    rand = torch.bernoulli(torch.full(input_ids.shape, 0.5), generator=generator).bool() & selected & ~replaced
    inputs[rand] = torch.randint(vocab_size, input_ids.shape, generator=generator)[rand]
    return inputs, labels


def _with_labels_everywhere(ref):
    def mask_tokens(input_ids, mask_token_id, vocab_size, special_token_ids=(), mlm_probability=0.15, generator=None):
        inputs, _ = ref(input_ids, mask_token_id, vocab_size, special_token_ids, mlm_probability, generator)
        return inputs, input_ids.clone()  # the bug: every position is a target, no -100

    return mask_tokens


@mutant("mask_tokens", "labels = input_ids everywhere (no -100 where nothing was selected)", MUTANTS,
        from_reference=True)
def mask_labels_everywhere(ref):
    return _with_labels_everywhere(ref["mask_tokens"])


@mutant("mask_tokens", "random branch bernoulli(0.1) of the remaining 20% (random rate 2%, unchanged 18%)", MUTANTS)
def mask_random_two_percent(input_ids, mask_token_id, vocab_size, special_token_ids=(), mlm_probability=0.15,
                            generator=None):
    special = torch.isin(input_ids, torch.tensor(list(special_token_ids), dtype=input_ids.dtype))
    probs = torch.full(input_ids.shape, mlm_probability).masked_fill(special, 0.0)
    selected = torch.bernoulli(probs, generator=generator).bool()
    labels = input_ids.clone()
    labels[~selected] = -100
    inputs = input_ids.clone()
    replaced = torch.bernoulli(torch.full(input_ids.shape, 0.8), generator=generator).bool() & selected
    inputs[replaced] = mask_token_id
    rand = torch.bernoulli(torch.full(input_ids.shape, 0.1), generator=generator).bool() & selected & ~replaced
    inputs[rand] = torch.randint(vocab_size, input_ids.shape, generator=generator)[rand]
    return inputs, labels


@mutant("mask_tokens", "ignores `generator`: draws from the global RNG", MUTANTS, from_reference=True)
def mask_global_rng(ref):
    def mask_tokens(input_ids, mask_token_id, vocab_size, special_token_ids=(), mlm_probability=0.15, generator=None):
        return ref["mask_tokens"](input_ids, mask_token_id, vocab_size, special_token_ids, mlm_probability, None)

    return mask_tokens


@mutant("mask_tokens", "writes the [MASK]s into input_ids in place and returns it", MUTANTS, from_reference=True)
def mask_in_place(ref):
    def mask_tokens(input_ids, mask_token_id, vocab_size, special_token_ids=(), mlm_probability=0.15, generator=None):
        inputs, labels = ref["mask_tokens"](input_ids, mask_token_id, vocab_size, special_token_ids, mlm_probability,
                                            generator)
        input_ids.copy_(inputs)  # the bug: the caller's tensor is overwritten
        return input_ids, labels

    return mask_tokens


# ----------------------------------------------------------------------------------------------- Encoder
@mutant("Encoder", "pre-norm blocks (norm_first=True) where DistilBERT is post-norm", MUTANTS, from_reference=True)
def encoder_pre_norm(ref):
    class Mutated(ref["Encoder"]):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            for block in self.blocks:
                block.norm_first = True

    return Mutated


class _Zeros(nn.Module):
    """Stands in for an embedding whose output is never added: zeros of the embedding's width."""

    def __init__(self, width):
        super().__init__()
        self.width = width

    def forward(self, idx):
        return torch.zeros(*idx.shape, self.width)


def _forward_with(ref, attr, replacement):
    """The reference Encoder whose forward runs with sub-module `attr` replaced by `replacement(self)`
    (restored afterwards): the bug is a step of forward left out."""
    class Mutated(ref["Encoder"]):
        def forward(self, input_ids, attention_mask=None):
            saved = self._modules[attr]
            self._modules[attr] = replacement(self)
            try:
                return super().forward(input_ids, attention_mask)
            finally:
                self._modules[attr] = saved

    return Mutated


@mutant("Encoder", "no position embeddings added (pos_emb built but unused)", MUTANTS, from_reference=True)
def encoder_no_positions(ref):
    return _forward_with(ref, "pos_emb", lambda self: _Zeros(self.pos_emb.embedding_dim))


@mutant("Encoder", "no LayerNorm on the embeddings (emb_ln skipped)", MUTANTS, from_reference=True)
def encoder_no_embedding_norm(ref):
    return _forward_with(ref, "emb_ln", lambda self: nn.Identity())


@mutant("Encoder", "attention_mask accepted but ignored (padding is attended to)", MUTANTS, from_reference=True)
def encoder_mask_ignored(ref):
    class Mutated(ref["Encoder"]):
        def forward(self, input_ids, attention_mask=None):
            return super().forward(input_ids)

    return Mutated


@mutant("Encoder", "causal mask always on (a decoder, whatever `causal` says)", MUTANTS, from_reference=True)
def encoder_always_causal(ref):
    class Mutated(ref["Encoder"]):
        def __init__(self, *args, **kwargs):
            kwargs["causal"] = True
            super().__init__(*args, **kwargs)

    return Mutated


@mutant("Encoder", "MLM head without GELU and LayerNorm: mlm_out(mlm_dense(hidden))", MUTANTS, from_reference=True)
def encoder_head_no_gelu_no_norm(ref):
    class Mutated(ref["Encoder"]):
        def mlm_logits(self, hidden):
            return self.mlm_out(self.mlm_dense(hidden))

    return Mutated


@mutant("Encoder", "untied projection: mlm_out keeps a weight of its own", MUTANTS, from_reference=True)
def encoder_untied(ref):
    class Mutated(ref["Encoder"]):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.mlm_out.weight = nn.Parameter(self.tok_emb.weight.detach().clone())

    return Mutated


# ------------------------------------------------------------------------------------------- cls_pooling
@mutant("cls_pooling", "the last position instead of position 0", MUTANTS)
def cls_last(hidden):
    return hidden[:, -1]


@mutant("cls_pooling", "the mean over T instead of position 0", MUTANTS)
def cls_mean(hidden):
    return hidden.mean(dim=1)


@mutant("cls_pooling", "hidden[0]: the first batch row instead of the first position", MUTANTS)
def cls_first_row(hidden):
    return hidden[0]


# ------------------------------------------------------------------------------------------ mean_pooling
@mutant("mean_pooling", "averages the padding too: hidden.mean(dim=1)", MUTANTS)
def mean_with_padding(hidden, attention_mask):
    return hidden.mean(dim=1)


@mutant("mean_pooling", "sums the real tokens without dividing", MUTANTS)
def mean_sum_only(hidden, attention_mask):
    return (hidden * attention_mask.to(hidden.dtype).unsqueeze(-1)).sum(dim=1)


@mutant("mean_pooling", "divides the masked sum by T instead of the real length", MUTANTS)
def mean_divides_by_T(hidden, attention_mask):
    return (hidden * attention_mask.to(hidden.dtype).unsqueeze(-1)).sum(dim=1) / hidden.shape[1]


@mutant("mean_pooling", "mask on the wrong axis: attention_mask.unsqueeze(1) (B, 1, T)", MUTANTS)
def mean_mask_wrong_axis(hidden, attention_mask):
    m = attention_mask.to(hidden.dtype).unsqueeze(1)  # (B, 1, T): broadcasts against features, not time
    return (hidden * m).sum(dim=1) / m.sum(dim=-1)


@mutant("mean_pooling", "splits the real tokens by the row lengths attention_mask.sum(1).tolist(): integers for "
        "int/bool masks, floats for a float mask (0./1.), which torch.split refuses", MUTANTS)
def mean_split_by_lengths(hidden, attention_mask):
    lengths = attention_mask.sum(dim=1).tolist()  # (B,) as a list: ints, or floats for a float mask
    real = hidden[attention_mask.bool()]  # (n_real, C): the real tokens, row after row
    return torch.stack([chunk.mean(dim=0) for chunk in torch.split(real, lengths)])  # (B, C)


# --------------------------------------------------------------------------------------------- train_mlm
@contextmanager
def _swapped(fn, name, value):
    """While the reference loop runs, its global `name` is `value` (as a learner's own helper would be)."""
    namespace = fn.__globals__
    saved = namespace[name]
    namespace[name] = value
    try:
        yield
    finally:
        namespace[name] = saved


def _wrap_masking(ref_train, change):
    """The reference loop, with what its mask_tokens returns passed through change(batch, inputs, labels)."""
    @functools.wraps(ref_train)  # as a learner's decorator would: the check finds the notebook's namespace
    def train_mlm(model, token_ids, tokenizer, steps, *args, **kwargs):
        masking = ref_train.__globals__["mask_tokens"]  # what the loop would call (the check may have swapped it)

        def mask_tokens(input_ids, *a, **k):
            inputs, labels = masking(input_ids, *a, **k)
            return change(input_ids, inputs, labels)

        with _swapped(ref_train, "mask_tokens", mask_tokens):
            return ref_train(model, token_ids, tokenizer, steps, *args, **kwargs)

    return train_mlm


class _NeverZeroed(torch.optim.AdamW):
    def zero_grad(self, set_to_none=True):  # the bug: gradients accumulate over all steps
        pass


class _ZeroedBeforeStep(torch.optim.AdamW):
    def step(self, closure=None):  # the bug: zero_grad() between backward() and step()
        self.zero_grad(set_to_none=True)
        return super().step(closure)


class _NeverSteps(torch.optim.AdamW):
    def step(self, closure=None):  # the bug: optimizer.step() forgotten, the weights never move
        return None


def _with_optimizer(ref_train, optimizer_cls):
    """The reference loop with `torch.optim.AdamW`, as its globals see it, replaced by `optimizer_cls`."""
    fake_torch = type("torch_with_bug", (), {"__getattr__": lambda self, name: getattr(torch, name)})()
    fake_torch.optim = type("optim", (), {"AdamW": optimizer_cls})

    @functools.wraps(ref_train)
    def train_mlm(*args, **kwargs):
        with _swapped(ref_train, "torch", fake_torch):
            return ref_train(*args, **kwargs)

    return train_mlm


@mutant("train_mlm", "the optimiser's gradients are never zeroed (they accumulate over all steps)", MUTANTS,
        from_reference=True)
def train_never_zeroed(ref):
    return _with_optimizer(ref["train_mlm"], _NeverZeroed)


@mutant("train_mlm", "optimizer.step() forgotten: the loss is computed and back-propagated, the weights never move",
        MUTANTS, from_reference=True)
def train_never_steps(ref):
    return _with_optimizer(ref["train_mlm"], _NeverSteps)


@mutant("train_mlm", "zero_grad() called between backward() and step(): every step applies no gradient", MUTANTS,
        from_reference=True)
def train_zeroed_before_step(ref):
    return _with_optimizer(ref["train_mlm"], _ZeroedBeforeStep)


@mutant("train_mlm", "loss on every position: labels are the original ids everywhere (trained without -100)", MUTANTS,
        from_reference=True)
def train_labels_everywhere(ref):
    return _wrap_masking(ref["train_mlm"], lambda ids, inputs, labels: (inputs, ids.clone()))


def _shift_left(ids, inputs, labels):
    shifted = torch.full_like(labels, -100)
    shifted[:, :-1] = labels[:, 1:]  # the bug: a causal LM's shift, target t is the label of t + 1
    return inputs, shifted


@mutant("train_mlm", "labels shifted by one as in a causal LM (position t is asked for token t + 1)", MUTANTS,
        from_reference=True)
def train_labels_shifted(ref):
    return _wrap_masking(ref["train_mlm"], _shift_left)


@mutant("train_mlm", "the model is fed the unmasked batch (the answers are visible)", MUTANTS, from_reference=True)
def train_unmasked_inputs(ref):
    return _wrap_masking(ref["train_mlm"], lambda ids, inputs, labels: (ids.clone(), labels))


@mutant("train_mlm", "mlm_probability not passed on: mask_tokens' default 15% where 40% is asked", MUTANTS,
        from_reference=True)
def train_ignores_mlm_probability(ref):
    reference = ref["train_mlm"]

    @functools.wraps(reference)
    def train_mlm(model, token_ids, tokenizer, steps, *args, mlm_probability=0.15, **kwargs):
        return reference(model, token_ids, tokenizer, steps, *args, **kwargs)

    return train_mlm
