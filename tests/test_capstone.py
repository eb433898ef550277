"""Module 09's program as a program: `minigpt.py` written from the instructor notebook's cells
(deepdive.capstone.write_program) trains, resumes exactly and runs under `torchrun --nproc_per_node=2` (gloo, two
CPU processes) with the same weights as one process on the concatenated batch; `sample` prints text, and a
missing checkpoint is an error that says what to do. Also the helpers behind it, and the carried cell: module 09's
copy of module 07's code (the learner's GPT and generate, `%load ../07_decoder_gpt/gpt.py` in the release) is
module 07's reference code, definition for definition.

    PYTHONPATH=. .venv/bin/python tests/test_capstone.py --sync   # rewrite 09's carried cell from 07's notebook
"""

import ast
import linecache
import re
import subprocess
import sys

import pytest
import torch

from deepdive.capstone import (
    PROGRAM_PARTS,
    SourceNotFound,
    corpus_words,
    generation_quality,
    hf_char_tokenizer,
    source_of,
    write_program,
)
from grader.assignments import solution_notebook
from grader.reference import is_carried_cell, is_setup_cell, is_solution_cell, reference_namespace

AID = "09_mini_gpt_capstone"
PARTS = PROGRAM_PARTS
# What 09 needs of module 07 (minigpt.py holds them; PROGRAM_PARTS): the model and generate with its filters.
CARRIED = ("GPTConfig", "MLP", "CausalSelfAttention", "Block", "GPT", "apply_temperature", "top_k_filter",
           "top_p_filter", "apply_repetition_penalty", "generate")
MARKER_LINES = ("### BEGIN SOLUTION", "### END SOLUTION")
SMALL = ["--n-layer", "1", "--n-head", "2", "--n-embd", "32", "--block-size", "16", "--max-iters", "12",
         "--warmup-iters", "4", "--eval-interval", "6", "--eval-windows", "8", "--ckpt-interval", "1000", "--dropout", "0.0"]


@pytest.fixture(scope="module")
def program(tmp_path_factory):
    ns = reference_namespace(AID)
    return write_program(tmp_path_factory.mktemp("capstone") / "minigpt.py", [ns[n] for n in PARTS])


def run(*args, cwd):
    return subprocess.run([sys.executable, *map(str, args)], cwd=cwd, capture_output=True, text=True, timeout=300)


def weights(out_dir):
    return torch.load(out_dir / "ckpt.pt", weights_only=True)["model"]


@pytest.mark.slow
def test_torchrun_and_resume_give_the_weights_of_one_uninterrupted_process(program):
    d = program.parent
    single = run(program, "train", "--out-dir", d / "single", "--batch-size", "8", *SMALL, cwd=d)
    assert single.returncode == 0, single.stdout + single.stderr
    cut = run(program, "train", "--out-dir", d / "cut", "--batch-size", "8", "--stop-at", "5", *SMALL, cwd=d)
    assert cut.returncode == 0, cut.stdout + cut.stderr
    assert torch.load(d / "cut" / "ckpt.pt", weights_only=True)["step"] == 5
    resumed = run(program, "train", "--out-dir", d / "cut", "--batch-size", "8", "--resume", *SMALL, cwd=d)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    # The resume with the default recipe (Muon and AdamW in one Optimizers, whose state the checkpoint holds);
    # the processes with AdamW alone: Muon's orthogonalisation amplifies the rounding in the gradient's smallest
    # directions (two processes vs one differed by 7.3e-4 after these 12 steps, 2026-12-07), about a step's size.
    adamw = ["--optimizer", "adamw"]
    single_adamw = run(program, "train", "--out-dir", d / "single_adamw", "--batch-size", "8", *SMALL, *adamw, cwd=d)
    assert single_adamw.returncode == 0, single_adamw.stdout + single_adamw.stderr
    ddp = run("-m", "torch.distributed.run", "--nproc_per_node=2", program, "train", "--out-dir", d / "ddp",
              "--batch-size", "4", *SMALL, *adamw, cwd=d)
    assert ddp.returncode == 0, ddp.stdout + ddp.stderr
    reference = weights(d / "single")
    for name, t in weights(d / "cut").items():
        assert torch.equal(t, reference[name]), f"resumed run differs in {name}"
    # Two processes sum the gradients in another order (float32): the difference grows with the steps, to
    # 2.4e-7 after 12 AdamW steps here (2026-12-07, the default's modern blocks; 3.4e-6 the same day with GPT-2's
    # blocks, 6.7e-6 on 2026-12-03 with the fused-attention model this program had before); a wrong split of the
    # batch differs by whole updates (~lr = 4e-3).
    reference = weights(d / "single_adamw")
    ddp_diff = max((t - reference[name]).abs().max().item() for name, t in weights(d / "ddp").items())
    assert ddp_diff < 1e-4, f"torchrun's weights differ from one process's by {ddp_diff:.2e}"
    print(f"torchrun vs one process after 12 steps: largest weight difference {ddp_diff:.2e}")
    assert "validation loss" in single.stdout and (d / "single" / "history.json").exists()
    assert (d / "single" / "tokenizer.json").exists()

    sampled = run(program, "sample", "--checkpoint", d / "single" / "ckpt.pt", "--prompt", "ROMEO:",
                  "--max-new-tokens", "40", "--seed", "3", cwd=d)
    assert sampled.returncode == 0, sampled.stderr
    assert sampled.stdout.startswith("ROMEO:") and len(sampled.stdout.rstrip("\n")) >= len("ROMEO:") + 30
    again = run(program, "sample", "--checkpoint", d / "single" / "ckpt.pt", "--prompt", "ROMEO:",
                "--max-new-tokens", "40", "--seed", "3", cwd=d)
    assert again.stdout == sampled.stdout, "the same seed must print the same sample"


