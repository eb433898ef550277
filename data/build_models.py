"""Build the course's offline checkpoints: small DistilBERT, DistilGPT-2 and T5, pretrained here.

    .venv/bin/python data/build_models.py                      # all three -> data/models/ (+ MANIFEST.json)
    .venv/bin/python data/build_models.py --only t5            # one family
    .venv/bin/python data/build_models.py --tiny --out /tmp/m  # seconds; what the tests use

Learners with internet fine-tune `distilbert-base-uncased`, `distilgpt2` and `t5-small`; without
it (CI, air-gapped machines, HF_HUB_OFFLINE=1) `deepdive.hub.load_pretrained` loads these
instead. Each is the REAL model class with the REAL tokenizer class, only smaller, so every
notebook line runs unchanged on both:

| family       | model class                  | tokenizer (trained with `tokenizers`)            | objective |
|--------------|------------------------------|--------------------------------------------------|-----------|
| `distilbert` | DistilBertForMaskedLM        | DistilBertTokenizer: WordPiece, uncased, [CLS] [SEP] [MASK] [PAD] [UNK] | masked LM, 40% of tokens, 80/10/10 (DataCollatorForLanguageModeling) |
| `distilgpt2` | GPT2LMHeadModel              | GPT2Tokenizer: byte-level BPE, <|endoftext|>      | causal LM |
| `t5`         | T5ForConditionalGeneration   | T5Tokenizer: Unigram (SentencePiece-style), </s> <pad> <unk> <extra_id_0..99> | denoising: span-corrupted inputs (15% noise, mean span 3); target the whole window in 75% of the batches, T5's span-corruption target (the dropped spans) in the rest |

Pretraining text (from `make data`, read through `deepdive.datasets`; labels are never read):
the Shakespeare train plays and the texts of the sentiment train reviews; DistilGPT-2 reads
only the reviews (so that module 11's fine-tuning on Shakespeare is a change of domain).
DistilBERT also reads the TEXT of the four held-out plays (Shakespeare's validation split), as
distilbert-base-uncased has read Shakespeare in its pretraining corpus: without that, names
in plays it has never seen are out of reach for a model this small, and module 10's
token-classification task showed no transfer at all (validation entity F1 0.345 pretrained vs
0.339 random); with the plays read, 0.760 / 0.682 vs 0.403 / 0.533 (seeds 0 / 1), and on the
line-level `mentions` task accuracy 0.80-0.86 vs 0.59-0.66 (5 seeds). The character labels of
those plays are never used, and no review outside the train split is read. (Fine-tuned on
`sentiment`, this DistilBERT is no better than random initialisation: ~100 s of masked LM on
two cores learns which words occur together, not what separates praise from complaint; so
module 10 classifies `mentions` offline. bench/RESULTS.md has the sweeps.) Each tokenizer learns from the text its model reads. Everything is seeded: the same
seed, flags and library versions give identical weights (bench/RESULTS.md has the numbers).

Each `data/models/<family>/` holds what `save_pretrained` writes for the model and the
tokenizer, plus `build_info.json`: corpus (files and sha256), sizes, steps, seed, final
pretraining loss, held-out loss, wall time.
"""

import argparse
import hashlib
import json
import math
import platform
import shutil
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `python data/build_models.py` puts data/, not the repo root, on sys.path
    sys.path.insert(0, str(ROOT))

import tokenizers  # noqa: E402
import transformers  # noqa: E402
from tokenizers import Tokenizer, models, pre_tokenizers, trainers  # noqa: E402
from transformers import (  # noqa: E402
    Adafactor,
    DataCollatorForLanguageModeling,
    DistilBertConfig,
    DistilBertForMaskedLM,
    GPT2Config,
    GPT2LMHeadModel,
    GPT2Tokenizer,
    T5Config,
    T5ForConditionalGeneration,
    T5Tokenizer,
)

from deepdive import datasets as dd  # noqa: E402
from deepdive.wordpiece import train_wordpiece  # noqa: E402  (module 06's small_tokenizer uses it too)

