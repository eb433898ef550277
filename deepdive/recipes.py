"""Helpers for module 08 (training recipes): the small GPT the experiments train, a training run that takes
the learner's functions, the bytes that real training tensors hold, and the notebook's plots.

The model is 🤗 transformers' `GPT2LMHeadModel` (module 07's oracle) behind module 07's GPT interface,
`forward(idx, targets=None, past_key_values=None, use_cache=False) -> (logits, loss, present)`, so that a
training step is `logits, loss, _ = model(x, y)` for module 07's GPT and this one alike. Nothing here
schedules a learning rate, clips, accumulates, autocasts or counts memory by formula: the notebook passes the
learner's functions in, so every number measures the learner's code.
"""

import math
import time
from types import SimpleNamespace

import matplotlib.pyplot as plt
import torch
import torch.nn.functional as F
from torch import nn

from deepdive.decoders import next_char_batch
from deepdive.encoders import smooth


# ----------------------------------------------------------------------------------------- the model
def gpt2_config(vocab_size: int, block_size: int = 64, n_layer: int = 2, n_head: int = 4, n_embd: int = 64):
    """A `transformers.GPT2Config` with nanoGPT's names for the sizes, no dropout, and eager attention (the
    attention weights (B, nh, T, T) are kept for the backward pass, as the plain formula does; the same on
    every device, the meta device included, so that activation counts agree everywhere)."""
    from transformers import GPT2Config

    return GPT2Config(vocab_size=vocab_size, n_positions=block_size, n_embd=n_embd, n_layer=n_layer, n_head=n_head,
                      resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=None, eos_token_id=None,
                      attn_implementation="eager")


class CharGPT(nn.Module):
    """transformers' GPT2LMHeadModel behind module 07's GPT interface: `forward(idx (B, T), targets=None,
    past_key_values=None, use_cache=False) -> (logits (B, T, V), loss or None, present or None)`.

    `loss` is the mean cross-entropy (in float32, also under autocast) over the targets that are not -100
    (`ignore_index=-100`, as module 07's GPT); `present` is a tuple of (k, v) per layer, each (B, nh, T_past + T,
    hs), when `use_cache`. `config` carries module 07's names (block_size, vocab_size, n_layer, n_head, n_embd,
    dropout, bias). Built from `config` (see `gpt2_config`) with GPT-2's initialisation; `seed` draws the
    initial weights from a private RNG state (the notebook's random state does not move)."""

    def __init__(self, config, seed: int | None = None):
        super().__init__()
        from transformers import GPT2LMHeadModel

        with torch.random.fork_rng(devices=[], enabled=seed is not None):
            if seed is not None:
                torch.manual_seed(seed)
            self.gpt = GPT2LMHeadModel(config)
        self.config = SimpleNamespace(block_size=config.n_positions, vocab_size=config.vocab_size,
                                      n_layer=config.n_layer, n_head=config.n_head, n_embd=config.n_embd,
                                      dropout=config.resid_pdrop, bias=True)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None, past_key_values=None,
                use_cache: bool = False):
        from transformers import DynamicCache

        # Always a cache object (an empty one without past_key_values): without one transformers looks for packed
        # sequences in the position ids, which needs their values and fails on the meta device.
        cache = (DynamicCache() if past_key_values is None
                 else DynamicCache(ddp_cache_data=[tuple(kv) for kv in past_key_values]))
        out = self.gpt(idx, past_key_values=cache, use_cache=True)
        logits = out.logits  # (B, T, V)
        loss = None
        if targets is not None:  # mean over the targets that count; float32 even when autocast made bfloat16 logits
            loss = F.cross_entropy(logits.flatten(0, -2).float(), targets.flatten(), ignore_index=-100)
        present = tuple((layer.keys, layer.values) for layer in out.past_key_values.layers) if use_cache else None
        return logits, loss, present


