"""The toy recall task of module 01, with its training and evaluation loop.

"Recall the value stored with key k after n_pairs distractors": a sequence starts with the pair to
remember, continues with `n_distractors` (the notebook's `n_pairs`) more (key, value) pairs, and ends
with a query key; an RNN reads it as T = n_pairs + 2 steps. The answer is the value stored with the
query. Keys are distinct within a sequence, so the answer is unique.

    keys    7  2  9  4          (B, n_pairs + 1) ints in [0, n_keys), distinct within a row
    values  3  3  0  5          (B, n_pairs + 1) ints in [0, n_values)
    query   7                   (B,)     the key of the pair to recall
    target  3                   (B,)     the value stored with it

With `random_position=True` the pair to recall sits anywhere in the sequence instead of first
(the classic "associative recall" task, a harder variant for the notebook's exploration).

Learners write the models (module 01's `RNNRecall` and `AttentionRecall`); this file holds only the
data and the loop, so it contains no exercise's answer. A recall model is any `nn.Module` whose
`forward(keys, values, query)` returns logits of shape (B, n_values).
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class RecallConfig:
    n_keys: int = 80  # key vocabulary; must be > the largest n_distractors (keys are distinct)
    n_values: int = 16  # value vocabulary; chance accuracy is 1 / n_values
    batch_size: int = 64  # sequences per training step
    steps: int = 300  # optimiser steps per training run
    lr: float = 1e-2  # Adam learning rate
    grad_clip: float = 1.0  # max global gradient norm: tames the RNN's occasional exploding step
    random_position: bool = False  # True: the pair to recall is anywhere, not first
    num_threads: int | None = 1  # CPU threads while training; None keeps torch's setting
    eval_size: int = 1000  # held-out sequences for the accuracy estimate


@dataclass
class RecallBatch:
    keys: torch.Tensor  # (B, n_pairs + 1) long
    values: torch.Tensor  # (B, n_pairs + 1) long
    query: torch.Tensor  # (B,) long
    target: torch.Tensor  # (B,) long

    def to(self, device) -> "RecallBatch":
        return RecallBatch(*(t.to(device) for t in (self.keys, self.values, self.query, self.target)))


def make_recall_batch(
    batch_size: int,
    n_distractors: int,
    n_keys: int,
    n_values: int,
    generator: torch.Generator | None = None,
    random_position: bool = False,
) -> RecallBatch:
    """Sample `batch_size` sequences of 1 + `n_distractors` (key, value) pairs, on the CPU.

    Returns keys, values (B, n_distractors + 1) and query, target (B,). The pair to recall is at
    position 0, or at a uniformly random position when `random_position` is True. (Module 01 calls
    n_distractors `n_pairs`; its RNN reads the pairs and the query as T = n_distractors + 2 steps.)
    """
    n_stored = n_distractors + 1  # every pair of a sequence: the one to recall and the distractors
    if n_stored > n_keys:
        raise ValueError(f"{n_stored} distinct keys per sequence need n_keys >= {n_stored}, got n_keys={n_keys}")
    # A random permutation of the key vocabulary per row; its first n_stored entries are distinct.
    keys = torch.rand(batch_size, n_keys, generator=generator).argsort(dim=-1)[:, :n_stored]  # (B, n_stored)
    values = torch.randint(0, n_values, (batch_size, n_stored), generator=generator)  # (B, n_stored)
    if random_position:
        pos = torch.randint(0, n_stored, (batch_size,), generator=generator)  # (B,)
    else:
        pos = torch.zeros(batch_size, dtype=torch.long)  # (B,)
    rows = torch.arange(batch_size)
    return RecallBatch(keys=keys, values=values, query=keys[rows, pos], target=values[rows, pos])


@torch.no_grad()
def evaluate_recall(
    model: nn.Module, n_distractors: int, cfg: RecallConfig, generator: torch.Generator, device="cpu"
) -> float:
    """Accuracy of `model` on `cfg.eval_size` fresh sequences drawn from `generator`."""
    was_training = model.training
    model.eval()
    batch = make_recall_batch(
        cfg.eval_size, n_distractors, cfg.n_keys, cfg.n_values, generator, cfg.random_position
    ).to(device)
    logits = model(batch.keys, batch.values, batch.query)  # (N, n_values)
    model.train(was_training)
    return (logits.argmax(dim=-1) == batch.target).float().mean().item()


def train_recall(
    model: nn.Module, n_distractors: int, cfg: RecallConfig, generator: torch.Generator, device="cpu"
) -> list[float]:
    """Train `model` with Adam on fresh batches (no sequence is seen twice); return the losses.

    The data's randomness comes only from `generator`, so a run repeats exactly whatever ran before
    (the model's initial weights are the caller's business: seed before building it).

    On the CPU it runs on `cfg.num_threads` threads and restores torch's setting afterwards: these
    matrices are tiny, and several threads contending for two busy cores made a run ~10x slower
    than one thread in our measurements.
    """
    old_threads = torch.get_num_threads()
    if cfg.num_threads is not None:
        torch.set_num_threads(cfg.num_threads)
    try:
        return _train(model, n_distractors, cfg, generator, device)
    finally:
        torch.set_num_threads(old_threads)


def _train(model, n_distractors, cfg, generator, device):
    model.to(device).train()
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    losses = []
    for _ in range(cfg.steps):
        batch = make_recall_batch(
            cfg.batch_size, n_distractors, cfg.n_keys, cfg.n_values, generator, cfg.random_position
        ).to(device)
        logits = model(batch.keys, batch.values, batch.query)  # (B, n_values)
        loss = F.cross_entropy(logits, batch.target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        losses.append(loss.item())
    return losses