FAMILIES = ("distilbert", "distilgpt2", "t5")
DEFAULT_OUT = ROOT / "data" / "models"


@dataclass
class BuildConfig:
    """One family's build: tokenizer size, model size and pretraining schedule."""

    vocab_size: int = 8192  # tokenizer vocabulary (T5 adds its 100 sentinels on top)
    d_model: int = 128  # hidden size (DistilBERT `dim`, GPT-2 `n_embd`, T5 `d_model`)
    n_layers: int = 3  # transformer blocks (T5: encoder and decoder each)
    n_heads: int = 4  # attention heads; head size = d_model // n_heads
    d_ff: int = 512  # feed-forward width
    max_positions: int = 512  # position table size (DistilBERT, GPT-2); real models: 512 / 1024
    seq_len: int = 128  # pretraining window in tokens (T5: encoder input length after corruption)
    batch_size: int = 32  # windows per step
    long_fraction: float = 0.0  # share of steps on long windows, so late positions get trained too
    long_seq_len: int = 256  # their length; batch shrinks to keep tokens per step (BERT: 10% at 512)
    steps: int = 600  # optimizer steps
    optimizer: str = "adamw"  # "adamw" or "adafactor" (T5's own: steps scale with each weight's size)
    lr: float = 2e-3  # peak learning rate (tiny models like it high; Adafactor: relative to weight RMS)
    warmup: int = 40  # linear warm-up steps, then cosine decay to lr / 10
    weight_decay: float = 0.01
    init_std: float = 0.02  # DistilBERT / GPT-2 `initializer_range` (real models: 0.02, tuned for width 768)
    dropout: float = 0.1  # dropout while pretraining; the saved config always has the real models' 0.1
    mlm_probability: float = 0.15  # DistilBERT: fraction of tokens selected for prediction
    noise_density: float = 0.15  # T5 span corruption: fraction of tokens masked
    mean_span: float = 3.0  # T5 span corruption: mean noise-span length
    reconstruct_fraction: float = 0.0  # T5: share of batches whose target is the whole window (see below)
    n_eval_batches: int = 8  # held-out batches for the recorded held-out loss
    corpora: tuple[str, ...] = ("shakespeare", "sentiment")  # train splits the model is pretrained on
    read_heldout: tuple[str, ...] = ()  # sets whose validation TEXT is pretrained on too (see the docstring)
    tokenizer_corpora: tuple[str, ...] = ("shakespeare", "sentiment")  # train splits the tokenizer learns from
    max_docs: int | None = None  # keep only the first N documents of each corpus (tests)


CONFIGS = {
    # 40% masking, not BERT's 15%: with a one-minute budget 15% never leaves the "predict the
    # unigram distribution" plateau; 40% does (Wettig et al., 2023, "Should You Mask 15% in
    # Masked Language Modeling?"). Still DataCollatorForLanguageModeling's 80/10/10 rule.
    # Batch 16 (more, cheaper steps) and init std 0.06 (~1/sqrt(width) for width 128; 0.02 is
    # tuned for 768) leave the unigram plateau sooner: held-out 6.06 -> 5.74 for 70 -> 97 s.
    "distilbert": BuildConfig(
        vocab_size=4096, n_layers=2, seq_len=64, batch_size=16, long_fraction=0.1, long_seq_len=128,
        steps=2500, lr=1e-3, init_std=0.06, dropout=0.0, mlm_probability=0.4, read_heldout=("shakespeare",),
    ),
    # Pretrained on modern English (reviews) only, so that module 11's fine-tuning on Shakespeare
    # is a real change of domain (as for distilgpt2, pretrained on web text).
    "distilgpt2": BuildConfig(
        vocab_size=4096, n_layers=3, seq_len=128, batch_size=16, steps=300, dropout=0.0, corpora=("sentiment",),
    ),
    "t5": BuildConfig(
        vocab_size=4096, n_layers=2, seq_len=32, batch_size=32, steps=3000, optimizer="adafactor", lr=1e-2,
        dropout=0.0, reconstruct_fraction=0.75,
    ),
}  # fmt: skip
# --tiny: a build in seconds for the tests (same code path, toy sizes).
TINY = dict(
    vocab_size=600, d_model=32, n_layers=1, n_heads=2, d_ff=64, max_positions=64, seq_len=32, long_seq_len=64,
    batch_size=8, steps=6, warmup=2, n_eval_batches=1, max_docs=300,
)  # fmt: skip


