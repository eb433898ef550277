"""Known bugs of module 01: an RNN by hand, attention as a lookup, the two recall models.

The recall-model mutants cannot see the notebook's `rnn_forward` / `attention_lookup`, so they use
the correct private copies `_rnn` and `_lookup` below: each one isolates a single model-level bug.
"""

import math

import torch
from torch import nn

from grader.mutants import mutant

MUTANTS = []


# --------------------------------------------------------------------------------------------- rnn_forward


@mutant("rnn_forward", "forgot the tanh: a linear recurrence", MUTANTS)
def rnn_no_tanh(x, W_xh, W_hh, b_h, h0=None):
    B, T, _ = x.shape
    h = x.new_zeros(B, W_hh.shape[0]) if h0 is None else h0
    outputs = []
    for t in range(T):
        h = x[:, t] @ W_xh.T + h @ W_hh.T + b_h
        outputs.append(h)
    return torch.stack(outputs, dim=1), h


@mutant("rnn_forward", "W_hh not transposed: h @ W_hh (runs, because W_hh is square)", MUTANTS)
def rnn_w_hh_not_transposed(x, W_xh, W_hh, b_h, h0=None):
    B, T, _ = x.shape
    h = x.new_zeros(B, W_hh.shape[0]) if h0 is None else h0
    outputs = []
    for t in range(T):
        h = torch.tanh(x[:, t] @ W_xh.T + h @ W_hh + b_h)
        outputs.append(h)
    return torch.stack(outputs, dim=1), h


@mutant("rnn_forward", "ignores h0 and always starts from zeros", MUTANTS)
def rnn_ignores_h0(x, W_xh, W_hh, b_h, h0=None):
    B, T, _ = x.shape
    h = x.new_zeros(B, W_hh.shape[0])
    outputs = []
    for t in range(T):
        h = torch.tanh(x[:, t] @ W_xh.T + h @ W_hh.T + b_h)
        outputs.append(h)
    return torch.stack(outputs, dim=1), h


@mutant("rnn_forward", "never updates the state: every step reads h0, not h_{t-1}", MUTANTS)
def rnn_stale_state(x, W_xh, W_hh, b_h, h0=None):
    B, T, _ = x.shape
    h_prev = x.new_zeros(B, W_hh.shape[0]) if h0 is None else h0
    outputs = []
    for t in range(T):
        h = torch.tanh(x[:, t] @ W_xh.T + h_prev @ W_hh.T + b_h)  # h_prev is never reassigned
        outputs.append(h)
    return torch.stack(outputs, dim=1), h


@mutant("rnn_forward", "records the state before the update: outputs are h_{t-1}, off by one", MUTANTS)
def rnn_outputs_off_by_one(x, W_xh, W_hh, b_h, h0=None):
    B, T, _ = x.shape
    h = x.new_zeros(B, W_hh.shape[0]) if h0 is None else h0
    outputs = []
    for t in range(T):
        outputs.append(h)
        h = torch.tanh(x[:, t] @ W_xh.T + h @ W_hh.T + b_h)
    return torch.stack(outputs, dim=1), h


@mutant("rnn_forward", "returns the first state as h_last (outputs[:, 0] instead of [:, -1])", MUTANTS)
def rnn_h_last_is_first(x, W_xh, W_hh, b_h, h0=None):
    B, T, _ = x.shape
    h = x.new_zeros(B, W_hh.shape[0]) if h0 is None else h0
    outputs = []
    for t in range(T):
        h = torch.tanh(x[:, t] @ W_xh.T + h @ W_hh.T + b_h)
        outputs.append(h)
    outputs = torch.stack(outputs, dim=1)
    return outputs, outputs[:, 0]


@mutant("rnn_forward", "time-major indexing: x[t] walks over the batch, not over time", MUTANTS)
def rnn_time_major(x, W_xh, W_hh, b_h, h0=None):
    T = x.shape[0]  # wrong: x is (B, T, D_in)
    h = x.new_zeros(x.shape[1], W_hh.shape[0]) if h0 is None else h0
    outputs = []
    for t in range(T):
        h = torch.tanh(x[t] @ W_xh.T + h @ W_hh.T + b_h)
        outputs.append(h)
    return torch.stack(outputs, dim=1), h


