"""Fine-tuning helpers for module 10 (DistilBERT with Hugging Face `Trainer` and `peft`).

None of this is an exercise: the notebook's graded functions (tokenisation, metrics, label alignment,
freezing, LoRA, counting) are passed in by the notebook where a helper needs them.

- `training_args(...)`: `TrainingArguments` for short runs on a laptop (no checkpoints, no logging
  services, no progress bars), with the course's seed.
- `fine_tune(...)`: one `Trainer` run; returns the trainer and the seconds `train()` took.
- `evaluator(...)`: a `Trainer` that only evaluates / predicts a model.
- `training_memory_bytes(...)`: what a training step holds, counted from the real tensors.
- `compare_methods(...)`: the fair comparison: every method, the same data and steps, a small
  learning-rate sweep each, the rate chosen on validation, the test metric of the chosen run.
- `general_text_mlm_loss(...)`: forgetting: the masked-LM loss of a fine-tuned body on general text.
- `word_level_tags(...)`: token-classification predictions back to one BIO tag per word (for seqeval).
- plots: `plot_sweep`, `plot_confusion`; `comparison_markdown` for the table.
"""

import atexit
import copy
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F
from transformers import (
    DataCollatorForLanguageModeling,
    PrinterCallback,
    Seq2SeqTrainer,
    Seq2SeqTrainingArguments,
    Trainer,
    TrainingArguments,
)

from deepdive.recipes import training_state_bytes


def training_args(out_dir: str, seed: int = 0, cpu: bool | None = None, cls=TrainingArguments,
                  **overrides) -> TrainingArguments:
    """Arguments for a short fine-tuning run: nothing saved, logged to a service or drawn as a progress bar.
    `cpu=True` forces the CPU (the graded checks); by default Trainer picks cuda / mps when there is one.
    `cls=Seq2SeqTrainingArguments` for a `Seq2SeqTrainer` (then e.g. `predict_with_generate=True`)."""
    kw = dict(output_dir=out_dir, seed=seed, report_to="none", save_strategy="no", eval_strategy="no",
              logging_strategy="no", disable_tqdm=True, dataloader_num_workers=0, dataloader_pin_memory=torch.cuda.is_available(),
              per_device_train_batch_size=32,
              per_device_eval_batch_size=128, warmup_steps=0.06, weight_decay=0.01)
    # Not train_sampling_strategy="group_by_length": it also reorders (at random) what predict() returns, so the
    # predictions would no longer line up with the rows of the data set.
    if cpu:
        kw["use_cpu"] = True
    kw.update(overrides)
    return cls(**kw)


@lru_cache(maxsize=1)
def _scratch_dir() -> str:
    """The `output_dir` every Trainer of this process gets: nothing is saved there (`training_args`), and
    the folder goes when the process exits (one folder per Trainer was left behind, empty, every call)."""
    path = tempfile.mkdtemp(prefix="deepdive-trainer-")
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    return path


def evaluator(model, collator, compute_metrics=None, **args) -> Trainer:
    """A `Trainer` for `model` that only evaluates or predicts (`args`: e.g. `per_device_eval_batch_size`)."""
    trainer = Trainer(model=model, args=training_args(_scratch_dir(), **args), data_collator=collator,
                      compute_metrics=compute_metrics)
    trainer.remove_callback(PrinterCallback)  # the notebook prints what it wants
    return trainer