class NormPlacementGPT(nn.Module):
    """A GPT built from torch's `nn.TransformerEncoderLayer` (causal mask, GELU, no dropout, torch's default
    initialisation), post-norm (`norm_first=False`: LayerNorm after each residual addition, the original
    Transformer) or pre-norm (`norm_first=True`: LayerNorm before each sub-layer, plus a final LayerNorm, GPT-2's
    layout), behind module 07's interface `forward(idx, targets=None, past_key_values=None, use_cache=False) ->
    (logits, loss, None)` (no KV cache). Only for comparing where the LayerNorms sit; `seed` as in CharGPT."""

    def __init__(self, vocab_size: int, block_size: int, n_layer: int, n_head: int, n_embd: int, norm_first: bool,
                 seed: int | None = None):
        super().__init__()
        with torch.random.fork_rng(devices=[], enabled=seed is not None):
            if seed is not None:
                torch.manual_seed(seed)
            self.wte, self.wpe = nn.Embedding(vocab_size, n_embd), nn.Embedding(block_size, n_embd)
            layer = nn.TransformerEncoderLayer(n_embd, n_head, 4 * n_embd, dropout=0.0, activation="gelu",
                                               batch_first=True, norm_first=norm_first)
            self.blocks = nn.TransformerEncoder(layer, n_layer, enable_nested_tensor=False)
            self.ln_f = nn.LayerNorm(n_embd) if norm_first else nn.Identity()  # post-norm ends in a LayerNorm already
            self.lm_head = nn.Linear(n_embd, vocab_size, bias=False)
        self.config = SimpleNamespace(block_size=block_size, vocab_size=vocab_size, n_layer=n_layer, n_head=n_head,
                                      n_embd=n_embd, dropout=0.0, bias=True)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None, past_key_values=None,
                use_cache: bool = False):
        if past_key_values is not None or use_cache:
            raise ValueError("NormPlacementGPT has no KV cache")
        T = idx.size(1)
        h = self.wte(idx) + self.wpe(torch.arange(T, device=idx.device))  # (B, T, C)
        mask = nn.Transformer.generate_square_subsequent_mask(T, device=idx.device)  # (T, T), -inf above the diagonal
        logits = self.lm_head(self.ln_f(self.blocks(h, mask=mask, is_causal=True)))  # (B, T, V)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.flatten(0, -2).float(), targets.flatten(), ignore_index=-100)
        return logits, loss, None


