"""What reading both ways buys, and why module 06 trains on a 160-piece vocabulary: the notebook's
encoder and settings (reference solution; T = 16, batch 128, 40% masking, DistilBERT's initialisation at
std 0.06, AdamW lr 3e-3, 800 steps), bidirectional and causal, on the course tokenizer's 4096 pieces and
on the 160-piece one; the loss at held-out [MASK] positions next to the unigram (no-context) loss.

    PYTHONPATH=. .venv/bin/python bench/mlm_context_gap.py [STEPS]     # about 3 minutes on 2 CPU cores
"""

import math
import sys
import time

import torch
import torch.nn.functional as F

from deepdive.encoders import (
    course_tokenizer,
    init_like_distilbert,
    sample_windows,
    shakespeare_tokens,
    small_tokenizer,
)
from grader.reference import reference_namespace

T, B, C, LR, P = 16, 128, 64, 3e-3, 0.4


def measure(tokenizer, steps: int, ns) -> None:
    V = len(tokenizer)
    train = shakespeare_tokens(tokenizer, "train", max_chars=1_500_000)
    val = sample_windows(shakespeare_tokens(tokenizer, "validation"), 1024, T, tokenizer, torch.Generator().manual_seed(5))
    inputs, labels = ns["mask_tokens"](val, tokenizer.mask_token_id, V, special_token_ids=tokenizer.all_special_ids,
                                       generator=torch.Generator().manual_seed(6))
    labels = labels.masked_fill(inputs != tokenizer.mask_token_id, -100)  # (n, T): [MASK] positions only
    freq = torch.bincount(train, minlength=V).double() + 0.5
    unigram = float(-(freq / freq.sum()).log()[labels[labels != -100]].mean())
    print(f"V = {V}: unigram loss {unigram:.3f}, uniform ln V = {math.log(V):.3f}", flush=True)
    for causal in (False, True):
        torch.manual_seed(0)
        model = init_like_distilbert(ns["Encoder"](V, T, C, 4, 2, 4 * C, dropout=0.0, causal=causal), std=0.06)
        curve = []

        def log(step, m, curve=curve):
            m.eval()
            with torch.no_grad():
                curve.append(F.cross_entropy(m.mlm_logits(m(inputs)).flatten(0, 1), labels.flatten()).item())

        t0 = time.perf_counter()
        ns["train_mlm"](model, train, tokenizer, steps, batch_size=B, seq_len=T, lr=LR, mlm_probability=P,
                        generator=torch.Generator().manual_seed(7), log=log, log_every=100)
        seconds = time.perf_counter() - t0
        name = "causal" if causal else "bidirectional"
        print(f"  {name:>13}: {seconds:5.1f} s; [MASK] loss every 100 steps {' '.join(f'{v:.2f}' for v in curve)}; "
              f"final {curve[-1]:.3f} ({unigram - curve[-1]:+.3f} below unigram)", flush=True)


if __name__ == "__main__":
    steps = int(sys.argv[1]) if len(sys.argv) > 1 else 800
    ns = reference_namespace("06_encoder_mlm")
    print(f"torch threads {torch.get_num_threads()}; {steps} steps", flush=True)
    for tok in (course_tokenizer(verbose=False), small_tokenizer()):
        measure(tok, steps, ns)
