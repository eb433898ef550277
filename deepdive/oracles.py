"""Weight copies into the library modules that the course compares its own code with.

A notebook (or a graded check) builds the library's module and gives it exactly the weights of the
learner's module, so that both compute the same function and any difference is the learner's.
Only the mapping of names lives here (the library's layout is documented, not an exercise); every
function returns a new library module in eval mode and leaves its argument untouched.

| ours (course layout)                         | library oracle                                 |
|----------------------------------------------|------------------------------------------------|
| `rnn_forward(x, W_xh, W_hh, b_h)`            | `torch.nn.RNN(batch_first=True)`               |
| `MultiHeadAttention`: q/k/v/out_proj         | `torch.nn.MultiheadAttention(batch_first=True)`|
| `TransformerBlock`: attn, ln1, ln2, ff       | `torch.nn.TransformerEncoderLayer`             |
| `FeedForward("swiglu")`: gate, fc1, fc2      | transformers' `LlamaMLP`                       |
| `Encoder` (module 06): tok_emb, blocks, mlm_* | transformers' `DistilBertForMaskedLM`          |
| `Encoder` from a pretrained DistilBERT        | the same map reversed: `encoder_state_from_distilbert` |

The GPT-2 weight map (module 07's GPT <-> `GPT2LMHeadModel`) is not here: modules 07 and 09 ask the learner to
write it (`load_gpt2_weights`, `export_to_gpt2`), so it lives with the instructor's checks (grader/checks/_gpt2.py).
"""

import torch
from torch import nn


def torch_rnn(W_xh: torch.Tensor, W_hh: torch.Tensor, b_h: torch.Tensor) -> nn.RNN:
    """`nn.RNN` computing h_t = tanh(x_t W_xh^T + h_{t-1} W_hh^T + b_h).

    W_xh (H, D_in), W_hh (H, H), b_h (H,). nn.RNN has two biases that are added (b_ih + b_hh):
    b_h goes into one, zeros into the other.
    """
    H, D_in = W_xh.shape
    rnn = nn.RNN(D_in, H, batch_first=True, dtype=W_xh.dtype)
    with torch.no_grad():
        rnn.weight_ih_l0.copy_(W_xh)
        rnn.weight_hh_l0.copy_(W_hh)
        rnn.bias_ih_l0.copy_(b_h)
        rnn.bias_hh_l0.zero_()
    return rnn.eval()


def torch_multihead_attention(attn: nn.Module, n_heads: int) -> nn.MultiheadAttention:
    """`nn.MultiheadAttention(batch_first=True)` with the weights of a module that has `q_proj`,
    `k_proj`, `v_proj`, `out_proj` (nn.Linear, d_model -> d_model each; biases all or none).

    Masks differ: ours are True where a query *may* attend; `nn.MultiheadAttention`'s bool
    `attn_mask` is True where it may *not*. Call the oracle with `attn_mask=~mask`, and
    `need_weights=False` to get its fast path's output only. The oracle lives on the device and in
    the dtype of `attn`'s weights. For grouped-query attention (fewer K/V heads), expand the K/V
    projections to one head per query head first: this helper refuses smaller k_proj/v_proj.
    """
    q, k, v, o = attn.q_proj, attn.k_proj, attn.v_proj, attn.out_proj
    d_model = q.in_features
    for name, lin in (("k_proj", k), ("v_proj", v)):
        if lin.out_features != d_model:
            raise ValueError(f"{name} maps to {lin.out_features} features, not d_model = {d_model}: "
                             "nn.MultiheadAttention has one K/V head per query head (repeat K/V heads first)")
    bias = q.bias is not None
    for name, lin in (("k_proj", k), ("v_proj", v), ("out_proj", o)):
        if (lin.bias is not None) != bias:
            raise ValueError(f"q_proj {'has' if bias else 'has no'} bias but {name} "
                             f"{'has none' if bias else 'has one'}: nn.MultiheadAttention has biases all or none")
    mha = nn.MultiheadAttention(d_model, n_heads, bias=bias, batch_first=True, dtype=q.weight.dtype,
                                device=q.weight.device)
    with torch.no_grad():
        mha.in_proj_weight.copy_(torch.cat([q.weight, k.weight, v.weight]))  # (3 C, C)
        mha.out_proj.weight.copy_(o.weight)
        if bias:
            mha.in_proj_bias.copy_(torch.cat([q.bias, k.bias, v.bias]))  # (3 C,)
            mha.out_proj.bias.copy_(o.bias)
    return mha.eval()