def name_causal_loss(model) -> None:
    """Tell the Trainer that a causal LM's loss shifts its labels. transformers 5.23's Trainer divides the
    summed loss by the labels it counts, and counts `labels[..., 1:]` (what a shifted loss predicts) only
    when the model's `loss_type` names the causal loss; GPT-2's is None (its class name is GPT2LMHeadModel),
    so position 0 of every row was counted too: a loss of 127/128 of the model's own mean on 128-token
    blocks, and gradients scaled the same. Encoder-decoders (T5) and encoders are left alone: their loss
    is on unshifted labels, which the Trainer counts right."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    base = model.get_base_model() if hasattr(model, "get_base_model") else model  # a peft model's own
    if getattr(base, "loss_type", None) is None and type(base).__name__ in set(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values()):
        base.loss_type = "ForCausalLM"


def fine_tune(model, train, collator, *, lr: float, epochs: float, seed: int = 0, compute_metrics=None,
              cpu: bool | None = None, seq2seq: bool = False, optimizer=None, eval_dataset=None,
              **args) -> tuple[Trainer, float]:
    """Train `model` on the tokenised `train` set with `Trainer` (AdamW, linear decay after 6% warmup);
    returns (trainer, seconds spent in trainer.train()). The trainer then predicts / evaluates.
    `seq2seq=True`: a `Seq2SeqTrainer` (`args` may then hold `predict_with_generate=True`, ...);
    `optimizer`: a ready optimizer instead of AdamW (e.g. T5's Adafactor), with the same schedule."""
    trainer_cls, args_cls = (Seq2SeqTrainer, Seq2SeqTrainingArguments) if seq2seq else (Trainer, TrainingArguments)
    name_causal_loss(model)
    trainer = trainer_cls(model=model, args=training_args(_scratch_dir(), seed, cpu=cpu, cls=args_cls, learning_rate=lr,
                                                          num_train_epochs=epochs, **args),
                          train_dataset=train, eval_dataset=eval_dataset, data_collator=collator,
                          compute_metrics=compute_metrics, optimizers=(optimizer, None))
    trainer.remove_callback(PrinterCallback)  # the metrics are printed where the notebook wants them
    t0 = time.perf_counter()
    trainer.train()
    return trainer, time.perf_counter() - t0


def training_memory_bytes(model, optimizer, batch: dict) -> dict:
    """Bytes a training step holds, counted from the tensors (CPU has no allocator statistics):
    {"weights", "gradients", "optimizer state", "activations", "total"}.

    Weights: every parameter; gradients: one per trainable number (what backward() fills); optimizer state:
    the real tensors in `optimizer` (AdamW keeps two per trainable number); activations: the tensors autograd
    saves for the backward pass of `model(**batch).loss` on one training batch (parameters not counted, a
    shared storage once). On a GPU, torch.cuda.max_memory_allocated() measures the same peak directly."""
    counts = training_state_bytes(model.parameters(), optimizer)
    counts["gradients"] = sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
    params = {p.untyped_storage()._cdata for p in model.parameters()}
    kept: dict = {}

    def pack(t):
        k = t.untyped_storage()._cdata
        if k not in params:
            kept[k] = (t.untyped_storage().nbytes(), t)
        return t

    device = model.device  # a 🤗 model knows where its weights are
    was_training = model.training
    model.train()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(**{k: v.to(device) for k, v in batch.items()})  # the forward pass of a step: autograd saves what backward needs
    model.train(was_training)
    counts["activations"] = sum(nbytes for nbytes, _ in kept.values())
    counts["total"] = sum(counts.values())
    return counts


# --------------------------------------------------------------------------------------- comparison
@dataclass
class Run:
    """One fine-tuning run of the comparison."""

    method: str
    lr: float
    trainable: int
    total: int
    train_s: float
    memory: dict
    val: dict
    test: dict = field(default_factory=dict)
    forgetting: float | None = None  # rise of the general-text masked-LM loss (forgetting_fn), in nats
    model: object = None


def compare_methods(methods: dict, rates: dict, train, val, test, collator, compute_metrics, count_trainable, *,
                    epochs: float, seed: int = 0, metric: str = "accuracy", forgetting_fn=None,
                    verbose: bool = True) -> dict:
    """The fair comparison: for every method, the same training set, epochs, batch size and seed; one run per
    learning rate in `rates[method]`; the run with the best validation `metric` is that method's, and only it
    is scored on the test set. `methods[name]()` builds a fresh model for that method (with the notebook's
    freeze_base / make_lora_model); `forgetting_fn(model)`, if given, measures every run's forgetting.
    Returns {method: {"runs": [Run, ...], "best": Run}}."""
    results = {}
    for name, build in methods.items():
        runs = []
        for lr in rates[name]:
            torch.manual_seed(seed)  # the same new head for every run
            model = build()
            trainer, seconds = fine_tune(model, train, collator, lr=lr, epochs=epochs, seed=seed,
                                         compute_metrics=compute_metrics)
            batch = collator([train[i] for i in range(min(32, len(train)))])
            memory = training_memory_bytes(model, trainer.optimizer, batch)
            metrics = trainer.evaluate(val, metric_key_prefix="val")
            val_scores = {k.removeprefix("val_"): v for k, v in metrics.items() if k.removeprefix("val_") in
                          ("accuracy", "macro_f1")}
            trainable, total = count_trainable(model)
            forgetting = forgetting_fn(model) if forgetting_fn is not None else None
            runs.append(Run(name, lr, trainable, total, seconds, memory, val_scores, forgetting=forgetting, model=model))
            if verbose:
                print(f"  {name:12s} lr {lr:.0e}: {seconds:4.1f} s, validation {metric} {val_scores[metric]:.3f}"
                      + (f", forgetting {forgetting:+.3f} nats" if forgetting is not None else ""))
        best = max(runs, key=lambda r: r.val[metric])
        trainer = evaluator(best.model, collator, compute_metrics)
        best.test = {k.removeprefix("test_"): v for k, v in trainer.evaluate(test, metric_key_prefix="test").items()
                     if k.removeprefix("test_") in ("accuracy", "macro_f1")}
        for run in runs:  # keep only the chosen model
            if run is not best:
                run.model = None
        results[name] = {"runs": runs, "best": best}
    return results


def comparison_markdown(results: dict, metric: str = "accuracy") -> str:
    """The comparison as a markdown table (one row per method: its chosen run)."""
    head = ["method", "chosen lr", "trainable params", "train s", "training memory", f"val {metric}",
            f"test {metric}", "test macro F1"]
    forgetting = all(res["best"].forgetting is not None for res in results.values())
    if forgetting:
        head.append("forgetting (MLM loss rise)")
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, res in results.items():
        b = res["best"]
        cells = [name, f"{b.lr:.0e}", f"{b.trainable:,} ({100 * b.trainable / b.total:.1f}%)", f"{b.train_s:.1f}",
                 f"{b.memory['total'] / 2**20:.1f} MiB", f"{b.val[metric]:.3f}", f"{b.test[metric]:.3f}",
                 f"{b.test['macro_f1']:.3f}"]
        if forgetting:
            cells.append(f"{b.forgetting:+.3f} nats")
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows)


