"""Hidden checks for module 11 (fine-tuning DistilGPT-2 and T5).

Oracles: the `group_texts` recipe of transformers' causal-LM example (examples/pytorch/language-modeling/
run_clm.py: concatenate every column, drop the remainder, labels a copy of input_ids), run on random lists
(group_texts); math.exp with OverflowError -> inf, as run_clm.py computes perplexity (perplexity); the T5
tokenizer called directly, with the pad tokens of the labels replaced by -100 as in transformers'
run_summarization.py with --pad_to_max_length (preprocess_seq2seq); whitespace-normalised string equality
(exact_match). The two trained checks fine-tune the course checkpoints (data/models/distilgpt2 and data/models/t5,
always the local builds, so a grade never depends on the network) through the learner's function with the
check's own recipe on the CPU, and measure the held-out metric here: perplexity on Shakespeare's validation plays
from the returned log-probabilities; exact match and chrF (sacrebleu) of the generated test rows of each t2t task.
"""

import math
from functools import lru_cache
from itertools import chain

import numpy as np
import torch

from grader.checks._common import generator, int_rows, learner_call, rng_kept
from grader.trusted import LearnerRaised, live, on_learner_side, trusted_check


@lru_cache(maxsize=2)
def _tokenizer(family: str):
    from deepdive.hub import load_tokenizer

    return load_tokenizer(family, source="local", verbose=False)






def _plain_columns(out) -> dict:
    """On the learner's side: a dict of columns of lists of ints as plain data."""
    if not hasattr(out, "keys"):
        return {"__type__": type(out).__name__}
    res = {}
    for key in out.keys():
        try:
            res[str(key)] = int_rows(out[key])
        except (TypeError, ValueError):
            rows = out[key]
            rows = rows.tolist() if hasattr(rows, "tolist") else rows
            res[str(key)] = {"__type__": type(rows).__name__}
    return res


