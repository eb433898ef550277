"""Measurements and plots for module 05 (transformer blocks): parameter counts, gradient norms through
a deep stack, expert load in a mixture-of-experts layer.

Nothing here builds a block, a feed-forward network or a router: the notebook passes the learner's
modules in, so every number measures the learner's code.
"""

import matplotlib.pyplot as plt
import torch
import torch.nn.functional as F
from torch import nn


def count_parameters(module: nn.Module) -> int:
    """Number of parameters (works on device="meta", where no memory is allocated)."""
    return sum(p.numel() for p in module.parameters())


def stack_statistics(blocks: nn.ModuleList, x: torch.Tensor, target: torch.Tensor,
                     final_norm: nn.Module | None = None) -> tuple[list[float], list[float]]:
    """Run `x` (B, T, C) through `blocks` (then `final_norm`, as GPT-2's ln_f), back-propagate an MSE
    loss against `target` (B, T, C), and return per block: the gradient norm of all its parameters,
    and the RMS of the residual stream after it."""
    for p in blocks.parameters():
        p.grad = None
    rms = []
    h = x
    for block in blocks:
        h = block(h)  # (B, T, C)
        rms.append(h.detach().pow(2).mean().sqrt().item())
    out = final_norm(h) if final_norm is not None else h
    F.mse_loss(out, target).backward()
    grads = [torch.cat([p.grad.flatten() for p in block.parameters() if p.grad is not None]).norm().item()
             for block in blocks]
    return grads, rms


def plot_stack_statistics(results: dict, title: str = "") -> None:
    """results: {label: (grad_norms, rms)} -> two panels, gradient norm and residual RMS per layer."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    for (label, (grads, rms)), style in zip(results.items(), ["o-", "s--", "^-.", "d:"]):
        layers = range(1, len(grads) + 1)
        axes[0].plot(layers, grads, style, label=label, ms=4)
        axes[1].plot(layers, rms, style, label=label, ms=4)
    axes[0].set(yscale="log", xlabel="layer (1 = next to the input)", ylabel="‖∂loss/∂θ‖ of the layer",
                title="Gradient norm per layer at initialisation")
    axes[1].set(xlabel="layer", ylabel="RMS of the residual stream", title="Size of the residual stream")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    plt.show()


def expert_load(expert_idx: torch.Tensor, n_experts: int) -> torch.Tensor:
    """(N, top_k) expert indices -> (n_experts,) number of token slots each expert received."""
    return torch.bincount(expert_idx.flatten(), minlength=n_experts)


def load_balancing_loss(router_logits: torch.Tensor, expert_idx: torch.Tensor, n_experts: int) -> torch.Tensor:
    """The Switch Transformer's auxiliary loss (Fedus et al. 2021, eq. 4): n_experts * sum_e f_e * P_e,
    with f_e the fraction of token slots sent to expert e (not differentiable) and P_e the mean router
    probability of e (differentiable). It is 1 when the load is uniform and grows as it concentrates.

    router_logits (N, n_experts); expert_idx (N, top_k)."""
    frac = expert_load(expert_idx, n_experts).float() / expert_idx.numel()  # (E,)
    mean_prob = router_logits.softmax(dim=-1).mean(dim=0)  # (E,)
    return n_experts * (frac * mean_prob).sum()


def plot_expert_load(loads: dict, title: str = "Tokens per expert") -> None:
    """loads: {label: (n_experts,) counts} -> one bar chart per label, with the uniform load marked."""
    fig, axes = plt.subplots(1, len(loads), figsize=(3.6 * len(loads), 3.2), sharey=True)
    axes = [axes] if len(loads) == 1 else axes
    for ax, (label, counts) in zip(axes, loads.items()):
        counts = torch.as_tensor(counts).cpu()
        ax.bar(range(len(counts)), counts.tolist(), color="tab:blue")
        ax.axhline(counts.sum().item() / len(counts), color="gray", ls=":", label="uniform")
        ax.set(xlabel="expert", title=label, xticks=range(len(counts)))
        ax.legend()
    axes[0].set_ylabel("token slots")
    fig.suptitle(title)
    fig.tight_layout()
    plt.show()
