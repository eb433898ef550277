"""Tokens per second of module 07's `generate` with and without the KV cache (a script, not a test).

Builds the course's reference GPT (executed from the instructor notebook by grader.reference) at a modest
size on the CPU and times greedy generation of --new-tokens tokens after a short prompt, best of
--repeats runs each way. The issue's target: the cache is >= 3x faster on the 2-core machine.

    .venv/bin/python bench/kv_cache.py                     # n_layer 4, n_embd 256, block 512, 256 new tokens
    .venv/bin/python bench/kv_cache.py --new-tokens 128 --repeats 5
"""

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from deepdive.measure import best_time  # noqa: E402
from grader.reference import reference_namespace  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n-layer", type=int, default=4, help="transformer blocks")
    parser.add_argument("--n-head", type=int, default=4, help="attention heads")
    parser.add_argument("--n-embd", type=int, default=256, help="width of the residual stream")
    parser.add_argument("--block-size", type=int, default=512, help="context length of the model")
    parser.add_argument("--vocab-size", type=int, default=70, help="vocabulary size (70 = Shakespeare's characters)")
    parser.add_argument("--prompt-len", type=int, default=8, help="tokens in the prompt")
    parser.add_argument("--new-tokens", type=int, default=256, help="tokens to generate")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per setting (the best is reported)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    args = parser.parse_args()
    if args.prompt_len + args.new_tokens > args.block_size:
        parser.error("--prompt-len + --new-tokens must fit in --block-size (otherwise both runs recompute)")
    if args.threads:
        torch.set_num_threads(args.threads)

    ns = reference_namespace("07_decoder_gpt")
    config = ns["GPTConfig"](block_size=args.block_size, vocab_size=args.vocab_size, n_layer=args.n_layer,
                             n_head=args.n_head, n_embd=args.n_embd)
    torch.manual_seed(0)
    model = ns["GPT"](config).eval()
    prompt = torch.randint(0, args.vocab_size, (1, args.prompt_len), generator=torch.Generator().manual_seed(0))
    generate = ns["generate"]
    n_params = sum(p.numel() for p in model.parameters())
    print(f"GPT: n_layer {args.n_layer}, n_head {args.n_head}, n_embd {args.n_embd}, block {args.block_size} "
          f"({n_params / 1e6:.1f} M parameters), CPU, {torch.get_num_threads()} threads; greedy, batch 1, "
          f"prompt {args.prompt_len}, {args.new_tokens} new tokens, best of {args.repeats}")
    rates = {}
    for label, use_cache in (("with KV cache", True), ("without cache", False)):
        seconds = best_time(generate, model, prompt, args.new_tokens, temperature=0, use_cache=use_cache,
                            repeats=args.repeats, warmup=1)
        rates[label] = args.new_tokens / seconds
        print(f"  {label:<14}: {rates[label]:8.1f} tokens/s ({seconds:.2f} s)")
    print(f"  speed-up: {rates['with KV cache'] / rates['without cache']:.1f}x")


if __name__ == "__main__":
    main()
