"""The toy task of module 04: "output the token `lag` steps back", and a one-layer attention model
into which a positional scheme is plugged.

Nothing here computes a positional encoding: the notebook passes the learner's own modules and
functions in (a module that adds positions to the token vectors, or a function that rotates queries
and keys), so the experiment measures the learner's code.

    cfg = LookbackConfig()
    model = OneLayerAttention(cfg.vocab_size, cfg.d_model, cfg.n_heads, add_positions=..., rotate=...)
    losses = train_lookback(model, cfg, torch.Generator().manual_seed(0))
    acc = evaluate_lookback(model, seq_len=4 * cfg.seq_len, cfg=cfg, generator=torch.Generator().manual_seed(1))
"""

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

IGNORE = -100  # label of the first `lag` positions: nothing lies `lag` steps before them


@dataclass
class LookbackConfig:
    vocab_size: int = 16  # symbols in a sequence; chance accuracy is 1 / vocab_size
    lag: int = 3  # the answer at position t is the token at position t - lag
    seq_len: int = 16  # training length T_train; evaluation goes to 2x and 4x this
    d_model: int = 32  # width of the token vectors
    n_heads: int = 2  # attention heads (head size d_model // n_heads)
    batch_size: int = 32  # sequences per training step
    steps: int = 150  # Adam steps per model
    lr: float = 1e-2  # Adam learning rate
    eval_size: int = 256  # held-out sequences per evaluation length


def make_lookback_batch(batch_size: int, seq_len: int, vocab_size: int, lag: int,
                        generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Random token sequences and their targets.

    Returns:
        tokens: (B, T) int64, uniform over the vocabulary.
        targets: (B, T) int64, targets[:, t] = tokens[:, t - lag], and IGNORE (-100) for t < lag.
    """
    tokens = torch.randint(vocab_size, (batch_size, seq_len), generator=generator)  # (B, T)
    targets = torch.full_like(tokens, IGNORE)  # (B, T)
    targets[:, lag:] = tokens[:, :-lag]  # (B, T - lag): the token lag steps back
    return tokens, targets


class AddTable(nn.Module):
    """Adds a fixed (not learned) table of position vectors: x (B, T, C) -> x + table[:T]."""

    def __init__(self, table: torch.Tensor):
        super().__init__()
        self.register_buffer("table", table.detach().float().clone(), persistent=False)  # (max_len, C)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        T = x.size(1)
        if T > self.table.size(0):
            raise ValueError(f"sequence length {T} is longer than the table's {self.table.size(0)} positions")
        return x + self.table[:T].to(x.dtype)  # (B, T, C) + (T, C)


class OneLayerAttention(nn.Module):
    """Token embedding -> [positions added] -> one causal multi-head attention layer -> logits.

    Positions enter in one of two places, or nowhere:
      add_positions: a module mapping the token vectors x (B, T, C) to x + positions (learned or
          sinusoidal tables), applied before the attention;
      rotate: a function mapping q or k (B, nh, T, hs) to their rotated versions (RoPE), applied to
          the queries and keys inside the attention.
    With neither, no score can depend on where a key stands: the keys are made from the tokens alone,
    so two copies of a symbol get the same score wherever they are. The causal mask lets a layer count
    the tokens it sees (a position signal that models with several layers and no positional encoding
    learn to use: Haviv et al. 2022, https://arxiv.org/abs/2203.16634), but this single layer cannot
    single out the token `lag` steps back; the notebook's `none` row measures what it does instead.
    """

    def __init__(self, vocab_size: int, d_model: int, n_heads: int, add_positions: nn.Module | None = None,
                 rotate: Callable[[torch.Tensor], torch.Tensor] | None = None):
        super().__init__()
        self.n_heads = n_heads
        self.tok_emb = nn.Embedding(vocab_size, d_model)
        self.add_positions = add_positions
        self.rotate = rotate
        self.qkv = nn.Linear(d_model, 3 * d_model)  # biases let q and k carry a content-free part
        self.out_proj = nn.Linear(d_model, d_model)
        self.head = nn.Linear(d_model, vocab_size)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        """idx (B, T) -> logits (B, T, vocab_size)."""
        B, T = idx.shape
        x = self.tok_emb(idx)  # (B, T, C)
        if self.add_positions is not None:
            x = self.add_positions(x)  # (B, T, C)
        C, nh = x.size(-1), self.n_heads
        q, k, v = self.qkv(x).split(C, dim=-1)  # 3 x (B, T, C)
        q, k, v = (t.view(B, T, nh, C // nh).transpose(1, 2) for t in (q, k, v))  # 3 x (B, nh, T, hs)
        if self.rotate is not None:
            q, k = self.rotate(q), self.rotate(k)  # (B, nh, T, hs) each
        att = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # (B, nh, T, hs)
        att = att.transpose(1, 2).reshape(B, T, C)  # (B, T, C)
        return self.head(self.out_proj(att))  # (B, T, vocab_size)


def lookback_loss(model: nn.Module, tokens: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    logits = model(tokens)  # (B, T, V)
    return F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=IGNORE)


def train_lookback(model: nn.Module, cfg: LookbackConfig, generator: torch.Generator,
                   device: torch.device | str = "cpu") -> list[float]:
    """Adam on fresh batches of length cfg.seq_len for cfg.steps steps; returns the training losses."""
    model.to(device).train()
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    losses = []
    for _ in range(cfg.steps):
        tokens, targets = make_lookback_batch(cfg.batch_size, cfg.seq_len, cfg.vocab_size, cfg.lag, generator)
        loss = lookback_loss(model, tokens.to(device), targets.to(device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


@torch.no_grad()
def evaluate_lookback(model: nn.Module, seq_len: int, cfg: LookbackConfig, generator: torch.Generator,
                      device: torch.device | str = "cpu") -> float:
    """Accuracy on cfg.eval_size fresh sequences of length `seq_len` (positions t >= lag only)."""
    model.to(device).eval()
    tokens, targets = make_lookback_batch(cfg.eval_size, seq_len, cfg.vocab_size, cfg.lag, generator)
    pred = model(tokens.to(device)).argmax(dim=-1).cpu()  # (B, T)
    keep = targets != IGNORE
    return (pred[keep] == targets[keep]).float().mean().item()


@torch.no_grad()
def accuracy_by_position(model: nn.Module, seq_len: int, cfg: LookbackConfig, generator: torch.Generator,
                         device: torch.device | str = "cpu") -> torch.Tensor:
    """(seq_len,) accuracy at every position t (nan for t < lag), on cfg.eval_size fresh sequences."""
    model.to(device).eval()
    tokens, targets = make_lookback_batch(cfg.eval_size, seq_len, cfg.vocab_size, cfg.lag, generator)
    pred = model(tokens.to(device)).argmax(dim=-1).cpu()  # (B, T)
    acc = (pred == targets).float().mean(dim=0)  # (T,)
    acc[: cfg.lag] = math.nan
    return acc
