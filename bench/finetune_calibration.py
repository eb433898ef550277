"""Calibration of module 10's two trained checks (grader/checks/m10_finetune_distilbert.py).

    HF_HUB_OFFLINE=1 .venv/bin/python bench/finetune_calibration.py lora tagger --seeds 0 1 2 3 4

Not a test: it runs each check's learner-side fine-tuning (the check's own recipe, on the CPU) with the
reference's graded function and with known-broken variants, and prints the metric the judge computes:
- lora:   test accuracy on `mentions` of check_make_lora_model_trained; variants: the reference
          make_lora_model, and a frozen body with only the head training (what a LoRA model whose adapters
          were frozen amounts to; the linear probe).
- tagger: seqeval entity F1 on `characters` of check_align_labels_with_tokens_trained; variants: the
          reference alignment, special tokens labelled O (mutant specials_labelled_O), every piece labelled
          (labels_every_piece), and the reference labels on a frozen body (only the token head trains).
"""

import argparse
import sys
import time
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from transformers import AutoModelForTokenClassification  # noqa: E402
from transformers.utils import logging as hf_logging  # noqa: E402

from grader.checks import m10_finetune_distilbert as checks  # noqa: E402
from grader.mutants import m10_finetune_distilbert as mutants  # noqa: E402
from grader.reference import reference_namespace  # noqa: E402

AID = "10_finetune_distilbert"


def mutant_ns(name):
    return next(m for m in mutants.MUTANTS if m.name == name).apply(reference_namespace(AID))


@contextmanager
def frozen_token_body(freeze_base):
    """AutoModelForTokenClassification.from_pretrained returns a model whose body is frozen."""
    original = AutoModelForTokenClassification.from_pretrained

    def load(*args, **kwargs):
        return freeze_base(original(*args, **kwargs))

    AutoModelForTokenClassification.from_pretrained = load
    try:
        yield
    finally:
        AutoModelForTokenClassification.from_pretrained = original


def lora_accuracy(make_lora_model, seed):
    from deepdive.datasets import load_split

    preds = checks._learner_lora_finetune(make_lora_model, seed)
    labels = torch.tensor(load_split("mentions", "test")["label"])
    return float((preds == labels).float().mean())


def tagger_f1(align, seed, frozen=None):
    rows = checks._tagged_rows("test", 0, None)
    if frozen is None:
        return checks.entity_f1(checks._learner_tagger(align, seed), rows)
    with frozen_token_body(frozen):
        return checks.entity_f1(checks._learner_tagger(align, seed), rows)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("what", nargs="+", choices=["lora", "tagger"])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    p.add_argument("--variant-seeds", nargs="+", type=int, default=[0, 1, 2], help="seeds for the broken variants")
    a = p.parse_args()
    hf_logging.set_verbosity_error()
    torch.set_num_threads(2)
    ref = reference_namespace(AID)
    freeze = ref["freeze_base"]
    runs = []
    if "lora" in a.what:
        runs += [("lora", "reference", s, lambda s: lora_accuracy(ref["make_lora_model"], s)) for s in a.seeds]
        runs += [("lora", "frozen body, head only", s, lambda s: lora_accuracy(lambda m, r, al, t: freeze(m), s))
                 for s in a.variant_seeds]
    if "tagger" in a.what:
        runs += [("tagger", "reference", s, lambda s: tagger_f1(ref["align_labels_with_tokens"], s)) for s in a.seeds]
        for name in ("specials_labelled_O", "labels_every_piece"):
            ns = mutant_ns(name)
            runs += [("tagger", name, s, lambda s, ns=ns: tagger_f1(ns["align_labels_with_tokens"], s))
                     for s in a.variant_seeds]
        runs += [("tagger", "frozen body, head only", s, lambda s: tagger_f1(ref["align_labels_with_tokens"], s, freeze))
                 for s in a.variant_seeds[:2]]
    print(f"LORA {checks.LORA}, MIN_ACCURACY {checks.MIN_ACCURACY}; TAGGER {checks.TAGGER}, "
          f"MIN_ENTITY_F1 {checks.MIN_ENTITY_F1}", flush=True)
    for what, variant, seed, run in runs:
        t0 = time.perf_counter()
        value = run(seed)
        print(f"{what:6s} {variant:28s} seed {seed}: {value:.3f}  ({time.perf_counter() - t0:.1f} s)", flush=True)


if __name__ == "__main__":
    main()
