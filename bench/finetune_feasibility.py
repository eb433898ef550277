"""Can modules 10 and 11 show real transfer on a 2-core CPU with the course-built checkpoints?

    .venv/bin/python bench/finetune_feasibility.py                    # every task, seed 0
    .venv/bin/python bench/finetune_feasibility.py --tasks mentions t2t --seeds 0 1 2
    .venv/bin/python bench/finetune_feasibility.py --models-dir /tmp/models --threads 2

Not a test: a measurement, run by hand after changing data/build_models.py or the data. For
each planned fine-tuning task it trains the offline checkpoint (`deepdive.hub.load_pretrained(...,
source="local")`) with Hugging Face `Trainer` / `Seq2SeqTrainer`, and the SAME architecture from
random initialisation with the same data, steps and hyperparameters, and prints wall time and
the held-out (validation) metric of both:

  mentions    module 10  DistilBERT sequence classification   accuracy, macro F1
                         (does a Shakespeare line name a character of its play?)
  characters  module 10  DistilBERT token classification (BIO) entity F1 (exact spans)
  clm         module 11  DistilGPT-2 causal LM on Shakespeare  perplexity before / after
  t2t         module 11  T5 text-to-text (date, modernize)     exact match
  peft        module 10  linear probe vs full fine-tuning vs LoRA on mentions
  sentiment   (not a module task) the same classification on movie reviews: kept to show that
                         the offline checkpoint does NOT transfer there (bench/RESULTS.md)

The module budget is 150 s for a whole notebook on the 2-core CI machine, so the default
settings below keep each fine-tuning run to a fraction of that (the table's `total s`). Each
comparison uses one set of hyperparameters for both initialisations: the defaults are the
best found for the PRETRAINED model (see issue 3's notes for the sweeps).
"""

import argparse
import math
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from transformers import (  # noqa: E402
    Adafactor,
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForSeq2SeqLM,
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
    DataCollatorForLanguageModeling,
    DataCollatorForSeq2Seq,
    DataCollatorForTokenClassification,
    DataCollatorWithPadding,
    Seq2SeqTrainer,
    Seq2SeqTrainingArguments,
    Trainer,
    TrainingArguments,
)
from transformers.utils import logging as hf_logging  # noqa: E402

from deepdive import datasets as dd  # noqa: E402
from deepdive.hub import load_pretrained, local_path  # noqa: E402

TASKS = ("mentions", "characters", "clm", "t2t", "peft", "sentiment")
DEFAULT_TASKS = TASKS[:5]


@dataclass
class Result:
    task: str  # e.g. "mentions"
    init: str  # "pretrained" | "random" | method name for peft
    train_s: float  # wall seconds inside trainer.train()
    total_s: float  # wall seconds for the whole run (load, tokenize, train, evaluate)
    metrics: dict[str, float] = field(default_factory=dict)
    trainable: int = 0
    total: int = 0


# ----------------------------------------------------------------------------- helpers


def training_args(out: str, seed: int, cls=TrainingArguments, **kw):
    """CPU training arguments shared by every run: no saving, no logging, no progress bars."""
    return cls(
        output_dir=out, seed=seed, use_cpu=True, report_to="none", save_strategy="no", eval_strategy="no",
        logging_strategy="no", disable_tqdm=True, dataloader_num_workers=0, **kw,
    )  # fmt: skip


def count_params(model) -> tuple[int, int]:
    return sum(p.numel() for p in model.parameters() if p.requires_grad), sum(p.numel() for p in model.parameters())


def model_for(family: str, task: str, auto_cls, init: str, seed: int, **kw):
    """(model, tokenizer): the offline checkpoint, or the same config from random weights."""
    torch.manual_seed(seed)  # the new head (and, for "random", everything) is drawn from the seed
    model, tok = load_pretrained(family, task, source="local", verbose=False, **kw)
    if init == "random":
        config = AutoConfig.from_pretrained(local_path(family), **kw)
        torch.manual_seed(seed)
        model = auto_cls.from_config(config)
    return model, tok


