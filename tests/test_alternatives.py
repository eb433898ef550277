"""Correct answers written in other styles than the reference get full marks (issue 35: the audit's false
negatives). Each case is a correct implementation a learner really writes — nanoGPT's loss line, a
`@torch.no_grad()` generate beside a buggy sampling helper, NumPy sums and float32 arithmetic — run
through the same record-and-judge path as grading (tests/test_checks.py's run_check). Each failed before
its fix: the check's input, its library swap or its comparison was at fault, not the answer."""

import math

import numpy as np
import pytest
import torch
from test_checks import run_check

from grader.checks import m07_decoder_gpt as m07
from grader.checks import m10_finetune_distilbert as m10
from grader.checks import m11_finetune_gpt2_t5 as m11
from grader.reference import reference_namespace, solution_source

REFERENCE_LOSS = "loss = F.cross_entropy(logits.reshape(B * T, -1), targets.reshape(B * T), ignore_index=-100)"
NANOGPT_LOSS = "loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1), ignore_index=-100)"


def test_nanogpts_view_loss_trains_in_the_gpt_check():
    """nanoGPT's model.py writes the loss with .view, which needs contiguous targets: the check's batches
    (deepdive.decoders.next_char_batch) were slices of the windows, so a correct GPT raised there."""
    source = solution_source("07_decoder_gpt", "GPT_solution")
    assert source.count(REFERENCE_LOSS) == 1, "the reference's loss line moved: update this test"
    ns = reference_namespace("07_decoder_gpt")
    exec(compile(source.replace(REFERENCE_LOSS, NANOGPT_LOSS), "<GPT with nanoGPT's loss>", "exec"), ns)
    run_check(m07.check_GPT_trained, ns, seed=0)


def _wrong_sampling_helpers(ns: dict) -> dict:
    """The learner's four sampling functions all wrong (each returns its logits unchanged)."""
    for name in ("apply_temperature", "top_k_filter", "top_p_filter"):
        ns[name] = lambda logits, *args: logits
    ns["apply_repetition_penalty"] = lambda logits, idx, penalty: logits
    return ns


@pytest.mark.parametrize("check", [m07.check_generate, m07.check_generate_sampling], ids=lambda c: c.__name__)
def test_a_decorated_generate_is_judged_with_the_librarys_sampling(check):
    """The notebook asks for @torch.no_grad() on generate; its wrapper's __globals__ are torch's, so the swap of
    the learner's sampling functions for transformers' processors must follow __wrapped__ to the notebook's
    namespace, or a bug in top_p_filter costs generate's points too."""
    ns = _wrong_sampling_helpers(reference_namespace("07_decoder_gpt"))
    assert hasattr(ns["generate"], "__wrapped__"), "the reference generate is no longer decorated: update this test"
    run_check(check, ns, seed=0)


def _count_trainable_numpy(model):
    sizes = np.array([p.numel() for p in model.parameters()])
    trainable = np.array([p.requires_grad for p in model.parameters()])
    return np.sum(sizes[trainable]), np.sum(sizes)  # (np.int64, np.int64)


def test_count_trainable_with_numpy_sums():
    run_check(m10.check_count_trainable, {"count_trainable": _count_trainable_numpy}, seed=0)


def _perplexity_in_the_losss_precision(eval_loss):
    with np.errstate(over="ignore"):
        return float(np.exp(eval_loss))  # float32 for a float32 loss (np.float32, a 0-dim tensor); inf on overflow


def _perplexity_torch(eval_loss):
    loss = torch.as_tensor(eval_loss, dtype=torch.float64 if isinstance(eval_loss, float) else None)
    return torch.exp(loss).item()


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # np.exp of a 0-dim tensor: NumPy 2's __array_wrap__ notice
@pytest.mark.parametrize("perplexity", [_perplexity_in_the_losss_precision, _perplexity_torch], ids=["numpy", "torch"])
def test_perplexity_in_the_losss_own_precision(perplexity):
    run_check(m11.check_perplexity, {"perplexity": perplexity}, seed=0)


