"""Seeds and devices: the two lines every notebook starts with."""

import os
import random

import numpy as np
import torch


def set_seed(seed: int = 1337) -> None:
    """Seed Python's `random`, NumPy and torch (CPU and every GPU) with one number.

    Notebooks call this once at the top; graded checks never rely on it and build their own
    `torch.Generator` so that a grade does not depend on what ran before.
    """
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    os.environ["PYTHONHASHSEED"] = str(seed)


def get_device(prefer: str | None = None) -> torch.device:
    """Pick the fastest available device: cuda, then mps, then cpu.

    `prefer` (or the environment variable DEEPDIVE_DEVICE) forces one, e.g. "cpu" for the
    CPU defaults that the course's time budgets are measured on.
    """
    choice = prefer or os.environ.get("DEEPDIVE_DEVICE")
    if choice:
        return torch.device(choice)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")
