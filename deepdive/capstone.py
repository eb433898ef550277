"""Helpers for module 09 (the Mini-GPT capstone): write the learner's cells out as the program `minigpt.py`,
run it as a script (also under torchrun), read its training history, and measure generated text.

Nothing here tokenizes, batches, trains, checkpoints or samples: the program is the learner's code (their GPT
and generate from module 07, the exercises of module 09) and the given recipe (module 08's schedule), written out
from the notebook's cells. `hf_char_tokenizer` is plumbing for the export to Hugging Face: the same ids as the
learner's CharTokenizer, as a tokenizer that `pipeline` can load.
"""

import ast
import inspect
import json
import linecache
import os
import re
import subprocess
import sys
import textwrap
from collections import Counter
from pathlib import Path

import matplotlib.pyplot as plt

from deepdive.encoders import smooth

PROGRAM_HEADER = '''"""minigpt.py: a character-level GPT that trains, checkpoints, resumes, samples, and runs on several
processes. Written by the course's notebook 09 from its cells (your GPT and generate from module 07, module 08's
schedule, your module 09 exercises). Run `python minigpt.py --help`.
"""

import argparse
import contextlib
import json
import math
import os
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP
'''

# What notebook 09 writes into minigpt.py, in order (its cell passes the objects themselves).
PROGRAM_PARTS = ("GPTConfig", "MLP", "CausalSelfAttention", "Block", "GPT", "apply_temperature", "top_k_filter",
                 "top_p_filter", "apply_repetition_penalty", "generate", "make_optimizer", "Optimizers",
                 "warmup_cosine_lr", "estimate_loss", "TrainConfig", "ReLU2MLP", "make_model", "CharTokenizer",
                 "get_batch", "save_checkpoint", "load_checkpoint", "train", "sample", "ModernAttention", "main")

PROGRAM_FOOTER = '''

if __name__ == "__main__":
    main()
'''


class SourceNotFound(OSError):
    pass


def _defining_files(obj) -> list[str]:
    """The file names (notebook cells count: a kernel keeps each cell's code in linecache) where the methods
    of a class were compiled; empty for a class with no methods of its own (a plain dataclass)."""
    files = []
    for value in vars(obj).values():
        fn = getattr(value, "__func__", value)
        fn = getattr(fn, "fget", fn)  # a property's getter
        code = getattr(fn, "__code__", None)
        if code is not None and code.co_filename in linecache.cache and code.co_filename not in files:
            files.append(code.co_filename)
    return files


def _top_level_definition(filename: str, name: str) -> str | None:
    lines = linecache.getlines(filename)
    try:
        tree = ast.parse("".join(lines))
    except SyntaxError:
        return None
    found = None
    for node in tree.body:
        if isinstance(node, (ast.ClassDef, ast.FunctionDef)) and node.name == name:
            start = min([node.lineno] + [d.lineno for d in node.decorator_list])
            found = "".join(lines[start - 1:node.end_lineno])  # the last definition in a cell wins, as in Python
    return found


def source_of(obj) -> str:
    """The source code of a function or class defined in a notebook cell (or a module).

    `inspect.getsource` finds functions, but before Python 3.13 not classes defined in a notebook: it looks
    for the file of the class's module (`__main__`), which a kernel does not have. A class's source is then
    read from the cell its methods were compiled in; a class without methods from the latest cell run that
    defines it.
    """
    try:
        return textwrap.dedent(inspect.getsource(obj))
    except (OSError, TypeError):
        pass
    name = getattr(obj, "__name__", None)
    if name is None:
        raise SourceNotFound(f"{obj!r} is neither a function nor a class: only those can be written to a program")
    candidates = _defining_files(obj) if inspect.isclass(obj) else []
    for filename in candidates or reversed(list(linecache.cache)):
        source = _top_level_definition(filename, name)
        if source is not None:
            return source
    raise SourceNotFound(f"cannot find the code of {name}: define it at the top level of a code cell and run that "
                         "cell, then run this one again")


def write_program(path, objects, header: str = PROGRAM_HEADER, footer: str = PROGRAM_FOOTER) -> Path:
    """Write `header`, the source of every object in `objects` (in that order) and `footer` to `path`,
    check that the result compiles, and return the path. The program only sees the header's imports."""
    path = Path(path)
    parts = [header.rstrip("\n")]
    for obj in objects:
        parts.append(source_of(obj).rstrip("\n"))
    text = "\n\n\n".join(parts) + "\n" + footer
    compile(text, str(path), "exec")  # a syntax error names the program's line, before anything runs
    path.write_text(text, encoding="utf-8")
    return path