# --------------------------------------------------------------------------------------- forgetting
def body_state(model) -> dict:
    """The pretrained body's weights of a fine-tuned model (LoRA merged into a copy first), named as in the
    body (`transformer.layer.0...`, `embeddings...`)."""
    from peft import PeftModel

    if isinstance(model, PeftModel):
        model = copy.deepcopy(model).merge_and_unload()
    prefix = model.base_model_prefix + "."
    return {k.removeprefix(prefix): v.detach().cpu() for k, v in model.state_dict().items() if k.startswith(prefix)}


@lru_cache(maxsize=4)
def _mlm_questions(n_texts: int, seq_len: int, seed: int, source: str):
    from deepdive.datasets import load_texts
    from deepdive.hub import load_pretrained

    model, tok = load_pretrained("distilbert", "mlm", source=source, verbose=False)
    texts = load_texts("sentiment", "validation")[:n_texts]
    enc = tok(texts, truncation=True, max_length=seq_len)
    collator = DataCollatorForLanguageModeling(tok, mlm_probability=0.15)
    with torch.random.fork_rng(devices=[]):  # the same masked positions every time
        torch.manual_seed(seed)
        batch = collator([{"input_ids": ids} for ids in enc["input_ids"]])
    return model.eval(), batch


def general_text_mlm_loss(state: dict | None = None, n_texts: int = 128, seq_len: int = 64, seed: int = 0,
                          source: str = "auto") -> float:
    """Masked-LM loss on general text (movie reviews, never seen in fine-tuning) of the pretrained model
    with its body replaced by `state` (from `body_state`; None: the pretrained body itself). The MLM head
    is the pretrained one, so the loss rises exactly as far as fine-tuning moved the body away from what
    the head reads: catastrophic forgetting, in nats."""
    pretrained, batch = _mlm_questions(n_texts, seq_len, seed, source)
    model = copy.deepcopy(pretrained)
    if state is not None:
        missing, unexpected = getattr(model, model.base_model_prefix).load_state_dict(state, strict=False)
        if unexpected or [m for m in missing if not m.endswith("position_ids")]:
            raise ValueError(f"body weights do not fit the masked-LM model: missing {missing[:3]}, "
                             f"unexpected {unexpected[:3]}")
    total, count = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(batch["input_ids"]), 64):
            labels = batch["labels"][i:i + 64]  # (b, T), -100 where nothing is asked
            logits = model(input_ids=batch["input_ids"][i:i + 64],
                           attention_mask=batch["attention_mask"][i:i + 64]).logits  # (b, T, V)
            n = int((labels != -100).sum())
            total += F.cross_entropy(logits.flatten(0, 1), labels.flatten(), reduction="sum").item()
            count += n
    return total / max(1, count)


