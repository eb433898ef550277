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


def test_eval_loss_is_the_mean_next_token_loss_and_leaves_no_folder_behind():
    """The model's own loss over the tokens it predicts (transformers 5.23's Trainer divided by every label,
    7/8 of this for rows of 8). Every Trainer of a process shares one scratch folder (nothing is saved there),
    removed at exit: each call used to leave an empty deepdive-eval-* folder in the temporary directory."""
    import glob
    import os
    import tempfile

    import datasets
    from transformers import GPT2Config, GPT2LMHeadModel, default_data_collator

    from deepdive.finetune import _scratch_dir

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=50, n_embd=16, n_layer=1, n_head=2, n_positions=16)).eval()
    ids = torch.randint(0, 50, (6, 8))
    ds = datasets.Dataset.from_dict({"input_ids": ids.tolist(), "labels": ids.tolist()})
    before = set(glob.glob(os.path.join(tempfile.gettempdir(), "deepdive-*")))
    losses = [gen.eval_loss(model, ds, default_data_collator, batch_size=4) for _ in range(2)]
    with torch.no_grad():  # the mean over the two batches of 4 and 2 rows, as Trainer.evaluate averages
        want = [model(input_ids=ids[a:b], labels=ids[a:b]).loss.item() for a, b in ((0, 4), (4, 6))]
    assert abs(losses[0] - (4 * want[0] + 2 * want[1]) / 6) < 1e-5 and losses[0] == losses[1]
    new = set(glob.glob(os.path.join(tempfile.gettempdir(), "deepdive-*"))) - before
    assert new <= {_scratch_dir()}, f"left behind: {sorted(new)}"
    assert os.listdir(_scratch_dir()) == [], "the Trainer wrote into its scratch folder"


def test_fine_tune_trains_on_the_models_own_mean_loss():
    """The first logged training loss of a causal LM is the model's own loss on that batch (with lr 0 the
    weights do not move): transformers 5.23's Trainer counted position 0 of every row too, 7/8 of it on rows
    of 8, unless the model's loss_type names the causal loss (deepdive.finetune.name_causal_loss)."""
    import datasets
    from transformers import GPT2Config, GPT2LMHeadModel, default_data_collator

    from deepdive.finetune import fine_tune

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=50, n_embd=16, n_layer=1, n_head=2, n_positions=16,
                                       resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0))  # train() = eval()
    ids = torch.randint(0, 50, (4, 8))
    ds = datasets.Dataset.from_dict({"input_ids": ids.tolist(), "labels": ids.tolist()})
    model.eval()
    with torch.no_grad():
        want = model(input_ids=ids, labels=ids).loss.item()
    trainer, _ = fine_tune(model, ds, default_data_collator, lr=0.0, epochs=1, cpu=True,
                           per_device_train_batch_size=4, logging_strategy="steps", logging_steps=1, warmup_steps=0)
    logged = next(h["loss"] for h in trainer.state.log_history if "loss" in h)
    assert abs(logged - want) < 1e-4, f"logged training loss {logged:.5f}, the model's own mean {want:.5f}"
    assert model.loss_type == "ForCausalLM"


def test_the_maps_hold_measured_numbers():
    table = gen.architecture_map_markdown(lm=(1525.0, 227.4), t2t={"date": {"exact match": 0.36, "chrF": 70.9},
                                                                    "modernize": {"exact match": 0.5, "chrF": 88.0}})
    assert "1,525 -> 227" in table and "date: exact match 0.360, chrF 70.9" in table and "0.790-0.820" in table
    assert "modernize: exact match 0.500, chrF 88.0" in table
    variants = gen.modern_variants_markdown().splitlines()
    assert len(variants) == 2 + 5
    assert "46.7B parameters stored, 12.9B used per token" in variants[5]  # Mixtral 8x7B, counted on meta
    assert "0.25x MHA's bytes with 2 K/V heads" in variants[3]  # a real Llama DynamicCache
