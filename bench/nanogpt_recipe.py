"""The capstone's speed claim, measured: nanoGPT's README CPU recipe against the capstone's default recipe, both
trained by the capstone's own program (`minigpt.py`, written from the instructor notebook's cells) on the course's
Shakespeare split, one after the other on this machine.

    PYTHONPATH=. .venv/bin/python bench/nanogpt_recipe.py [--steps-between-evals 50] [--ablations]
    PYTHONPATH=. .venv/bin/python bench/nanogpt_recipe.py --seeds 5 [--target 0.25] [--without rope qk_norm ...]

Prints L* (the validation loss, nats per character on the course's held-out plays, that the baseline ends at),
the seconds of training (evaluation excluded, the same accounting for both) at which each run first reaches L*,
and their ratio (target: at most 0.5). With --ablations it also runs the baseline with one change of the default
at a time, to show what each change buys. Nothing is cached: every run trains from scratch.

With --seeds N it runs the baseline and the default on seeds 1337 .. 1337 + N - 1 instead (one after the other,
alternating); per seed, L* is that seed's baseline final validation loss, and it prints each run's seconds to L*,
their means and standard deviations, the per-seed ratio default / baseline and whether its mean beats --target by
more than 3 standard errors (issue 32, item 4: the default counts as reaching L* in <= 0.25x nanoGPT's time only
then). With --without it also runs, per seed, the default with one of its five modern options (notebook 09,
section 7) reverted to GPT-2's or nanoGPT's choice: what each option buys, in seconds to the same L*.
"""

import argparse
import json
import subprocess
import sys
import tempfile
import time
from dataclasses import fields
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from deepdive.capstone import PROGRAM_PARTS, write_program  # noqa: E402
from grader.reference import reference_namespace  # noqa: E402

AID = "09_mini_gpt_capstone"

# nanoGPT's README, "I only have a macbook" (config/train_shakespeare_char.py with the CPU overrides):
# --block_size=64 --batch_size=12 --n_layer=4 --n_head=4 --n_embd=128 --max_iters=2000 --lr_decay_iters=2000
# --dropout=0.0, and from the config: learning_rate 1e-3, min_lr 1e-4, warmup_iters 100, beta2 0.99,
# weight_decay 0.1, grad_clip 1.0.
# The architecture is GPT-2's, as nanoGPT's: learned positions, no QK-norm, GELU, GPT-2's initialisation, AdamW.
GPT2 = dict(rope=False, qk_norm=False, mlp="gelu", zero_init=False, optimizer="adamw")
BASELINE = dict(n_layer=4, n_head=4, n_embd=128, block_size=64, batch_size=12, max_iters=2000, lr=1e-3, min_lr=1e-4,
                warmup_iters=100, beta2=0.99, weight_decay=0.1, grad_clip=1.0, dropout=0.0, positions=True, **GPT2)
# --without: the default with one of its modern options reverted to GPT-2's / nanoGPT's (notebook 09, section 7)
WITHOUT = {"rope": dict(rope=False), "qk_norm": dict(qk_norm=False), "relu2": dict(mlp="gelu"),
           "zero_init": dict(zero_init=False), "muon": dict(optimizer="adamw"), "all five": GPT2}


def run(program: Path, out_dir: Path, settings: dict, every: int, windows: int) -> dict:
    args = [sys.executable, str(program), "train", "--out-dir", str(out_dir), "--eval-interval", str(every),
            "--eval-windows", str(windows), "--ckpt-interval", "1000000"]
    for key, value in settings.items():
        args += [f"--{key.replace('_', '-')}", str(value)]
    t0 = time.perf_counter()
    subprocess.run(args, check=True, capture_output=True, text=True)
    history = json.loads((out_dir / "history.json").read_text())
    history["wall_s"] = time.perf_counter() - t0
    return history


def seconds_at(history: dict) -> dict:
    """Step -> seconds of training when that many steps were done."""
    done = dict(zip(history["step"], history["seconds"]))
    return {s: done.get(s - 1, 0.0) for s, _ in history["val"]}