def accuracy_macro_f1(preds: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    f1s = []
    for c in np.unique(labels):
        tp = np.sum((preds == c) & (labels == c))
        fp, fn = np.sum((preds == c) & (labels != c)), np.sum((preds != c) & (labels == c))
        f1s.append(2 * tp / max(1, 2 * tp + fp + fn))
    return {"accuracy": float(np.mean(preds == labels)), "macro_f1": float(np.mean(f1s))}


def spans(tags: list[str]) -> set[tuple[int, int]]:
    """Entity spans (start, end) of a BIO sequence; an I- after O starts an entity (conlleval)."""
    out, start = set(), None
    for i, t in enumerate([*tags, "O"]):
        if start is not None and not t.startswith("I-"):
            out.add((start, i))
            start = None
        if t.startswith("B-") or (t.startswith("I-") and start is None):
            start = i
    return out


def entity_f1(pred_seqs: list[list[str]], gold_seqs: list[list[str]]) -> dict[str, float]:
    tp = n_pred = n_gold = 0
    for p, g in zip(pred_seqs, gold_seqs):
        sp, sg = spans(p), spans(g)
        tp, n_pred, n_gold = tp + len(sp & sg), n_pred + len(sp), n_gold + len(sg)
    prec, rec = tp / max(1, n_pred), tp / max(1, n_gold)
    return {"entity_f1": 2 * prec * rec / max(1e-9, prec + rec), "precision": prec, "recall": rec}


# ----------------------------------------------------------------------------- tasks


def run_classification(name: str, init: str, seed: int, a, method: str | None = None) -> Result:
    """DistilBERT + classification head on the set `name` (`mentions` or `sentiment`);
    method (peft comparison): full | probe | lora."""
    peft, method = method is not None, method or "full"
    t0 = time.perf_counter()
    names = dd.label_names(name)
    kw = dict(num_labels=len(names), id2label=dict(enumerate(names)), label2id={n: i for i, n in enumerate(names)})
    model, tok = model_for("distilbert", "sequence-classification", AutoModelForSequenceClassification, init, seed, **kw)
    lr = a.cls_lr
    if method == "probe":  # train pre_classifier + classifier only
        for p in model.distilbert.parameters():
            p.requires_grad = False
        lr = a.probe_lr
    elif method == "lora":
        from peft import LoraConfig, TaskType, get_peft_model

        cfg = LoraConfig(task_type=TaskType.SEQ_CLS, r=8, lora_alpha=16, lora_dropout=0.0,
                         target_modules=["q_lin", "k_lin", "v_lin", "out_lin"])  # fmt: skip
        model = get_peft_model(model, cfg)  # also trains (modules_to_save) the classification head
        lr = a.lora_lr
    trainable, total = count_params(model)

    def enc(batch):
        return tok(batch["text"], truncation=True, max_length=a.cls_max_len)

    train, val = dd.load_split(name, "train"), dd.load_split(name, "validation")
    if name == "sentiment" and a.cls_source != "both":  # one source only: imdb or rotten_tomatoes
        train, val = (d.filter(lambda r: r["source"] == a.cls_source) for d in (train, val))
    extra = [c for c in train.column_names if c not in ("text", "label")]  # "source" / "play"
    train = train.select(range(min(a.cls_train, len(train)))).map(enc, batched=True, remove_columns=["text", *extra])
    val = val.map(enc, batched=True, remove_columns=["text", *extra])
    with tempfile.TemporaryDirectory() as out:
        args = training_args(out, seed, per_device_train_batch_size=32, per_device_eval_batch_size=64,
                             learning_rate=lr, num_train_epochs=a.cls_epochs, warmup_steps=0.06,
                             weight_decay=0.01, train_sampling_strategy="group_by_length")  # fmt: skip
        trainer = Trainer(model=model, args=args, train_dataset=train, data_collator=DataCollatorWithPadding(tok))
        t1 = time.perf_counter()
        train_loss = trainer.train().training_loss
        t_train = time.perf_counter() - t1
        pred = trainer.predict(val)
    m = {**accuracy_macro_f1(pred.predictions.argmax(-1), pred.label_ids), "train_loss": train_loss}
    task = "peft" if peft else name
    return Result(task, method if peft else init, t_train, time.perf_counter() - t0, m, trainable, total)


def run_characters(init: str, seed: int, a) -> Result:
    """DistilBERT + token-classification head on `characters` (BIO tags of character names)."""
    t0 = time.perf_counter()
    names = dd.label_names("characters")
    kw = dict(num_labels=len(names), id2label=dict(enumerate(names)), label2id={n: i for i, n in enumerate(names)})
    model, tok = model_for("distilbert", "token-classification", AutoModelForTokenClassification, init, seed, **kw)

    def enc(batch):
        out = tok(batch["tokens"], is_split_into_words=True, truncation=True, max_length=64)
        labels = []
        for i, tags in enumerate(batch["tags"]):
            prev, row = None, []
            for w in out.word_ids(i):  # label the first sub-token of each word; -100 elsewhere
                row.append(-100 if w is None or w == prev else tags[w])
                prev = w
            labels.append(row)
        out["labels"] = labels
        return out

    cols = ["tokens", "tags", "play"]
    train = dd.load_split("characters", "train").select(range(a.tok_train)).map(enc, batched=True, remove_columns=cols)
    val_rows = dd.load_split("characters", "validation")
    val = val_rows.map(enc, batched=True, remove_columns=cols)
    with tempfile.TemporaryDirectory() as out:
        args = training_args(out, seed, per_device_train_batch_size=32, per_device_eval_batch_size=64,
                             learning_rate=a.tok_lr, num_train_epochs=a.tok_epochs, warmup_steps=0.06,
                             weight_decay=0.01)  # fmt: skip
        trainer = Trainer(model=model, args=args, train_dataset=train, data_collator=DataCollatorForTokenClassification(tok))
        t1 = time.perf_counter()
        train_loss = trainer.train().training_loss
        t_train = time.perf_counter() - t1
        pred = trainer.predict(val)
    preds, golds = [], []
    for p, lab in zip(pred.predictions.argmax(-1), pred.label_ids):
        keep = lab != -100  # one position per word
        preds.append([names[i] for i in p[keep]])
        golds.append([names[i] for i in lab[keep]])
    m = {**entity_f1(preds, golds), "train_loss": train_loss}
    return Result("characters", init, t_train, time.perf_counter() - t0, m, *count_params(model))


def lm_blocks(tok, texts: list[str], block: int, n: int | None, seed: int) -> list[dict]:
    """Concatenate <|endoftext|>-separated texts and cut blocks of `block` tokens; keep n at random."""
    ids = []
    for e in tok.backend_tokenizer.encode_batch(texts, add_special_tokens=False):
        ids += e.ids + [tok.eos_token_id]
    blocks = [ids[i : i + block] for i in range(0, len(ids) - block + 1, block)]
    if n is not None and n < len(blocks):
        keep = np.random.default_rng(seed).choice(len(blocks), size=n, replace=False)
        blocks = [blocks[i] for i in sorted(keep)]
    return [{"input_ids": b} for b in blocks]


def run_clm(init: str, seed: int, a) -> Result:
    """DistilGPT-2 causal LM fine-tuned on Shakespeare (train plays); perplexity on validation plays."""
    t0 = time.perf_counter()
    model, tok = model_for("distilgpt2", "causal-lm", AutoModelForCausalLM, init, seed)
    tok.pad_token = tok.eos_token  # blocks are full: no padding is ever used
    train = lm_blocks(tok, dd.load_texts("shakespeare", "train"), a.clm_block, a.clm_train_blocks, seed)
    val = lm_blocks(tok, dd.load_texts("shakespeare", "validation"), a.clm_block, a.clm_val_blocks, 0)
    collator = DataCollatorForLanguageModeling(tok, mlm=False)
    with tempfile.TemporaryDirectory() as out:
        args = training_args(out, seed, per_device_train_batch_size=16, per_device_eval_batch_size=32,
                             learning_rate=a.clm_lr, num_train_epochs=a.clm_epochs, warmup_steps=0.06,
                             weight_decay=0.01)  # fmt: skip
        trainer = Trainer(model=model, args=args, train_dataset=train, eval_dataset=val, data_collator=collator)
        before = math.exp(trainer.evaluate()["eval_loss"])
        t1 = time.perf_counter()
        train_loss = trainer.train().training_loss
        t_train = time.perf_counter() - t1
        after = math.exp(trainer.evaluate()["eval_loss"])
    return Result("clm", init, t_train, time.perf_counter() - t0, {"ppl_before": before, "ppl_after": after, "train_loss": train_loss}, *count_params(model))


def run_t2t(init: str, seed: int, a) -> Result:
    """T5 on `t2t` (sources already carry the task prefix); exact match of generated targets."""
    t0 = time.perf_counter()
    model, tok = model_for("t5", "seq2seq", AutoModelForSeq2SeqLM, init, seed)

    def enc(batch):
        out = tok(batch["source"], truncation=True, max_length=a.t2t_src_len)
        out["labels"] = tok(text_target=batch["target"], truncation=True, max_length=a.t2t_tgt_len)["input_ids"]
        return out

    cols = ["source", "target", "task"]
    train_rows = dd.load_split("t2t", "train").shuffle(seed=0).select(range(a.t2t_train))
    val_rows = dd.load_split("t2t", "validation")
    train = train_rows.map(enc, batched=True, remove_columns=cols)
    val = val_rows.map(enc, batched=True, remove_columns=cols)
    with tempfile.TemporaryDirectory() as out:
        args = training_args(out, seed, cls=Seq2SeqTrainingArguments, per_device_train_batch_size=32,
                             per_device_eval_batch_size=100, learning_rate=a.t2t_lr, num_train_epochs=a.t2t_epochs,
                             warmup_steps=0.06, weight_decay=0.01, predict_with_generate=True,
                             generation_max_length=a.t2t_tgt_len, generation_num_beams=1)  # fmt: skip
        optimizers = (None, None)
        if a.t2t_optim == "adafactor":  # T5's optimizer; steps relative to each weight's RMS
            opt = Adafactor(model.parameters(), lr=a.t2t_lr, scale_parameter=True, relative_step=False,
                            warmup_init=False, weight_decay=0.0)  # fmt: skip
            optimizers = (opt, None)
        trainer = Seq2SeqTrainer(model=model, args=args, train_dataset=train, optimizers=optimizers,
                                 data_collator=DataCollatorForSeq2Seq(tok, model=model))  # fmt: skip
        t1 = time.perf_counter()
        train_loss = trainer.train().training_loss
        t_train = time.perf_counter() - t1
        pred = trainer.predict(val)
    ids = np.where(pred.predictions < 0, tok.pad_token_id, pred.predictions)
    hyps = [h.strip() for h in tok.batch_decode(ids, skip_special_tokens=True)]
    m = {"train_loss": train_loss}
    for task in sorted(set(val_rows["task"])):
        pairs = [(h, r) for h, r, t in zip(hyps, val_rows["target"], val_rows["task"]) if t == task]
        m[f"em_{task}"] = float(np.mean([h == r.strip() for h, r in pairs]))
    m["exact_match"] = float(np.mean([h == r.strip() for h, r in zip(hyps, val_rows["target"])]))
    return Result("t2t", init, t_train, time.perf_counter() - t0, m, *count_params(model))


# ----------------------------------------------------------------------------- main


def fmt_metrics(m: dict[str, float]) -> str:
    return "  ".join(f"{k}={v:.3f}" if v < 10 else f"{k}={v:.1f}" for k, v in m.items())


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tasks", nargs="+", choices=TASKS, default=list(DEFAULT_TASKS),
                   help=f"which comparisons to run (default: {' '.join(DEFAULT_TASKS)})")
    p.add_argument("--seeds", nargs="+", type=int, default=[0], help="seeds (each run once per seed)")
    p.add_argument("--models-dir", type=Path, default=None, help="course builds (default: data/models)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--no-random", action="store_true", help="skip the random-initialisation baselines")
    g = p.add_argument_group("mentions / peft (module 10), sentiment")
    g.add_argument("--cls-train", type=int, default=4000, help="training examples used")
    g.add_argument("--cls-source", choices=["both", "imdb", "rotten_tomatoes"], default="both",
                   help="sentiment only: which reviews")
    g.add_argument("--cls-max-len", type=int, default=128, help="max tokens per example")
    g.add_argument("--cls-epochs", type=float, default=3.0, help="epochs")
    g.add_argument("--cls-lr", type=float, default=5e-4, help="full fine-tuning learning rate")
    g.add_argument("--probe-lr", type=float, default=3e-3, help="linear-probe learning rate")
    g.add_argument("--lora-lr", type=float, default=3e-3, help="LoRA learning rate")
    g = p.add_argument_group("characters (module 10)")
    g.add_argument("--tok-train", type=int, default=4000, help="training lines used")
    g.add_argument("--tok-epochs", type=float, default=10.0, help="epochs")
    g.add_argument("--tok-lr", type=float, default=5e-4, help="learning rate")
    g = p.add_argument_group("clm (module 11)")
    g.add_argument("--clm-block", type=int, default=128, help="block size in tokens")
    g.add_argument("--clm-train-blocks", type=int, default=1200, help="training blocks (random subset)")
    g.add_argument("--clm-val-blocks", type=int, default=200, help="validation blocks (random subset)")
    g.add_argument("--clm-epochs", type=float, default=1.0, help="epochs")
    g.add_argument("--clm-lr", type=float, default=1e-3, help="learning rate")
    g = p.add_argument_group("t2t (module 11)")
    g.add_argument("--t2t-train", type=int, default=4000, help="training pairs used")
    g.add_argument("--t2t-src-len", type=int, default=64, help="max source tokens")
    g.add_argument("--t2t-tgt-len", type=int, default=48, help="max target tokens")
    g.add_argument("--t2t-epochs", type=float, default=6.0, help="epochs")
    g.add_argument("--t2t-lr", type=float, default=1e-2, help="learning rate (Adafactor: relative)")
    g.add_argument("--t2t-optim", choices=["adafactor", "adamw"], default="adafactor", help="optimizer")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    a = parse_args(argv)
    if a.models_dir is not None:
        os.environ["DEEPDIVE_MODELS_DIR"] = str(a.models_dir.resolve())
    if a.threads:
        torch.set_num_threads(a.threads)
    hf_logging.set_verbosity_error()
    inits = ["pretrained"] if a.no_random else ["pretrained", "random"]
    runs = {
        "mentions": [(lambda i=i, s=None: run_classification("mentions", i, s, a)) for i in inits],
        "sentiment": [(lambda i=i, s=None: run_classification("sentiment", i, s, a)) for i in inits],
        "characters": [(lambda i=i, s=None: run_characters(i, s, a)) for i in inits],
        "clm": [(lambda i=i, s=None: run_clm(i, s, a)) for i in inits],
        "t2t": [(lambda i=i, s=None: run_t2t(i, s, a)) for i in inits],
        "peft": [
            (lambda m=m, s=None: run_classification("mentions", "pretrained", s, a, method=m))
            for m in ("probe", "full", "lora")
        ],
    }
    results: list[tuple[int, Result]] = []
    print(f"torch threads: {torch.get_num_threads()}, models: {local_path('distilbert').parent}", flush=True)
    for task in a.tasks:
        for seed in a.seeds:
            for run in runs[task]:
                r = run(s=seed)
                results.append((seed, r))
                print(f"  {r.task:10s} {r.init:10s} seed {seed}: train {r.train_s:5.1f} s  total {r.total_s:5.1f} s  "
                      f"{fmt_metrics(r.metrics)}", flush=True)  # fmt: skip

    print("\n| task | init / method | seed | trainable params | train s | total s | held-out metrics |")
    print("|---|---|---|---|---|---|---|")
    for seed, r in results:
        pct = f"{r.trainable:,} ({100 * r.trainable / r.total:.1f}%)"
        print(f"| {r.task} | {r.init} | {seed} | {pct} | {r.train_s:.1f} | {r.total_s:.1f} | {fmt_metrics(r.metrics)} |")


if __name__ == "__main__":
    main()
