"""The offline checkpoints (data/build_models.py): real classes, working tokenizers, correct
pretraining objectives, deterministic builds.

Fast tests build `--tiny` checkpoints (toy sizes, a few steps) into a temporary folder; they
need the course data (`make data`). Tests marked slow check the real build in data/models
(`make models`, ~4.5 min, which `make test` runs first); whether fine-tuning it transfers is
measured by bench/finetune_feasibility.py (bench/RESULTS.md), not here.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from transformers import DistilBertTokenizerFast, GPT2Tokenizer, T5Tokenizer

from data import build_models as bm
from deepdive import hub

ROOT = Path(__file__).resolve().parents[1]
FAMILIES = bm.FAMILIES
TOKENIZER_CLASSES = {"distilbert": DistilBertTokenizerFast, "distilgpt2": GPT2Tokenizer, "t5": T5Tokenizer}
MODEL_CLASSES = {"distilbert": "DistilBertForMaskedLM", "distilgpt2": "GPT2LMHeadModel", "t5": "T5ForConditionalGeneration"}
TEXTS = [
    "Now, fair Hippolyta, our nuptial hour draws on apace.",
    "I rented this movie because of all the controversy -- and it was worth it!",
    "What's the matter, my lord?  'Tis 12:30, 1599.",
]


def build(out: Path, seed: int = 0, families=FAMILIES) -> Path:
    bm.main(["--tiny", "--no-progress", "--seed", str(seed), "--out", str(out), "--only", *families])
    return out


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> Path:
    return build(tmp_path_factory.mktemp("tiny_models"))


def load_tokenizer(path: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path, local_files_only=True)


# ----------------------------------------------------------------------------- tokenizers


@pytest.mark.parametrize("family", FAMILIES)
def test_saved_tokenizer_is_the_real_class(tiny_models, family):
    tok = load_tokenizer(tiny_models / family)
    assert type(tok) is TOKENIZER_CLASSES[family], f"{family}: AutoTokenizer gave {type(tok).__name__}"
    config = json.loads((tiny_models / family / "tokenizer_config.json").read_text())
    assert config["tokenizer_class"] in (TOKENIZER_CLASSES[family].__name__, TOKENIZER_CLASSES[family].__name__ + "Fast")


def test_distilbert_tokenizer_round_trip_and_specials(tiny_models):
    tok = load_tokenizer(tiny_models / "distilbert")
    for name in ("cls", "sep", "mask", "pad", "unk"):
        assert getattr(tok, f"{name}_token") == f"[{name.upper()}]"
        assert getattr(tok, f"{name}_token_id") is not None
    for text in TEXTS:
        ids = tok(text)["input_ids"]
        assert ids[0] == tok.cls_token_id and ids[-1] == tok.sep_token_id
        assert tok.unk_token_id not in ids, tok.convert_ids_to_tokens(ids)
        decoded = tok.decode(ids, skip_special_tokens=True)
        assert tok(decoded)["input_ids"] == ids  # uncased WordPiece: lossless up to case and spacing
        assert decoded.replace(" ", "") == text.lower().replace(" ", "")
    assert tok.tokenize("Hippolyta") != ["hippolyta"] or "hippolyta" in tok.get_vocab()
    assert any(t.startswith("##") for t in tok.get_vocab()), "WordPiece continuation pieces (##) are missing"


def test_gpt2_tokenizer_is_byte_level_and_lossless(tiny_models):
    tok = load_tokenizer(tiny_models / "distilgpt2")
    assert tok.eos_token == tok.bos_token == "<|endoftext|>"
    assert tok.pad_token is None  # as distilgpt2: module 11 adds one
    for text in [*TEXTS, "naïve café — “quoted” 🎭"]:
        ids = tok(text)["input_ids"]
        assert tok.decode(ids) == text  # byte-level BPE round-trips every string exactly
    assert tok.tokenize(" the") == ["Ġthe"] or tok.tokenize(" the")[0].startswith("Ġ")


def test_t5_tokenizer_layout_and_sentinels(tiny_models):
    tok = load_tokenizer(tiny_models / "t5")
    assert (tok.pad_token_id, tok.eos_token_id, tok.unk_token_id) == (0, 1, 2)  # as t5-small
    sentinels = tok.convert_tokens_to_ids([f"<extra_id_{i}>" for i in range(100)])
    assert sentinels[0] == len(tok) - 1 and sentinels == list(range(len(tok) - 1, len(tok) - 101, -1))
    for text in TEXTS:
        ids = tok(text)["input_ids"]
        assert ids[-1] == tok.eos_token_id
        assert tok.decode(ids, skip_special_tokens=True) == " ".join(text.split())
    ids = tok("The <extra_id_0> sat")["input_ids"]
    assert sentinels[0] in ids  # a sentinel is one token, never split


# ----------------------------------------------------------------------------- checkpoints


LOAD_SCRIPT = r"""
import json, sys
from pathlib import Path
from transformers import (AutoModelForCausalLM, AutoModelForMaskedLM, AutoModelForSeq2SeqLM,
    AutoModelForSequenceClassification, AutoModelForTokenClassification, AutoTokenizer)
