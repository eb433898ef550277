"""Module 08's helpers (deepdive.recipes): the byte counts are what the training-memory check and the notebook's
memory budget rely on, the training loop is what every experiment runs."""

import math

import torch
import torch.nn.functional as F
from torch import nn

from deepdive.decoders import shakespeare_chars
from deepdive.recipes import (
    CharGPT,
    NormPlacementGPT,
    count_parameters,
    eval_loss,
    gpt2_config,
    saved_activation_bytes,
    train_run,
    training_state_bytes,
)


class _EmbedLinear(nn.Module):
    """Module 07's interface, (idx (B, T), targets) -> (logits (B, T, V), loss, None), through an embedding and a
    bias-free Linear: its saved tensors are known."""

    def __init__(self, V=5, C=3):
        super().__init__()
        self.emb = nn.Embedding(V, C)
        self.lin = nn.Linear(C, V, bias=False)

    def forward(self, idx, targets=None, past_key_values=None, use_cache=False):
        logits = self.lin(self.emb(idx))
        loss = None if targets is None else F.cross_entropy(logits.flatten(0, -2), targets.flatten(), ignore_index=-100)
        return logits, loss, None


def test_training_state_bytes_counts_the_real_tensors():
    w = nn.Parameter(torch.ones(4, 3))
    b = nn.Parameter(torch.ones(3, dtype=torch.float64))
    frozen = nn.Parameter(torch.ones(7))  # never gets a gradient
    opt = torch.optim.AdamW([w, b, frozen], lr=1e-3)
    ((w.sum(0) * b).sum()).backward()
    opt.step()
    got = training_state_bytes([w, b, frozen, w], opt)  # w twice: a tied weight counts once
    assert got == {"weights": 12 * 4 + 3 * 8 + 7 * 4, "gradients": 12 * 4 + 3 * 8,
                   "optimizer state": 2 * (12 * 4 + 3 * 8)}, got  # exp_avg + exp_avg_sq; `step` (0-d) left out
    sgd = torch.optim.SGD([w], lr=0.1)
    sgd.step()
    assert training_state_bytes([w], sgd)["optimizer state"] == 0
    momentum = torch.optim.SGD([w], lr=0.1, momentum=0.9)
    momentum.step()
    assert training_state_bytes([w], momentum)["optimizer state"] == 12 * 4


def test_saved_activation_bytes_counts_what_autograd_keeps():
    B, T, V, C = 4, 6, 5, 3
    g = torch.Generator().manual_seed(0)
    idx, targets = torch.randint(0, V, (B, T), generator=g), torch.randint(0, V, (B, T), generator=g)
    # embedding: its indices; Linear: its input (the weight is a parameter, not counted); cross-entropy: the
    # log-softmax output, the targets and a 0-d float32 total weight.
    want = B * T * 8 + B * T * C * 4 + B * T * V * 4 + B * T * 8 + 4
    assert saved_activation_bytes(_EmbedLinear(V, C), idx, targets) == want
    # one storage saved twice (the same tensor as inputs and targets) counts once
    assert saved_activation_bytes(_EmbedLinear(V, C), idx, idx) == want - B * T * 8


def test_saved_activation_bytes_on_meta_equals_cpu_and_grows_with_the_batch():
    cfg = gpt2_config(vocab_size=11, block_size=16, n_layer=2, n_head=2, n_embd=8)
    idx = torch.randint(0, 11, (3, 16), generator=torch.Generator().manual_seed(1))
    on_cpu = saved_activation_bytes(CharGPT(cfg, seed=0), idx, idx)
    with torch.device("meta"):
        ids = idx.to("meta")  # one tensor as inputs and targets, as on the CPU
        on_meta = saved_activation_bytes(CharGPT(cfg), ids, ids)
    assert on_cpu == on_meta > 0
    sizes = {}
    for B in (2, 4, 6):
        with torch.device("meta"):
            ids = torch.zeros(B, 16, dtype=torch.long)
            sizes[B] = saved_activation_bytes(CharGPT(cfg), ids, ids)
    assert sizes[6] - sizes[4] == sizes[4] - sizes[2] > 0, sizes  # linear in B