def run_program(args, cwd=None, quiet: bool = False, timeout: float | None = None) -> str:
    """Run `python <args...>` (or, when args[0] is "torchrun", `python -m torch.distributed.run <args[1:]...>`)
    with this kernel's Python, print its output line by line as it comes (unless quiet), and return it all.
    A failing program raises RuntimeError with the end of its output."""
    command = ([sys.executable, "-m", "torch.distributed.run", *map(str, args[1:])] if args[0] == "torchrun"
               else [sys.executable, *map(str, args)])
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    lines = []
    with subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          bufsize=1) as proc:
        try:
            for line in proc.stdout:
                lines.append(line)
                if not quiet:
                    print(line, end="")
            proc.wait(timeout=timeout)
        except BaseException:
            proc.kill()
            raise
    out = "".join(lines)
    if proc.returncode != 0:
        tail = "".join(lines[-25:])
        raise RuntimeError(f"`{' '.join(command[1:])}` exited with status {proc.returncode}; its last output:\n{tail}")
    return out


def read_history(out_dir) -> dict:
    """The history.json that `minigpt.py train` writes next to its checkpoints."""
    path = Path(out_dir) / "history.json"
    if not path.exists():
        raise FileNotFoundError(f"no {path}: run `python minigpt.py train --out-dir {out_dir}` first")
    return json.loads(path.read_text())


# ------------------------------------------------------------------------------ Hugging Face export
def hf_char_tokenizer(chars):
    """A transformers tokenizer (`PreTrainedTokenizerFast`) with the ids of a character tokenizer whose
    vocabulary is `chars` (id = position): a `tokenizers` WordLevel model over the single characters, a
    pre-tokenizer that cuts the text into characters (newlines and spaces included), and a decoder that joins
    the characters with nothing between them. No special tokens; a character outside `chars` raises.
    `save_pretrained(folder)` writes it next to an exported model, and `pipeline(..., tokenizer=folder)` loads it."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.WordLevel(vocab={c: i for i, c in enumerate(chars)}, unk_token=None))
    core.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")  # one piece per character
    core.decoder = decoders.Fuse()  # ids -> characters, concatenated (WordLevel's default puts spaces between)
    return PreTrainedTokenizerFast(tokenizer_object=core, clean_up_tokenization_spaces=False)


# ------------------------------------------------------------------------------- generation quality
WORD = re.compile(r"[A-Za-z']+")


def corpus_words(text: str) -> set[str]:
    """The lower-cased words (letters and apostrophes) of a text."""
    return {w.lower() for w in WORD.findall(text)}


def generation_quality(text: str, known_words: set[str], n: int = 4) -> dict:
    """Two measures of generated text that the loss does not show:

    - "real words": the share of its words that are words of the training text (made-up words lower it);
    - "repeated n-grams": the share of its word n-grams that occur more than once in it (a model stuck in a
      loop raises it; greedy decoding is the usual culprit).
    """
    words = [w.lower() for w in WORD.findall(text)]
    grams = [tuple(words[i:i + n]) for i in range(len(words) - n + 1)]
    counts = Counter(grams)
    return {"words": len(words),
            "real words": sum(w in known_words for w in words) / len(words) if words else 0.0,
            "repeated n-grams": sum(c for c in counts.values() if c > 1) / len(grams) if grams else 0.0}


# ------------------------------------------------------------------------------------------ plots
def plot_history(histories: dict, title: str = "", window: int = 25) -> None:
    """Training loss (smoothed over `window` steps) and validation loss against training seconds, for one or
    more runs {label: history}."""
    fig, (ax_step, ax_time) = plt.subplots(1, 2, figsize=(11, 3.6))
    for label, h in histories.items():
        line, = ax_step.plot(h["step"], smooth(h["loss"], window), alpha=0.6, label=f"{label}: training (mean of {window} steps)")
        if h["val"]:
            steps, vals = zip(*h["val"])
            ax_step.plot(steps, vals, "o-", color=line.get_color(), label=f"{label}: validation")
            done = dict(zip(h["step"], h["seconds"]))  # step -> seconds of training when it ended
            seconds = [done.get(s - 1, 0.0) for s in steps]
            ax_time.plot(seconds, vals, "o-", color=line.get_color(), label=label)
    ax_step.set_xlabel("step")
    ax_step.set_ylabel("loss (nats / character)")
    ax_time.set_xlabel("seconds of training")
    ax_time.set_ylabel("validation loss")
    for ax in (ax_step, ax_time):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    plt.show()


def plot_quality(steps, series: dict, title: str = "") -> None:
    """Generation-quality measures (see `generation_quality`) against the training step of the checkpoint."""
    fig, ax = plt.subplots(figsize=(6.5, 3.4))
    for label, values in series.items():
        ax.plot(steps, values, "o-", label=label)
    ax.set_xlabel("training step of the checkpoint")
    ax.set_ylabel("share")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title(title)
    fig.tight_layout()
    plt.show()
