"""The capstone's ablations (notebook 09, section 12), over seeds: how much of a difference a one-seed ablation table
can show, measured with the program the notebook writes (`minigpt.py`, from the instructor notebook's cells).

    PYTHONPATH=. .venv/bin/python bench/capstone_ablations.py [--seeds 5] [--stop-at 501]

Every run is the notebook's: the default recipe (`TrainConfig()`, whose schedule ends at max_iters = 1000) stopped
after `--stop-at` steps, with one change per ablation, on the course's Shakespeare split; the validation loss at
steps 250 and 500 (128 fixed windows of the held-out plays, as the notebook) and the milliseconds per step. Prints
one row per ablation: the mean and standard deviation over the seeds of the loss at steps 250 and 500, of its difference
from the default run of the same seed (the same batches, and the same initial weights wherever the shapes agree),
and of the milliseconds per step. Nothing is cached: every run trains from scratch, one after another.
"""

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from deepdive.capstone import PROGRAM_PARTS, write_program  # noqa: E402
from grader.reference import reference_namespace  # noqa: E402

AID = "09_mini_gpt_capstone"
# "no positions": neither RoPE nor a learned table; "learned positions": GPT-2's wpe in place of RoPE.
ABLATIONS = {"default": [], "no positions": ["--rope", "false", "--positions", "false"], "one head": ["--n-head", "1"],
             "learned positions": ["--rope", "false"], "no warmup": ["--warmup-iters", "0"]}


def run(program: Path, out_dir: Path, seed: int, stop_at: int, extra: list[str]) -> dict:
    args = [sys.executable, str(program), "train", "--out-dir", str(out_dir), "--seed", str(seed),
            "--stop-at", str(stop_at), "--ckpt-interval", "1000000", *extra]
    subprocess.run(args, check=True, capture_output=True, text=True, cwd=ROOT)
    history = json.loads((out_dir / "history.json").read_text())
    steps = len(history["step"])
    return {"val": dict(history["val"]), "ms_per_step": 1000 * history["seconds"][-1] / steps}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=5, help="seeds 1337, 1338, ... (1337 is the notebook's)")
    parser.add_argument("--stop-at", type=int, default=501, help="steps per run (501: the evaluation at step 500 runs)")
    args = parser.parse_args()
    at = 500 if args.stop_at > 500 else 250
    ns = reference_namespace(AID)
    results = {name: [] for name in ABLATIONS}
    with tempfile.TemporaryDirectory() as tmp:
        program = write_program(Path(tmp) / "minigpt.py", [ns[n] for n in PROGRAM_PARTS])
        for i in range(args.seeds):
            for name, extra in ABLATIONS.items():
                out = run(program, Path(tmp) / f"{i}-{len(results[name])}-{name.replace(' ', '_')}", 1337 + i,
                          args.stop_at, extra)
                results[name].append(out)
                print(f"seed {1337 + i} {name:>18}: val {out['val'][250]:.4f} @250, {out['val'][at]:.4f} @{at}, "
                      f"{out['ms_per_step']:.1f} ms/step", flush=True)

    def ms(xs):
        return f"{statistics.mean(xs):+.4f} ± {statistics.stdev(xs):.4f}" if len(xs) > 1 else f"{xs[0]:+.4f}"

    steps = (250, at) if at != 250 else (250,)
    head = " | ".join(f"val. loss @{s} (mean ± sd over {args.seeds} seeds) | minus default @{s}, same seed" for s in steps)
    print(f"\n| run | {head} | ms/step |")
    print("|---|" + "---|---|" * len(steps) + "---|")
    for name, runs in results.items():
        cells = []
        for s in steps:
            vals = [r["val"][s] for r in runs]
            diff = [v - b["val"][s] for v, b in zip(vals, results["default"])]
            cells += [ms(vals).lstrip("+"), ms(diff) if name != "default" else "-"]
        print(f"| {name} | {' | '.join(cells)} | {statistics.mean(r['ms_per_step'] for r in runs):.1f} |")

if __name__ == "__main__":
    main()
