"""The helper package's shared pieces (deepdive.measure, deepdive.oracles, deepdive.feedback) do what
notebooks and checks rely on: a wrong weight mapping here would make every oracle comparison wrong."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from deepdive.feedback import call
from deepdive.measure import LargestTensor, best_time
from deepdive.oracles import llama_mlp, torch_multihead_attention, torch_rnn


class _Projections(nn.Module):
    """q/k/v/out_proj, the course's attention layout (what the oracles map from)."""

    def __init__(self, d_model, bias):
        super().__init__()
        self.q_proj, self.k_proj, self.v_proj, self.out_proj = (nn.Linear(d_model, d_model, bias=bias) for _ in range(4))


def _attention_by_formula(m, x, n_heads, mask=None):
    B, T, C = x.shape
    q, k, v = (p(x).view(B, T, n_heads, C // n_heads).transpose(1, 2) for p in (m.q_proj, m.k_proj, m.v_proj))
    return m.out_proj(F.scaled_dot_product_attention(q, k, v, attn_mask=mask).transpose(1, 2).reshape(B, T, C))


@pytest.mark.parametrize("bias", [True, False])
def test_torch_multihead_attention_computes_the_same_function(bias):
    torch.manual_seed(0)
    m = _Projections(12, bias)
    x = torch.randn(2, 5, 12)
    mask = torch.ones(5, 5, dtype=torch.bool).tril()
    oracle = torch_multihead_attention(m, n_heads=3)
    with torch.no_grad():
        out, _ = oracle(x, x, x, attn_mask=~mask, need_weights=False)  # PyTorch: True = may NOT attend
        assert torch.allclose(out, _attention_by_formula(m, x, 3, mask), atol=1e-6)
    assert sum(p.numel() for p in oracle.parameters()) == sum(p.numel() for p in m.parameters())


def test_torch_multihead_attention_refuses_grouped_kv():
    m = _Projections(12, True)
    m.k_proj = nn.Linear(12, 4)
    with pytest.raises(ValueError, match="repeat K/V heads"):
        torch_multihead_attention(m, n_heads=3)


def test_torch_rnn_and_llama_mlp_compute_the_formulas():
    g = torch.Generator().manual_seed(0)
    W_xh, W_hh, b_h = torch.randn(4, 3, generator=g), torch.randn(4, 4, generator=g) * 0.3, torch.randn(4, generator=g)
    x = torch.randn(2, 6, 3, generator=g)
    h, hs = torch.zeros(2, 4), []
    for t in range(6):
        h = torch.tanh(x[:, t] @ W_xh.T + h @ W_hh.T + b_h)
        hs.append(h)
    with torch.no_grad():
        assert torch.allclose(torch_rnn(W_xh, W_hh, b_h)(x)[0], torch.stack(hs, 1), atol=1e-6)

    ff = nn.Module()
    ff.fc1, ff.gate, ff.fc2 = nn.Linear(8, 20), nn.Linear(8, 20), nn.Linear(20, 8)
    x = torch.randn(3, 8, generator=g)
    with torch.no_grad():
        assert torch.allclose(llama_mlp(ff)(x), ff.fc2(F.silu(ff.gate(x)) * ff.fc1(x)), atol=1e-6)


def test_largest_tensor_sees_the_score_matrix_and_best_time_is_a_minimum():
    q = torch.randn(64, 8)
    with LargestTensor() as watch:
        (q @ q.T / math.sqrt(8)).softmax(-1)
    assert watch.numel == 64 * 64 and watch.shape == (64, 64)
    calls = []
    seconds = best_time(lambda: calls.append(1), repeats=4, warmup=2)
    assert len(calls) == 6 and 0 <= seconds < 1


def test_call_names_the_function_and_the_shapes_that_broke_it():
    def my_attention(q, k):
        return q @ k.T

    with pytest.raises(AssertionError, match=r"(?s)my_attention\(\(2, 3, 4\), \(2, 5, 4\)\) raised RuntimeError.*Likely cause: k.T"):
        call(my_attention, torch.zeros(2, 3, 4), torch.zeros(2, 5, 4), hint="k.T on a 3-D tensor")

    def not_written(x):
        raise NotImplementedError()

    with pytest.raises(AssertionError, match="not_written is not written yet"):
        call(not_written, 1)
    assert call(lambda a, b=0: a + b, 1, b=2) == 3
