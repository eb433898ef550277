"""Module 07's helpers (deepdive.decoders) and its GPT-2 weight copy (grader.checks._gpt2.gpt2_from_gpt): the
oracle of every GPT check depends on the mapping, the training check on the batcher."""

import torch
import torch.nn.functional as F

from deepdive.decoders import (
    CharVocab,
    linear_attention_parallel,
    linear_attention_recurrent,
    next_char_batch,
    shakespeare_chars,
    tensor_bytes,
)
from grader.checks._gpt2 import gpt2_from_gpt, gpt_state_from_gpt2


def _random_gpt2(seed=0, n_layer=2, n_head=2, n_embd=12, vocab=17, n_positions=10):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    config = GPT2Config(vocab_size=vocab, n_positions=n_positions, n_embd=n_embd, n_layer=n_layer, n_head=n_head,
                        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, initializer_range=0.3,
                        bos_token_id=None, eos_token_id=None)
    model = GPT2LMHeadModel(config).eval()
    with torch.no_grad():  # non-trivial norms and biases, so a wrong mapping cannot pass by accident
        for name, p in model.named_parameters():
            if "ln" in name or name.endswith("bias"):
                p.add_(0.3 * torch.randn_like(p))
    return model


def test_char_vocab_round_trip_and_order():
    vocab = CharVocab.from_text("hello, world")
    assert vocab.chars == tuple(sorted(set("hello, world")))
    ids = vocab.encode("world, hello")
    assert ids.dtype == torch.long and vocab.decode(ids) == "world, hello"
    try:
        vocab.encode("z")
    except KeyError as exc:
        assert "'z'" in str(exc)
    else:
        raise AssertionError("an unknown character must raise KeyError")


def test_shakespeare_vocabulary_covers_validation():
    vocab, train, val = shakespeare_chars()
    assert vocab.size == len(set(vocab.chars)) and int(train.max()) < vocab.size and int(val.max()) < vocab.size
    assert len(train) > 10 * len(val) > 0


def test_next_char_batch_targets_are_the_next_characters():
    data = torch.arange(100)
    x, y = next_char_batch(data, 5, 8, torch.Generator().manual_seed(0))
    assert x.shape == y.shape == (5, 8)
    assert torch.equal(y[:, :-1], x[:, 1:]) and torch.equal(y[:, -1], x[:, -1] + 1)
    x2, _ = next_char_batch(data, 5, 8, torch.Generator().manual_seed(0))
    assert torch.equal(x, x2), "the same generator seed gives the same batch"


def test_tensor_bytes_counts_nested_caches():
    cache = ((torch.zeros(2, 3, 4), torch.zeros(2, 3, 4)), (torch.zeros(2, 3, 4, dtype=torch.float16),) * 2)
    assert tensor_bytes(cache) == 2 * 24 * 4 + 2 * 24 * 2


def test_linear_attention_recurrence_equals_the_parallel_form_and_keeps_a_fixed_state():
    g = torch.Generator().manual_seed(0)
    sizes = []
    for T in (5, 40):
        q, k, v = (torch.randn(2, 3, T, 4, generator=g) for _ in range(3))
        out, (S, z) = linear_attention_recurrent(q, k, v)
        assert torch.allclose(out, linear_attention_parallel(q, k, v), atol=1e-5)
        sizes.append((tuple(S.shape), tuple(z.shape)))
    assert sizes[0] == sizes[1] == ((2, 3, 4, 4), (2, 3, 4))


def test_gpt2_weight_copy_round_trips_and_transposes_conv1d():
    hf = _random_gpt2()
    ours = gpt_state_from_gpt2(hf)  # nanoGPT layout: nn.Linear weights (out, in)
    C = hf.config.n_embd
    assert ours["transformer.h.0.attn.c_attn.weight"].shape == (3 * C, C)
    assert ours["transformer.h.1.mlp.c_fc.weight"].shape == (4 * C, C)
    x = torch.randn(3, C)
    conv = hf.transformer.h[0].attn.c_attn
    with torch.no_grad():
        assert torch.allclose(F.linear(x, ours["transformer.h.0.attn.c_attn.weight"],
                                       ours["transformer.h.0.attn.c_attn.bias"]), conv(x), atol=1e-6)
    ours["transformer.h.0.attn.bias"] = torch.ones(1, 1, 10, 10).tril()  # nanoGPT's mask buffer: ignored
    copy = gpt2_from_gpt(ours, n_head=hf.config.n_head)
    idx = torch.randint(0, hf.config.vocab_size, (2, 9))
    with torch.no_grad():
        assert torch.allclose(copy(idx).logits, hf(idx).logits, atol=1e-5)
    assert copy.lm_head.weight.data_ptr() == copy.transformer.wte.weight.data_ptr(), "GPT-2 ties lm_head to wte"
    assert not copy.training and copy.config.n_layer == 2 and copy.config.n_positions == 10


def test_gpt2_weight_copy_refuses_a_wrong_layout():
    ours = gpt_state_from_gpt2(_random_gpt2())
    ours["transformer.h.0.attn.c_q.weight"] = ours.pop("transformer.h.0.attn.c_attn.weight")
    try:
        gpt2_from_gpt(ours, n_head=2)
    except ValueError as exc:
        assert "c_attn" in str(exc) or "c_q" in str(exc)
    else:
        raise AssertionError("a state_dict without attn.c_attn must be refused")