def test_sampling_without_a_checkpoint_says_what_to_do(program):
    out = run(program, "sample", "--checkpoint", program.parent / "nowhere" / "ckpt.pt", cwd=program.parent)
    assert out.returncode != 0
    assert "no checkpoint" in out.stderr and "minigpt.py train" in out.stderr, out.stderr
    assert "Traceback" not in out.stderr


def test_the_program_defines_every_part_in_order_and_runs_main(program):
    text = program.read_text()
    found = [re.search(rf"^(class|def) {n}\b", text, re.MULTILINE) for n in PARTS]
    assert all(found), [n for n, m in zip(PARTS, found) if m is None]
    where = [m.start() for m in found]
    assert where == sorted(where), "the parts must be written in the order given"
    assert text.rstrip().endswith("main()")


def test_source_of_finds_a_class_that_inspect_cannot(tmp_path):
    """A class defined in a kernel cell: its module (__main__) has no file, so inspect.getsource fails before
    Python 3.13; the cell's code is in linecache under the file name of the class's methods."""
    cell = "class Cell:\n    x = 1\n\n    def f(self):\n        return 2\n"
    filename = "<ipykernel-cell-test>"
    linecache.cache[filename] = (len(cell), None, cell.splitlines(True), filename)
    ns = {"__name__": "__main__"}
    exec(compile(cell, filename, "exec"), ns)
    try:
        assert source_of(ns["Cell"]) == cell
        path = write_program(tmp_path / "p.py", [ns["Cell"]], header="", footer="")
        assert "def f(self)" in path.read_text()
    finally:
        del linecache.cache[filename]
    with pytest.raises(SourceNotFound, match="neither a function nor a class"):
        source_of(3)


def test_write_program_refuses_code_that_does_not_compile(tmp_path):
    with pytest.raises(SyntaxError):
        write_program(tmp_path / "p.py", [], header="def broken(:\n", footer="")
    assert not (tmp_path / "p.py").exists()


def test_generation_quality_counts_real_words_and_repeats():
    known = corpus_words("To be, or not to be: that is the question.")
    q = generation_quality("to be or not to be or not to be xyzzy", known)
    assert q["words"] == 11
    assert q["real words"] == pytest.approx(10 / 11)
    # 4-grams: 8, of which "to be or not" (2x), "be or not to" (2x), "or not to be" (2x) repeat
    assert q["repeated n-grams"] == pytest.approx(6 / 8)
    assert generation_quality("", known) == {"words": 0, "real words": 0.0, "repeated n-grams": 0.0}


def test_hf_char_tokenizer_has_the_ids_of_the_characters_and_decodes_by_concatenation(tmp_path):
    from transformers import AutoTokenizer

    chars = sorted(set("ROMEO:\nO, she doth teach the torches! é"))
    text = "ROMEO:\nO she doth  teach!\n"
    for tok in (hf_char_tokenizer(chars), None):
        if tok is None:  # the saved folder, read back as pipeline reads it
            hf_char_tokenizer(chars).save_pretrained(tmp_path)
            tok = AutoTokenizer.from_pretrained(tmp_path)
        ids = tok(text)["input_ids"]
        assert ids == [chars.index(c) for c in text]
        assert tok.decode(ids) == text  # no spaces between characters, newlines and double spaces kept
    with pytest.raises(Exception, match="UNK|unk"):
        hf_char_tokenizer(chars)("x")  # not a character of the vocabulary (WordLevel without an unknown token)


STUCK = """
def train(cfg, train_data, val_data, out_dir, resume=False, stop_at=None, log=print):
    history = reference_train(cfg, train_data, val_data, out_dir, resume=resume, stop_at=stop_at, log=log)
    if os.environ.get("RANK") == "1":
        time.sleep(600)  # a process that never returns
    return history
"""