def first_reaching(history: dict, target: float):
    secs = seconds_at(history)
    for step, loss in history["val"]:
        if loss <= target:
            return step, secs[step], loss
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps-between-evals", type=int, default=50)
    parser.add_argument("--eval-windows", type=int, default=256, help="validation windows (of 64 characters) per evaluation")
    parser.add_argument("--ablations", action="store_true", help="also the baseline with each change of the default alone")
    parser.add_argument("--seeds", type=int, default=0, help="baseline and default on this many seeds (see above)")
    parser.add_argument("--first-seed", type=int, default=1337, help="with --seeds: seeds first-seed, first-seed + 1, ...")
    parser.add_argument("--target", type=float, default=0.25, help="with --seeds: the ratio to beat")
    parser.add_argument("--save", help="with --seeds: write every run's history to this JSON file")
    parser.add_argument("--report", nargs="+", help="print the --seeds report of files written by --save, their "
                        "seeds pooled (trains nothing)")
    parser.add_argument("--without", nargs="*", default=[], choices=sorted(WITHOUT),
                        help="with --seeds: also the default without each of these options (what each one buys)")
    args = parser.parse_args()
    if args.report:  # several files: their seeds pooled (runs of the same names)
        saved = [json.loads(Path(f).read_text()) for f in args.report]
        names = [n for n in saved[0]["histories"] if all(n in s["histories"] for s in saved)]
        return report_over_seeds([seed for s in saved for seed in s["seeds"]],
                                 {n: [h for s in saved for h in s["histories"][n]] for n in names}, args.target)
    if args.seeds:
        return over_seeds(args)

    ns = reference_namespace(AID)
    default = {f.name: getattr(ns["TrainConfig"](), f.name) for f in fields(ns["TrainConfig"])
               if f.name in BASELINE}
    runs = {"baseline (nanoGPT's CPU recipe)": BASELINE, "capstone default": default}
    if args.ablations:
        for key in sorted(k for k in BASELINE if default[k] != BASELINE[k]):
            if key == "min_lr":
                continue  # goes with lr
            change = {key: default[key]} | ({"min_lr": default["min_lr"]} if key == "lr" else {})
            runs[f"baseline + {', '.join(f'{k}={v}' for k, v in change.items())}"] = BASELINE | change

    with tempfile.TemporaryDirectory() as tmp:
        program = write_program(Path(tmp) / "minigpt.py", [ns[n] for n in PROGRAM_PARTS])
        results = {}
        for name, settings in runs.items():
            print(f"training: {name} ...", flush=True)
            results[name] = run(program, Path(tmp) / f"run{len(results)}", settings, args.steps_between_evals,
                                args.eval_windows)

    base = results["baseline (nanoGPT's CPU recipe)"]
    l_star = base["val"][-1][1]
    print(f"\nL* = {l_star:.4f} nats/character: the baseline's validation loss after its {BASELINE['max_iters']} steps "
          f"({args.eval_windows} windows of 64 characters of the held-out plays)")
    print("\n| run | settings changed | steps | final val loss | reaches L* at step | seconds of training to L* | "
          "vs baseline | whole run s |")
    print("|---|---|---|---|---|---|---|---|")
    t_base = first_reaching(base, l_star)[1]
    for name, h in results.items():
        hit = first_reaching(h, l_star)
        changed = ", ".join(f"{k}={v}" for k, v in runs[name].items() if BASELINE.get(k) != v) or "-"
        reach = (f"{hit[0]} | {hit[1]:.1f} | {hit[1] / t_base:.2f}x" if hit else "never | - | -")
        print(f"| {name} | {changed} | {h['step'][-1] + 1} | {h['val'][-1][1]:.4f} | {reach} | {h['wall_s']:.1f} |")
    hit = first_reaching(results["capstone default"], l_star)
    if hit:
        print(f"\nratio: the default reaches L* in {hit[1] / t_base:.2f}x the baseline's time (target <= 0.5x), "
              f"then goes on to {results['capstone default']['val'][-1][1]:.4f}")
    else:
        print("\nthe default never reaches L*")


def over_seeds(args) -> None:
    ns = reference_namespace(AID)
    default = {f.name: getattr(ns["TrainConfig"](), f.name) for f in fields(ns["TrainConfig"]) if f.name in BASELINE}
    seeds = [args.first_seed + i for i in range(args.seeds)]
    runs = {"baseline": BASELINE, "default": default}
    runs.update({f"without {w}": default | WITHOUT[w] for w in args.without})
    histories = {name: [] for name in runs}
    with tempfile.TemporaryDirectory() as tmp:
        program = write_program(Path(tmp) / "minigpt.py", [ns[n] for n in PROGRAM_PARTS])
        for seed in seeds:
            for name, settings in runs.items():
                h = run(program, Path(tmp) / f"{name}{seed}", settings | {"seed": seed}, args.steps_between_evals,
                        args.eval_windows)
                histories[name].append(h)
                print(f"seed {seed} {name:>18}: final val {h['val'][-1][1]:.4f}, {h['seconds'][-1]:.1f} s of training "
                      f"({1000 * h['seconds'][-1] / len(h['seconds']):.1f} ms/step)", flush=True)
    if args.save:
        Path(args.save).write_text(json.dumps({"seeds": seeds, "histories": histories}))
    report_over_seeds(seeds, histories, args.target)


def report_over_seeds(seeds, histories, target) -> None:
    """Per seed, L* is that seed's baseline final validation loss (the baseline reaches it at its last step, or
    earlier if it dipped below it before); the default's seconds to it in the run of the same seed."""
    import statistics

    times = {name: [] for name in histories}
    steps = {name: [] for name in histories}
    for i, seed in enumerate(seeds):
        l_star = histories["baseline"][i]["val"][-1][1]
        row = []
        for name in times:
            hit = first_reaching(histories[name][i], l_star)
            times[name].append(hit[1] if hit else float("nan"))
            steps[name].append(hit[0] if hit else None)
            row.append(f"{name} step {hit[0] if hit else None}, {hit[1] if hit else float('nan'):.1f} s")
        print(f"seed {seed}: L* = {l_star:.4f}; " + "; ".join(row))
    for name, ts in times.items():
        finals = [h["val"][-1][1] for h in histories[name]]
        print(f"{name:>18}: {statistics.mean(ts):.1f} ± {statistics.stdev(ts):.1f} s of training to L* (mean ± sd; "
              f"steps {steps[name]}), ratio to the baseline {statistics.mean(t / b for t, b in zip(ts, times['baseline'])):.3f}, "
              f"final val {statistics.mean(finals):.4f} ± {statistics.stdev(finals):.4f}")
    ratios = [d / b for d, b in zip(times["default"], times["baseline"])]
    mean, se = statistics.mean(ratios), statistics.stdev(ratios) / len(ratios) ** 0.5
    verdict = "beats" if mean + 3 * se < target else "does not beat"
    print(f"ratio default / baseline per seed {[round(r, 3) for r in ratios]}: mean {mean:.3f}, standard error "
          f"{se:.3f}; mean + 3 SE = {mean + 3 * se:.3f} {verdict} the target {target}")

if __name__ == "__main__":
    main()
