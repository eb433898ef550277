"""Data, plots and displays for module 06 (encoder models, masked language modelling).

Nothing here masks tokens, builds an encoder, pools or computes a training loss: the notebook passes
the learner's functions and models in, so every number measures the learner's code. What lives here
is plumbing no exercise asks for: the course tokenizer, token streams of the Shakespeare splits,
random windows wrapped as `[CLS] ... [SEP]`, loss curves and top-k tables.
"""

import atexit
import functools
import shutil
import tempfile

import matplotlib.pyplot as plt
import torch
from torch import nn

from deepdive.datasets import load_text


def course_tokenizer(verbose: bool = True):
    """The course's WordPiece tokenizer (data/models/distilbert, vocabulary 4096, BERT's special tokens).

    Built offline by data/build_models.py (shipped in data/models/); the same tokenizer class as `distilbert-base-uncased`."""
    from deepdive.hub import load_tokenizer

    return load_tokenizer("distilbert", source="local", verbose=verbose)


# The small vocabulary module 06 trains with: about the 80 characters of the text (each as a word start
# and as a "##" continuation) and the 75 most frequent merges. Small enough that a 2-core CPU gets a
# bidirectional encoder past the token-frequency plateau in under a minute (bench/mlm_context_gap.py).
SMALL_VOCAB = 160


@functools.lru_cache(maxsize=4)
def _small_tokenizer_dir(vocab_size: int) -> str:
    from deepdive.wordpiece import train_wordpiece  # the course tokenizer's trainer (data/build_models.py)

    docs = load_text("shakespeare", "train").splitlines()
    tokenizer = train_wordpiece(docs, vocab_size)
    path = tempfile.mkdtemp(prefix=f"deepdive-wordpiece-{vocab_size}-")
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    tokenizer.save_pretrained(path)
    return path


def small_tokenizer(vocab_size: int = SMALL_VOCAB):
    """A WordPiece tokenizer with a `vocab_size`-piece vocabulary (160: nearly characters), learned from
    the Shakespeare training split by the same code as the course tokenizer (`deepdive.wordpiece`,
    deterministic: the same pieces on every machine), with BERT's five special tokens at ids 0-4.

    Trained on first use in a process (a few seconds) and kept in a temporary folder until it exits."""
    from transformers import AutoTokenizer

    if not 16 <= int(vocab_size) <= 4096:
        raise ValueError(f"vocab_size = {vocab_size}: choose between 16 and 4096 pieces")
    return AutoTokenizer.from_pretrained(_small_tokenizer_dir(int(vocab_size)), local_files_only=True)


@torch.no_grad()
def init_like_distilbert(model: nn.Module, std: float = 0.02) -> nn.Module:
    """Re-initialise `model` as transformers' DistilBERT does (`_init_weights`): Linear and Embedding
    weights ~ N(0, std), biases 0, LayerNorm weight 1 and bias 0. Tied weights are drawn once. Returns it."""
    for module in model.modules():
        if isinstance(module, nn.Linear | nn.Embedding):
            module.weight.normal_(0.0, std)
            if getattr(module, "bias", None) is not None:
                module.bias.zero_()
        elif isinstance(module, nn.LayerNorm):
            module.weight.fill_(1.0)
            module.bias.zero_()
    return model


@functools.lru_cache(maxsize=8)
def _token_ids(tokenizer_dir: str, vocab_size: int, split: str, max_chars: int | None) -> torch.Tensor:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir, local_files_only=True)
    text = load_text("shakespeare", split)
    text = text if max_chars is None else text[:max_chars]
    # One long stream without special tokens: windows are cut from it and wrapped later. The
    # tokenizer warns that the stream is longer than a model input; it is not one.
    tokenizer.model_max_length = 10**9
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return torch.tensor(ids, dtype=torch.long)


def shakespeare_tokens(tokenizer, split: str = "train", max_chars: int | None = None) -> torch.Tensor:
    """The Shakespeare split (`"train"` or `"validation"`, four held-out plays) as one 1-D LongTensor of
    token ids (no special tokens), from its first `max_chars` characters (all when None).

    Cached per process, so a second call with the same arguments costs nothing."""
    path = getattr(tokenizer, "name_or_path", "")
    if not path:
        raise ValueError("shakespeare_tokens needs a tokenizer loaded from a folder (course_tokenizer())")
    return _token_ids(str(path), len(tokenizer), split, max_chars).clone()