# -------------------------------------------------------------------------------------------- group_texts
def run_clm_group_texts(examples: dict, block_size: int) -> dict:
    """transformers' examples/pytorch/language-modeling/run_clm.py, `group_texts`, as written there."""
    concatenated_examples = {k: list(chain(*examples[k])) for k in examples.keys()}
    total_length = len(concatenated_examples[list(examples.keys())[0]])
    total_length = (total_length // block_size) * block_size
    result = {k: [t[i: i + block_size] for i in range(0, total_length, block_size)]
              for k, t in concatenated_examples.items()}
    result["labels"] = result["input_ids"].copy()
    return result


def _random_examples(g: torch.Generator, n: int, vocab: int = 500) -> dict:
    """n tokenized 'texts' of random lengths (some shorter than a block, one empty), input_ids + attention_mask."""
    lengths = torch.randint(0, 40, (n,), generator=g).tolist()
    lengths[1] = 0
    ids = [torch.randint(1, vocab, (k,), generator=g).tolist() for k in lengths]
    return {"input_ids": ids, "attention_mask": [[1] * k for k in lengths]}


def _grouped_by_map(group_texts, examples: dict, block_size: int, batch_size: int) -> dict:
    """On the learner's side: group_texts through Dataset.map(batched=True), as the notebook uses it."""
    import datasets

    ds = datasets.Dataset.from_dict(examples)
    out = ds.map(group_texts, batched=True, batch_size=batch_size, fn_kwargs={"block_size": block_size},
                 remove_columns=ds.column_names)
    return {k: out[k] for k in out.column_names}


@trusted_check(points=2)
def check_group_texts(group_texts, seed=0):
    """The blocks of run_clm.py's recipe on random lists: every column concatenated and cut into block_size pieces,
    the short remainder dropped, labels equal to input_ids (not shifted); also through Dataset.map(batched=True)."""
    g = generator(seed)
    cases = [(_random_examples(g, 9), 16 + seed % 3, None), (_random_examples(g, 14), 7, None),
             (_random_examples(g, 30), 10, 8)]
    for examples, block_size, map_batch in cases:
        lengths = [len(x) for x in examples["input_ids"]]
        via = f"dataset.map(group_texts, batched=True, batch_size={map_batch}, ...)" if map_batch else "group_texts"
        call = f"{via} on {len(lengths)} texts of {sum(lengths)} tokens (lengths {lengths[:6]}...), block_size={block_size}"
        copy = {k: [list(r) for r in v] for k, v in examples.items()}
        if map_batch:
            thunk = lambda c=copy, b=block_size, m=map_batch: _plain_columns(_grouped_by_map(live(group_texts), c, b, m))
            want = {k: [] for k in ("input_ids", "attention_mask", "labels")}
            for start in range(0, len(lengths), map_batch):
                part = run_clm_group_texts({k: v[start: start + map_batch] for k, v in examples.items()}, block_size)
                for k in want:
                    want[k] += part[k]
        else:
            thunk = lambda c=copy, b=block_size: _plain_columns(live(group_texts)(c, b))
            want = run_clm_group_texts(examples, block_size)
        got = learner_call(f"group_texts (block_size={block_size})", thunk, call)
        if "__type__" in got:
            raise AssertionError(f"{call} returned a {got['__type__']}; return a dict of columns, each a list of blocks")
        for key in ("input_ids", "attention_mask", "labels"):
            if not isinstance(got.get(key), list):
                raise AssertionError(f"{call}: the result has no column `{key}` (columns: {sorted(got)}); keep every "
                                     "column you were given (input_ids, attention_mask) and add labels")
        rows = got["input_ids"]
        short = [len(b) for b in rows if len(b) != block_size]
        if short:
            raise AssertionError(f"{call}: a block of {short[0]} tokens; every block has exactly block_size tokens: drop "
                                 "the short remainder at the end (total // block_size * block_size tokens are kept)")
        if len(rows) != len(want["input_ids"]):
            hint = (" — the texts are concatenated first, then cut (cutting each text alone loses every text shorter "
                    "than a block and the end of every other)" if len(rows) < len(want["input_ids"]) else "")
            raise AssertionError(f"{call}: {len(rows)} blocks, expected {len(want['input_ids'])}{hint}")
        if rows != want["input_ids"]:
            i = next(i for i, (a, b) in enumerate(zip(rows, want["input_ids"])) if a != b)
            raise AssertionError(f"{call}: block {i} is {rows[i][:8]}..., expected {want['input_ids'][i][:8]}... (the "
                                 "texts' tokens in order, concatenated, then cut every block_size tokens)")
        if got["attention_mask"] != want["attention_mask"]:
            raise AssertionError(f"{call}: attention_mask is not cut into the same blocks as input_ids (group every "
                                 "column the same way)")
        if got["labels"] != want["labels"]:
            shifted = all(a[:-1] == b[1:] for a, b in zip(got["labels"], rows) if len(a) == len(b))
            raise AssertionError(f"{call}: labels differ from input_ids" + (
                "; they look shifted by one. Do not shift: the model shifts the labels itself (logits at position t "
                "are scored against labels[t + 1])" if shifted else
                "; labels are a copy of input_ids (the model shifts them itself)"))


def _speech_sample(split: str, n: int, seed: int) -> list[str]:
    from deepdive.datasets import load_texts

    texts = load_texts("shakespeare", split)
    order = torch.randperm(len(texts), generator=generator(seed)).tolist()
    return [texts[i] for i in order[:n]]


@lru_cache(maxsize=1)
def _validation_blocks() -> torch.Tensor:
    """CLM["n_val"] blocks of the validation plays (the check's own tokenization and chunking): (N, block)."""
    tok = _tokenizer("distilgpt2")
    texts = _speech_sample("validation", 4000, 1234)
    ids = list(chain.from_iterable(tok([t + tok.eos_token for t in texts])["input_ids"]))
    n, block = CLM["n_val"], CLM["block_size"]
    return torch.tensor(ids[: n * block]).view(n, block)


def next_token_logprobs(model, blocks: torch.Tensor) -> torch.Tensor:
    """log p(x[t+1] | x[:t+1]) for every block: (N, block - 1), float32."""
    model.eval()
    out = []
    with torch.no_grad():
        for i in range(0, len(blocks), 50):
            x = blocks[i: i + 50]
            logp = torch.log_softmax(model(input_ids=x).logits[:, :-1].float(), dim=-1)  # (b, T-1, V)
            out.append(logp.gather(-1, x[:, 1:, None])[..., 0])
    return torch.cat(out)


def _pretrained_perplexity() -> float:
    """The course DistilGPT-2 before fine-tuning, on the validation blocks (no learner code)."""
    from transformers import AutoModelForCausalLM

    from deepdive.hub import local_path

    model = AutoModelForCausalLM.from_pretrained(local_path("distilgpt2"), local_files_only=True)
    return math.exp(-float(next_token_logprobs(model, _validation_blocks()).mean()))


def _learner_clm_finetune(group_texts, seed):
    """On the learner's side: Shakespeare speeches tokenized by the check, blocks by the learner's group_texts
    (Dataset.map, batched), the course DistilGPT-2 fine-tuned on the first CLM["n_blocks"] of them with the check's
    recipe on the CPU; returns the fine-tuned model's next-token log-probabilities on the check's validation blocks."""
    from transformers import AutoModelForCausalLM, default_data_collator

    from deepdive.finetune import fine_tune
    from deepdive.hub import local_path

    tok = _tokenizer("distilgpt2")
    import datasets

    speeches = datasets.Dataset.from_dict({"text": _speech_sample("train", CLM["n_speeches"], seed)})
    tokenized = speeches.map(lambda b: tok([t + tok.eos_token for t in b["text"]]), batched=True,
                             remove_columns=["text"])
    blocks = tokenized.map(group_texts, batched=True, fn_kwargs={"block_size": CLM["block_size"]},
                           remove_columns=tokenized.column_names)
    blocks = blocks.select(range(min(len(blocks), CLM["n_blocks"])))
    with rng_kept():
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_pretrained(local_path("distilgpt2"), local_files_only=True)
        fine_tune(model, blocks, default_data_collator, lr=CLM["lr"], epochs=1, seed=seed, cpu=True,
                  per_device_train_batch_size=16)
    return next_token_logprobs(model, _validation_blocks())


# Calibration: `HF_HUB_OFFLINE=1 .venv/bin/python bench/generative_calibration.py clm` (2-core CPU, 2026-12-04, the
# CLM recipe, 50 steps in about 10 s; perplexity on 200 blocks of 128 tokens of the validation plays; the pretrained
# model: 1,525; trained on the model's own mean loss, deepdive.finetune.name_causal_loss — before it, the Trainer's
# 127/128 of it gave 227.4 229.6 228.1 231.1 229.8):
#   reference group_texts, seeds 0-4:            227.1 229.5 228.1 230.9 229.6   (ratio 0.149-0.151, worst 0.151)
#   labels shifted by hand (shifts_labels), 0-1: 715.0 695.9                     (ratio 0.469 0.456)
#   each text cut alone (per_text_blocks), 0-1:  306.3 318.1                     (ratio 0.201 0.209: less data)
# Threshold 0.18 x before: 0.029 above the worst reference seed (seeds differ by 0.002), 0.021 below the best
# per-text run, 0.28 below a model trained to predict two tokens ahead.
CLM = dict(block_size=128, n_blocks=800, n_speeches=6400, lr=2e-3, n_val=200)
MAX_PPL_RATIO = 0.18


@trusted_check(points=3)
def check_group_texts_trained(group_texts, seed=0):
    """DistilGPT-2 fine-tuned by the check on blocks made by the learner's group_texts: held-out perplexity at most
    MAX_PPL_RATIO x the pretrained model's."""
    call = (f"the course DistilGPT-2 fine-tuned by the check for one epoch on {CLM['n_blocks']} blocks of "
            f"{CLM['block_size']} tokens made by your group_texts")
    logp = learner_call("group_texts: fine-tune DistilGPT-2", lambda: _learner_clm_finetune(live(group_texts), seed), call)
    shape = (CLM["n_val"], CLM["block_size"] - 1)
    if not (isinstance(logp, torch.Tensor) and tuple(logp.shape) == shape and logp.dtype.is_floating_point):
        raise AssertionError(f"{call}: no log-probability per validation token came back")
    if not bool((logp <= 0).all()):
        raise AssertionError(f"{call}: the returned log-probabilities are not log-probabilities")
    before = _pretrained_perplexity()
    after = math.exp(-float(logp.double().mean()))
    if not after <= MAX_PPL_RATIO * before:
        raise AssertionError(
            f"{call}: perplexity on the validation plays {after:.0f} after fine-tuning, {before:.0f} before "
            f"({after / before:.2f}x); correct blocks bring it to {MAX_PPL_RATIO}x or less. Check that labels are "
            "input_ids unshifted (the model shifts them), and that the blocks hold the texts' tokens in order")


# --------------------------------------------------------------------------------------------- perplexity
def _expected_perplexity(loss: float) -> float:
    try:
        return math.exp(loss)
    except OverflowError:
        return float("inf")


# The contract is exp(loss) as a float, not float64 arithmetic: a learner's np.exp / torch.exp of a float32 loss
# (the np.float32 and 0-dim tensor cases) is rounded to float32 (exp(1) in float32: 5.7e-8 relative), and a
# float32 copy of a float64 loss moves exp by up to |loss| float32 roundings. (1 + |loss|) x 2^-23 covers both;
# a wrong formula (2 ** loss, 10 ** loss, exp(loss) - 1, a 1e-5 relative error) is still far outside it in at
# least one case (tests/test_alternatives.py::test_perplexity_still_refuses_the_wrong_base).
def _perplexity_tolerance(loss: float) -> float:
    return (1.0 + abs(loss)) * 2.0**-23


@trusted_check(points=2)
def check_perplexity(perplexity, seed=0):
    """exp(eval_loss) (the natural exponential: losses are in nats) for losses from 0 to beyond a float's range
    (then inf, not an error), for Python floats, NumPy floats and 0-dim tensors; to float32's rounding
    (_perplexity_tolerance), since computing in the loss's own precision is correct."""
    rng = np.random.default_rng(seed)
    losses = [0.0, 1.0, float(rng.uniform(0.1, 3.0)), float(rng.uniform(3.0, 9.0)), math.log(4096.0), 700.0]
    cases = [(x, x) for x in losses] + [(np.float32(2.5), 2.5), (torch.tensor(4.0), 4.0), (710.0, 710.0),
                                        (1e5, 1e5)]
    for value, loss in cases:
        call = f"perplexity({value!r})"
        got = learner_call(f"perplexity({loss:g})", lambda v=value: float(live(perplexity)(v)), call)
        want = _expected_perplexity(loss)
        if isinstance(got, float) and (got == want or (math.isfinite(want) and
                                                      abs(got - want) <= _perplexity_tolerance(loss) * want)):
            continue
        hints = {"2 ** loss": 2.0 ** min(loss, 1000), "10 ** loss": 10.0 ** min(loss, 300),
                 "log(loss)": math.log(loss) if loss > 0 else None}
        hint = next((f" — that is {h}; cross-entropy in PyTorch is in nats, so perplexity is exp(loss)"
                     for h, v in hints.items() if v is not None and isinstance(got, float) and math.isfinite(v)
                     and abs(got - v) <= 1e-9 * max(abs(v), 1.0)), "")
        raise AssertionError(f"{call} returned {got!r}, expected {want!r}{hint}"
                             + (" (a loss this large overflows math.exp: return float('inf'))" if math.isinf(want)
                                else ""))


# ------------------------------------------------------------------------------------- preprocess_seq2seq
def _t2t_rows(split: str, n: int, g: torch.Generator) -> list[tuple[str, str, str]]:
    """n (task, source without its prefix, target) rows of `t2t`, both tasks."""
    from deepdive.datasets import T2T_PREFIXES, load_rows

    rows = load_rows("t2t", split)
    order = torch.randperm(len(rows), generator=g).tolist()
    picks = [rows[i] for i in order[:n]]
    return [(r["task"], r["source"].removeprefix(T2T_PREFIXES[r["task"]]), r["target"]) for r in picks]


def _expected_seq2seq(tok, sources, targets, prefix, max_source_length, max_target_length) -> dict:
    """The tokenizer called directly (run_summarization.py with --pad_to_max_length): pads of the labels -> -100."""
    out = tok([prefix + s for s in sources], max_length=max_source_length, padding="max_length", truncation=True)
    labels = tok(text_target=list(targets), max_length=max_target_length, padding="max_length", truncation=True)
    return {"input_ids": out["input_ids"], "attention_mask": out["attention_mask"],
            "labels": [[t if t != tok.pad_token_id else -100 for t in row] for row in labels["input_ids"]]}


@trusted_check(points=2)
def check_preprocess_seq2seq(preprocess_seq2seq, seed=0):
    """On t2t rows of both tasks, two prefixes and max lengths short enough to truncate: input_ids and attention_mask
    of prefix + source, padded and truncated to max_source_length, and labels of the targets padded and truncated to
    max_target_length with -100 in place of every pad token: as the T5 tokenizer gives them."""
    from deepdive.datasets import T2T_PREFIXES

    tok = _tokenizer("t5")
    g = generator(seed)
    for task, max_src, max_tgt in (("date", 24 + seed % 3, 12), ("modernize", 14 + seed % 4, 9)):
        rows = _t2t_rows("test", 6, g)
        sources, targets = [r[1] for r in rows], [r[2] for r in rows]
        prefix = T2T_PREFIXES[task]
        batch = {"source": list(sources), "target": list(targets), "task": [r[0] for r in rows]}
        call = (f"preprocess_seq2seq(batch of {len(rows)} rows, tokenizer, prefix={prefix!r}, max_source_length={max_src}, "
                f"max_target_length={max_tgt})")
        got = learner_call(f"preprocess_seq2seq ({task})", lambda b=batch, p=prefix, s=max_src, t=max_tgt: _plain_columns(
            live(preprocess_seq2seq)(b, tok, p, s, t)), call)
        want = _expected_seq2seq(tok, sources, targets, prefix, max_src, max_tgt)
        if "__type__" in got:
            raise AssertionError(f"{call} returned a {got['__type__']}; return the tokenizer's encoding with labels added")
        for key in ("input_ids", "attention_mask", "labels"):
            if not isinstance(got.get(key), list) or len(got[key]) != len(rows):
                raise AssertionError(f"{call}: `{key}` should hold one row per example ({len(rows)}); columns: "
                                     f"{sorted(got)}")
        for i in range(len(rows)):
            src, lab = got["input_ids"][i], got["labels"][i]
            if src != want["input_ids"][i]:
                no_prefix = tok(sources[i], max_length=max_src, padding="max_length", truncation=True)["input_ids"]
                if src == no_prefix:
                    raise AssertionError(f"{call}: example {i} is tokenized without the prefix {prefix!r}: the "
                                         "input is prefix + source")
                if len(src) != max_src:
                    raise AssertionError(f"{call}: example {i} has {len(src)} input tokens; pad and truncate every "
                                         f"input to max_source_length={max_src}")
                raise AssertionError(f"{call}: input_ids of example {i} are {src[:10]}..., the tokenizer gives "
                                     f"{want['input_ids'][i][:10]}... for prefix + source")
            if got["attention_mask"][i] != want["attention_mask"][i]:
                raise AssertionError(f"{call}: attention_mask of example {i} differs from the tokenizer's (0 on pads)")
            if lab != want["labels"][i]:
                if len(lab) != max_tgt:
                    raise AssertionError(f"{call}: the labels of example {i} have {len(lab)} tokens; pad and truncate "
                                         f"the targets to max_target_length={max_tgt} (not max_source_length)")
                if tok.pad_token_id in lab:
                    raise AssertionError(f"{call}: the labels of example {i} contain the pad token "
                                         f"({tok.pad_token_id}): replace every pad in the labels with -100, or the "
                                         "model is trained to predict padding")
                if -100 in src:
                    raise AssertionError(f"{call}: -100 belongs in the labels only")
                raise AssertionError(f"{call}: the labels of example {i} are {lab}, expected {want['labels'][i]} (the "
                                     "target alone, tokenized with text_target=..., pads -> -100)")


def _learner_t2t_finetune(preprocess_seq2seq, task, seed):
    """On the learner's side: the course T5 fine-tuned on one t2t task's rows preprocessed by the learner's
    preprocess_seq2seq (Dataset.map, batched), DataCollatorForSeq2Seq, Adafactor, the check's recipe on the CPU;
    returns the greedy generations (token ids) for the check's own encoding of that task's test sources."""
    from transformers import AutoModelForSeq2SeqLM, DataCollatorForSeq2Seq
    from transformers.optimization import Adafactor

    from deepdive.datasets import T2T_PREFIXES, load_split
    from deepdive.finetune import fine_tune
    from deepdive.hub import local_path

    tok = _tokenizer("t5")
    prefix, max_src, max_tgt = T2T_PREFIXES[task], T2T["max_source_length"], T2T["max_target_length"][task]
    train = load_split("t2t", "train", task=task, keep_prefix=False).shuffle(seed=seed).select(range(T2T["n_train"]))
    train = train.map(lambda b: preprocess_seq2seq(b, tok, prefix, max_src, max_tgt), batched=True,
                      remove_columns=train.column_names)
    with rng_kept():
        torch.manual_seed(seed)
        model = AutoModelForSeq2SeqLM.from_pretrained(local_path("t5"), local_files_only=True)
        optimizer = Adafactor(model.parameters(), lr=T2T["lr"], scale_parameter=True, relative_step=False,
                              warmup_init=False)
        fine_tune(model, train, DataCollatorForSeq2Seq(tok, model=model), lr=T2T["lr"], epochs=T2T["epochs"],
                  seed=seed, cpu=True, seq2seq=True, optimizer=optimizer,
                  per_device_train_batch_size=T2T["batch_size"])
    return greedy_generations(model, task)


def greedy_generations(model, task: str) -> torch.Tensor:
    """Greedy generations of `model` for one task's test sources (the check's encoding): ids (N, L), pad-filled."""
    tok = _tokenizer("t5")
    enc = _t2t_test_inputs(task)
    model.eval()
    rows = []
    with torch.no_grad():
        for i in range(0, len(enc["input_ids"]), 125):
            batch = tok.pad({"input_ids": enc["input_ids"][i: i + 125]}, return_tensors="pt")
            out = model.generate(**batch, max_new_tokens=T2T["max_target_length"][task], do_sample=False, num_beams=1)
            rows += out.tolist()
    width = max(len(r) for r in rows)
    return torch.tensor([r + [tok.pad_token_id] * (width - len(r)) for r in rows])  # (N, L)


@lru_cache(maxsize=2)
def _t2t_test_inputs(task: str) -> dict:
    """One task's test sources, encoded by the check: prefix + source (as stored), as the model will see them."""
    from deepdive.datasets import T2T_PREFIXES, load_split

    sources = list(load_split("t2t", "test", task=task)["source"])
    assert all(s.startswith(T2T_PREFIXES[task]) for s in sources)
    return {"input_ids": _tokenizer("t5")(sources, max_length=T2T["max_source_length"], truncation=True)["input_ids"]}


def normalized(text: str) -> str:
    """Whitespace normalisation for exact match: stripped, every inner run of whitespace one space."""
    return " ".join(text.split())


def t2t_scores(generated: torch.Tensor, task: str) -> dict:
    """Exact match (whitespace-normalised) and chrF (sacrebleu) of generated ids against one task's test targets."""
    import sacrebleu

    from deepdive.datasets import load_split

    tok = _tokenizer("t5")
    refs = list(load_split("t2t", "test", task=task)["target"])
    ids = torch.where((generated < 0) | (generated >= len(tok)), tok.pad_token_id, generated)
    hyps = [h.strip() for h in tok.batch_decode(ids.tolist(), skip_special_tokens=True)]
    em = sum(normalized(h) == normalized(r) for h, r in zip(hyps, refs)) / len(refs)
    return {"exact_match": em, "chrf": sacrebleu.corpus_chrf(hyps, [refs]).score, "predictions": hyps}


# Calibration: `HF_HUB_OFFLINE=1 .venv/bin/python bench/generative_calibration.py t2t` (2-core CPU, 2026-12-03, the
# T2T recipe, one model per task, 189 Adafactor steps each; the 250 test rows of each task):
#   reference, seeds 0-4:  date 0.856 0.876 0.796 0.764 0.844 (chrF 96.6 97.3 95.2 94.5 96.4)
#                          modernize 0.696 0.712 0.724 0.728 0.680 (chrF 90.2 92.0 93.3 91.9 89.3)
#   pads left in the labels (pads_in_labels), seed 0:  date 0.744, modernize 0.696 (T5 stops at </s>, so learning
#       to write pads after it costs little here: check_preprocess_seq2seq catches it exactly)
#   the prefix on the targets too (prefix_on_targets), seed 0:  date 0.000, modernize 0.000 (chrF 86.0)
#   the pretrained model, untrained: date 0.000; modernize 0.000 (chrF 74.0: it writes its input back; copying the
#       input scores chrF 82.0 and exact match 0, which is why modernize is graded by exact match)
# Thresholds: date 0.5 (0.264 below the worst reference seed), modernize 0.4 (0.28 below it); a model that never
# learned a task scores 0 on both.
T2T = dict(n_train=1000, epochs=3, lr=2e-2, batch_size=16, max_source_length=32,
           max_target_length={"date": 12, "modernize": 32})
MIN_EXACT_MATCH = {"date": 0.5, "modernize": 0.4}


@trusted_check(points=3)
def check_preprocess_seq2seq_trained(preprocess_seq2seq, seed=0):
    """T5 fine-tuned by the check on each t2t task, on rows preprocessed by the learner's preprocess_seq2seq: exact
    match of the generated test targets >= MIN_EXACT_MATCH[task] on `date` and on `modernize` (chrF reported)."""
    results = {}
    for task in ("date", "modernize"):
        call = (f"the course T5 fine-tuned by the check on {T2T['n_train']} `{task}` pairs preprocessed by your "
                f"preprocess_seq2seq ({T2T['epochs']} epochs), greedy generation on the 250 test rows")
        generated = learner_call(f"preprocess_seq2seq: fine-tune T5 on {task}", lambda t=task: _learner_t2t_finetune(
            live(preprocess_seq2seq), t, seed), call)
        n = len(_t2t_test_inputs(task)["input_ids"])
        if not (isinstance(generated, torch.Tensor) and generated.dim() == 2 and generated.shape[0] == n
                and not generated.dtype.is_floating_point):
            raise AssertionError(f"{call}: no generated tokens for every test row came back")
        results[task] = (call, t2t_scores(generated, task))
    for task, (call, scores) in results.items():
        if not scores["exact_match"] >= MIN_EXACT_MATCH[task]:
            raise AssertionError(
                f"{call}: exact match {scores['exact_match']:.3f} (chrF {scores['chrf']:.1f}); correctly preprocessed "
                f"pairs reach {MIN_EXACT_MATCH[task]} or more. Check: the prefix before every source, the targets as "
                "labels (text_target=...), -100 on the pad tokens of the labels, max_target_length for the targets")


# ------------------------------------------------------------------------------------------- exact_match
@trusted_check(points=2)
def check_exact_match(exact_match, seed=0):
    """The share of predictions equal to their reference after whitespace normalisation (strip, inner runs -> one
    space); case and punctuation count; ValueError when the lengths differ."""
    rng = np.random.default_rng(seed)
    refs = ["1599-05-03", "I love you; I have spoke it", "O you goddess,", "2001-12-24", "Good night, sweet prince",
            "And weep you now", "1823-11-09", "Is it so?"]
    variants = [lambda r: r, lambda r: "  " + r + "\n", lambda r: r.replace(" ", "   ", 1), lambda r: r.lower(),
                lambda r: r.upper(), lambda r: r + ".", lambda r: r[:-1], lambda r: "x " + r, lambda r: r.replace(" ", "")]
    cases = []
    for _ in range(3):
        picks = rng.integers(0, len(variants), size=len(refs)).tolist()
        cases.append(([variants[k](r) for k, r in zip(picks, refs)], list(refs)))
    cases.append(([r.upper() for r in refs], list(refs)))
    cases.append(([" ".join(r.split()) for r in refs], [f" {r}  " for r in refs]))
    for preds, references in cases:
        call = f"exact_match({preds[:3]}..., {references[:3]}...)"
        got = learner_call("exact_match", lambda p=preds, r=references: float(live(exact_match)(list(p), list(r))), call)
        want = sum(normalized(p) == normalized(r) for p, r in zip(preds, references)) / len(references)
        if isinstance(got, float) and abs(got - want) <= 1e-9:
            continue
        pairs = list(zip(preds, references))
        hints = [
            (sum(p == r for p, r in pairs) / len(pairs), "with no whitespace normalisation"),
            (sum(p.strip() == r.strip() for p, r in pairs) / len(pairs),
             "with only the ends stripped (inner runs of spaces count as one space too)"),
            (sum(normalized(p).lower() == normalized(r).lower() for p, r in pairs) / len(pairs),
             "ignoring case (exact match is case-sensitive: 'you' is not 'You')"),
            (sum(normalized(p) == normalized(r) for p, r in pairs), "as a count (return the share)"),
            (sum(normalized(r) in normalized(p) for p, r in pairs) / len(pairs), "as 'the reference occurs in the "
             "prediction'"),
        ]
        hint = next((f" — that is the score {h}" for v, h in hints if isinstance(got, float) and abs(got - v) <= 1e-9),
                    "")
        raise AssertionError(f"{call} returned {got!r}, expected {want:.4f}{hint}")
    call = "exact_match(3 predictions, 2 references)"
    try:
        on_learner_side("exact_match (lengths differ)", lambda: float(live(exact_match)(["a", "b", "c"], ["a", "b"])))
    except LearnerRaised as exc:
        if exc.type_name != "ValueError":
            raise AssertionError(f"{call} raised {exc.type_name}; raise ValueError when the lengths differ") from None
        return
    raise AssertionError(f"{call} returned a score; raise ValueError when the lengths differ (zip would silently drop "
                         "the extra prediction)")