# --------------------------------------------------------------------------------- token classification
def word_level_tags(predictions: np.ndarray, label_ids: np.ndarray, names: list[str]):
    """(predicted tags, gold tags): per sentence, one tag name per position whose label is not -100 (the first
    sub-token of each word), from Trainer's predictions (n, T, C) and label_ids (n, T)."""
    preds, golds = [], []
    for p, lab in zip(np.asarray(predictions).argmax(-1), np.asarray(label_ids)):
        keep = lab != -100
        preds.append([names[i] for i in p[keep]])
        golds.append([names[i] for i in lab[keep]])
    return preds, golds


# -------------------------------------------------------------------------------------------- plots
def plot_sweep(results: dict, metric: str = "accuracy", title: str = "") -> None:
    """Validation metric against learning rate, one line per method; the chosen rate marked."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    for name, res in results.items():
        lrs = [r.lr for r in res["runs"]]
        ax.plot(lrs, [r.val[metric] for r in res["runs"]], marker="o", label=name)
        ax.scatter([res["best"].lr], [res["best"].val[metric]], s=120, facecolors="none", edgecolors="black")
    ax.set_xscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel(f"validation {metric}")
    ax.set_title(title or "Each method's learning-rate sweep (circled: chosen on validation)")
    ax.grid(alpha=0.3)
    ax.legend()
    plt.tight_layout()
    plt.show()


def plot_tradeoff(results: dict, metric: str = "accuracy") -> None:
    """Every run of the comparison: validation metric against forgetting, one colour per method, each point
    labelled with its learning rate."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.8))
    for name, res in results.items():
        xs, ys = [r.forgetting for r in res["runs"]], [r.val[metric] for r in res["runs"]]
        ax.plot(xs, ys, marker="o", label=name)
        for r in res["runs"]:
            ax.annotate(f"{r.lr:.0e}", (r.forgetting, r.val[metric]), textcoords="offset points", xytext=(4, 4),
                        fontsize=7)
    ax.set_xlabel("forgetting: rise of the masked-LM loss on movie reviews (nats)")
    ax.set_ylabel(f"validation {metric}")
    ax.set_title("What each run gained on the task, and what it forgot")
    ax.grid(alpha=0.3)
    ax.legend()
    plt.tight_layout()
    plt.show()


def plot_confusion(labels, preds, names: list[str], title: str = "") -> None:
    """The confusion matrix (rows: true class, columns: predicted), counts and row shares."""
    import matplotlib.pyplot as plt
    from sklearn.metrics import ConfusionMatrixDisplay

    fig, ax = plt.subplots(figsize=(4.2, 3.6))
    ConfusionMatrixDisplay.from_predictions(labels, preds, display_labels=names, ax=ax, colorbar=False,
                                            cmap="Blues")
    ax.set_title(title)
    plt.tight_layout()
    plt.show()
