"""Helpers for module 07 (a GPT-style decoder): a character vocabulary for Shakespeare, next-character
batches, cache sizes, a linear-attention recurrence for comparison, and the notebook's plots.

Nothing here builds a GPT, masks attention, filters logits or samples: the notebook passes the
learner's model and functions in, so every number measures the learner's code.
"""

from dataclasses import dataclass
from functools import lru_cache

import matplotlib.pyplot as plt
import torch
import torch.nn.functional as F

from deepdive.datasets import load_text


@dataclass(frozen=True)
class CharVocab:
    """A character-level vocabulary: the sorted characters of a text, id = position in that list."""

    chars: tuple[str, ...]

    @classmethod
    def from_text(cls, text: str) -> "CharVocab":
        return cls(tuple(sorted(set(text))))

    @property
    def size(self) -> int:
        return len(self.chars)

    def encode(self, text: str) -> torch.Tensor:
        """str -> (len(text),) int64 ids; a character outside the vocabulary raises KeyError naming it."""
        stoi = self._stoi()
        try:
            return torch.tensor([stoi[c] for c in text], dtype=torch.long)
        except KeyError as exc:
            raise KeyError(f"character {exc.args[0]!r} is not in the vocabulary ({self.size} characters)") from None

    def decode(self, ids) -> str:
        """A sequence of ids (list or 1-D tensor) -> str."""
        ids = ids.tolist() if isinstance(ids, torch.Tensor) else ids
        return "".join(self.chars[i] for i in ids)

    def _stoi(self) -> dict:
        return _stoi(self.chars)


@lru_cache(maxsize=4)
def _stoi(chars: tuple[str, ...]) -> dict:
    return {c: i for i, c in enumerate(chars)}


@lru_cache(maxsize=1)
def shakespeare_chars() -> tuple[CharVocab, torch.Tensor, torch.Tensor]:
    """(vocabulary of train.txt, train ids (N,), validation ids (M,)): every validation character
    occurs in train.txt, so the vocabulary of the training split covers both."""
    train, val = load_text("shakespeare", "train"), load_text("shakespeare", "validation")
    vocab = CharVocab.from_text(train)
    return vocab, vocab.encode(train), vocab.encode(val)


def next_char_batch(data: torch.Tensor, batch_size: int, block_size: int, generator: torch.Generator
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """Random windows of `data` (N,): inputs x (B, T) and targets y (B, T) with y[:, t] = x[:, t + 1],
    the next character (nanoGPT's convention: the targets are already shifted). Both contiguous, as
    nanoGPT's `torch.stack` makes them, so a loss written `targets.view(-1)` works on them too."""
    start = torch.randint(0, len(data) - block_size - 1, (batch_size,), generator=generator)  # (B,)
    offsets = torch.arange(block_size + 1)  # (T + 1,)
    windows = data[start[:, None] + offsets]  # (B, T + 1)
    return windows[:, :-1].contiguous(), windows[:, 1:].contiguous()  # (B, T) each; the slices alone have stride T + 1


def tensor_bytes(tensors) -> int:
    """Bytes held by a tensor or a (nested) tuple/list of tensors, e.g. a KV cache."""
    if isinstance(tensors, torch.Tensor):
        return tensors.numel() * tensors.element_size()
    return sum(tensor_bytes(t) for t in tensors)


def linear_attention_recurrent(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, eps: float = 1e-6
                               ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
    """Causal linear attention (Katharopoulos et al. 2020) run as a recurrence, one token at a time.

    q, k (B, nh, T, hs), v (B, nh, T, hv); feature map phi(x) = elu(x) + 1. The state after token t is
    S_t = sum_{s <= t} phi(k_s) v_s^T (B, nh, hs, hv) and z_t = sum_{s <= t} phi(k_s) (B, nh, hs);
    the output is phi(q_t) S_t / (phi(q_t) . z_t). Returns (out (B, nh, T, hv), (S_T, z_T)): the
    state has the same size whatever T is, unlike a KV cache.
    """
    B, nh, T, hs = q.shape
    fq, fk = F.elu(q) + 1, F.elu(k) + 1  # (B, nh, T, hs), positive features
    S = q.new_zeros(B, nh, hs, v.size(-1))  # (B, nh, hs, hv)
    z = q.new_zeros(B, nh, hs)  # (B, nh, hs)
    out = []
    for t in range(T):
        S = S + fk[:, :, t, :, None] * v[:, :, t, None, :]  # (B, nh, hs, hv): add phi(k_t) v_t^T
        z = z + fk[:, :, t]  # (B, nh, hs)
        num = (fq[:, :, t, :, None] * S).sum(dim=-2)  # (B, nh, hv)
        den = (fq[:, :, t] * z).sum(dim=-1, keepdim=True)  # (B, nh, 1)
        out.append(num / (den + eps))
    return torch.stack(out, dim=2), (S, z)  # (B, nh, T, hv)


def linear_attention_parallel(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """The same causal linear attention computed for all positions at once, with a (T, T) mask: what
    `linear_attention_recurrent` must equal (out (B, nh, T, hv))."""
    T = q.size(-2)
    fq, fk = F.elu(q) + 1, F.elu(k) + 1
    scores = (fq @ fk.transpose(-2, -1)) * torch.ones(T, T, device=q.device).tril()  # (B, nh, T, T)
    return (scores @ v) / (scores.sum(dim=-1, keepdim=True) + eps)  # (B, nh, T, hv)


# ----------------------------------------------------------------------------------------- plots
def plot_distributions(panels: dict, chars=None, title: str = "") -> None:
    """panels: {label: probabilities (V,)} -> one bar chart per label, side by side, same token axis."""
    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 3.0), sharey=True)
    axes = [axes] if len(panels) == 1 else axes
    for ax, (label, probs) in zip(axes, panels.items()):
        probs = probs.detach().cpu()
        ax.bar(range(len(probs)), probs, color="tab:blue")
        kept = int((probs > 0).sum())
        ax.set_title(f"{label}\n({kept} tokens can be drawn)", fontsize=9)
        ax.set_xlabel("token")
        if chars is not None:
            ax.set_xticks(range(len(probs)), [repr(c)[1:-1] for c in chars], fontsize=7)
    axes[0].set_ylabel("probability")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    plt.show()


def plot_losses(steps, train, val, title: str = "") -> None:
    fig, ax = plt.subplots(figsize=(6, 3.4))
    ax.plot(steps, train, marker="o", label="train")
    ax.plot(steps, val, marker="o", label="validation (held-out plays)")
    ax.set(xlabel="step", ylabel="cross-entropy (nats / character)", title=title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    plt.show()


def plot_lines(x, series: dict, xlabel: str, ylabel: str, title: str = "", logy: bool = False) -> None:
    """series: {label: y values (same length as x)} on one axis."""
    fig, ax = plt.subplots(figsize=(6, 3.6))
    for label, y in series.items():
        ax.plot(x, y, marker="o", label=label)
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
    if logy:
        ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    plt.show()
