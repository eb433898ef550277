"""Known bugs of module 01: an RNN by hand, attention as a lookup, the two recall models.

The function mutants are written out whole (each differs from a correct version in one line); the
recall-model mutants are built from the reference classes of the notebook (grader.reference) and
override only the method that holds the bug.
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


@mutant("attention_lookup", "no 1/sqrt(d) scaling of the scores", MUTANTS)
def lookup_no_scaling(query, keys, values):
    scores = (keys @ query.unsqueeze(-1)).squeeze(-1)  # (B, T)
    return (torch.softmax(scores, dim=-1).unsqueeze(1) @ values).squeeze(1)


@mutant("attention_lookup", "divides the scores by d instead of sqrt(d)", MUTANTS)
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


# --------------------------------------------------------------------------------------------- RNNRecall
# Built from the reference class (each overrides the one method that holds the bug) and from the
# reference rnn_forward, so each mutant isolates a single model-level bug.


@mutant("RNNRecall", "answers from the first hidden state, outputs[:, 0], instead of h_last", MUTANTS,
        from_reference=True, name="RNNRecallReadsFirstState")
def _rnn_recall_reads_first_state(ref):
    rnn_forward = ref["rnn_forward"]

    class RNNRecallReadsFirstState(ref["RNNRecall"]):
        def forward(self, keys, values, query):
            outputs, _ = rnn_forward(self.embed(keys, values, query), self.W_xh, self.W_hh, self.b_h)
            return self.head(outputs[:, 0])

    return RNNRecallReadsFirstState


@mutant("RNNRecall", "never feeds the query: the sequence ends with the last distractor", MUTANTS,
        from_reference=True, name="RNNRecallForgetsQuery")
def _rnn_recall_forgets_query(ref):
    class RNNRecallForgetsQuery(ref["RNNRecall"]):
        def embed(self, keys, values, query):
            return torch.cat([self.key_emb(keys), self.value_emb(values)], dim=-1)  # (B, n_pairs + 1, 2 * d_embed): no query step

    return RNNRecallForgetsQuery


@mutant("RNNRecall", "initialises W_hh with torch.randn (std 1): tanh saturates, the state is chaotic", MUTANTS,
        from_reference=True, name="RNNRecallRandnInit")
def _rnn_recall_randn_init(ref):
    class RNNRecallRandnInit(ref["RNNRecall"]):
        def __init__(self, n_keys, n_values, d_embed=16, hidden=64):
            super().__init__(n_keys, n_values, d_embed, hidden)
            self.W_xh = nn.Parameter(torch.randn(hidden, 2 * d_embed))
            self.W_hh = nn.Parameter(torch.randn(hidden, hidden))

    return RNNRecallRandnInit


@mutant("RNNRecall", "feeds only the keys (x_t = key embedding): the values never enter the RNN", MUTANTS,
        from_reference=True, name="RNNRecallKeysOnly")
def _rnn_recall_keys_only(ref):
    class RNNRecallKeysOnly(ref["RNNRecall"]):
        def __init__(self, n_keys, n_values, d_embed=16, hidden=64):
            super().__init__(n_keys, n_values, d_embed, hidden)
            bound = 1 / math.sqrt(hidden)
            self.W_xh = nn.Parameter(torch.empty(hidden, d_embed).uniform_(-bound, bound))

        def embed(self, keys, values, query):
            return self.key_emb(torch.cat([keys, query[:, None]], dim=1))  # (B, T, d_embed), T = n_pairs + 2

    return RNNRecallKeysOnly


# --------------------------------------------------------------------------------------------- AttentionRecall


@mutant("AttentionRecall", "uses the key embeddings as values: the lookup returns keys, not values", MUTANTS,
        from_reference=True, name="AttentionRecallKeysAsValues")
def _attention_recall_keys_as_values(ref):
    attention_lookup = ref["attention_lookup"]

    class AttentionRecallKeysAsValues(ref["AttentionRecall"]):
        def forward(self, keys, values, query):
            k = self.k_proj(self.key_emb(keys))
            return self.head(attention_lookup(self.q_proj(self.key_emb(query)), k, k))

    return AttentionRecallKeysAsValues


@mutant("AttentionRecall", "scores the query against the value embeddings instead of the keys", MUTANTS,
        from_reference=True, name="AttentionRecallMatchesValues")
def _attention_recall_matches_values(ref):
    attention_lookup = ref["attention_lookup"]

    class AttentionRecallMatchesValues(ref["AttentionRecall"]):
        def forward(self, keys, values, query):
            v = self.value_emb(values)
            return self.head(attention_lookup(self.q_proj(self.key_emb(query)), self.k_proj(v), v))

    return AttentionRecallMatchesValues


@mutant("AttentionRecall", "averages all values (mean pooling) instead of weighting them by the match", MUTANTS,
        from_reference=True, name="AttentionRecallMeanPool")
def _attention_recall_mean_pool(ref):
    class AttentionRecallMeanPool(ref["AttentionRecall"]):
        def forward(self, keys, values, query):
            return self.head(self.value_emb(values).mean(dim=1))

    return AttentionRecallMeanPool


@mutant("AttentionRecall", "answers from the last stored pair (the most recent one), as an RNN would", MUTANTS,
        from_reference=True, name="AttentionRecallLastPair")
def _attention_recall_last_pair(ref):
    class AttentionRecallLastPair(ref["AttentionRecall"]):
        def forward(self, keys, values, query):
            return self.head(self.value_emb(values[:, -1]))

    return AttentionRecallLastPair