@mutant("rnn_forward", "detaches h every step (truncated BPTT by accident): gradients stop at one step", MUTANTS)
def rnn_detached_state(x, W_xh, W_hh, b_h, h0=None):
    B, T, _ = x.shape
    h = x.new_zeros(B, W_hh.shape[0]) if h0 is None else h0
    outputs = []
    for t in range(T):
        h = torch.tanh(x[:, t] @ W_xh.T + h.detach() @ W_hh.T + b_h)
        outputs.append(h)
    return torch.stack(outputs, dim=1), h


# --------------------------------------------------------------------------------------------- attention_lookup


@mutant("attention_lookup", "no 1/sqrt(D) scaling of the scores", MUTANTS)
def lookup_no_scaling(query, keys, values):
    scores = (keys @ query.unsqueeze(-1)).squeeze(-1)  # (B, T)
    return (torch.softmax(scores, dim=-1).unsqueeze(1) @ values).squeeze(1)


@mutant("attention_lookup", "divides the scores by D instead of sqrt(D)", MUTANTS)
def lookup_scale_by_d(query, keys, values):
    scores = (keys @ query.unsqueeze(-1)).squeeze(-1) / query.shape[-1]
    return (torch.softmax(scores, dim=-1).unsqueeze(1) @ values).squeeze(1)


@mutant("attention_lookup", "softmax over the batch axis (dim=0) instead of over the T positions", MUTANTS)
def lookup_softmax_over_batch(query, keys, values):
    scores = (keys @ query.unsqueeze(-1)).squeeze(-1) / math.sqrt(query.shape[-1])  # (B, T)
    return (torch.softmax(scores, dim=0).unsqueeze(1) @ values).squeeze(1)


@mutant("attention_lookup", "hand-written softmax without subtracting the max: exp overflows to inf/nan", MUTANTS)
def lookup_naive_exp(query, keys, values):
    scores = (keys @ query.unsqueeze(-1)).squeeze(-1) / math.sqrt(query.shape[-1])
    e = torch.exp(scores)
    return ((e / e.sum(dim=-1, keepdim=True)).unsqueeze(1) @ values).squeeze(1)


@mutant("attention_lookup", "averages the keys instead of the values", MUTANTS)
def lookup_returns_keys(query, keys, values):
    scores = (keys @ query.unsqueeze(-1)).squeeze(-1) / math.sqrt(query.shape[-1])
    return (torch.softmax(scores, dim=-1).unsqueeze(1) @ keys).squeeze(1)


@mutant("attention_lookup", "uses the raw scaled scores as weights (forgot the softmax)", MUTANTS)
def lookup_no_softmax(query, keys, values):
    scores = (keys @ query.unsqueeze(-1)).squeeze(-1) / math.sqrt(query.shape[-1])
    return (scores.unsqueeze(1) @ values).squeeze(1)


# --------------------------------------------------------------------------------------------- recall models


def _rnn(x, W_xh, W_hh, b_h):
    """A correct RNN (the notebook's rnn_forward), for the model-level mutants: (outputs, h_last)."""
    h = x.new_zeros(x.shape[0], W_hh.shape[0])
    outputs = []
    for t in range(x.shape[1]):
        h = torch.tanh(x[:, t] @ W_xh.T + h @ W_hh.T + b_h)
        outputs.append(h)
    return torch.stack(outputs, dim=1), h


def _lookup(query, keys, values):
    """A correct attention_lookup, for the model-level mutants."""
    scores = (keys @ query.unsqueeze(-1)).squeeze(-1) / math.sqrt(query.shape[-1])
    return (torch.softmax(scores, dim=-1).unsqueeze(1) @ values).squeeze(1)


class _RNNRecallBase(nn.Module):
    """The correct RNNRecall; each mutant below overrides one piece."""

    def __init__(self, n_keys, n_values, d_embed=16, hidden=64):
        super().__init__()
        self.n_values = n_values
        self.key_emb = nn.Embedding(n_keys, d_embed)
        self.value_emb = nn.Embedding(n_values + 1, d_embed)
        bound = 1 / math.sqrt(hidden)
        self.W_xh = nn.Parameter(torch.empty(hidden, 2 * d_embed).uniform_(-bound, bound))
        self.W_hh = nn.Parameter(torch.empty(hidden, hidden).uniform_(-bound, bound))
        self.b_h = nn.Parameter(torch.zeros(hidden))
        self.head = nn.Linear(hidden, n_values)

    def embed(self, keys, values, query):
        ask = torch.full((keys.shape[0], 1), self.n_values, dtype=torch.long, device=keys.device)
        all_keys = torch.cat([keys, query[:, None]], dim=1)
        all_values = torch.cat([values, ask], dim=1)
        return torch.cat([self.key_emb(all_keys), self.value_emb(all_values)], dim=-1)

    def forward(self, keys, values, query):
        _, h_last = _rnn(self.embed(keys, values, query), self.W_xh, self.W_hh, self.b_h)
        return self.head(h_last)