def test_a_stuck_process_is_reported_with_where_it_was(monkeypatch):
    """check_train_ddp's message for a process that never finishes names the line of the learner's train it was
    on (from the child's faulthandler dump), and both children are killed."""
    import multiprocessing
    import time

    import grader.checks.m09_mini_gpt_capstone as m09

    ns = reference_namespace(AID)
    ns["reference_train"] = ns["train"]
    exec(compile("import os, time\n" + STUCK, "stuck_train.py", "exec"), ns)  # the notebook's globals (TrainConfig)
    monkeypatch.setattr(m09, "DDP_TIMEOUT_S", 3)
    started = time.perf_counter()
    with pytest.raises(RuntimeError) as raised:
        m09._ddp_runs(ns["train"], 0)
    message = str(raised.value)
    assert message.startswith("process 1 of 2 did not finish within 3 s"), message
    assert message.endswith("it was at train (stuck_train.py:6)"), message
    assert time.perf_counter() - started < 30
    for _ in range(50):  # killed by the check: reaped within moments
        if not multiprocessing.active_children():
            break
        time.sleep(0.1)
    assert not multiprocessing.active_children(), "the check left a DDP child running"


# ------------------------------------------------------------------------------- the carried cell
def definitions(source: str) -> dict[str, str]:
    """{name: source} of the top-level classes and functions of a cell (decorators included), with nbgrader's
    solution markers dropped: what the learner's own cell holds once the region is filled in."""
    lines = [ln for ln in source.splitlines(True) if ln.strip() not in MARKER_LINES]
    text = "".join(lines)
    out = {}
    for node in ast.parse(text).body:
        if isinstance(node, ast.ClassDef | ast.FunctionDef):
            start = min([node.lineno] + [d.lineno for d in node.decorator_list])
            out[node.name] = "".join(lines[start - 1:node.end_lineno]).rstrip("\n")
    return out


def module07_definitions() -> tuple[dict[str, str], tuple[str, ...]]:
    """Module 07's definitions (its setup and solution cells, in notebook order) and the names its last cell
    writes to gpt.py (`write_program("gpt.py", [...])`), or CARRIED while 07 has no such cell."""
    import nbformat

    nb = nbformat.read(solution_notebook("07_decoder_gpt"), as_version=4)
    found, written = {}, None
    for cell in nb.cells:
        if is_setup_cell(cell) or is_solution_cell(cell):
            found.update(definitions(cell.source))
        m = re.search(r"write_program\(\s*[\"']gpt\.py[\"']\s*,\s*\[([^\]]*)\]", cell.source) if cell.cell_type == "code" else None
        if m:
            written = tuple(n.strip() for n in m.group(1).split(",") if n.strip())
    return found, written or CARRIED


def carried_cell():
    import nbformat

    nb = nbformat.read(solution_notebook(AID), as_version=4)
    cells = [c for c in nb.cells if is_carried_cell(c)]
    assert len(cells) == 1, f"{AID} should have one carried cell (module 07's code), found {len(cells)}"
    return nb, cells[0]


def test_the_carried_cell_is_module_07s_code():
    """09's carried cell defines what module 07's last cell writes to gpt.py (which `%load` puts in the learner's
    cell), each definition exactly as in 07's instructor notebook; its instructions are comments outside the
    solution region, so the release keeps them."""
    ours = definitions(carried_cell()[1].source)
    theirs, names = module07_definitions()
    assert set(CARRIED) <= set(names), f"07's gpt.py lacks what minigpt.py needs: {sorted(set(CARRIED) - set(names))}"
    assert list(ours) == list(names), (f"09's carried cell defines {list(ours)}, 07's gpt.py {list(names)}: run "
                                       "`PYTHONPATH=. .venv/bin/python tests/test_capstone.py --sync`")
    stale = [n for n in names if ours[n] != theirs.get(n)]
    assert not stale, f"09's copy of {stale} differs from 07's: run `PYTHONPATH=. .venv/bin/python tests/test_capstone.py --sync`"
    head = carried_cell()[1].source.split(MARKER_LINES[0])[0]
    assert "%load ../07_decoder_gpt/gpt.py" in head and all(ln.startswith("#") for ln in head.splitlines() if ln.strip())


def sync_carried_cell() -> None:
    """Rewrite 09's carried cell's solution region from 07's notebook (its comment lines are kept)."""
    import nbformat

    nb, cell = carried_cell()
    theirs, names = module07_definitions()
    head = cell.source.split(MARKER_LINES[0])[0]
    cell.source = head + MARKER_LINES[0] + "\n" + "\n\n\n".join(theirs[n] for n in names) + "\n" + MARKER_LINES[1]
    nbformat.write(nb, solution_notebook(AID))
    print(f"{AID}: carried cell rewritten from 07 ({', '.join(names)})")


if __name__ == "__main__" and "--sync" in sys.argv:
    sync_carried_cell()