def count_parameters(model: nn.Module) -> int:
    """Trainable numbers of a model; a tied weight (GPT-2's wte = lm_head) is one Parameter, counted once."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


# ---------------------------------------------------------------------------------------- training
def train_run(model: nn.Module, train_step, optimizer, lr_at, steps: int, data: torch.Tensor, batch_size: int,
              generator: torch.Generator, *, scaler=None, max_norm: float | None = 1.0, amp_dtype=None,
              device="cpu") -> dict:
    """`steps` calls of the learner's `train_step` on next-character batches of `data` drawn from `generator`;
    before step s every parameter group's learning rate is set to `lr_at(s)`.

    Returns {"loss": [...], "grad_norm": [...], "lr": [...], "seconds": wall time, "diverged_at": step or None}:
    per step, the loss and the gradient norm before clipping that `train_step` returned, and the learning rate
    used. A run whose loss stops being finite ends at that step (`diverged_at`): nothing can be learned after."""
    window = model.config.block_size  # module 07's config name for the context length
    out = {"loss": [], "grad_norm": [], "lr": [], "diverged_at": None}
    model.train()
    t0 = time.perf_counter()
    for step in range(steps):
        lr = lr_at(step)
        for group in optimizer.param_groups:
            group["lr"] = lr
        x, y = next_char_batch(data, batch_size, window, generator)  # (B, T), (B, T)
        loss, norm = train_step(model, (x.to(device), y.to(device)), optimizer, scaler=scaler, max_norm=max_norm,
                                amp_dtype=amp_dtype)
        out["loss"].append(float(loss))
        out["grad_norm"].append(float(norm))
        out["lr"].append(lr)
        if not math.isfinite(float(loss)):
            out["diverged_at"] = step
            break
    out["seconds"] = time.perf_counter() - t0
    return out


@torch.no_grad()
def eval_loss(model: nn.Module, data: torch.Tensor, n_batches: int = 4, batch_size: int = 32, seed: int = 0,
              device="cpu") -> float:
    """Mean next-character cross-entropy of `model` on fixed windows of `data` (the same ones for every model
    evaluated with the same seed), in float32."""
    was_training = model.training
    model.eval()
    g = torch.Generator().manual_seed(seed)
    total = 0.0
    for _ in range(n_batches):
        x, y = next_char_batch(data, batch_size, model.config.block_size, g)  # (B, T), (B, T)
        _, loss, _ = model(x.to(device), y.to(device))  # module 07's interface: (logits, loss, present)
        total += loss.item()
    model.train(was_training)
    return total / n_batches


# ------------------------------------------------------------------------------------------ memory
def training_state_bytes(parameters, optimizer) -> dict:
    """Bytes that the real training tensors hold: {"weights", "gradients", "optimizer state"}.

    `parameters`: the trained parameters (e.g. model.parameters()); a tied weight counted once. Gradients:
    the `.grad` tensors that exist. Optimizer state: every tensor in `optimizer.state_dict()["state"]` with
    at least one dimension (Adam's exp_avg and exp_avg_sq, SGD's momentum_buffer); Adam's 0-d `step`
    counters (4 bytes per parameter *tensor*, not per number) are left out."""
    params = list({id(p): p for p in parameters}.values())
    weights = sum(p.numel() * p.element_size() for p in params)
    grads = sum(p.grad.numel() * p.grad.element_size() for p in params if p.grad is not None)
    state = 0
    for per_param in optimizer.state_dict()["state"].values():
        for value in per_param.values():
            if isinstance(value, torch.Tensor) and value.dim() > 0:
                state += value.numel() * value.element_size()
    return {"weights": weights, "gradients": grads, "optimizer state": state}


def saved_activation_bytes(model: nn.Module, idx: torch.Tensor, targets: torch.Tensor) -> int:
    """Bytes of the tensors that autograd keeps for the backward pass of the loss of `model(idx, targets)` (module
    07's interface, `(logits, loss, present)`):
    the activations. The parameters are not counted (they are the weights), and a storage that several saved
    tensors share (views, a tensor saved by two operations) is counted once.

    It works on the meta device (`with torch.device("meta"): model = ...`: shapes only, no memory, no
    arithmetic), which measures the activations of a model too large to run here."""
    def key(t):  # the storage itself: data_ptr() is 0 for every meta tensor, _cdata identifies the storage
        return t.untyped_storage()._cdata

    params = {key(p) for p in model.parameters()}
    kept = {}  # storage -> (bytes, tensor): holding the tensor keeps the storage alive, so no key is reused

    def pack(t):
        k = key(t)
        if k not in params:
            kept[k] = (t.untyped_storage().nbytes(), t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(idx, targets)  # (logits (B, T, V), loss, present): the loss's graph holds the activations
    return sum(nbytes for nbytes, _ in kept.values())


# -------------------------------------------------------------------------------------------- plots
def plot_schedules(curves: dict, title: str = "", marks: dict | None = None) -> None:
    """curves: {label: learning rates per step} on one axis; marks: {label: (steps, lrs)} drawn as dots
    on top (e.g. a library schedule sampled at a few steps)."""
    fig, ax = plt.subplots(figsize=(7, 3.6))
    for label, lrs in curves.items():
        ax.plot(range(len(lrs)), lrs, label=label)
    for label, (xs, ys) in (marks or {}).items():
        ax.plot(xs, ys, "k.", ms=4, label=label)
    ax.set(xlabel="optimizer step", ylabel="learning rate", title=title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    plt.show()


def plot_training_runs(runs: dict, title: str = "", window: int = 10, baseline: float | None = None) -> None:
    """runs: {label: train_run's result} -> three panels against the step: the training loss (running mean
    over `window` steps, raw values faint), the gradient norm before clipping (log scale), the learning rate.
    `baseline` (e.g. log V) is drawn as a dashed line on the loss panel, whose axis ends at twice it."""
    fig, axes = plt.subplots(1, 3, figsize=(15, 3.8))
    for i, (label, run) in enumerate(runs.items()):
        color = f"C{i}"
        steps = range(len(run["loss"]))
        axes[0].plot(steps, run["loss"], color=color, alpha=0.2, lw=0.8)
        axes[0].plot(steps, smooth(run["loss"], window), color=color, label=label)
        axes[1].plot(steps, run["grad_norm"], color=color, lw=0.9, label=label)
        axes[2].plot(steps, run["lr"], color=color, label=label)
    if baseline is not None:
        axes[0].axhline(baseline, color="gray", ls="--", lw=0.8, label="log V (knows nothing)")
        finite = [v for run in runs.values() for v in run["loss"] if math.isfinite(v)]
        axes[0].set_ylim(min(finite, default=0.0) - 0.2, 2 * baseline)  # a diverging run would squash the others
    axes[0].set(xlabel="step", ylabel="training loss (nats / character)", title="loss")
    axes[1].set(xlabel="step", ylabel="gradient norm before clipping", title="gradient norm", yscale="log")
    axes[2].set(xlabel="step", ylabel="learning rate", title="schedule")
    for ax in axes:
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    plt.show()
