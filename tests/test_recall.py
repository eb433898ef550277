"""deepdive.recall: the data of module 01's recall task and its training loop."""

import pytest
import torch
from torch import nn

from deepdive.recall import RecallConfig, evaluate_recall, make_recall_batch, train_recall


def test_batch_shapes_and_dtypes():
    batch = make_recall_batch(8, n_distractors=5, n_keys=20, n_values=7, generator=torch.Generator().manual_seed(0))
    assert batch.keys.shape == (8, 6) and batch.values.shape == (8, 6)
    assert batch.query.shape == (8,) and batch.target.shape == (8,)
    for t in (batch.keys, batch.values, batch.query, batch.target):
        assert t.dtype == torch.long
    assert batch.keys.min() >= 0 and batch.keys.max() < 20
    assert batch.values.min() >= 0 and batch.values.max() < 7


@pytest.mark.parametrize("random_position", [False, True])
def test_query_names_a_stored_key_and_target_is_its_value(random_position):
    batch = make_recall_batch(200, 9, 40, 5, torch.Generator().manual_seed(1), random_position)
    match = batch.keys == batch.query[:, None]  # (B, T+1)
    assert (match.sum(dim=1) == 1).all(), "the query must match exactly one stored key"
    pos = match.float().argmax(dim=1)
    assert torch.equal(batch.values[torch.arange(200), pos], batch.target)
    if random_position:
        assert pos.unique().numel() > 5, "with random_position the recalled pair must move around"
    else:
        assert (pos == 0).all(), "the pair to recall comes first, before the distractors"


def test_keys_are_distinct_within_a_sequence():
    batch = make_recall_batch(50, 29, 30, 4, torch.Generator().manual_seed(2))
    assert all(len(set(row.tolist())) == 30 for row in batch.keys)


def test_too_few_keys_is_an_error():
    with pytest.raises(ValueError, match="n_keys"):
        make_recall_batch(2, n_distractors=10, n_keys=10, n_values=3)


def test_same_generator_seed_same_data():
    a = make_recall_batch(4, 6, 30, 8, torch.Generator().manual_seed(3))
    b = make_recall_batch(4, 6, 30, 8, torch.Generator().manual_seed(3))
    c = make_recall_batch(4, 6, 30, 8, torch.Generator().manual_seed(4))
    assert torch.equal(a.keys, b.keys) and torch.equal(a.values, b.values) and torch.equal(a.query, b.query)
    assert not torch.equal(a.keys, c.keys)


class ExactLookup(nn.Module):
    """Answers by exact key comparison: always right, so its accuracy must be 1."""

    def __init__(self, n_values):
        super().__init__()
        self.n_values = n_values
        self.dummy = nn.Parameter(torch.zeros(()))  # something for the optimiser to hold

    def forward(self, keys, values, query):
        pos = (keys == query[:, None]).float().argmax(dim=1)
        answer = values[torch.arange(keys.shape[0]), pos]
        return nn.functional.one_hot(answer, self.n_values).float() * 10 + self.dummy


class FirstValue(nn.Module):
    """Learns a table from the first stored value to logits: solves the default task, not the random-position one."""

    def __init__(self, n_values):
        super().__init__()
        self.table = nn.Embedding(n_values, n_values)

    def forward(self, keys, values, query):
        return self.table(values[:, 0])


def test_evaluate_recall_scores_a_perfect_and_a_constant_model():
    cfg = RecallConfig(n_keys=30, n_values=8, eval_size=500)
    assert evaluate_recall(ExactLookup(8), 10, cfg, torch.Generator().manual_seed(0)) == 1.0
    constant = ExactLookup(8)
    constant.forward = lambda keys, values, query: torch.zeros(keys.shape[0], 8).index_fill_(1, torch.tensor([0]), 1.0)
    acc = evaluate_recall(constant, 10, cfg, torch.Generator().manual_seed(0))
    assert 0.06 < acc < 0.2, f"always answering value 0 should score about 1/8, got {acc}"


def test_train_recall_learns_and_is_repeatable():
    cfg = RecallConfig(n_keys=30, n_values=8, steps=60, lr=0.1, eval_size=500)
    runs = []
    for _ in range(2):
        torch.manual_seed(0)
        model = FirstValue(8)
        losses = train_recall(model, 5, cfg, torch.Generator().manual_seed(0))
        runs.append(losses)
        assert len(losses) == cfg.steps
        assert sum(losses[-10:]) / 10 < 0.2 * sum(losses[:10]) / 10, "the loss must fall"
        assert evaluate_recall(model, 5, cfg, torch.Generator().manual_seed(1)) == 1.0
    assert runs[0] == runs[1], "same seeds, same losses"


def test_train_recall_restores_the_thread_count():
    before = torch.get_num_threads()
    cfg = RecallConfig(n_keys=30, n_values=8, steps=2, num_threads=1)
    train_recall(FirstValue(8), 3, cfg, torch.Generator().manual_seed(0))
    assert torch.get_num_threads() == before