# ----------------------------------------------------------------------------- data


def load_corpus(names: tuple[str, ...], split: str, max_docs: int | None = None) -> list[str]:
    """Documents of `split` of each set in `names`: Shakespeare speeches, review texts (labels unused)."""
    docs = []
    for name in names:
        texts = dd.load_texts(name, split)
        docs += texts[:max_docs] if max_docs else texts
    return docs


def corpus_info(cfg: BuildConfig) -> dict:
    """Which files (and their sha256) the pretraining text came from, for build_info.json."""
    info = {}
    for name in sorted(set(cfg.corpora) | set(cfg.tokenizer_corpora)):
        for split in ("train", "validation"):
            path = dd.split_path(name, split)
            roles = [r for r, names in (("tokenizer", cfg.tokenizer_corpora), ("pretraining", cfg.corpora)) if name in names]
            if split == "validation":
                roles = ["tokenizer + pretraining (text only)"] if name in cfg.read_heldout else ["held-out loss"]
            info[f"{name}/{path.name}"] = {
                "role": " + ".join(roles),
                "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
            }
    return info


def token_stream(tokenizer, docs: list[str], sep_id: int) -> np.ndarray:
    """All documents tokenized (no special tokens) and concatenated, `sep_id` after each. (N,)"""
    ids = [e.ids for e in tokenizer.backend_tokenizer.encode_batch(docs, add_special_tokens=False)]
    total = sum(len(x) + 1 for x in ids)
    stream = np.empty(total, dtype=np.int64)
    i = 0
    for x in ids:
        stream[i : i + len(x)] = x
        stream[i + len(x)] = sep_id
        i += len(x) + 1
    return stream


def sample_windows(stream: np.ndarray, n: int, length: int, rng: np.random.Generator) -> torch.Tensor:
    """`n` random windows of `length` consecutive tokens from the stream. (n, length)"""
    starts = rng.integers(0, len(stream) - length, size=n)
    return torch.from_numpy(np.stack([stream[s : s + length] for s in starts]))