def test_perplexity_still_refuses_the_wrong_base():
    """The looser tolerance (float32 rounding) still tells exp from its neighbours."""
    for wrong in (lambda x: 2.0 ** float(x), lambda x: math.exp(float(x)) - 1.0, lambda x: math.exp(float(x)) * (1 + 1e-5)):
        with pytest.raises(AssertionError):
            run_check(m11.check_perplexity, {"perplexity": wrong}, seed=0)


def test_feed_forward_with_functional_dropout():
    """F.dropout(h, p, training=self.training) instead of an nn.Dropout module: the same contract."""
    import torch.nn.functional as F

    from grader.checks import m05_transformer_block as m05

    ns = reference_namespace("05_transformer_block")

    class FeedForward(ns["FeedForward"]):
        def __init__(self, d_model, d_ff, activation="gelu", dropout=0.0):
            super().__init__(d_model, d_ff, activation, 0.0)
            self.p = dropout

        def forward(self, x):
            if self.activation == "swiglu":
                h = F.silu(self.gate(x)) * self.fc1(x)
            else:
                h = (F.gelu if self.activation == "gelu" else F.relu)(self.fc1(x))
            return self.fc2(F.dropout(h, self.p, training=self.training))

    for check in (m05.check_FeedForward, m05.check_FeedForward_swiglu, m05.check_FeedForward_dropout):
        run_check(check, {"FeedForward": FeedForward}, seed=0)


def test_lora_written_in_other_styles():
    """LoRA from scratch (module 10) as learners also write it: the low-rank product formed first and F.dropout in
    forward (LoRALinear), a recursive walk over named_children (add_lora), a fresh nn.Linear holding the merged
    weight (merge_lora). Each is correct: full marks. Defined in one namespace, as notebook cells are (the checks
    of add_lora and merge_lora swap the notebook's LoRALinear for theirs)."""
    import torch.nn.functional as F
    from torch import nn

    ns = {"math": math, "torch": torch, "nn": nn, "F": F}
    exec(LORA_OTHER_STYLES, ns)
    run_check(m10.check_LoRALinear, {"LoRALinear": ns["LoRALinear"]}, seed=0)
    run_check(m10.check_add_lora, {"add_lora": ns["add_lora"]}, seed=0)
    run_check(m10.check_merge_lora, {"merge_lora": ns["merge_lora"]}, seed=0)


LORA_OTHER_STYLES = """
class LoRALinear(nn.Module):
    def __init__(self, base, r, alpha, dropout=0.0):
        super().__init__()
        self.base, self.p, self.scaling = base.requires_grad_(False), dropout, alpha / r
        self.lora_A = nn.Parameter(nn.init.kaiming_uniform_(torch.empty(r, base.in_features), a=math.sqrt(5)))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, r))

    def forward(self, x):
        delta = self.lora_B @ self.lora_A  # (out, in)
        return self.base(x) + self.scaling * F.linear(F.dropout(x, self.p, self.training), delta)


def add_lora(model, target_modules, r, alpha, dropout=0.0):
    for p in model.parameters():
        p.requires_grad = False

    def visit(module):
        for name, child in module.named_children():
            if isinstance(child, nn.Linear) and name in target_modules:
                setattr(module, name, LoRALinear(child, r, alpha, dropout))
            else:
                visit(child)

    visit(model)
    return model


def merge_lora(model):
    for name, module in list(model.named_modules()):
        if isinstance(module, LoRALinear):
            base = module.base
            merged = nn.Linear(base.in_features, base.out_features, bias=base.bias is not None)
            with torch.no_grad():
                merged.weight.copy_(base.weight + module.scaling * module.lora_B @ module.lora_A)
                if base.bias is not None:
                    merged.bias.copy_(base.bias)
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent), child, merged)
    return model
"""
