"""Module 10's helpers (deepdive.finetune): the comparison table's memory column, the forgetting measurement and
the word-level tags must measure what the notebook says they measure."""

import numpy as np
import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import DistilBertConfig, DistilBertForSequenceClassification

from deepdive import finetune as ft
from deepdive.hub import local_path


def _tiny(seed=0):
    torch.manual_seed(seed)
    return DistilBertForSequenceClassification(DistilBertConfig(vocab_size=40, dim=8, n_layers=1, n_heads=2,
                                                                hidden_dim=16, max_position_embeddings=16,
                                                                num_labels=2))


def test_training_memory_counts_the_real_tensors():
    model = _tiny()
    model.distilbert.requires_grad_(False)  # only the head trains
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-3)
    batch = {"input_ids": torch.randint(1, 40, (3, 7)), "attention_mask": torch.ones(3, 7, dtype=torch.long),
             "labels": torch.tensor([0, 1, 1])}
    model(**batch).loss.backward()
    optimizer.step()
    counts = ft.training_memory_bytes(model, optimizer, batch)
    n_all, n_train = sum(p.numel() for p in model.parameters()), sum(p.numel() for p in trainable)
    assert counts["weights"] == 4 * n_all
    assert counts["gradients"] == 4 * n_train
    assert counts["optimizer state"] == 2 * 4 * n_train  # AdamW: exp_avg and exp_avg_sq, float32
    assert counts["activations"] > 0
    assert counts["total"] == sum(v for k, v in counts.items() if k != "total")


def test_body_state_merges_lora_into_a_copy():
    model = _tiny()
    lora = get_peft_model(model, LoraConfig(r=2, lora_alpha=4, target_modules=["q_lin"], lora_dropout=0.0,
                                            modules_to_save=["pre_classifier", "classifier"]))
    with torch.no_grad():
        for name, p in lora.named_parameters():
            if "lora_" in name:
                p.fill_(0.5)
    layer = lora.base_model.model.distilbert.transformer.layer[0].attention.q_lin
    expected = layer.base_layer.weight + 2.0 * layer.lora_B["default"].weight @ layer.lora_A["default"].weight
    state = ft.body_state(lora)
    assert torch.allclose(state["transformer.layer.0.attention.q_lin.weight"], expected)
    assert "lora_A" in str(list(dict(lora.named_parameters()))), "the wrapped model itself must stay unmerged"
    assert not any(k.startswith(("pre_classifier", "classifier")) for k in state), "only the body's weights"


@pytest.mark.skipif(not (local_path("distilbert") / "config.json").is_file(), reason="needs `make models`")
def test_forgetting_is_zero_for_the_pretrained_body_and_grows_when_it_moves():
    from deepdive.hub import load_pretrained

    before = ft.general_text_mlm_loss(source="local")
    model, _ = load_pretrained("distilbert", "sequence-classification", source="local", verbose=False, num_labels=2)
    assert ft.general_text_mlm_loss(ft.body_state(model), source="local") == pytest.approx(before, abs=1e-6)
    with torch.no_grad():
        model.distilbert.transformer.layer[1].ffn.lin2.weight.mul_(0.0)  # a body that no longer computes the same
    assert ft.general_text_mlm_loss(ft.body_state(model), source="local") > before + 0.01
    assert 1.0 < before < np.log(model.config.vocab_size), "a masked-LM loss in nats, below a uniform guess"


def test_word_level_tags_keep_one_tag_per_labelled_position():
    logits = np.zeros((2, 5, 3))
    logits[0, [1, 3], 1] = 1.0  # predicts B-PER at tokens 1 and 3 of the first line
    labels = np.array([[-100, 1, -100, 0, -100], [-100, 0, 0, -100, -100]])
    preds, golds = ft.word_level_tags(logits, labels, ["O", "B-PER", "I-PER"])
    assert golds == [["B-PER", "O"], ["O", "O"]]
    assert preds == [["B-PER", "B-PER"], ["O", "O"]]