def batch_shape(cfg: "BuildConfig", rng: np.random.Generator) -> tuple[int, int]:
    """(B, T) of the next batch: mostly (batch_size, seq_len); a `long_fraction` of batches are
    long_seq_len long with proportionally fewer rows, so that position embeddings up to
    long_seq_len are pretrained at a tenth of the cost (BERT's 90% / 10% schedule)."""
    if cfg.long_fraction > 0 and rng.random() < cfg.long_fraction:
        return max(1, cfg.batch_size * cfg.seq_len // cfg.long_seq_len), cfg.long_seq_len
    return cfg.batch_size, cfg.seq_len


# ----------------------------------------------------------------------------- tokenizers


def train_bytelevel_bpe(docs: list[str], vocab_size: int) -> GPT2Tokenizer:
    """Byte-level BPE as in GPT-2 (no unknown tokens, exact round trip), in GPT2Tokenizer."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(docs, trainer=trainer)
    model = json.loads(tok.to_str())["model"]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    # Like distilgpt2: <|endoftext|> is bos, eos and unk; there is no pad token (module 11 adds one).
    return GPT2Tokenizer(vocab=model["vocab"], merges=merges, model_max_length=1024)


def train_unigram(docs: list[str], vocab_size: int, extra_ids: int = 100) -> T5Tokenizer:
    """SentencePiece-style Unigram with T5's layout: <pad>=0, </s>=1, <unk>=2, pieces, then the
    sentinels <extra_id_99> ... <extra_id_0> at the end of the vocabulary (as in t5-small)."""
    tok = Tokenizer(models.Unigram())
    tok.pre_tokenizer = pre_tokenizers.Sequence(  # exactly what T5Tokenizer puts around the model
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")]
    )
    trainer = trainers.UnigramTrainer(
        vocab_size=vocab_size,
        special_tokens=["<pad>", "</s>", "<unk>"],
        unk_token="<unk>",
        shrinking_factor=0.75,
        show_progress=False,
    )
    tok.train_from_iterator(docs, trainer=trainer)
    trained = [p for p, _ in json.loads(tok.to_str())["model"]["vocab"]]
    assert trained[:3] == ["<pad>", "</s>", "<unk>"], trained[:3]
    pieces = viterbi_rescore(sorted(trained[3:]), docs, tok.pre_tokenizer)
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), *pieces]
    vocab += [(f"<extra_id_{i}>", 0.0) for i in reversed(range(extra_ids))]
    return T5Tokenizer(vocab=vocab, extra_ids=extra_ids, model_max_length=512)


def viterbi_rescore(pieces: list[str], docs: list[str], pre_tokenizer, iters: int = 3) -> list[tuple[str, float]]:
    """Deterministic Unigram scores for a fixed set of pieces: hard (Viterbi) EM from equal scores.

    The `tokenizers` Unigram trainer picks the same pieces on every run, but its scores differ
    in the 4th decimal (its EM sums in hash-map order), which would make builds irreproducible.
    So we keep its pieces and re-estimate log p(piece) ourselves: segment the corpus with the
    current scores (first pass: equal scores = fewest pieces), count, repeat. Returns
    (piece, log-probability) sorted by score, best first.
    """
    scores = np.full(len(pieces), -1.0)
    for _ in range(iters):
        tok = Tokenizer(models.Unigram([("<unk>", 0.0), *zip(pieces, scores.tolist())], unk_id=0, byte_fallback=False))
        tok.pre_tokenizer = pre_tokenizer
        ids = np.concatenate([np.asarray(e.ids, dtype=np.int64) for e in tok.encode_batch(docs)])
        counts = np.bincount(ids, minlength=len(pieces) + 1)[1:].astype(np.float64)  # drop <unk>
        scores = np.log(np.maximum(counts, 0.5) / counts.sum())  # unused pieces: half a count
    order = sorted(range(len(pieces)), key=lambda i: (-scores[i], pieces[i]))
    return [(pieces[i], float(scores[i])) for i in order]


# ----------------------------------------------------------------------------- models


def make_model(family: str, cfg: BuildConfig, tokenizer):
    """The real model class in a small configuration, sized to `tokenizer`."""
    V = len(tokenizer)
    if family == "distilbert":
        config = DistilBertConfig(
            vocab_size=V, dim=cfg.d_model, n_layers=cfg.n_layers, n_heads=cfg.n_heads, hidden_dim=cfg.d_ff,
            max_position_embeddings=cfg.max_positions, pad_token_id=tokenizer.pad_token_id,
            dropout=cfg.dropout, attention_dropout=cfg.dropout, initializer_range=cfg.init_std,
        )  # fmt: skip
        return DistilBertForMaskedLM(config)
    if family == "distilgpt2":
        eot = tokenizer.eos_token_id
        config = GPT2Config(
            vocab_size=V, n_embd=cfg.d_model, n_layer=cfg.n_layers, n_head=cfg.n_heads, n_inner=cfg.d_ff,
            n_positions=cfg.max_positions, bos_token_id=eot, eos_token_id=eot, initializer_range=cfg.init_std,
            resid_pdrop=cfg.dropout, embd_pdrop=cfg.dropout, attn_pdrop=cfg.dropout,
        )  # fmt: skip
        return GPT2LMHeadModel(config)
    if family == "t5":
        config = T5Config(
            vocab_size=V, d_model=cfg.d_model, d_kv=cfg.d_model // cfg.n_heads, d_ff=cfg.d_ff,
            num_layers=cfg.n_layers, num_decoder_layers=cfg.n_layers, num_heads=cfg.n_heads,
            pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
            decoder_start_token_id=tokenizer.pad_token_id,  # T5 starts decoding from <pad>
            dropout_rate=cfg.dropout,
        )  # fmt: skip
        return T5ForConditionalGeneration(config)
    raise ValueError(f"unknown family {family!r}")


DROPOUT_KEYS = {
    "distilbert": ("dropout", "attention_dropout"),
    "distilgpt2": ("resid_pdrop", "embd_pdrop", "attn_pdrop"),
    "t5": ("dropout_rate",),
}


# ----------------------------------------------------------------------------- objectives


class MaskedLMBatches:
    """DistilBERT batches: [CLS] window [SEP], masked by DataCollatorForLanguageModeling
    (`mlm_probability` of the tokens; of those 80% [MASK], 10% random token, 10% unchanged)."""

    def __init__(self, tokenizer, stream: np.ndarray, cfg: BuildConfig, seed: int):
        self.tok, self.stream, self.cfg = tokenizer, stream, cfg
        self.rng = np.random.default_rng(seed)
        self.collator = DataCollatorForLanguageModeling(
            tokenizer, mlm=True, mlm_probability=cfg.mlm_probability, mask_replace_prob=0.8, random_replace_prob=0.1, seed=seed
        )

    def __call__(self) -> dict[str, torch.Tensor]:
        B, T = batch_shape(self.cfg, self.rng)
        cls = torch.full((B, 1), self.tok.cls_token_id)
        sep = torch.full((B, 1), self.tok.sep_token_id)
        body = sample_windows(self.stream, B, T - 2, self.rng)  # (B, T-2)
        ids = torch.cat([cls, body, sep], dim=1)  # (B, T)
        return self.collator([{"input_ids": row} for row in ids])  # input_ids, labels (-100 = unmasked)


def masked_lm_loss(model: DistilBertForMaskedLM, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The same loss as `model(**batch).loss`, but the vocabulary projection runs only at the
    masked positions (as BERT's own pretraining code does): several times faster at this size."""
    hidden = model.distilbert(input_ids=batch["input_ids"]).last_hidden_state  # (B, T, C)
    where = batch["labels"] != -100  # (B, T)
    h = hidden[where]  # (N, C)
    h = model.vocab_layer_norm(model.activation(model.vocab_transform(h)))  # (N, C)
    logits = model.vocab_projector(h)  # (N, V)
    return F.cross_entropy(logits, batch["labels"][where])


class CausalLMBatches:
    """DistilGPT-2 batches: random windows of the <|endoftext|>-separated stream; labels = inputs
    (GPT2LMHeadModel shifts them inside)."""

    def __init__(self, tokenizer, stream: np.ndarray, cfg: BuildConfig, seed: int):
        self.stream, self.cfg, self.rng = stream, cfg, np.random.default_rng(seed)

    def __call__(self) -> dict[str, torch.Tensor]:
        ids = sample_windows(self.stream, *batch_shape(self.cfg, self.rng), self.rng)  # (B, T)
        return {"input_ids": ids, "labels": ids.clone()}


def span_corruption_lengths(inputs_length: int, noise_density: float, mean_span: float) -> tuple[int, int]:
    """(raw tokens to read, target length) so that a corrupted window is exactly `inputs_length`
    tokens (sentinels and the final </s> included). From T5's `random_spans_helper`."""

    def lengths(n_tokens: int) -> tuple[int, int]:
        n_noise = int(round(n_tokens * noise_density))
        n_spans = int(round(n_noise / mean_span))
        return n_tokens - n_noise + n_spans + 1, n_noise + n_spans + 1  # inputs, targets (+ </s>)

    n = inputs_length
    while lengths(n + 1)[0] <= inputs_length:
        n += 1
    return n, lengths(n)[1]


def random_spans_noise_mask(length: int, noise_density: float, mean_span: float, rng) -> np.ndarray:
    """Boolean (length,) mask: round(length * noise_density) noise tokens in about
    length * noise_density / mean_span spans, span and gap lengths random (T5, Raffel et al. 2020)."""
    n_noise = min(max(int(round(length * noise_density)), 1), length - 1)
    n_spans = max(int(round(n_noise / mean_span)), 1)
    n_clean = length - n_noise

    def segment(n_items: int, n_segments: int) -> np.ndarray:
        # split n_items into n_segments non-empty runs, uniformly at random
        first = np.zeros(n_items, dtype=bool)
        first[rng.choice(np.arange(1, n_items), size=n_segments - 1, replace=False)] = True
        return np.bincount(np.cumsum(first), minlength=n_segments)

    noise_lens, clean_lens = segment(n_noise, n_spans), segment(n_clean, n_spans)
    mask = np.zeros(length, dtype=bool)
    pos = 0
    for c, k in zip(clean_lens, noise_lens):  # clean run, then noise run: the text never starts masked
        mask[pos + c : pos + c + k] = True
        pos += c + k
    return mask


class SpanCorruptionBatches:
    """T5 batches. Each noise span in the input is replaced by one sentinel (<extra_id_0>,
    <extra_id_1>, ...); the target lists each sentinel followed by the tokens it hid, then </s>:

        text:   The cat sat on the mat and purred .
        input:  The cat <extra_id_0> the mat <extra_id_1> purred . </s>
        target: <extra_id_0> sat on <extra_id_1> and </s>
    """

    def __init__(self, tokenizer, stream: np.ndarray, cfg: BuildConfig, seed: int):
        self.tok, self.stream, self.cfg, self.rng = tokenizer, stream, cfg, np.random.default_rng(seed)
        self.raw_len, self.target_len = span_corruption_lengths(cfg.seq_len, cfg.noise_density, cfg.mean_span)
        self.sentinels = tokenizer.convert_tokens_to_ids([f"<extra_id_{i}>" for i in range(100)])

    def corrupt(self, tokens: np.ndarray) -> tuple[list[int], list[int]]:
        """One raw window -> (input ids, target ids), both ending in </s>."""
        mask = random_spans_noise_mask(len(tokens), self.cfg.noise_density, self.cfg.mean_span, self.rng)
        inputs, targets, span = [], [], -1
        for i, (t, m) in enumerate(zip(tokens.tolist(), mask)):
            if m and (i == 0 or not mask[i - 1]):  # a noise span starts: next sentinel
                span += 1
                inputs.append(self.sentinels[span])
                targets.append(self.sentinels[span])
            (targets if m else inputs).append(t)
        eos = self.tok.eos_token_id
        return inputs + [eos], targets + [eos]

    def __call__(self) -> dict[str, torch.Tensor]:
        raw = sample_windows(self.stream, self.cfg.batch_size, self.raw_len, self.rng).numpy()
        pairs = [self.corrupt(row) for row in raw]
        if self.rng.random() < self.cfg.reconstruct_fraction:  # same input, target = the whole window
            pairs = [(i, row.tolist() + [self.tok.eos_token_id]) for (i, _), row in zip(pairs, raw)]
        T, S, pad = max(len(i) for i, _ in pairs), max(len(t) for _, t in pairs), self.tok.pad_token_id
        input_ids = torch.tensor([i + [pad] * (T - len(i)) for i, _ in pairs])  # (B, T)
        labels = torch.tensor([t + [-100] * (S - len(t)) for _, t in pairs])  # (B, S)
        return {"input_ids": input_ids, "attention_mask": (input_ids != pad).long(), "labels": labels}


OBJECTIVES = {"distilbert": MaskedLMBatches, "distilgpt2": CausalLMBatches, "t5": SpanCorruptionBatches}


def loss_fn(family: str, model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The pretraining loss of one batch."""
    if family == "distilbert":
        return masked_lm_loss(model, batch)
    return model(**batch).loss


# ----------------------------------------------------------------------------- build


def build_tokenizer(family: str, docs: list[str], cfg: BuildConfig):
    if family == "distilbert":
        return train_wordpiece(docs, cfg.vocab_size)
    if family == "distilgpt2":
        return train_bytelevel_bpe(docs, cfg.vocab_size)
    return train_unigram(docs, cfg.vocab_size)


def pretrain(family: str, model, tokenizer, cfg: BuildConfig, seed: int, progress: bool = True) -> dict:
    """Pretrain `model` in place with its family's objective; returns the numbers for build_info."""
    sep = {"distilbert": tokenizer.sep_token_id}.get(family, tokenizer.eos_token_id)
    docs = load_corpus(cfg.corpora, "train", cfg.max_docs) + load_corpus(cfg.read_heldout, "validation", cfg.max_docs)
    held_out_sets = tuple(c for c in cfg.corpora if c not in cfg.read_heldout)
    train_stream = token_stream(tokenizer, docs, sep)
    eval_stream = token_stream(tokenizer, load_corpus(held_out_sets, "validation", cfg.max_docs), sep)
    batches = OBJECTIVES[family](tokenizer, train_stream, cfg, seed)
    eval_batches = OBJECTIVES[family](tokenizer, eval_stream, cfg, seed + 1)
    held_out = [eval_batches() for _ in range(cfg.n_eval_batches)]  # fixed before training

    def evaluate() -> float:
        model.eval()
        with torch.no_grad():
            loss = float(np.mean([loss_fn(family, model, b).item() for b in held_out]))
        model.train()
        return loss

    params = list(model.parameters())
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if cfg.optimizer == "adafactor":
        # T5's optimizer. Its embeddings start at std 1 (not 0.02): AdamW's absolute steps would
        # barely move them, Adafactor's steps are relative to each weight's RMS.
        opt = Adafactor(groups, lr=cfg.lr, scale_parameter=True, relative_step=False, warmup_init=False)
    else:
        opt = torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.98), eps=1e-6)

    def lr_at(step: int) -> float:  # linear warm-up, cosine decay to lr / 10
        if step < cfg.warmup:
            return cfg.lr * (step + 1) / cfg.warmup
        t = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
        return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * t)))

    initial_eval = evaluate()
    model.train()
    losses = []
    bar = tqdm(range(cfg.steps), desc=f"pretrain {family}", disable=not progress, mininterval=1.0)
    for step in bar:
        for group in opt.param_groups:
            group["lr"] = lr_at(step)
        loss = loss_fn(family, model, batches())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        losses.append(loss.item())
        if step % 10 == 0 or step == cfg.steps - 1:
            bar.set_postfix(loss=f"{np.mean(losses[-20:]):.3f}")
    model.eval()
    return {
        "train_tokens_in_corpus": int(len(train_stream)),
        "tokens_seen": int(cfg.steps * cfg.batch_size * cfg.seq_len),
        "initial_held_out_loss": round(initial_eval, 4),
        "final_train_loss": round(float(np.mean(losses[-20:])), 4),  # mean of the last 20 steps
        "final_held_out_loss": round(evaluate(), 4),
        "loss_curve_every_10_steps": [round(float(np.mean(losses[i : i + 10])), 4) for i in range(0, len(losses), 10)],
    }