def torch_encoder_layer(block: nn.Module, n_heads: int, d_ff: int, activation: str, norm_first: bool
                        ) -> nn.TransformerEncoderLayer:
    """`nn.TransformerEncoderLayer(batch_first=True)` with the weights of a block that has `attn`
    (q/k/v/out_proj as above), `ln1` (before/after attention), `ln2` (before/after the FFN) and
    `ff` with `fc1` (d_model -> d_ff) and `fc2` (d_ff -> d_model). Dropout is 0.

    Its mask convention is PyTorch's: pass `src_mask=~mask` for one of ours.
    """
    d_model = block.ln1.normalized_shape[0]
    layer = nn.TransformerEncoderLayer(
        d_model, n_heads, dim_feedforward=d_ff, dropout=0.0, activation=activation,
        layer_norm_eps=block.ln1.eps, batch_first=True, norm_first=norm_first,
        bias=block.attn.q_proj.bias is not None, dtype=block.ln1.weight.dtype)
    mha = torch_multihead_attention(block.attn, n_heads)
    with torch.no_grad():
        layer.self_attn.load_state_dict(mha.state_dict())
        for ours, theirs in ((block.ln1, layer.norm1), (block.ln2, layer.norm2),
                             (block.ff.fc1, layer.linear1), (block.ff.fc2, layer.linear2)):
            theirs.weight.copy_(ours.weight)
            if theirs.bias is not None:
                theirs.bias.copy_(ours.bias)
    return layer.eval()


def llama_mlp(ff: nn.Module) -> nn.Module:
    """transformers' `LlamaMLP` (down(silu(gate(x)) * up(x))) with the weights of a SwiGLU
    FeedForward: `gate` is the branch that goes through SiLU, `fc1` the linear branch it
    multiplies, `fc2` the projection back to d_model."""
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaMLP

    config = LlamaConfig(hidden_size=ff.fc1.in_features, intermediate_size=ff.fc1.out_features,
                         hidden_act="silu", mlp_bias=ff.fc1.bias is not None,
                         num_attention_heads=1, num_key_value_heads=1)  # heads: unused by the MLP
    mlp = LlamaMLP(config).to(ff.fc1.weight.dtype)
    with torch.no_grad():
        for ours, theirs in ((ff.gate, mlp.gate_proj), (ff.fc1, mlp.up_proj), (ff.fc2, mlp.down_proj)):
            theirs.weight.copy_(ours.weight)
            if theirs.bias is not None:
                theirs.bias.copy_(ours.bias)
    return mlp.eval()


# ------------------------------------------------------------------------ module 06: DistilBERT
# | ours (`Encoder`, module 06)                        | transformers' DistilBertForMaskedLM               |
# |----------------------------------------------------|---------------------------------------------------|
# | tok_emb, pos_emb, emb_ln                           | distilbert.embeddings.word_/position_embeddings, .LayerNorm |
# | blocks.i.attn.q_proj / k_proj / v_proj / out_proj  | distilbert.transformer.layer.i.attention.q_lin / k_lin / v_lin / out_lin |
# | blocks.i.ln1, blocks.i.ln2                         | ...layer.i.sa_layer_norm, ...layer.i.output_layer_norm |
# | blocks.i.ff.fc1, blocks.i.ff.fc2                   | ...layer.i.ffn.lin1, ...layer.i.ffn.lin2           |
# | mlm_dense, mlm_ln, mlm_out (weight tied to tok_emb) | vocab_transform, vocab_layer_norm, vocab_projector |

_DISTILBERT_EMBEDDINGS = {"tok_emb": "distilbert.embeddings.word_embeddings",
                          "pos_emb": "distilbert.embeddings.position_embeddings",
                          "emb_ln": "distilbert.embeddings.LayerNorm"}
_DISTILBERT_LAYER = {"attn.q_proj": "attention.q_lin", "attn.k_proj": "attention.k_lin",
                     "attn.v_proj": "attention.v_lin", "attn.out_proj": "attention.out_lin",
                     "ln1": "sa_layer_norm", "ln2": "output_layer_norm", "ff.fc1": "ffn.lin1", "ff.fc2": "ffn.lin2"}
_DISTILBERT_HEAD = {"mlm_dense": "vocab_transform", "mlm_ln": "vocab_layer_norm", "mlm_out": "vocab_projector"}


def distilbert_names(n_layers: int) -> dict[str, str]:
    """Our module prefix -> DistilBertForMaskedLM's, for an encoder of `n_layers` blocks."""
    names = dict(_DISTILBERT_EMBEDDINGS)
    for i in range(n_layers):
        names.update({f"blocks.{i}.{ours}": f"distilbert.transformer.layer.{i}.{theirs}"
                      for ours, theirs in _DISTILBERT_LAYER.items()})
    names.update(_DISTILBERT_HEAD)
    return names


def distilbert_config(vocab_size: int, max_len: int, d_model: int, n_heads: int, n_layers: int, d_ff: int):
    """A DistilBertConfig of these sizes with GELU, learned positions, no dropout, tied embeddings."""
    from transformers import DistilBertConfig

    return DistilBertConfig(vocab_size=vocab_size, max_position_embeddings=max_len, dim=d_model, n_heads=n_heads,
                            n_layers=n_layers, hidden_dim=d_ff, activation="gelu", dropout=0.0,
                            attention_dropout=0.0, sinusoidal_pos_embds=False, tie_word_embeddings=True,
                            pad_token_id=0)


