"""Load a pretrained checkpoint by family: the real one from the Hugging Face hub when it can be
reached, the course-built one from `data/models/` when it cannot.

    from deepdive.hub import load_pretrained
    model, tokenizer = load_pretrained("distilbert", task="sequence-classification", num_labels=2)

| family       | hub name                  | course build           | tasks                                   |
|--------------|---------------------------|------------------------|-----------------------------------------|
| `distilbert` | `distilbert-base-uncased` | `data/models/distilbert` | base, mlm, sequence-/token-classification |
| `distilgpt2` | `distilgpt2`              | `data/models/distilgpt2` | base, causal-lm, sequence-/token-classification |
| `t5`         | `t5-small`                | `data/models/t5`         | base, seq2seq                           |

The course builds (`data/build_models.py`, shipped in `data/models/` and checked by `make models`) are small configurations of the
same model classes with the same tokenizer classes, briefly pretrained with the same objectives
(T5's mostly as a whole-window denoiser: each build's `build_info.json` says exactly what it was trained on
and how) on the course's own corpora, so every notebook line that works on one works on the other; only
the sizes and the numbers differ. Which one is used, and why, is printed.

Rules, in order:
1. `source="hub"` or `source="local"` forces one.
2. `HF_HUB_OFFLINE=1` (or `TRANSFORMERS_OFFLINE=1`) -> the local build.
3. Otherwise one cheap HEAD request to the hub, answered within `timeout` seconds (3 s), decides;
   the answer is remembered for the rest of the session.
The local build is looked up in `$DEEPDIVE_MODELS_DIR/<family>` if that variable is set, else in
`data/models/<family>` of this repository (found from this file, then from the working directory
upwards, so notebooks can run from `course/NN_topic/`).
"""

import os
import threading
import urllib.request
from pathlib import Path