def sample_windows(token_ids: torch.Tensor, batch_size: int, seq_len: int, tokenizer,
                   generator: torch.Generator | None = None) -> torch.Tensor:
    """`batch_size` random windows of `seq_len - 2` consecutive tokens of the 1-D stream `token_ids`,
    each wrapped as `[CLS] window [SEP]`: a LongTensor (batch_size, seq_len) on the stream's device.

    The start positions are drawn with `generator` (CPU), so the same generator state gives the same
    windows."""
    if token_ids.dim() != 1:
        raise ValueError(f"token_ids must be a 1-D stream of ids, got shape {tuple(token_ids.shape)}")
    inner = seq_len - 2
    if inner < 1 or token_ids.numel() <= inner:
        raise ValueError(f"seq_len = {seq_len} needs at least {seq_len - 1} tokens and room for [CLS] and [SEP]")
    starts = torch.randint(0, token_ids.numel() - inner, (batch_size,), generator=generator)  # (B,)
    offsets = torch.arange(inner)  # (T - 2,)
    body = token_ids[(starts[:, None] + offsets[None, :]).to(token_ids.device)]  # (B, T - 2)
    cls = torch.full((batch_size, 1), tokenizer.cls_token_id, dtype=torch.long, device=token_ids.device)
    sep = torch.full((batch_size, 1), tokenizer.sep_token_id, dtype=torch.long, device=token_ids.device)
    return torch.cat([cls, body, sep], dim=1)  # (B, T)


def smooth(values, window: int = 20) -> list[float]:
    """Running mean over the last `window` values (a readable training curve from noisy per-step losses)."""
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def plot_mlm_curves(runs: dict, title: str = "", baseline: float | None = None) -> None:
    """runs: {label: {"train": [per-step losses], "val_steps": [...], "val": [...]}} -> one panel per run
    (smoothed training loss and validation loss against the step), sharing the loss axis; `baseline`
    (e.g. the unigram loss) is drawn as a dashed line."""
    fig, axes = plt.subplots(1, len(runs), figsize=(5.2 * len(runs), 3.6), sharey=True, squeeze=False)
    for ax, (label, run) in zip(axes[0], runs.items()):
        ax.plot(run["train"], color="0.8", lw=0.8, label="training (per step)")
        ax.plot(smooth(run["train"]), color="C0", label="training (running mean)")
        ax.plot(run["val_steps"], run["val"], "o-", color="C3", label="validation (held-out plays)")
        if baseline is not None:
            ax.axhline(baseline, ls="--", color="0.4", label="unigram (token frequencies only)")
        ax.set(xlabel="step", title=label)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("MLM loss (cross-entropy on masked tokens, nats)")
    axes[0][0].legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    plt.show()


def show_top_k(tokenizer, input_ids: torch.Tensor, labels: torch.Tensor, logits: torch.Tensor, k: int = 5,
               label: str = "") -> None:
    """Print one masked sentence (input_ids (T,), labels (T,) with -100 where nothing is asked) and, for
    every position with a label, the true token and the model's top-k predictions from logits (T, V)."""
    tokens = tokenizer.convert_ids_to_tokens(input_ids.tolist())
    shown = " ".join(t for t in tokens if t not in (tokenizer.pad_token,))
    print(f"{label}{shown}")
    probs = logits.float().softmax(dim=-1)  # (T, V)
    for t in torch.nonzero(labels != -100).flatten().tolist():
        top_p, top_i = probs[t].topk(k)  # (k,), (k,)
        guesses = ", ".join(f"{tok} {p:.2f}" for tok, p in zip(tokenizer.convert_ids_to_tokens(top_i.tolist()),
                                                              top_p.tolist()))
        truth = tokenizer.convert_ids_to_tokens(int(labels[t]))
        hit = "*" if int(top_i[0]) == int(labels[t]) else " "
        print(f"   {hit} position {t:>2} ({tokens[t]:>7}), true {truth!r:>10}: {guesses}")