root = Path(sys.argv[1])
out = {}
for family, autos in {
    "distilbert": [AutoModelForMaskedLM, AutoModelForSequenceClassification, AutoModelForTokenClassification],
    "distilgpt2": [AutoModelForCausalLM],
    "t5": [AutoModelForSeq2SeqLM],
}.items():
    tok = AutoTokenizer.from_pretrained(root / family)
    for auto in autos:
        kw = {"num_labels": 3} if "Classification" in auto.__name__ else {}
        model = auto.from_pretrained(root / family, **kw)
        if family == "distilgpt2":  # no pad token, as distilgpt2
            enc = tok(["Good morrow, cousin."], return_tensors="pt")
        else:
            enc = tok(["Good morrow, cousin.", "A fine film."], return_tensors="pt", padding=True)
        if family == "t5":
            o = model(**enc, labels=tok(["morning"], return_tensors="pt").input_ids.repeat(2, 1))
        elif auto is AutoModelForSequenceClassification or auto is AutoModelForTokenClassification:
            o = model(**enc)
        else:
            o = model(**enc, labels=enc["input_ids"])
        out[f"{family}/{auto.__name__}"] = [type(model).__name__, list(o.logits.shape), float(getattr(o, "loss", 0.0) or 0.0)]
print(json.dumps(out))
"""


def test_checkpoints_load_with_auto_classes_offline(tiny_models):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_ENDPOINT": "http://127.0.0.1:9"}
    res = subprocess.run([sys.executable, "-c", LOAD_SCRIPT, str(tiny_models)], env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out["distilbert/AutoModelForMaskedLM"][0] == "DistilBertForMaskedLM"
    assert out["distilbert/AutoModelForSequenceClassification"][0] == "DistilBertForSequenceClassification"
    assert out["distilbert/AutoModelForSequenceClassification"][1] == [2, 3]
    assert out["distilbert/AutoModelForTokenClassification"][0] == "DistilBertForTokenClassification"
    assert out["distilbert/AutoModelForTokenClassification"][1][-1] == 3
    assert out["distilgpt2/AutoModelForCausalLM"][0] == "GPT2LMHeadModel"
    assert out["t5/AutoModelForSeq2SeqLM"][0] == "T5ForConditionalGeneration"
    for key in ("distilbert/AutoModelForMaskedLM", "distilgpt2/AutoModelForCausalLM", "t5/AutoModelForSeq2SeqLM"):
        assert np.isfinite(out[key][2]) and out[key][2] > 0, key


@pytest.mark.parametrize("family", FAMILIES)
def test_build_info_records_the_pretraining(tiny_models, family):
    info = json.loads((tiny_models / family / "build_info.json").read_text())
    assert info["model_class"] == MODEL_CLASSES[family]
    assert info["seed"] == 0 and info["config"]["steps"] == bm.TINY["steps"]
    assert all(len(v["sha256"]) == 64 for v in info["corpus"].values())
    assert any(k.startswith("sentiment/train") for k in info["corpus"])
    for key in ("final_train_loss", "final_held_out_loss", "initial_held_out_loss"):
        assert np.isfinite(info[key])


def test_what_each_family_reads(tiny_models):
    """DistilBERT reads the held-out plays' text (as distilbert-base-uncased has read Shakespeare);
    GPT-2 and T5 never do; nobody pretrains on a held-out review; the held-out loss is measured on
    text the model has not read."""
    roles = {f: json.loads((tiny_models / f / "build_info.json").read_text())["corpus"] for f in FAMILIES}
    assert roles["distilbert"]["shakespeare/validation.txt"]["role"] == "tokenizer + pretraining (text only)"
    assert roles["distilbert"]["sentiment/validation.jsonl"]["role"] == "held-out loss"
    for family in ("distilgpt2", "t5"):
        assert all(r["role"] in ("held-out loss", "tokenizer", "pretraining", "tokenizer + pretraining")
                   for k, r in roles[family].items() if "validation" in k or "train" in k)  # fmt: skip
        assert all(r["role"] == "held-out loss" for k, r in roles[family].items() if "validation" in k)
    assert bm.CONFIGS["distilbert"].read_heldout == ("shakespeare",)
    assert all(not cfg.read_heldout for f, cfg in bm.CONFIGS.items() if f != "distilbert")


def test_set_overrides_config_fields():
    cfg = bm.override(bm.CONFIGS["distilbert"], ["steps=7", "lr=0.5", "corpora=sentiment", "read_heldout=", "max_docs=3"])
    assert (cfg.steps, cfg.lr, cfg.corpora, cfg.read_heldout, cfg.max_docs) == (7, 0.5, ("sentiment",), (), 3)
    assert bm.CONFIGS["distilbert"].steps == 2500, "override must not change the shared CONFIGS"
    for bad in (["stpes=7"], ["steps"]):
        with pytest.raises(SystemExit, match="KEY=VALUE"):
            bm.override(bm.CONFIGS["distilbert"], bad)


def state(path: Path) -> dict[str, torch.Tensor]:
    return load_file(path / "model.safetensors")


def test_build_replaces_a_family_whole(tmp_path):
    """A family is written to .<family>.partial and renamed when complete, so a rebuild leaves
    nothing of the old build (or of an interrupted one) behind."""
    (tmp_path / "t5").mkdir()
    (tmp_path / "t5" / "stale.bin").write_text("from an older build")
    (tmp_path / ".t5.partial").mkdir()
    (tmp_path / ".t5.partial" / "half.safetensors").write_text("interrupted")
    build(tmp_path, families=["t5"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t5"]
    assert not (tmp_path / "t5" / "stale.bin").exists() and (tmp_path / "t5" / "build_info.json").is_file()


def test_build_is_deterministic_under_a_seed(tiny_models, tmp_path):
    again = build(tmp_path / "again", seed=0)
    other = build(tmp_path / "other", seed=1, families=["distilgpt2"])
    for family in FAMILIES:
        a, b = state(tiny_models / family), state(again / family)
        assert a.keys() == b.keys()
        for k in a:
            assert torch.equal(a[k], b[k]), f"{family}: {k} differs between two builds with seed 0"
        assert (tiny_models / family / "tokenizer.json").read_text() == (again / family / "tokenizer.json").read_text()
    a, c = state(tiny_models / "distilgpt2"), state(other / "distilgpt2")
    assert any(not torch.equal(a[k], c[k]) for k in a), "seed 1 gave the same weights as seed 0: the seed is ignored"


# ----------------------------------------------------------------------------- objectives


def test_fast_masked_lm_loss_equals_the_model_loss(tiny_models):
    tok = load_tokenizer(tiny_models / "distilbert")
    cfg = bm.BuildConfig(**{**bm.TINY, "steps": 1})
    torch.manual_seed(0)
    model = bm.make_model("distilbert", cfg, tok).eval()
    stream = np.random.default_rng(0).integers(5, len(tok), size=2000)
    batch = bm.MaskedLMBatches(tok, stream, cfg, seed=0)()
    with torch.no_grad():
        assert torch.allclose(bm.masked_lm_loss(model, batch), model(**batch).loss, atol=1e-5)


@pytest.mark.parametrize("p", [0.15, bm.CONFIGS["distilbert"].mlm_probability])
def test_masked_lm_batches_follow_the_80_10_10_rule(tiny_models, p):
    tok = load_tokenizer(tiny_models / "distilbert")
    cfg = bm.BuildConfig(**{**bm.TINY, "batch_size": 64, "seq_len": 128, "mlm_probability": p})
    stream = np.random.default_rng(0).integers(5, len(tok), size=50_000)
    batches = bm.MaskedLMBatches(tok, stream, cfg, seed=0)
    ids, labels = zip(*[(b["input_ids"], b["labels"]) for b in (batches() for _ in range(20))])
    ids, labels = torch.cat(ids), torch.cat(labels)  # (N, T)
    assert (ids[:, 0] == tok.cls_token_id).all() and (ids[:, -1] == tok.sep_token_id).all()
    masked = labels != -100
    assert not masked[:, 0].any() and not masked[:, -1].any(), "special tokens must never be masked"
    assert p - 0.02 < masked[:, 1:-1].float().mean() < p + 0.02
    n = masked.sum()
    as_mask = (ids[masked] == tok.mask_token_id).sum() / n
    unchanged = (ids[masked] == labels[masked]).sum() / n
    assert 0.77 < as_mask < 0.83 and 0.08 < unchanged < 0.12 + 1.0 / len(tok) * 10


def test_span_corruption_is_invertible_and_sized():
    cfg = bm.BuildConfig(seq_len=128, batch_size=4)
    raw_len, target_len = bm.span_corruption_lengths(128, 0.15, 3.0)
    assert raw_len > 128 and target_len < raw_len // 3

    class Tok:  # ids only: sentinels at the top of a 1000-token vocabulary, as in T5
        pad_token_id, eos_token_id = 0, 1

        def convert_tokens_to_ids(self, tokens):
            return [999 - int(t[len("<extra_id_") : -1]) for t in tokens]

    stream = np.arange(3, 3 + 5000) % 800 + 3  # ids 3..802, below the sentinels
    batches = bm.SpanCorruptionBatches(Tok(), stream, cfg, seed=0)
    rng = np.random.default_rng(1)
    noise = []
    for _ in range(50):
        tokens = stream[(s := rng.integers(0, 4000)) : s + raw_len]
        inputs, targets = batches.corrupt(tokens)
        assert len(inputs) == 128 and inputs[-1] == 1 and targets[-1] == 1
        assert len(targets) == target_len
        # put every hidden span back where its sentinel stands: the original window comes back
        fill, cur = {}, None
        for t in targets[:-1]:
            if t >= 900:
                cur = t
                fill[cur] = []
            else:
                fill[cur].append(t)
        rebuilt = [x for t in inputs[:-1] for x in (fill[t] if t >= 900 else [t])]
        assert rebuilt == tokens.tolist()
        sentinels = [t for t in inputs if t >= 900]
        assert sentinels == list(range(999, 999 - len(sentinels), -1)), "sentinels must be <extra_id_0>, <extra_id_1>, ..."
        noise.append(sum(len(v) for v in fill.values()) / raw_len)
    assert abs(np.mean(noise) - 0.15) < 0.01


def test_reconstruction_batches_target_the_whole_window():
    tok = type("Tok", (), {"pad_token_id": 0, "eos_token_id": 1, "convert_tokens_to_ids": lambda self, t: [999 - int(x[10:-1]) for x in t]})()
    cfg = bm.BuildConfig(seq_len=32, batch_size=4, reconstruct_fraction=1.0)
    stream = np.arange(3, 3 + 5000) % 800 + 3
    batch = bm.SpanCorruptionBatches(tok, stream, cfg, seed=0)()
    for ids, labels in zip(batch["input_ids"].tolist(), batch["labels"].tolist()):
        labels = [t for t in labels if t != -100]
        assert labels[-1] == 1 and len(labels) == bm.span_corruption_lengths(32, 0.15, 3.0)[0] + 1
        assert labels[:-1] == list(range(labels[0], labels[0] + len(labels) - 1))  # a window of the stream
        assert any(t >= 900 for t in ids), "the input is still span-corrupted"


def test_long_windows_keep_tokens_per_step():
    cfg = bm.BuildConfig(seq_len=64, batch_size=32, long_fraction=0.25, long_seq_len=128)
    rng = np.random.default_rng(0)
    shapes = [bm.batch_shape(cfg, rng) for _ in range(2000)]
    assert set(shapes) == {(32, 64), (16, 128)}
    assert 0.2 < np.mean([s == (16, 128) for s in shapes]) < 0.3


def test_saved_checkpoints_have_the_real_dropout(tiny_models):
    for family, keys in bm.DROPOUT_KEYS.items():
        config = json.loads((tiny_models / family / "config.json").read_text())
        assert all(config[k] == 0.1 for k in keys), (family, {k: config[k] for k in keys})


def test_random_spans_noise_mask_statistics():
    rng = np.random.default_rng(0)
    masks = [bm.random_spans_noise_mask(200, 0.15, 3.0, rng) for _ in range(200)]
    assert all(m.sum() == 30 for m in masks)
    n_spans = [int(np.sum(m[1:] & ~m[:-1]) + m[0]) for m in masks]
    assert set(n_spans) == {10}  # round(30 / 3) spans, never merged
    assert not any(m[0] for m in masks)  # T5 starts with a clean run
    assert len({m.tobytes() for m in masks}) > 190  # span positions are random


# ----------------------------------------------------------------------------- the real build (make models)
MODELS = ROOT / "data" / "models"


@pytest.mark.slow
@pytest.mark.parametrize("family", FAMILIES)
def test_real_build_is_current_and_pretrained(family, monkeypatch):
    path = MODELS / family
    assert (path / "build_info.json").is_file(), f"{path} is missing: run `make models`"
    info = json.loads((path / "build_info.json").read_text())
    assert info["model_class"] == MODEL_CLASSES[family]
    expected = json.loads(json.dumps(bm.asdict(bm.CONFIGS[family])))
    assert info["config"] == expected, "data/models is stale (built with another config): run `make models`"
    # pretraining learned something: held-out loss far below where it started
    assert info["final_held_out_loss"] < info["initial_held_out_loss"] - 1.0, info
    assert type(load_tokenizer(path)) is TOKENIZER_CLASSES[family]
    # and the course's loading code finds it with the hub switched off
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv(hub.MODELS_DIR_ENV, raising=False)
    task = {"distilbert": "mlm", "distilgpt2": "causal-lm", "t5": "seq2seq"}[family]
    model, tok = hub.load_pretrained(family, task, verbose=False)
    assert type(model).__name__ == MODEL_CLASSES[family] and type(tok) is TOKENIZER_CLASSES[family]
