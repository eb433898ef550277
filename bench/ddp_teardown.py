"""How often a process of check_train_ddp deadlocks at teardown, with and without the check holding the group.

    PYTHONPATH=. .venv/bin/python bench/ddp_teardown.py [--runs 1500] [--timeout 15] [--no-hold] [--keep-ddp]

Runs the check's two-process DDP comparison (grader.checks.m09_mini_gpt_capstone._ddp_runs: two forked
gloo processes, then one process in this one) on the reference `train` `--runs` times and counts the runs
in which a process did not finish within `--timeout` seconds, printing where it was. The reference deletes
its DDP wrapper before destroy_process_group; `--keep-ddp` runs it without that line (a correct learner's
train that keeps the wrapper until it returns). Then DDP's Reducer is the process group's last owner, and
unless the check's children hold the group (`--no-hold` turns that off) torch 2.13 can join gloo's worker
threads with the GIL held while a worker waits for the GIL (see _hold_process_group).

Measured on a 2-core machine (2026-12-04): --keep-ddp --no-hold 12 of 1,000 runs stuck; --keep-ddp (the check
as graded) 0 of 2,000; the reference with `del ddp` and no hold 0 of 3,000 (the same loop, run before the hold
existed).
"""

import argparse
import inspect
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import grader.checks.m09_mini_gpt_capstone as m09  # noqa: E402
from grader.reference import reference_namespace  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=1500)
    ap.add_argument("--timeout", type=int, default=15, help="seconds before a process counts as stuck")
    ap.add_argument("--no-hold", action="store_true", help="the check's children do not hold the process group")
    ap.add_argument("--keep-ddp", action="store_true", help="the reference without its `del ddp` line")
    args = ap.parse_args()
    m09.DDP_TIMEOUT_S, m09.HOLD_PROCESS_GROUP = args.timeout, not args.no_hold
    ns = reference_namespace("09_mini_gpt_capstone")
    train = ns["train"]
    if args.keep_ddp:
        source = inspect.getsource(train)
        line = next(x for x in source.splitlines(keepends=True) if x.strip().startswith("del ddp"))
        exec(compile(source.replace(line, ""), "<reference train without del ddp>", "exec"), ns)
        train = ns["train"]
    started, stuck = time.perf_counter(), []
    for i in range(args.runs):
        try:
            m09._ddp_runs(train, i % 5)
        except RuntimeError as exc:
            stuck.append(i)
            print(f"run {i}: {exc}", flush=True)
    seconds = time.perf_counter() - started
    print(f"hold={not args.no_hold} keep_ddp={args.keep_ddp}: {len(stuck)} of {args.runs} runs stuck ({seconds:.0f} s, "
          f"{(seconds - len(stuck) * (args.timeout + 1)) / args.runs:.2f} s per finished run)")


if __name__ == "__main__":
    main()