def test_char_gpt_is_gpt2_behind_module_07s_interface_and_seeded():
    cfg = gpt2_config(vocab_size=13, block_size=8, n_layer=1, n_head=2, n_embd=8)
    a, b = CharGPT(cfg, seed=3), CharGPT(cfg, seed=3)
    state = torch.random.get_rng_state()
    CharGPT(cfg, seed=4)
    assert torch.equal(state, torch.random.get_rng_state()), "a seeded build must not move the global RNG"
    assert (a.config.block_size, a.config.vocab_size, a.config.n_layer, a.config.n_head, a.config.n_embd) == (8, 13, 1, 2, 8)
    idx = torch.randint(0, 13, (2, 8))
    logits, loss, present = a(idx)
    assert logits.shape == (2, 8, 13) and loss is None and present is None and torch.equal(logits, b(idx)[0])
    assert torch.equal(logits, a.gpt(idx).logits)
    assert count_parameters(a) == sum(p.numel() for p in a.gpt.parameters())  # tied wte / lm_head counted once
    targets = idx.roll(-1, dims=1)
    targets[0, 5:] = -100  # ignored: the mean is over the 13 targets that count
    _, loss, _ = a(idx, targets)
    keep = targets.flatten() != -100
    want = F.cross_entropy(logits.flatten(0, 1)[keep], targets.flatten()[keep])
    assert torch.allclose(loss, want, atol=1e-6), (loss, want)
    # the cache: the prompt once, then one token with past_key_values, gives the full forward's last logits
    _, _, present = a(idx[:, :6], use_cache=True)
    assert len(present) == 1 and present[0][0].shape == (2, 2, 6, 4)
    last, _, present = a(idx[:, 6:7], past_key_values=present, use_cache=True)
    assert present[0][0].shape == (2, 2, 7, 4) and torch.allclose(last[:, -1], logits[:, 6], atol=1e-5)


def test_train_run_sets_the_rate_records_and_stops_on_nan():
    vocab, train, val = shakespeare_chars()
    cfg = gpt2_config(vocab.size, block_size=8, n_layer=1, n_head=2, n_embd=8)
    model = CharGPT(cfg, seed=0)
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    seen = []

    def fake_step(model, batch, optimizer, scaler=None, max_norm=1.0, amp_dtype=None):
        x, y = batch
        seen.append((tuple(x.shape), optimizer.param_groups[0]["lr"], max_norm))
        return (float("nan") if len(seen) == 4 else 1.0 / len(seen)), 2.0

    out = train_run(model, fake_step, opt, lambda s: 0.1 * s, 10, train, 3, torch.Generator().manual_seed(0),
                    max_norm=0.5)
    assert [s[1] for s in seen] == [0.0, 0.1, 0.2, 0.30000000000000004] and seen[0][0] == (3, 8)
    assert out["lr"] == [s[1] for s in seen] and out["grad_norm"] == [2.0] * 4 and seen[0][2] == 0.5
    assert out["diverged_at"] == 3 and len(out["loss"]) == 4 and math.isnan(out["loss"][-1])
    loss = eval_loss(model, val, n_batches=2, batch_size=4)
    assert abs(loss - math.log(vocab.size)) < 0.5 and model.training  # untrained: about log V; mode restored


def test_norm_placement_gpt_is_causal_and_has_module_07s_interface():
    idx = torch.randint(0, 9, (2, 6), generator=torch.Generator().manual_seed(2))
    for norm_first in (False, True):
        model = NormPlacementGPT(9, 6, 2, 2, 8, norm_first, seed=0)
        logits, loss, present = model(idx, idx)
        assert logits.shape == (2, 6, 9) and present is None and abs(loss.item() - math.log(9)) < 1.5
        changed = idx.clone()
        changed[:, 4:] = (changed[:, 4:] + 1) % 9  # the future must not change the past
        assert torch.allclose(model(changed)[0][:, :4], logits[:, :4], atol=1e-5)
        assert isinstance(model.ln_f, nn.LayerNorm) == norm_first  # pre-norm: a final LayerNorm
        assert all(layer.norm_first == norm_first for layer in model.blocks.layers)
