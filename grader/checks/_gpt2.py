"""The GPT-2 weight map for the checks of modules 07 and 09 (instructor-only: modules 07 and 09 ask the learner
to write this map, `load_gpt2_weights` and `export_to_gpt2`, so it must not ship in deepdive/).

Module 07's GPT has nanoGPT's names, which are GPT-2's names; only the layer type differs (`Conv1D` (in, out) in
GPT-2's checkpoints, `nn.Linear` (out, in) in ours). `gpt2_from_gpt` builds the library oracle,
transformers' `GPT2LMHeadModel`, with a GPT's weights.
"""

import torch
from torch import nn

# ----------------------------------------------------------------------------- GPT-2 (module 07)
# nanoGPT's names are GPT-2's names; the only difference is the layer type: GPT-2's checkpoints use
# `Conv1D`, whose weight is (in, out), where nn.Linear's is (out, in). So the four projection
# weights are transposed, everything else is copied as it is.
_GPT2_CONV1D = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")


def _gpt_tensors(state_dict_or_module) -> dict:
    if isinstance(state_dict_or_module, nn.Module):
        return dict(state_dict_or_module.state_dict())
    return dict(state_dict_or_module)


def gpt2_state_from_gpt(state_dict_or_module) -> dict:
    """nanoGPT-layout tensors (nn.Linear projections) -> a GPT2LMHeadModel state_dict (Conv1D layout).
    Keys that GPT-2 does not have (a registered causal-mask buffer `attn.bias`) are left out."""
    out = {}
    for name, t in _gpt_tensors(state_dict_or_module).items():
        if name.endswith((".attn.bias", ".attn.masked_bias")):
            continue
        out[name] = t.detach().t().contiguous() if name.endswith(_GPT2_CONV1D) else t.detach().clone()
    return out


def gpt_state_from_gpt2(model_or_state_dict) -> dict:
    """A GPT2LMHeadModel (or its state_dict) -> tensors with nanoGPT's nn.Linear layout: the same transposition
    of the four Conv1D weights, the other way."""
    return gpt2_state_from_gpt(model_or_state_dict)


def gpt2_from_gpt(state_dict_or_module, n_head: int, *, layer_norm_epsilon: float = 1e-5,
                  dtype: torch.dtype = torch.float32):
    """transformers' `GPT2LMHeadModel` (eval, dropout 0, "gelu_new" = GELU's tanh approximation) with
    the weights of a nanoGPT-style GPT: transformer.wte / wpe / h.{i}.(ln_1, attn.c_attn, attn.c_proj,
    ln_2, mlp.c_fc, mlp.c_proj) / ln_f, and lm_head tied to wte.

    The sizes come from the tensors (vocabulary and width from wte, block size from wpe, depth from
    the highest h.{i}); `n_head` cannot be read from shapes, so it is an argument. GPT-2 ties its
    output layer to wte: the oracle's lm_head *is* the wte given here.
    """
    from transformers import GPT2Config, GPT2LMHeadModel

    state = gpt2_state_from_gpt(state_dict_or_module)
    V, C = state["transformer.wte.weight"].shape
    n_positions = state["transformer.wpe.weight"].shape[0]
    n_layer = 1 + max(int(name.split(".")[2]) for name in state if name.startswith("transformer.h."))
    config = GPT2Config(vocab_size=V, n_positions=n_positions, n_embd=C, n_layer=n_layer, n_head=n_head,
                        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, layer_norm_epsilon=layer_norm_epsilon,
                        activation_function="gelu_new", bos_token_id=None, eos_token_id=None)
    with torch.random.fork_rng(devices=[]):  # the random initialisation is overwritten anyway
        model = GPT2LMHeadModel(config)
    state["lm_head.weight"] = state["transformer.wte.weight"]
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [m for m in missing if m != "lm_head.weight"]
    if missing or unexpected:
        raise ValueError(f"GPT-2 layout mismatch: missing {missing[:5]}, unexpected {unexpected[:5]}")
    return model.to(dtype).eval()
