"""Calibration of module 11's two trained checks (grader/checks/m11_finetune_gpt2_t5.py).

    HF_HUB_OFFLINE=1 .venv/bin/python bench/generative_calibration.py clm t2t --seeds 0 1 2 3 4

Not a test: it runs each check's learner-side fine-tuning (the check's own recipe, on the CPU) with the
reference's graded function and with known-broken variants, and prints the metric the judge computes:
- clm: validation perplexity of DistilGPT-2 after check_group_texts_trained (and the ratio to the pretrained
       model's); variants: the reference group_texts, labels shifted by hand (mutant shifts_labels), each text cut
       on its own (per_text_blocks).
- t2t: exact match and chrF of the 250 generated test rows of each task (one model per task) after
       check_preprocess_seq2seq_trained; variants: the
       reference preprocess_seq2seq, pad tokens left in the labels (pads_in_labels), no task prefix (no_prefix),
       the prefix on the targets too (prefix_on_targets).
"""

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from transformers.utils import logging as hf_logging  # noqa: E402

from grader.checks import m11_finetune_gpt2_t5 as checks  # noqa: E402
from grader.mutants import m11_finetune_gpt2_t5 as mutants  # noqa: E402
from grader.reference import reference_namespace  # noqa: E402

AID = "11_finetune_gpt2_t5"


def namespace(variant):
    ns = reference_namespace(AID)
    return ns if variant == "reference" else next(m for m in mutants.MUTANTS if m.name == variant).apply(ns)


def clm(variant, seed):
    import math

    logp = checks._learner_clm_finetune(namespace(variant)["group_texts"], seed)
    after, before = math.exp(-float(logp.double().mean())), checks._pretrained_perplexity()
    return f"perplexity {after:7.1f} (before {before:,.0f}; ratio {after / before:.3f})"


def t2t(variant, seed):
    fn = namespace(variant)["preprocess_seq2seq"]
    out = []
    for task in ("date", "modernize"):
        scores = checks.t2t_scores(checks._learner_t2t_finetune(fn, task, seed), task)
        out.append(f"{task} exact match {scores['exact_match']:.3f} chrF {scores['chrf']:5.1f}")
    return "; ".join(out)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("what", nargs="+", choices=["clm", "t2t"])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    p.add_argument("--variant-seeds", nargs="+", type=int, default=[0, 1], help="seeds for the broken variants")
    a = p.parse_args()
    hf_logging.set_verbosity_error()
    torch.set_num_threads(2)
    runs = []
    for what, fn, broken in (("clm", clm, ("shifts_labels", "per_text_blocks")),
                             ("t2t", t2t, ("pads_in_labels", "prefix_on_targets"))):
        if what in a.what:
            runs += [(what, fn, "reference", s) for s in a.seeds]
            runs += [(what, fn, variant, s) for variant in broken for s in a.variant_seeds]
    print(f"CLM {checks.CLM}, MAX_PPL_RATIO {checks.MAX_PPL_RATIO}; T2T {checks.T2T}, "
          f"MIN_EXACT_MATCH {checks.MIN_EXACT_MATCH}", flush=True)
    for what, fn, variant, seed in runs:
        t0 = time.perf_counter()
        value = fn(variant, seed)
        print(f"{what:4s} {variant:18s} seed {seed}: {value}  ({time.perf_counter() - t0:.1f} s)", flush=True)


if __name__ == "__main__":
    main()
