"""Module 11's helpers (deepdive.generative) and the t2t prefixes: what the notebook prints and plots must be what
the helpers say they compute."""

import numpy as np
import torch

from deepdive import generative as gen
from deepdive.datasets import T2T_PREFIXES, load_split
from deepdive.hub import load_tokenizer


def test_t2t_prefixes_are_the_builds_and_keep_prefix_false_strips_them():
    from data.t2t import TASKS

    assert T2T_PREFIXES == TASKS
    kept, stripped = load_split("t2t", "validation"), load_split("t2t", "validation", keep_prefix=False)
    for a, b in zip(kept, stripped):
        assert a["source"] == T2T_PREFIXES[a["task"]] + b["source"] and a["target"] == b["target"]


def test_every_test_date_has_a_known_format():
    sources = load_split("t2t", "test", task="date", keep_prefix=False)["source"]
    formats = {gen.date_format(s) for s in sources}
    assert formats == {name for name, _ in gen.DATE_FORMATS}  # all five occur, none is "other"


def test_decode_generated_ignores_minus_100_padding():
    tok = load_tokenizer("t5", verbose=False)
    ids = tok(text_target=["1599-05-03", "1694-11-09"])["input_ids"]
    rows = np.full((2, 14), -100)
    for i, row in enumerate(ids):
        rows[i, : len(row)] = row
    assert gen.decode_generated(rows, tok) == ["1599-05-03", "1694-11-09"]


def test_tokenize_texts_ends_every_text_with_eos():
    import datasets

    tok = load_tokenizer("distilgpt2", verbose=False)
    out = gen.tokenize_texts(datasets.Dataset.from_dict({"text": ["ROMEO:\nO", "JULIET:\nAy me"]}), tok)
    assert out.column_names == ["input_ids", "attention_mask"]
    assert all(row[-1] == tok.eos_token_id for row in out["input_ids"])


def test_sample_is_seeded_and_leaves_the_global_rng_alone():
    from transformers import GPT2Config, GPT2LMHeadModel

    tok = load_tokenizer("distilgpt2", verbose=False)
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_embd=16, n_layer=1, n_head=2, n_positions=64))
    state = torch.random.get_rng_state()
    a = gen.sample(model, tok, ["ROMEO:\n"], seed=3, max_new_tokens=8)
    b = gen.sample(model, tok, ["ROMEO:\n"], seed=3, max_new_tokens=8)
    assert a == b and a[0].startswith("ROMEO:")
    assert torch.equal(state, torch.random.get_rng_state())


def test_the_maps_hold_measured_numbers():
    table = gen.architecture_map_markdown(lm=(1525.0, 227.4), t2t={"date": {"exact match": 0.36, "chrF": 70.9},
                                                                    "modernize": {"exact match": 0.5, "chrF": 88.0}})
    assert "1,525 -> 227" in table and "date: exact match 0.360, chrF 70.9" in table and "0.790-0.820" in table
    assert "modernize: exact match 0.500, chrF 88.0" in table
    variants = gen.modern_variants_markdown().splitlines()
    assert len(variants) == 2 + 5
    assert "46.7B parameters stored, 12.9B used per token" in variants[5]  # Mixtral 8x7B, counted on meta
    assert "0.25x MHA's bytes with 2 K/V heads" in variants[3]  # a real Llama DynamicCache