def distilbert_from_encoder(encoder, n_heads: int, attn_implementation: str = "eager"):
    """transformers' `DistilBertForMaskedLM` (eval mode, dropout 0) with the weights of a course
    `Encoder` (a module or its state_dict, table above). The sizes are read from the weights' shapes;
    `n_heads` cannot be, so it is given. The library ties `vocab_projector.weight` to the word
    embeddings, so `mlm_out.weight` is not copied: the oracle uses `tok_emb.weight` there, as a tied
    encoder does; `mlm_out.bias` is copied. Padding masks are passed to the oracle as
    `attention_mask` (B, T), 1 = real token."""
    from transformers import DistilBertForMaskedLM

    state = encoder.state_dict() if isinstance(encoder, nn.Module) else dict(encoder)
    V, C = state["tok_emb.weight"].shape
    max_len = state["pos_emb.weight"].shape[0]
    n_layers = len({k.split(".")[1] for k in state if k.startswith("blocks.")})
    d_ff = state["blocks.0.ff.fc1.weight"].shape[0]
    config = distilbert_config(V, max_len, C, n_heads, n_layers, d_ff)
    config._attn_implementation = attn_implementation
    model = DistilBertForMaskedLM(config).to(state["tok_emb.weight"].dtype)
    theirs = model.state_dict()
    with torch.no_grad():
        for ours_prefix, their_prefix in distilbert_names(n_layers).items():
            for part in ("weight", "bias"):
                key = f"{ours_prefix}.{part}"
                if key == "mlm_out.weight" or key not in state:
                    continue
                target = theirs[f"{their_prefix}.{part}"]
                if tuple(target.shape) != tuple(state[key].shape):
                    raise ValueError(f"{key} has shape {tuple(state[key].shape)}; DistilBERT's "
                                     f"{their_prefix}.{part} has {tuple(target.shape)}")
                target.copy_(state[key])
    if model.vocab_projector.weight.data_ptr() != model.distilbert.embeddings.word_embeddings.weight.data_ptr():
        raise RuntimeError("DistilBertForMaskedLM did not tie vocab_projector to the word embeddings")
    return model.eval()


def encoder_state_from_distilbert(model_or_state_dict) -> dict:
    """The other way: a pretrained `DistilBertForMaskedLM` (or `DistilBertModel`, or either's state_dict)
    -> tensors under the course `Encoder`'s names (table above), for `encoder.load_state_dict(...)`.
    Copies (the library model is left alone). A `DistilBertModel` has no MLM head: only the encoder's
    names come back (load with strict=False). `mlm_out.weight` is `tok_emb.weight` (tied).

    The course Encoder computes exactly DistilBERT's function when the checkpoint uses the exact GELU
    (`activation="gelu"`; other activations raise ValueError) and ties its output projection to the word
    embeddings (an untied projection raises ValueError: the Encoder would need its own `mlm_out.weight`).
    Sinusoidal positions (`sinusoidal_pos_embds=True`) are a fixed table in `position_embeddings`, copied
    like learned ones."""
    config = getattr(model_or_state_dict, "config", None)
    if config is not None and getattr(config, "activation", "gelu") != "gelu":
        raise ValueError(f"this DistilBERT uses activation={config.activation!r}; the course Encoder's blocks and "
                         "MLM head use the exact GELU (F.gelu), so they would need that activation instead")
    state = model_or_state_dict.state_dict() if isinstance(model_or_state_dict, nn.Module) else dict(model_or_state_dict)
    if not any(k.startswith("distilbert.") for k in state):  # a DistilBertModel: no head, no prefix
        state = {f"distilbert.{k}": v for k, v in state.items()}
    n_layers = len({k.split(".")[3] for k in state if k.startswith("distilbert.transformer.layer.")})
    out = {}
    for ours_prefix, their_prefix in distilbert_names(n_layers).items():
        for part in ("weight", "bias"):
            key = f"{their_prefix}.{part}"
            if key in state and f"{ours_prefix}.{part}" != "mlm_out.weight":
                out[f"{ours_prefix}.{part}"] = state[key].detach().clone()
    if "vocab_projector.bias" in state:
        projector = state.get("vocab_projector.weight")
        if projector is not None and not torch.equal(projector, state["distilbert.embeddings.word_embeddings.weight"]):
            raise ValueError("this checkpoint's vocab_projector.weight is not the word embeddings (untied); the course "
                             "Encoder ties mlm_out.weight to tok_emb.weight, so it would need an mlm_out of its own")
        out["mlm_out.weight"] = out["tok_emb.weight"]  # tied: the same tensor, as in the Encoder
    return out