@mutant("RNNRecall", "answers from the first hidden state, outputs[:, 0], instead of h_last", MUTANTS)
class RNNRecallReadsFirstState(_RNNRecallBase):
    def forward(self, keys, values, query):
        outputs, _ = _rnn(self.embed(keys, values, query), self.W_xh, self.W_hh, self.b_h)
        return self.head(outputs[:, 0])


@mutant("RNNRecall", "never feeds the query: the sequence ends with the last distractor", MUTANTS)
class RNNRecallForgetsQuery(_RNNRecallBase):
    def forward(self, keys, values, query):
        x = torch.cat([self.key_emb(keys), self.value_emb(values)], dim=-1)  # (B, T+1, 2 * d_embed)
        _, h_last = _rnn(x, self.W_xh, self.W_hh, self.b_h)
        return self.head(h_last)


@mutant("RNNRecall", "initialises W_hh with torch.randn (std 1): tanh saturates, the state is chaotic", MUTANTS)
class RNNRecallRandnInit(_RNNRecallBase):
    def __init__(self, n_keys, n_values, d_embed=16, hidden=64):
        super().__init__(n_keys, n_values, d_embed, hidden)
        self.W_xh = nn.Parameter(torch.randn(hidden, 2 * d_embed))
        self.W_hh = nn.Parameter(torch.randn(hidden, hidden))


@mutant("RNNRecall", "feeds only the keys (x_t = key embedding): the values never enter the RNN", MUTANTS)
class RNNRecallKeysOnly(_RNNRecallBase):
    def __init__(self, n_keys, n_values, d_embed=16, hidden=64):
        super().__init__(n_keys, n_values, d_embed, hidden)
        bound = 1 / math.sqrt(hidden)
        self.W_xh = nn.Parameter(torch.empty(hidden, d_embed).uniform_(-bound, bound))

    def embed(self, keys, values, query):
        return self.key_emb(torch.cat([keys, query[:, None]], dim=1))  # (B, T+2, d_embed)


class _AttentionRecallBase(nn.Module):
    """The correct AttentionRecall; each mutant below overrides forward."""

    def __init__(self, n_keys, n_values, d_model=32):
        super().__init__()
        self.key_emb = nn.Embedding(n_keys, d_model)
        self.value_emb = nn.Embedding(n_values, d_model)
        self.q_proj = nn.Linear(d_model, d_model)
        self.k_proj = nn.Linear(d_model, d_model)
        self.head = nn.Linear(d_model, n_values)


@mutant("AttentionRecall", "uses the key embeddings as values: the lookup returns keys, not values", MUTANTS)
class AttentionRecallKeysAsValues(_AttentionRecallBase):
    def forward(self, keys, values, query):
        k = self.k_proj(self.key_emb(keys))
        return self.head(_lookup(self.q_proj(self.key_emb(query)), k, k))


@mutant("AttentionRecall", "scores the query against the value embeddings instead of the keys", MUTANTS)
class AttentionRecallMatchesValues(_AttentionRecallBase):
    def forward(self, keys, values, query):
        v = self.value_emb(values)
        return self.head(_lookup(self.q_proj(self.key_emb(query)), self.k_proj(v), v))


@mutant("AttentionRecall", "averages all values (mean pooling) instead of weighting them by the match", MUTANTS)
class AttentionRecallMeanPool(_AttentionRecallBase):
    def forward(self, keys, values, query):
        return self.head(self.value_emb(values).mean(dim=1))


@mutant("AttentionRecall", "answers from the last stored pair (the most recent one), as an RNN would", MUTANTS)
class AttentionRecallLastPair(_AttentionRecallBase):
    def forward(self, keys, values, query):
        return self.head(self.value_emb(values[:, -1]))
