"""Assertion helpers for the hidden checks: failures must read well in a learner's feedback."""

import torch


def generator(seed: int) -> torch.Generator:
    """A private CPU generator, so a check never depends on (or disturbs) the global RNG."""
    return torch.Generator().manual_seed(seed)


def assert_shape(t, expected: tuple, what: str, hint: str = "") -> None:
    if not isinstance(t, torch.Tensor):
        raise AssertionError(f"{what}: expected a torch.Tensor, got {type(t).__name__}")
    if tuple(t.shape) != tuple(expected):
        msg = f"{what}: expected shape {tuple(expected)}, got {tuple(t.shape)}"
        raise AssertionError(msg + (f" ({hint})" if hint else ""))


def assert_close(actual, expected, what: str, atol: float = 1e-5, rtol: float = 1e-4, hint: str = "") -> None:
    """Compare with the oracle; on failure say how far off and where, not just 'not equal'."""
    assert_shape(actual, tuple(expected.shape), what)
    actual = actual.detach().to(expected.dtype)
    expected = expected.detach()
    if not torch.isfinite(actual).all() and torch.isfinite(expected).all():
        bad = tuple(int(i) for i in torch.nonzero(~torch.isfinite(actual))[0])
        raise AssertionError(f"{what}: contains NaN or inf (first at index {bad}) where the reference is finite"
                             + (f". Hint: {hint}" if hint else ""))
    if not torch.allclose(actual, expected, atol=atol, rtol=rtol):
        diff = torch.nan_to_num((actual - expected).abs(), nan=float("inf"))
        idx = tuple(int(i) for i in torch.nonzero(diff == diff.max())[0])
        msg = (
            f"{what}: does not match the reference implementation; largest difference "
            f"{diff.max().item():.3g} at index {idx} (yours {actual[idx].item():.5g}, "
            f"expected {expected[idx].item():.5g})"
        )
        raise AssertionError(msg + (f". Hint: {hint}" if hint else ""))
