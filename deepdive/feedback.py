"""Visible tests: call a learner's function and turn a crash into a message a learner can act on.

    out, weights = call(scaled_dot_product_attention, q, k, v)

A bare PyTorch "size of tensor a (2) must match the size of tensor b (3) at non-singleton
dimension 0" teaches nothing; the same error reported as "scaled_dot_product_attention(q (2, 3, 4),
k (2, 5, 4), v (2, 5, 6)) raised RuntimeError: ..." names the call and the shapes that went in.
"""

import torch


def describe(value) -> str:
    """A short description of an argument: tensors by shape and dtype, modules by class."""
    if isinstance(value, torch.Tensor):
        kind = "" if value.dtype == torch.float32 else f" {str(value.dtype).removeprefix('torch.')}"
        return f"{tuple(value.shape)}{kind}"
    if isinstance(value, torch.nn.Module):
        return type(value).__name__
    if isinstance(value, (tuple, list)):
        inner = ", ".join(describe(v) for v in value[:4]) + (", ..." if len(value) > 4 else "")
        return f"[{inner}]" if isinstance(value, list) else f"({inner})"
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def call(fn, *args, hint: str = "", **kwargs):
    """`fn(*args, **kwargs)`; if it raises, an AssertionError that names the call, its inputs' shapes,
    the error, and `hint` (the likely cause, in the learner's words)."""
    if isinstance(fn, torch.nn.Module):  # a model called like a function: name its class
        name = f"{type(fn).__name__}(...)"
    else:
        name = getattr(fn, "__qualname__", getattr(fn, "__name__", repr(fn))).split("<locals>.")[-1]
    try:
        return fn(*args, **kwargs)
    except NotImplementedError:
        raise AssertionError(f"{name} is not written yet: replace `raise NotImplementedError()` "
                             "with your code") from None
    except Exception as exc:
        shown = [describe(a) for a in args] + [f"{k}={describe(v)}" for k, v in kwargs.items()]
        message = f"{name}({', '.join(shown)}) raised {type(exc).__name__}: {exc}"
        raise AssertionError(message + (f"\nLikely cause: {hint}" if hint else "")) from exc
