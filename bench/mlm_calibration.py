"""Calibrate module 06's check_train_mlm threshold: train the check's DistilBertForMaskedLM with the
reference loop (seeds 0-4), with a causal mask, and with every train_mlm mutant that still learns, then
print the judge's held-out loss at the [MASK] positions next to the unigram (no-context) loss (a
causal model is also judged with its causal mask, as it was trained: the fair comparison).

    PYTHONPATH=. .venv/bin/python bench/mlm_calibration.py                 # every job, one after another
    PYTHONPATH=. .venv/bin/python bench/mlm_calibration.py ref:0 causal:0  # some of them

A job is `ref:SEED`, `causal:SEED` (the reference loop, the check's model with a causal attention mask)
or `MUTANT_NAME:SEED` (grader/mutants/m06_encoder_mlm.py). Each takes about 35 s on 2 CPU cores.
"""

import sys
import time

import torch

from grader.checks import m06_encoder_mlm as checks
from grader.mutants.m06_encoder_mlm import MUTANTS
from grader.reference import reference_namespace

LEARNING_MUTANTS = ("train_labels_everywhere", "train_labels_shifted", "train_unmasked_inputs",
                    "train_ignores_mlm_probability")
DEFAULT_JOBS = ([f"ref:{s}" for s in range(5)] + [f"causal:{s}" for s in range(3)]
                + [f"{name}:0" for name in LEARNING_MUTANTS])


def main(jobs: list[str]) -> None:
    torch.set_num_threads(max(1, torch.get_num_threads()))
    ns = reference_namespace("06_encoder_mlm")
    mutants = {m.name: m for m in MUTANTS if m.target == "train_mlm"}
    print(f"threshold MAX_VAL_LOSS = {checks.MAX_VAL_LOSS}; torch threads {torch.get_num_threads()}", flush=True)
    for job in jobs:
        kind, seed = job.rsplit(":", 1)
        seed = int(seed)
        train = ns["train_mlm"] if kind in ("ref", "causal") else mutants[kind].build(ns)
        t0 = time.perf_counter()
        state, n, _, _ = checks._learner_train(train, seed, causal=(kind == "causal"))
        seconds = time.perf_counter() - t0
        loss = checks.judged_loss(state, seed)
        fair = f", judged with its causal mask {checks.judged_loss(state, seed, causal=True):.3f}" if kind == "causal" else ""
        print(f"{kind:>32} seed {seed}: judged loss {loss:.3f}{fair} (unigram {checks.unigram_loss(seed):.3f}); "
              f"{n} steps in {seconds:.1f} s", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:] or DEFAULT_JOBS)