def build_family(family: str, cfg: BuildConfig, out: Path, seed: int, progress: bool = True) -> dict:
    """Train the tokenizer, pretrain the model, save both and build_info.json to out/family."""
    t0, c0 = time.time(), time.process_time()
    torch.manual_seed(seed)
    docs = load_corpus(cfg.tokenizer_corpora, "train", cfg.max_docs) + load_corpus(cfg.read_heldout, "validation", cfg.max_docs)
    tokenizer = build_tokenizer(family, docs, cfg)  # learns from the text the model will read
    t_tok = time.time() - t0
    torch.manual_seed(seed)  # model init does not depend on how long tokenizer training took
    model = make_model(family, cfg, tokenizer)
    stats = pretrain(family, model, tokenizer, cfg, seed, progress)
    for key in DROPOUT_KEYS[family]:  # fine-tuning gets the dropout of the real checkpoints
        setattr(model.config, key, 0.1)
    path, tmp = out / family, out / f".{family}.partial"
    shutil.rmtree(tmp, ignore_errors=True)  # what an interrupted build left
    tmp.mkdir(parents=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    for saved in tmp.iterdir():  # save_pretrained writes the weights 0600; graded kernels read them as another uid
        saved.chmod(0o644)
    info = {
        "family": family,
        "model_class": type(model).__name__,
        "tokenizer_class": type(tokenizer).__name__,
        "stands_in_for": {"distilbert": "distilbert-base-uncased", "distilgpt2": "distilgpt2", "t5": "t5-small"}[family],
        "objective": {"distilbert": f"masked LM ({cfg.mlm_probability:.0%}, 80/10/10)", "distilgpt2": "causal LM",
                      "t5": (f"denoising: span-corrupted inputs of {cfg.seq_len} tokens ({cfg.noise_density:.0%} "
                             f"noise, mean span {cfg.mean_span:g}); target the whole uncorrupted window in "
                             f"{cfg.reconstruct_fraction:.0%} of the batches, T5's span-corruption target (the "
                             f"dropped spans after their sentinels) in the rest")}[family],
        "parameters": sum(p.numel() for p in model.parameters()),
        "vocab_size": len(tokenizer),
        "seed": seed,
        "config": asdict(cfg),
        "corpus": corpus_info(cfg),
        **stats,
        "tokenizer_seconds": round(t_tok, 1),
        "total_seconds": round(time.time() - t0, 1),
        "cpu_seconds": round(time.process_time() - c0, 1),
        "torch_threads": torch.get_num_threads(),
        "versions": {"python": platform.python_version(), "torch": torch.__version__,
                     "transformers": transformers.__version__, "tokenizers": tokenizers.__version__},
    }  # fmt: skip
    (tmp / "build_info.json").write_text(json.dumps(info, indent=2) + "\n")
    # Replace the old build only now, so an interrupted build never leaves new weights next to
    # an old build_info.json (or half a checkpoint where a whole one was).
    shutil.rmtree(path, ignore_errors=True)
    tmp.rename(path)
    return info


def override(cfg: BuildConfig, assignments: list[str]) -> BuildConfig:
    """`cfg` with fields replaced from "key=value" strings (`--set`): numbers are parsed as the
    field's type, tuples as comma-separated names ("corpora=sentiment", "read_heldout=")."""
    fields = asdict(cfg)
    for kv in assignments:
        key, sep, value = kv.partition("=")
        if not sep or key not in fields:
            raise SystemExit(f"--set {kv!r}: expected KEY=VALUE with KEY one of {', '.join(fields)}")
        old = fields[key]
        if isinstance(old, tuple):
            new = tuple(v for v in value.split(",") if v)
        elif old is None:
            new = int(value)
        else:
            new = type(old)(value)
        cfg = replace(cfg, **{key: new})
    return cfg


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", nargs="+", choices=FAMILIES, default=list(FAMILIES), help="families to build (default: all)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output folder; one subfolder per family")
    p.add_argument("--seed", type=int, default=1337, help="seeds tokenizer-independent randomness: init, windows, masks")
    p.add_argument("--steps", type=int, default=None, help="override the pretraining steps of every family")
    p.add_argument("--tiny", action="store_true", help="toy sizes and a few steps (seconds; for tests)")
    p.add_argument("--no-progress", action="store_true", help="no tqdm progress bars")
    p.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE", help="override BuildConfig fields (exploration)")
    args = p.parse_args(argv)

    t0 = time.time()
    for family in args.only:
        cfg = CONFIGS[family]
        if args.tiny:
            cfg = replace(cfg, **TINY)
        if args.steps is not None:
            cfg = replace(cfg, steps=args.steps, warmup=min(cfg.warmup, max(1, args.steps // 10)))
        cfg = override(cfg, args.set)
        info = build_family(family, cfg, args.out, args.seed, progress=not args.no_progress)
        if args.out.resolve() == DEFAULT_OUT.resolve():  # the shipped checkpoints: keep their manifest current
            from data import checkpoints

            checkpoints.record(family)
        print(
            f"{family}: {info['parameters'] / 1e6:.2f}M params, vocab {info['vocab_size']}, "
            f"{cfg.steps} steps, loss {info['initial_held_out_loss']:.2f} -> train {info['final_train_loss']:.2f} / "
            f"held-out {info['final_held_out_loss']:.2f}, {info['total_seconds']:.0f} s -> {args.out / family}"
        )
    print(f"built {', '.join(args.only)} in {time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
