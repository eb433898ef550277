"""Measuring code: wall time (best of several runs, waiting for the GPU) and the largest tensor a
piece of code creates. Used by the notebooks' experiments and by the graded checks alike."""

import time

import torch
from torch.overrides import TorchFunctionMode


def synchronize(device: torch.device | str | None = None) -> None:
    """Wait until the accelerator has finished its queued work (a no-op on CPU)."""
    kind = torch.device(device).type if device is not None else None
    if kind in (None, "cuda") and torch.cuda.is_available():
        torch.cuda.synchronize()
    if kind in (None, "mps") and getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        torch.mps.synchronize()


def best_time(fn, *args, repeats: int = 3, warmup: int = 1, device=None, **kwargs) -> float:
    """Best-of-`repeats` wall time of `fn(*args, **kwargs)` in seconds, after `warmup` calls.

    The minimum is the least disturbed run (other programs only ever add time); the device is
    synchronised before the clock starts and after the call, because GPU calls return before
    their work is done.
    """
    for _ in range(warmup):
        fn(*args, **kwargs)
    best = float("inf")
    for _ in range(repeats):
        synchronize(device)
        t0 = time.perf_counter()
        fn(*args, **kwargs)
        synchronize(device)
        best = min(best, time.perf_counter() - t0)
    return best


class LargestTensor(TorchFunctionMode):
    """`with LargestTensor() as watch: ...` records the largest tensor any torch function, method
    or operator called inside returns: `watch.numel`, `watch.shape`, `watch.op` (its name)."""

    def __init__(self):
        super().__init__()
        self.numel, self.shape, self.op = 0, None, None

    def __torch_function__(self, func, types, args=(), kwargs=None):
        result = func(*args, **(kwargs or {}))
        for t in result if isinstance(result, (tuple, list)) else (result,):
            if isinstance(t, torch.Tensor) and t.numel() > self.numel:
                self.numel, self.shape = t.numel(), tuple(t.shape)
                self.op = getattr(func, "__name__", str(func))
        return result
