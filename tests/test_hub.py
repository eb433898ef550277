"""deepdive.hub.load_pretrained: the hub when reachable, the course build otherwise, a clear
error when neither is there. No test touches the network: the hub is either switched off
(HF_HUB_OFFLINE=1), pointed at a closed local port, or replaced by a stub."""

import time
from pathlib import Path

import pytest
import torch

from deepdive import hub
from tests.test_models import tiny_models  # noqa: F401 -- the session's tiny build, shared


@pytest.fixture
def models_dir(tiny_models) -> Path:  # noqa: F811
    return tiny_models


@pytest.fixture
def offline(monkeypatch, models_dir):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv(hub.MODELS_DIR_ENV, str(models_dir))
    monkeypatch.setattr(hub, "_hub_status", {})


@pytest.mark.parametrize(
    "family, task, cls",
    [
        ("distilbert", "mlm", "DistilBertForMaskedLM"),
        ("distilbert", "sequence-classification", "DistilBertForSequenceClassification"),
        ("distilbert", "token-classification", "DistilBertForTokenClassification"),
        ("distilbert", "base", "DistilBertModel"),
        ("distilgpt2", "causal-lm", "GPT2LMHeadModel"),
        ("t5", "seq2seq", "T5ForConditionalGeneration"),
    ],
)
def test_offline_uses_the_local_build(offline, models_dir, capsys, family, task, cls):
    model, tok = hub.load_pretrained(family, task)
    assert type(model).__name__ == cls
    assert Path(model.name_or_path).resolve() == (models_dir / family).resolve()
    said = capsys.readouterr().out
    assert "course-built" in said and "HF_HUB_OFFLINE" in said and family in said


def test_model_kwargs_reach_the_head(offline):
    names = ["O", "B-PER", "I-PER"]
    model, tok = hub.load_pretrained(
        "distilbert", "token-classification", num_labels=3, id2label=dict(enumerate(names)), verbose=False
    )
    out = model(**tok(["Good morrow, Antonio."], return_tensors="pt"))
    assert out.logits.shape[-1] == 3 and model.config.id2label[1] == "B-PER"


def test_local_weights_are_the_pretrained_ones(offline, models_dir):
    from safetensors.torch import load_file

    model, _ = hub.load_pretrained("distilgpt2", "causal-lm", verbose=False)
    saved = load_file(models_dir / "distilgpt2" / "model.safetensors")
    assert torch.equal(model.transformer.wte.weight, saved["transformer.wte.weight"])


def test_missing_build_fails_clearly(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv(hub.MODELS_DIR_ENV, str(tmp_path))  # empty
    with pytest.raises(FileNotFoundError) as err:
        hub.load_pretrained("t5", "seq2seq")
    msg = str(err.value)
    assert "make models" in msg and "network" in msg and str(tmp_path / "t5") in msg and "HF_HUB_OFFLINE" in msg


def test_unreachable_hub_falls_back_quickly(monkeypatch, models_dir, capsys):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # discard port: connection refused
    monkeypatch.setenv(hub.MODELS_DIR_ENV, str(models_dir))
    monkeypatch.setattr(hub, "_hub_status", {})
    t0 = time.perf_counter()
    model, _ = hub.load_pretrained("distilgpt2", "causal-lm")
    assert time.perf_counter() - t0 < 10
    assert type(model).__name__ == "GPT2LMHeadModel"
    said = capsys.readouterr().out
    assert "course-built" in said and "did not answer" in said


def test_reachability_probe_never_hangs(monkeypatch):
    # 10.255.255.1 is not routable: the request would hang; the probe gives up after `timeout`
    monkeypatch.setenv("HF_ENDPOINT", "http://10.255.255.1")
    monkeypatch.setattr(hub, "_hub_status", {})
    t0 = time.perf_counter()
    ok, why = hub.hub_reachable(timeout=0.5)
    assert not ok and time.perf_counter() - t0 < 2.0, why
    t0 = time.perf_counter()
    assert hub.hub_reachable(timeout=0.5) == (ok, why) and time.perf_counter() - t0 < 0.01  # cached


class _Recorder:
    def __init__(self, fail: bool = False):
        self.names, self.fail = [], fail

    def from_pretrained(self, name, **kw):
        if self.fail:
            raise OSError("we could not connect")
        self.names.append(str(name))
        return f"loaded {name}"


def test_reachable_hub_uses_the_hub_names(monkeypatch, capsys):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(hub, "hub_reachable", lambda timeout=3.0: (True, "stub answered HTTP 200"))
    tok, mdl = _Recorder(), _Recorder()
    monkeypatch.setattr(hub, "AutoTokenizer", tok)
    monkeypatch.setitem(hub.AUTO_CLASSES, "seq2seq", mdl)
    monkeypatch.setitem(hub.AUTO_CLASSES, "sequence-classification", mdl)
    assert hub.load_pretrained("t5", "seq2seq") == ("loaded t5-small", "loaded t5-small")
    hub.load_pretrained("distilbert", "sequence-classification", num_labels=2)
    assert mdl.names == ["t5-small", "distilbert-base-uncased"]
    assert "from the Hugging Face hub" in capsys.readouterr().out


def test_failed_download_falls_back_to_the_local_build(monkeypatch, models_dir, capsys):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setenv(hub.MODELS_DIR_ENV, str(models_dir))
    monkeypatch.setattr(hub, "hub_reachable", lambda timeout=3.0: (True, "stub answered HTTP 200"))
    real_auto_tokenizer = hub.AutoTokenizer

    class FailingHub:
        @staticmethod
        def from_pretrained(name, **kw):
            if name == "distilgpt2":
                raise OSError("we could not connect")
            return real_auto_tokenizer.from_pretrained(name, **kw)

    monkeypatch.setattr(hub, "AutoTokenizer", FailingHub)
    model, _ = hub.load_pretrained("distilgpt2", "causal-lm")
    assert type(model).__name__ == "GPT2LMHeadModel"
    assert "downloading 'distilgpt2' failed" in capsys.readouterr().out


def test_bad_arguments_are_explained():
    with pytest.raises(ValueError, match="unknown family"):
        hub.load_pretrained("bert", "mlm")
    with pytest.raises(ValueError, match="does not fit"):
        hub.load_pretrained("t5", "token-classification")
    with pytest.raises(ValueError, match="source"):
        hub.load_pretrained("t5", "seq2seq", source="internet")