from transformers import (
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForMaskedLM,
    AutoModelForSeq2SeqLM,
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

HUB_NAMES = {"distilbert": "distilbert-base-uncased", "distilgpt2": "distilgpt2", "t5": "t5-small"}

AUTO_CLASSES = {
    "base": AutoModel,
    "mlm": AutoModelForMaskedLM,
    "causal-lm": AutoModelForCausalLM,
    "seq2seq": AutoModelForSeq2SeqLM,
    "sequence-classification": AutoModelForSequenceClassification,
    "token-classification": AutoModelForTokenClassification,
}

# Which heads make sense for which family (and exist in transformers for it).
TASKS = {
    "distilbert": ("base", "mlm", "sequence-classification", "token-classification"),
    "distilgpt2": ("base", "causal-lm", "sequence-classification", "token-classification"),
    "t5": ("base", "seq2seq"),
}

MODELS_DIR_ENV = "DEEPDIVE_MODELS_DIR"
_TRUE = {"1", "true", "yes", "on"}
_hub_status: dict[str, tuple[bool, str]] = {}  # endpoint -> (reachable, reason), one probe per session


def models_dir() -> Path:
    """The folder that holds the course builds: `$DEEPDIVE_MODELS_DIR`, else `<repo>/data/models`."""
    env = os.environ.get(MODELS_DIR_ENV)
    if env:
        return Path(env).expanduser()
    candidates = [Path(__file__).resolve().parents[1]] + [Path.cwd(), *Path.cwd().parents]
    for root in candidates:
        if (root / "data" / "models").is_dir():
            return root / "data" / "models"
    return candidates[0] / "data" / "models"  # where the shipped checkpoints belong


def local_path(family: str) -> Path:
    """Where the course build of `family` lives (it may not exist yet)."""
    return models_dir() / family


def _offline_env() -> bool:
    return any(os.environ.get(k, "").strip().lower() in _TRUE for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def hub_reachable(timeout: float = 3.0) -> tuple[bool, str]:
    """(reachable, reason) from one HEAD request to the hub, given at most `timeout` seconds.

    The request runs in a daemon thread so that a slow DNS lookup cannot hang the notebook past
    `timeout`; the answer is cached per endpoint for the rest of the session.
    """
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")
    if endpoint in _hub_status:
        return _hub_status[endpoint]
    url = f"{endpoint}/{HUB_NAMES['distilgpt2']}/resolve/main/config.json"
    result: list[tuple[bool, str]] = []

    def probe() -> None:
        try:
            req = urllib.request.Request(url, method="HEAD")
            with urllib.request.urlopen(req, timeout=timeout) as resp:  # follows redirects
                result.append((resp.status < 400, f"{endpoint} answered HTTP {resp.status}"))
        except Exception as e:  # noqa: BLE001 -- any failure means "not reachable", with the reason
            result.append((False, f"{endpoint} did not answer ({type(e).__name__}: {e})"))

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout + 0.5)
    status = result[0] if result else (False, f"{endpoint} did not answer within {timeout:.0f} s")
    _hub_status[endpoint] = status
    return status


def _missing_error(family: str, why: str) -> FileNotFoundError:
    return FileNotFoundError(
        f"No checkpoint for {family!r}: {why}, and the course build {local_path(family)} does not exist.\n"
        f"  - Offline: the course ships them in data/models/ (the repository and the student zip): restore "
        f"that folder (`git checkout -- data/models`, or unpack it from the zip again), then check it with "
        f"`make models` in the repository or `.venv/bin/python data/checkpoints.py` in the student zip's folder "
        f"(it rebuilds a missing family on CPU: 1-8 minutes); or point {MODELS_DIR_ENV} at a folder that holds them.\n"
        f"  - Online: check your network connection (and unset HF_HUB_OFFLINE) to download "
        f"{HUB_NAMES[family]!r} from the Hugging Face hub."
    )


def load_pretrained(
    family: str,
    task: str = "base",
    source: str = "auto",
    timeout: float = 3.0,
    verbose: bool = True,
    **model_kwargs,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Return `(model, tokenizer)` for `family` with the head that `task` names.

    family: "distilbert" | "distilgpt2" | "t5".
    task: "base" | "mlm" | "causal-lm" | "seq2seq" | "sequence-classification" | "token-classification"
        (see TASKS for which go with which family).
    source: "auto" (hub if reachable, else the course build), "hub" or "local".
    model_kwargs: passed to `AutoModelFor<Task>.from_pretrained`, e.g. `num_labels=2`,
        `id2label=...`, `label2id=...`. A new head (classification) starts from random weights.
    """
    if family not in HUB_NAMES:
        raise ValueError(f"unknown family {family!r}; choose from {sorted(HUB_NAMES)}")
    if task not in TASKS[family]:
        raise ValueError(f"task {task!r} does not fit {family!r}; choose from {TASKS[family]}")
    if source not in ("auto", "hub", "local"):
        raise ValueError(f"source must be 'auto', 'hub' or 'local', got {source!r}")
    auto_cls = AUTO_CLASSES[task]
    say = print if verbose else (lambda *a, **k: None)

    source, why = _resolve_source(source, timeout)

    if source == "hub":
        name = HUB_NAMES[family]
        loaded, why = _from_hub(name, why, lambda: (AutoTokenizer.from_pretrained(name),
                                                    auto_cls.from_pretrained(name, **model_kwargs)))
        if loaded is not None:
            say(f"[deepdive.hub] {family}: using {name!r} from the Hugging Face hub ({why}).")
            tokenizer, model = loaded
            return model, tokenizer

    path = local_path(family)
    if not (path / "config.json").is_file():
        raise _missing_error(family, why)
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    model = auto_cls.from_pretrained(path, local_files_only=True, **model_kwargs)
    n = sum(p.numel() for p in model.parameters())
    say(
        f"[deepdive.hub] {family}: using the course-built checkpoint {path} ({why}); "
        f"same classes as {HUB_NAMES[family]!r}, smaller ({n / 1e6:.1f}M parameters)."
    )
    return model, tokenizer


def _resolve_source(source: str, timeout: float) -> tuple[str, str]:
    """("hub" or "local", why): "auto" becomes "hub" when the hub answers within `timeout` seconds and
    HF_HUB_OFFLINE is not set; "hub" and "local" stay as asked."""
    if source != "auto":
        return source, f"source={source!r} was asked for"
    if _offline_env():
        return "local", "HF_HUB_OFFLINE=1 is set"
    reachable, why = hub_reachable(timeout)
    return ("hub" if reachable else "local"), why


def _from_hub(name: str, why: str, load):
    """(load(), why) when the download works; (None, why it failed) when it fails and the hub was only
    tried because source="auto" (the caller then falls back to the course build). An explicit
    source="hub" re-raises the error."""
    try:
        return load(), why
    except OSError as e:
        if why.startswith("source="):
            raise
        return None, f"downloading {name!r} failed ({type(e).__name__}: {str(e).splitlines()[0]})"


def load_tokenizer(family: str, source: str = "local", timeout: float = 3.0, verbose: bool = True
                   ) -> PreTrainedTokenizerBase:
    """The tokenizer of `family` alone (no model weights), by the same rules as `load_pretrained`.

    source: "local" (the course build in `data/models/<family>`, the default: notebooks that train
    their own model from scratch need only its vocabulary), "hub" or "auto".
    """
    if family not in HUB_NAMES:
        raise ValueError(f"unknown family {family!r}; choose from {sorted(HUB_NAMES)}")
    if source not in ("auto", "hub", "local"):
        raise ValueError(f"source must be 'auto', 'hub' or 'local', got {source!r}")
    say = print if verbose else (lambda *a, **k: None)
    source, why = _resolve_source(source, timeout)
    if source == "hub":
        name = HUB_NAMES[family]
        tokenizer, why = _from_hub(name, why, lambda: AutoTokenizer.from_pretrained(name))
        if tokenizer is not None:
            say(f"[deepdive.hub] {family} tokenizer: {name!r} from the Hugging Face hub ({why}).")
            return tokenizer
    path = local_path(family)
    if not (path / "tokenizer_config.json").is_file():
        raise _missing_error(family, why)
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    say(f"[deepdive.hub] {family} tokenizer: the course build {path} ({why}); "
        f"{type(tokenizer).__name__}, vocabulary {len(tokenizer)}.")
    return tokenizer
