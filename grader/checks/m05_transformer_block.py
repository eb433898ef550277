"""Hidden checks of module 05 (`05_transformer_block`): RMSNorm, the feed-forward network, the transformer
block with both norm placements and both norms, the block's multiply-adds, and a mixture-of-experts
feed-forward layer.

Oracles: `torch.nn.RMSNorm` for RMSNorm and for the block's norm="rmsnorm" (swapped into
nn.TransformerEncoderLayer in place of its LayerNorms); `torch.utils.flop_counter.FlopCounterMode` on
nn.TransformerEncoderLayer for block_flops; `nn.Sequential(nn.Linear, nn.ReLU | nn.GELU, nn.Linear)`
for the ReLU/GELU FeedForward and transformers' `LlamaMLP` for SwiGLU (deepdive.oracles.llama_mlp);
`nn.TransformerEncoderLayer(batch_first=True, dropout=0)` for the block
(deepdive.oracles.torch_encoder_layer), pre- and post-norm, ReLU and GELU, with and without masks.
No library has a top-k MoE layer with this layout, so MoEFeedForward is checked through its defining
properties: the routing is the top-k of the softmax of the router's logits (computed here from the router
weights), renormalised; the output is the routing-weighted sum of the chosen experts' outputs; one expert
gives that expert's output; top_k = n_experts gives the dense softmax mixture.

How the learner's classes are run (grader/trusted.py): a class is a proxy, so everything that needs a
live module happens in an `on_learner_side` thunk. The check draws the weights and inputs from its
own generator, the thunk builds the learner's module (with the global RNG forked, so neither the
check's generator nor the notebook's RNG moves), copies the check's weights in by name, and returns
plain data: the module's state_dict and its outputs on the check's inputs. The judged part rebuilds
the library oracle from the recorded state_dict (after checking every tensor's name and shape) and
compares.

One bug costs once: the block check swaps the learner's `block.ff` for a library FFN with the same
weights before running forward (a FeedForward bug is judged by check_FeedForward only), and the MoE
checks compare with the learner's own experts' outputs (FeedForward again stays out of it).
"""

import torch
import torch.nn.functional as F
from torch import nn

from deepdive.oracles import llama_mlp, torch_encoder_layer
from grader.checks._common import (
    assert_close,
    assert_shape,
    build_seeded,
    generator,
    learner_call,
    load_weights,
)
from grader.trusted import LearnerRaised, live, on_learner_side, trusted_check

ACTIVATIONS = ("relu", "gelu", "swiglu")


# --------------------------------------------------------------------------------------------- helpers
def _build(cls, seed, *args, **kwargs):
    """On the learner's side: `cls(*args, **kwargs)` in eval mode, its own initial weights drawn from
    `seed` with the global RNG forked (the notebook's random state and the check's generator stay put)."""
    module = build_seeded(cls, seed, *args, **kwargs)
    if not isinstance(module, nn.Module):
        raise TypeError(f"{getattr(cls, '__name__', cls)}(...) is not an nn.Module")
    return module.eval()


def _state(module) -> dict:
    """A module's state_dict as plain data: {name: tensor}."""
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _recorded(state, expected: dict, what: str) -> dict:
    """The tensors named in `expected` ({name: shape}) from a recorded state_dict, checked before use."""
    if not isinstance(state, dict):
        raise AssertionError(f"{what}: no state_dict came back")
    out = {}
    for name, shape in expected.items():
        t = state.get(name)
        if not (isinstance(t, torch.Tensor) and t.is_floating_point() and tuple(t.shape) == tuple(shape)):
            raise AssertionError(f"{what}: expected a parameter `{name}` of shape {tuple(shape)}")
        out[name] = t.float()
    return out


def _linear(weight, bias) -> nn.Linear:
    lin = nn.Linear(weight.shape[1], weight.shape[0])
    with torch.no_grad():
        lin.weight.copy_(weight)
        lin.bias.copy_(bias)
    return lin


def _tensors(value, n: int, what: str) -> tuple:
    if not (isinstance(value, tuple | list) and len(value) == n and all(isinstance(t, torch.Tensor) for t in value)):
        raise AssertionError(f"{what}: expected {n} output tensors to come back")
    return tuple(value)


def _ffn_weights(g, d, d_ff, activation, prefix="") -> dict:
    """Random FFN weights, large enough that the activations' nonlinear parts matter (pre-activations
    of standard deviation about 2, where GELU and its tanh approximation differ by ~1e-4)."""
    w = {f"{prefix}fc1.weight": torch.randn(d_ff, d, generator=g) * 2 / d**0.5,
         f"{prefix}fc1.bias": torch.randn(d_ff, generator=g) * 0.5,
         f"{prefix}fc2.weight": torch.randn(d, d_ff, generator=g) / d_ff**0.5,
         f"{prefix}fc2.bias": torch.randn(d, generator=g) * 0.1}
    if activation == "swiglu":
        w[f"{prefix}gate.weight"] = torch.randn(d_ff, d, generator=g) * 2 / d**0.5
        w[f"{prefix}gate.bias"] = torch.randn(d_ff, generator=g) * 0.5
    return w


def _ffn_shapes(d, d_ff, activation, prefix="") -> dict:
    shapes = {f"{prefix}fc1.weight": (d_ff, d), f"{prefix}fc1.bias": (d_ff,), f"{prefix}fc2.weight": (d, d_ff),
              f"{prefix}fc2.bias": (d,)}
    if activation == "swiglu":
        shapes |= {f"{prefix}gate.weight": (d_ff, d), f"{prefix}gate.bias": (d_ff,)}
    return shapes


class _LibraryFFN(nn.Module):
    """fc2(act(fc1(x))) from library layers: nn.Linear, nn.ReLU / nn.GELU (exact), nn.Linear."""

    def __init__(self, w: dict, activation: str, prefix=""):
        super().__init__()
        self.fc1 = _linear(w[f"{prefix}fc1.weight"], w[f"{prefix}fc1.bias"])
        self.act = nn.ReLU() if activation == "relu" else nn.GELU()
        self.fc2 = _linear(w[f"{prefix}fc2.weight"], w[f"{prefix}fc2.bias"])

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class _SwiGLUWeights(nn.Module):
    """gate / fc1 / fc2 holders, the layout deepdive.oracles.llama_mlp maps into LlamaMLP."""

    def __init__(self, w: dict):
        super().__init__()
        self.gate = _linear(w["gate.weight"], w["gate.bias"])
        self.fc1 = _linear(w["fc1.weight"], w["fc1.bias"])
        self.fc2 = _linear(w["fc2.weight"], w["fc2.bias"])


def _run_ffn(FeedForward, seed, d, d_ff, activation, weights, inputs):
    """On the learner's side: build FeedForward, copy the weights in, return (state_dict, outputs)."""
    ff = _build(FeedForward, seed, d, d_ff, activation=activation)
    load_weights(ff, weights)
    with torch.no_grad():
        return _state(ff), tuple(ff(x) for x in inputs)


def _ffn_outputs(FeedForward, seed, d, d_ff, activation, weights, inputs):
    try:
        state, outs = on_learner_side(f"FeedForward({d}, {d_ff}, activation={activation!r})", lambda: _run_ffn(
            live(FeedForward), seed, d, d_ff, activation, weights, inputs))
    except LearnerRaised as exc:
        raise exc.explain(f"FeedForward({d}, {d_ff}, activation={activation!r}) and its forward") from None
    what = f"FeedForward({d}, {d_ff}, activation={activation!r})"
    return _recorded(state, _ffn_shapes(d, d_ff, activation), what), _tensors(outs, len(inputs), what)


# ---------------------------------------------------------------------------------- exercise 1: RMSNorm
RMS_EPS = 1e-6  # the contract's default eps (transformers' LlamaRMSNorm default)


def _run_rmsnorm(RMSNorm, seed, d, eps, weight, inputs):
    """On the learner's side: RMSNorm(d, eps=eps), its initial weight, then the check's weight copied in and the
    outputs on the check's inputs."""
    norm = _build(RMSNorm, seed, d, eps=eps)
    initial = _state(norm)
    load_weights(norm, {"weight": weight}, layout="weight (the learnable scale, shape (d_model,))")
    with torch.no_grad():
        return initial, tuple(norm(x) for x in inputs)


def _rmsnorm_outputs(RMSNorm, seed, d, eps, weight, inputs):
    call = f"RMSNorm({d}, eps={eps})"
    result = learner_call(call, lambda: _run_rmsnorm(live(RMSNorm), seed, d, eps, weight, inputs),
                          f"{call}, its weight and its forward")
    if not (isinstance(result, tuple) and len(result) == 2):
        raise AssertionError(f"{call}: no result came back")
    initial, outs = result
    return initial, _tensors(outs, len(inputs), call)


def _rms_wrong(x, weight, eps):
    """What the common wrong versions give on x: {description: tensor}."""
    ms = x.pow(2).mean(-1, keepdim=True)
    mu = x.mean(-1, keepdim=True)
    var = x.var(-1, unbiased=False, keepdim=True)
    return {"the mean subtracted first (that is LayerNorm without its shift, not RMSNorm)":
            (x - mu) / torch.sqrt(var + eps) * weight,
            "eps added outside the square root: x / (sqrt(mean(x^2)) + eps)": x / (ms.sqrt() + eps) * weight,
            "eps left out: x / sqrt(mean(x^2))": x / ms.sqrt() * weight,
            "no learnable scale applied (weight unused)": x / torch.sqrt(ms + eps),
            "the L2 norm sqrt(sum(x^2)) instead of the root-mean-square sqrt(mean(x^2))":
            x / torch.sqrt(x.pow(2).sum(-1, keepdim=True) + eps) * weight}


def _rms_hint(out, x, weight, eps):
    for why, y in _rms_wrong(x, weight, eps).items():
        if out.shape == y.shape and torch.allclose(out.float(), y, atol=1e-5, rtol=1e-4):
            return f"yours computes {why}"
    return "RMSNorm(x) = weight * x / sqrt(mean(x^2 over the last axis) + eps)"


@trusted_check(points=2)
def check_RMSNorm(RMSNorm, seed=0):
    """Against torch.nn.RMSNorm(d_model, eps) with the same learnable weight, on (B, T, C) inputs whose tokens have
    means far from 0 (so a mean subtracted shows) and on (N, C) inputs; the weight is a parameter of shape (d_model,)
    that starts at ones."""
    g = generator(seed)
    d = 12
    weight = 1 + 0.5 * torch.randn(d, generator=g)
    inputs = (3 * torch.randn(2, 5, 1, generator=g) + torch.randn(2, 5, d, generator=g), torch.randn(7, d, generator=g))
    initial, outs = _rmsnorm_outputs(RMSNorm, seed, d, RMS_EPS, weight, inputs)
    w0 = _recorded(initial, {"weight": (d,)}, f"RMSNorm({d})")["weight"]
    if not torch.equal(w0, torch.ones(d)):
        raise AssertionError(f"RMSNorm({d}).weight should start at ones (as nn.RMSNorm and LlamaRMSNorm do), so that "
                             "a fresh norm only rescales; got values from "
                             f"{w0.min():.3g} to {w0.max():.3g}")
    oracle = nn.RMSNorm(d, eps=RMS_EPS)
    with torch.no_grad():
        oracle.weight.copy_(weight)
    for x, out in zip(inputs, outs):
        what = f"RMSNorm({d}, eps={RMS_EPS}) on x {tuple(x.shape)} against nn.RMSNorm"
        assert_shape(out, tuple(x.shape), what, "RMSNorm keeps the shape (..., d_model)")
        with torch.no_grad():
            expected = oracle(x)
        assert_close(out, expected, what, atol=1e-5, rtol=1e-4, hint=_rms_hint(out, x, weight, RMS_EPS))


@trusted_check(points=1)
def check_RMSNorm_eps(RMSNorm, seed=0):
    """`eps` is added to the mean of squares inside the square root, as nn.RMSNorm and LlamaRMSNorm do: checked
    with eps = 0.1 on small inputs (mean of squares about 0.01), where eps decides the output."""
    g = generator(seed)
    d, eps = 8, 0.1
    weight = 1 + 0.5 * torch.randn(d, generator=g)
    x = 0.1 * torch.randn(3, 4, d, generator=g)  # (B, T, C): mean(x^2) ~ 0.01, well below eps
    _, (out,) = _rmsnorm_outputs(RMSNorm, seed, d, eps, weight, (x,))
    oracle = nn.RMSNorm(d, eps=eps)
    with torch.no_grad():
        oracle.weight.copy_(weight)
        expected = oracle(x)
    assert_close(out, expected, f"RMSNorm({d}, eps={eps}) on small inputs x {tuple(x.shape)} against nn.RMSNorm",
                 atol=1e-5, rtol=1e-4, hint=_rms_hint(out, x, weight, eps) + " (use the eps argument you were given)")


# ------------------------------------------------------------------------------- exercise 2: FeedForward
@trusted_check(points=2)
def check_FeedForward(FeedForward, seed=0):
    """ReLU and GELU: outputs on (B, T, C) and (N, C) inputs equal nn.Sequential(nn.Linear, nn.ReLU /
    nn.GELU, nn.Linear) with the same weights; with fc1 = fc2 = identity the output is the activation
    itself (exact erf GELU, as nn.TransformerEncoderLayer's "gelu", not the tanh approximation)."""
    g = generator(seed)
    d, d_ff = 12, 28
    for activation in ("relu", "gelu"):
        weights = _ffn_weights(g, d, d_ff, activation)
        inputs = (torch.randn(2, 5, d, generator=g), torch.randn(7, d, generator=g))
        state, outs = _ffn_outputs(FeedForward, seed, d, d_ff, activation, weights, inputs)
        with torch.random.fork_rng(devices=[]):
            oracle = _LibraryFFN(state, activation)
        for x, out in zip(inputs, outs):
            what = f"FeedForward(activation={activation!r}) on x {tuple(x.shape)}"
            assert_shape(out, tuple(x.shape), what, "the FFN maps (..., d_model) to (..., d_model)")
            with torch.no_grad():
                expected = oracle(x)
            assert_close(out, expected, what, atol=1e-5, rtol=1e-5,
                         hint=f"out = fc2({activation}(fc1(x))), with {'F.gelu (exact)' if activation == 'gelu' else 'F.relu'}")

        # The activation alone: identity projections, inputs on a grid over [-4, 4].
        n = 9
        eye = {"fc1.weight": torch.eye(n), "fc1.bias": torch.zeros(n), "fc2.weight": torch.eye(n),
               "fc2.bias": torch.zeros(n)}
        grid = torch.linspace(-4, 4, 11 * n).reshape(11, n)
        _, (out,) = _ffn_outputs(FeedForward, seed, n, n, activation, eye, (grid,))
        expected = F.relu(grid) if activation == "relu" else F.gelu(grid)
        hint = ("GELU must be the exact x * Phi(x) (F.gelu, nn.GELU()), not the tanh approximation"
                if activation == "gelu" else "relu(x) = max(x, 0)")
        assert_close(out, expected, f"FeedForward(activation={activation!r}) with fc1 = fc2 = identity "
                     "(the output is the activation of x)", atol=1e-5, rtol=1e-5, hint=hint)


@trusted_check(points=2)
def check_FeedForward_swiglu(FeedForward, seed=0):
    """SwiGLU: outputs equal transformers' LlamaMLP, down_proj(silu(gate_proj(x)) * up_proj(x)), with
    gate -> gate_proj, fc1 -> up_proj, fc2 -> down_proj (deepdive.oracles.llama_mlp)."""
    g = generator(seed)
    for d, d_ff in ((12, 20), (8, 8)):
        weights = _ffn_weights(g, d, d_ff, "swiglu")
        inputs = (torch.randn(2, 5, d, generator=g), torch.randn(6, d, generator=g))
        state, outs = _ffn_outputs(FeedForward, seed, d, d_ff, "swiglu", weights, inputs)
        with torch.random.fork_rng(devices=[]):
            oracle = llama_mlp(_SwiGLUWeights(state))
        for x, out in zip(inputs, outs):
            what = f"FeedForward({d}, {d_ff}, activation='swiglu') on x {tuple(x.shape)}"
            assert_shape(out, tuple(x.shape), what)
            with torch.no_grad():
                expected = oracle(x)
            assert_close(out, expected, what, atol=1e-5, rtol=1e-5,
                         hint="out = fc2(F.silu(gate(x)) * fc1(x)): SiLU on the gate branch only, "
                              "multiplied by the linear fc1 branch")


DROPOUT_P = 0.5


def _run_ffn_dropout(FeedForward, seed, n, p, x):
    """On the learner's side: FeedForward(n, 2n, "relu", dropout=p) with fc1 = [I; I] (every input copied to two
    hidden units), fc2 = [I, I] / 2 (every output the mean of its two copies), zero biases; x > 0, so the hidden
    activations are x twice. Returns (output in training mode, output in eval mode), global RNG forked."""
    ff = _build(FeedForward, seed, n, 2 * n, activation="relu", dropout=p)
    eye = torch.eye(n)
    load_weights(ff, {"fc1.weight": torch.cat([eye, eye]), "fc1.bias": torch.zeros(2 * n),
                      "fc2.weight": torch.cat([eye, eye], dim=1) / 2, "fc2.bias": torch.zeros(n)})
    with torch.no_grad(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        ff.train()
        y_train = ff(x)
        ff.eval()
        return y_train, ff(x)


@trusted_check(points=1)
def check_FeedForward_dropout(FeedForward, seed=0):
    """`dropout=p` is inverted dropout on the hidden activations, in training mode only: with each output the mean
    of two hidden copies of a positive input, y / x takes the values 0, 1 and 2 (both copies dropped, one kept and
    scaled by 1 / (1 - p) = 2, both kept) in about p^2, 2p(1 - p), (1 - p)^2 of the places, and eval mode gives x.
    (No dropout: always 1; dropout on the output instead: only 0 and 2; without the 1 / (1 - p): 0, 0.5, 1.)"""
    n, rows = 16, 256
    x = 1.0 + torch.rand(rows, n, generator=generator(seed))  # (rows, n), all > 0: relu passes them unchanged
    call = f"FeedForward({n}, {2 * n}, activation='relu', dropout={DROPOUT_P})"
    y_train, y_eval = _tensors(learner_call(f"{call}: train and eval mode", lambda: _run_ffn_dropout(
        live(FeedForward), seed, n, DROPOUT_P, x), call), 2, call)
    assert_shape(y_train, (rows, n), f"{call} in training mode")
    assert_shape(y_eval, (rows, n), f"{call} in eval mode")
    if not torch.allclose(y_eval.float(), x, atol=1e-5, rtol=1e-5):
        raise AssertionError(f"{call} in eval mode (model.eval()) changed its output: dropout must be off in eval "
                             "mode (nn.Dropout does this by itself; with F.dropout pass training=self.training)")
    ratio = y_train.float() / x  # (rows, n)
    values = torch.tensor([0.0, 1.0, 2.0])
    nearest = (ratio[..., None] - values).abs().argmin(-1)  # (rows, n): index of the nearest allowed value
    off = (ratio - values[nearest]).abs().max().item()
    shares = [(nearest == i).float().mean().item() for i in range(3)]
    expected = [DROPOUT_P**2, 2 * DROPOUT_P * (1 - DROPOUT_P), (1 - DROPOUT_P) ** 2]
    if shares[1] == 1.0 and off < 1e-4:
        raise AssertionError(f"{call} in training mode dropped nothing: apply dropout with probability `dropout` to "
                             "the hidden activations, between the activation and fc2 (nn.Dropout(dropout))")
    if off > 1e-4 or any(abs(a - b) > 0.08 for a, b in zip(shares, expected)):
        halves = torch.isclose(ratio, torch.tensor(0.5), atol=1e-4).any().item()
        hint = ("values of 0.5 mean the kept activations were not scaled by 1 / (1 - p): use nn.Dropout / F.dropout"
                if halves else "dropout belongs on the hidden activations (after the activation, before fc2), "
                "each hidden value dropped on its own with probability p and the kept ones scaled by 1 / (1 - p)")
        raise AssertionError(
            f"{call} in training mode: with each output the mean of two hidden copies of x, output / x should be 0, 1 "
            f"or 2 in shares near {', '.join(f'{e:.2f}' for e in expected)}; got shares "
            f"{', '.join(f'{v:.2f}' for v in shares)} (largest distance from 0, 1, 2: {off:.3g}): {hint}")


def _built_with(cls, *args, **kwargs):
    """On the learner's side: ("ValueError", its message) when cls(*args, **kwargs) raises ValueError, else
    ("no error", "")."""
    try:
        cls(*args, **kwargs)
    except ValueError as exc:
        return "ValueError", str(exc)
    return "no error", ""


def _assert_refused(result, call: str, value: str, what: str, instead: str) -> None:
    """Judge `_built_with`'s record: `call`, given an unknown `what` named `value`, must raise a ValueError that
    names it (rather than silently `instead`)."""
    if not (isinstance(result, tuple) and len(result) == 2 and all(isinstance(s, str) for s in result)):
        raise AssertionError(f"{call}: no result came back")
    kind, message = result
    if kind != "ValueError":
        raise AssertionError(f"{call} did not raise: an unknown {what} must raise ValueError (a typo should fail "
                             f"loudly, not silently {instead})")
    if value not in message:
        raise AssertionError(f"{call} raised ValueError({message!r}): say which {what} is unknown (and which ones "
                             "exist)")


@trusted_check(points=1)
def check_FeedForward_unknown_activation(FeedForward):
    """FeedForward(8, 16, activation="swish") raises a ValueError whose message names "swish"."""
    call = "FeedForward(8, 16, activation='swish')"
    try:
        result = on_learner_side(call, lambda: _built_with(live(FeedForward), 8, 16, activation="swish"))
    except LearnerRaised as exc:
        raise AssertionError(exc.describe(call) + "\n  expected a ValueError naming the unknown activation") from None
    _assert_refused(result, call, "swish", "activation", "train another model")


# -------------------------------------------------------------------------- exercise 3: TransformerBlock
def _block_weights(g, d, d_ff):
    w = {}
    for name in ("q_proj", "k_proj", "v_proj", "out_proj"):
        w[f"attn.{name}.weight"] = torch.randn(d, d, generator=g) / d**0.5
        w[f"attn.{name}.bias"] = torch.randn(d, generator=g) * 0.1
    for name in ("ln1", "ln2"):  # not 1 and 0, so that swapping ln1 and ln2 shows
        w[f"{name}.weight"] = 1 + 0.3 * torch.randn(d, generator=g)
        w[f"{name}.bias"] = 0.2 * torch.randn(d, generator=g)
    w |= _ffn_weights(g, d, d_ff, "gelu", prefix="ff.")
    return w


def _block_shapes(d, d_ff):
    shapes = {f"attn.{n}.{p}": ((d, d) if p == "weight" else (d,))
              for n in ("q_proj", "k_proj", "v_proj", "out_proj") for p in ("weight", "bias")}
    shapes |= {f"{n}.{p}": (d,) for n in ("ln1", "ln2") for p in ("weight", "bias")}
    return shapes | _ffn_shapes(d, d_ff, "gelu", prefix="ff.")


class _CourseBlockLayout(nn.Module):
    """Holders in the course's block layout (attn.q/k/v/out_proj, ln1, ln2, ff.fc1/fc2), filled from a
    recorded state_dict, for deepdive.oracles.torch_encoder_layer."""

    def __init__(self, w: dict, d: int):
        super().__init__()
        self.attn = nn.Module()
        for name in ("q_proj", "k_proj", "v_proj", "out_proj"):
            setattr(self.attn, name, _linear(w[f"attn.{name}.weight"], w[f"attn.{name}.bias"]))
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        with torch.no_grad():
            for name in ("ln1", "ln2"):
                getattr(self, name).weight.copy_(w[f"{name}.weight"])
                getattr(self, name).bias.copy_(w[f"{name}.bias"])
        self.ff = _LibraryFFN(w, "gelu", prefix="ff.")


def _run_block(TransformerBlock, seed, cfg, norm_first, activation, weights, x, masks):
    """On the learner's side: build the block, copy the weights in, record its state_dict, then replace
    block.ff by a library FFN with the same weights (so that only the block's wiring is judged) and
    run forward once per mask (None = no mask argument)."""
    d, n_heads, d_ff = cfg
    block = _build(TransformerBlock, seed, d, n_heads, d_ff, norm_first=norm_first, activation=activation)
    load_weights(block, weights)
    state = _state(block)
    block.ff = _LibraryFFN(weights, activation, prefix="ff.").eval()
    with torch.no_grad():
        return state, tuple(block(x) if m is None else block(x, m) for m in masks)


def _oracle_block(layer, x, mask):
    """nn.TransformerEncoderLayer on one of our masks (True = may attend; theirs is True = blocked)."""
    if mask is None:
        return layer(x)
    if mask.dim() == 2:  # (T, T)
        return layer(x, src_mask=~mask)
    return layer(x, src_key_padding_mask=~mask[:, 0, 0, :])  # (B, 1, 1, T) -> (B, T)


@trusted_check(points=4)
def check_TransformerBlock(TransformerBlock, seed=0):
    """Against nn.TransformerEncoderLayer(batch_first=True, dropout=0) with the same weights
    (deepdive.oracles.torch_encoder_layer): norm_first True and False, ReLU and GELU, with no mask, a
    causal (T, T) mask, a random (T, T) mask and a key-padding (B, 1, 1, T) mask.

    Before forward runs, block.ff is replaced by a library FFN with the same weights: a FeedForward bug
    costs points in check_FeedForward only, and this check judges the block itself (norms, residuals,
    their order, the mask reaching attention). block.attn is the notebook's MultiHeadAttention."""
    g = generator(seed)
    B, T, d, n_heads, d_ff = 2, 6, 16, 4, 36
    x = torch.randn(B, T, d, generator=g)
    causal = torch.ones(T, T, dtype=torch.bool).tril()
    random_mask = (torch.rand(T, T, generator=g) > 0.4) | torch.eye(T, dtype=torch.bool)  # every row sees itself
    padding = (torch.arange(T) < torch.tensor([T, 3])[:, None])[:, None, None, :]  # (B, 1, 1, T)
    masks = (None, causal, random_mask, padding)
    labels = ("no mask", "a causal (T, T) mask", "a random (T, T) mask", "a key-padding (B, 1, 1, T) mask")
    for norm_first in (True, False):
        for activation in ("relu", "gelu"):
            weights = _block_weights(g, d, d_ff)
            call = f"TransformerBlock({d}, {n_heads}, {d_ff}, norm_first={norm_first}, activation={activation!r})"
            try:
                state, outs = on_learner_side(call, lambda nf=norm_first, act=activation, w=weights: _run_block(
                    live(TransformerBlock), seed, (d, n_heads, d_ff), nf, act, w, x, masks))
            except LearnerRaised as exc:
                raise exc.explain(f"{call} and its forward") from None
            outs = _tensors(outs, len(masks), call)
            w = _recorded(state, _block_shapes(d, d_ff), call)
            with torch.random.fork_rng(devices=[]):
                layer = torch_encoder_layer(_CourseBlockLayout(w, d), n_heads, d_ff, activation, norm_first)
            if norm_first:
                hint = ("pre-norm: x = x + attn(ln1(x), mask), then x = x + ff(ln2(x)); the residual adds the "
                        "un-normalised x")
            else:
                hint = "post-norm: x = ln1(x + attn(x, mask)), then x = ln2(x + ff(x))"
            for mask, label, out in zip(masks, labels, outs):
                what = f"{call} with {label}"
                assert_shape(out, (B, T, d), what, "a block maps (B, T, C) to (B, T, C)")
                expected = _oracle_block(layer, x, mask).detach()
                extra = "" if mask is None else "; pass mask on to self.attn"
                assert_close(out, expected, what, hint=hint + extra)


def _block_ff_and_feedforward(TransformerBlock, FeedForward, seed, cfg, activation, z):
    """On the learner's side: block.ff next to FeedForward(d, d_ff, activation), same weights."""
    d, n_heads, d_ff = cfg
    block = _build(TransformerBlock, seed, d, n_heads, d_ff, activation=activation)
    ff = _build(FeedForward, seed + 1, d, d_ff, activation=activation)
    own, asked = sorted(block.ff.state_dict()), sorted(ff.state_dict())
    if own != asked:
        return own, asked, None, None
    block.ff.load_state_dict(ff.state_dict())
    with torch.no_grad():
        return own, asked, block.ff(z), ff(z)


@trusted_check(points=1)
def check_TransformerBlock_uses_FeedForward(TransformerBlock, FeedForward, seed=0):
    """block.ff is your FeedForward with the block's activation: for "relu", "gelu" and "swiglu" it has the
    parameters of FeedForward(d_model, d_ff, activation) and, given the same weights, the same outputs.
    (Both sides are your code, so this holds whether or not FeedForward itself is right.)"""
    g = generator(seed)
    d, n_heads, d_ff = 8, 2, 12
    z = torch.randn(3, 4, d, generator=g)
    for activation in ACTIVATIONS:
        call = f"TransformerBlock({d}, {n_heads}, {d_ff}, activation={activation!r})"
        try:
            result = on_learner_side(call + ".ff", lambda act=activation: _block_ff_and_feedforward(
                live(TransformerBlock), live(FeedForward), seed, (d, n_heads, d_ff), act, z))
        except LearnerRaised as exc:
            raise exc.explain(f"{call}.ff next to FeedForward({d}, {d_ff}, activation={activation!r})") from None
        if not (isinstance(result, tuple) and len(result) == 4 and all(isinstance(k, list) for k in result[:2])):
            raise AssertionError(f"{call}.ff: no result came back")
        own, asked, out_block, out_ff = result
        if own != asked:
            raise AssertionError(
                f"{call}.ff has the parameters {own}, but FeedForward({d}, {d_ff}, activation={activation!r}) has "
                f"{asked}: build self.ff = FeedForward(d_model, d_ff, activation=activation, dropout=dropout)")
        out_block, out_ff = _tensors((out_block, out_ff), 2, f"{call}.ff")
        assert_close(out_block, out_ff, f"{call}.ff(z) against FeedForward(..., activation={activation!r})(z) "
                     "with the same weights", hint="pass the block's activation on to its FeedForward")


def _run_block_rmsnorm(TransformerBlock, seed, cfg, norm_first, weights, x, masks):
    """On the learner's side: TransformerBlock(..., norm="rmsnorm"), the weights copied in, its state_dict; then
    ln1 / ln2 replaced by torch.nn.RMSNorm and ff by a library FFN, each with the block's own weights (one bug costs
    once: RMSNorm and FeedForward are judged by their own checks), and forward once per mask."""
    d, n_heads, d_ff = cfg
    block = _build(TransformerBlock, seed, d, n_heads, d_ff, norm_first=norm_first, norm="rmsnorm")
    load_weights(block, weights)
    state = _state(block)
    for name in ("ln1", "ln2"):
        lib = nn.RMSNorm(d, eps=RMS_EPS)
        with torch.no_grad():
            lib.weight.copy_(weights[f"{name}.weight"])
        setattr(block, name, lib)
    block.ff = _LibraryFFN(weights, "gelu", prefix="ff.").eval()
    with torch.no_grad():
        return state, tuple(block(x) if m is None else block(x, m) for m in masks)


@trusted_check(points=2)
def check_TransformerBlock_rmsnorm(TransformerBlock, seed=0):
    """norm="rmsnorm": ln1 and ln2 are RMSNorms (a scale `weight` (C,), no shift `bias`), and the block equals
    nn.TransformerEncoderLayer(batch_first=True, dropout=0) with its two LayerNorms replaced by torch.nn.RMSNorm
    holding the block's weights, pre- and post-norm, with no mask and a causal mask (block.ln1 / ln2 / ff are
    swapped for library modules with the same weights before forward, so only the wiring is judged); an unknown
    norm ("batchnorm") raises ValueError naming it."""
    g = generator(seed)
    B, T, d, n_heads, d_ff = 2, 5, 12, 3, 20
    x = torch.randn(B, T, d, generator=g)
    masks = (None, torch.ones(T, T, dtype=torch.bool).tril())
    labels = ("no mask", "a causal (T, T) mask")
    for norm_first in (True, False):
        weights = _block_weights(g, d, d_ff)
        del weights["ln1.bias"], weights["ln2.bias"]
        call = f"TransformerBlock({d}, {n_heads}, {d_ff}, norm_first={norm_first}, norm='rmsnorm')"
        state, outs = learner_call(call, lambda nf=norm_first, w=weights: _run_block_rmsnorm(
            live(TransformerBlock), seed, (d, n_heads, d_ff), nf, w, x, masks), f"{call} and its forward")
        if not isinstance(state, dict):
            raise AssertionError(f"{call}: no state_dict came back")
        for name in ("ln1", "ln2"):
            if f"{name}.bias" in state:
                raise AssertionError(
                    f"{call}.{name} has a shift `{name}.bias`: with norm='rmsnorm' both ln1 and ln2 should be "
                    f"RMSNorm(d_model) (a scale, no shift); is {name} still an nn.LayerNorm?")
        shapes = _block_shapes(d, d_ff)
        del shapes["ln1.bias"], shapes["ln2.bias"]
        w = _recorded(state, shapes, call)
        outs = _tensors(outs, len(masks), call)
        with torch.random.fork_rng(devices=[]):
            holders = _CourseBlockLayout(w | {"ln1.bias": torch.zeros(d), "ln2.bias": torch.zeros(d)}, d)
            layer = torch_encoder_layer(holders, n_heads, d_ff, "gelu", norm_first)
            for name, theirs in (("ln1", "norm1"), ("ln2", "norm2")):
                lib = nn.RMSNorm(d, eps=RMS_EPS)
                with torch.no_grad():
                    lib.weight.copy_(w[f"{name}.weight"])
                setattr(layer, theirs, lib)
        layer.train()  # dropout is 0; train mode keeps PyTorch off its fused path, which assumes LayerNorm
        hint = ("pre-norm: x = x + attn(ln1(x), mask), then x = x + ff(ln2(x))" if norm_first else
                "post-norm: x = ln1(x + attn(x, mask)), then x = ln2(x + ff(x))")
        for mask, label, out in zip(masks, labels, outs):
            what = f"{call} with {label}"
            assert_shape(out, (B, T, d), what, "a block maps (B, T, C) to (B, T, C)")
            expected = _oracle_block(layer, x, mask).detach()
            assert_close(out, expected, what, hint=hint + ", with ln1 and ln2 the RMSNorms")
    call = "TransformerBlock(8, 2, 16, norm='batchnorm')"
    result = learner_call(call, lambda: _built_with(live(TransformerBlock), 8, 2, 16, norm="batchnorm"))
    _assert_refused(result, call, "batchnorm", "norm", "build a LayerNorm block")


# ------------------------------------------------------------------------------- exercise 4: block_flops
def block_flops_oracle(d_model, n_heads, d_ff, T) -> tuple[int, int]:
    """(multiply-adds in the linear layers, in attention's two batched matmuls) of one forward of
    nn.TransformerEncoderLayer(d_model, n_heads, d_ff, activation="gelu") on one sequence of T tokens, counted by
    torch.utils.flop_counter.FlopCounterMode (2 FLOPs per multiply-add) on the meta device, with attention on
    PyTorch's math backend (its fused CPU kernel is not counted)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    with torch.random.fork_rng(devices=[]), torch.device("meta"):
        layer = nn.TransformerEncoderLayer(d_model, n_heads, d_ff, dropout=0.0, activation="gelu", batch_first=True)
        x = torch.randn(1, T, d_model)
    counter = FlopCounterMode(display=False)
    with sdpa_kernel(SDPBackend.MATH), counter:
        layer(x)
    counts = {str(op): n for op, n in counter.get_flop_counts()["Global"].items()}
    linear = sum(n for op, n in counts.items() if op in ("aten.addmm", "aten.mm"))
    attention = sum(n for op, n in counts.items() if op in ("aten.bmm", "aten.baddbmm"))
    if linear + attention != counter.get_total_flops():
        raise RuntimeError(f"FlopCounterMode counted other operations: {counts}")
    return linear // 2, attention // 2


@trusted_check(points=2)
def check_block_flops(block_flops):
    """block_flops(d_model, n_heads, d_ff, T) equals the multiply-adds FlopCounterMode counts (its FLOPs / 2) in one
    forward of nn.TransformerEncoderLayer(d_model, n_heads, d_ff) (GELU FFN) on one sequence of T tokens: the four
    projections, Q K^T, weights x V and the FFN's two matmuls (norms, softmax, activation and biases are not
    counted), at sizes where T is below, near and above d_model, with 1 to 8 heads."""
    for d, n_heads, d_ff, T in ((16, 4, 36, 10), (24, 3, 64, 40), (32, 8, 128, 5), (12, 1, 48, 100),
                                (40, 5, 96, 64)):
        linear, attention = block_flops_oracle(d, n_heads, d_ff, T)
        call = f"block_flops({d}, {n_heads}, {d_ff}, {T})"
        got = learner_call(call, lambda a=(d, n_heads, d_ff, T): live(block_flops)(*a))
        if isinstance(got, torch.Tensor) and got.numel() == 1:
            got = got.item()
        if isinstance(got, bool) or not isinstance(got, int | float):
            raise AssertionError(f"{call} returned {type(got).__name__}; expected a number (an int)")
        expected = linear + attention
        if got != expected:
            hint = ""
            if got == 2 * expected:
                hint = ": that is twice the count, FLOPs rather than multiply-adds (a multiply-add is 2 FLOPs)"
            elif got == linear:
                hint = ": that is the linear layers alone; attention's Q K^T and weights x V grow with T^2"
            raise AssertionError(
                f"{call} = {got}, but FlopCounterMode counts {expected} multiply-adds in one forward of "
                f"nn.TransformerEncoderLayer({d}, {n_heads}, {d_ff}) on T = {T} tokens: {linear} in the linear "
                f"layers (q, k, v, out and the FFN's fc1, fc2) and {attention} in attention's two matmuls "
                f"(Q K^T and weights x V, over all heads){hint}")


# ------------------------------------------------------------------------------ exercise 5: MoEFeedForward
def _router_weights(g, d, n_experts):
    # Logits of standard deviation ~2: distinct experts win for different tokens, without near-ties.
    return {"router.weight": torch.randn(n_experts, d, generator=g) * 2 / d**0.5,
            "router.bias": torch.randn(n_experts, generator=g) * 0.5}


def _run_route(MoEFeedForward, seed, cfg, router, x):
    """On the learner's side: the router's recorded weights, the number of experts, route(x)."""
    d, d_ff, n_experts, top_k = cfg
    moe = _build(MoEFeedForward, seed, d, d_ff, n_experts, top_k)
    load_weights(moe, router)
    with torch.no_grad():
        return _state(moe.router), len(moe.experts), moe.route(x)


def _routing(result, N, n_experts, top_k, what):
    """Validate a recorded route() result; return (weights (N, k) float, expert_idx (N, k) int64)."""
    if not (isinstance(result, tuple | list) and len(result) == 2
            and all(isinstance(t, torch.Tensor) for t in result)):
        raise AssertionError(f"{what}: route(x) must return a tuple (weights, expert_idx) of tensors")
    weights, idx = result
    assert_shape(weights, (N, top_k), f"{what}: weights", "one weight per token and chosen expert: (N, top_k)")
    assert_shape(idx, (N, top_k), f"{what}: expert_idx", "one expert index per token and slot: (N, top_k)")
    if idx.is_floating_point() or idx.dtype == torch.bool:
        raise AssertionError(f"{what}: expert_idx must hold integer expert indices, got {idx.dtype}")
    if not weights.is_floating_point():
        raise AssertionError(f"{what}: weights must be a float tensor, got {weights.dtype}")
    idx = idx.long()
    if ((idx < 0) | (idx >= n_experts)).any():
        raise AssertionError(f"{what}: expert_idx holds values outside 0 .. {n_experts - 1}")
    if top_k > 1 and (idx.sort(dim=-1).values.diff(dim=-1) == 0).any():
        raise AssertionError(f"{what}: a token chose the same expert twice: take the top_k *distinct* experts")
    return weights.float(), idx


def _dense(weights, idx, n_experts):
    """(N, k) routing -> (N, E) with each token's weight on each expert (0 where not chosen)."""
    return torch.zeros(idx.shape[0], n_experts).scatter(1, idx, weights)


@trusted_check(points=2)
def check_MoEFeedForward_route(MoEFeedForward, seed=0):
    """route(x) for (n_experts, top_k) = (4, 2), (5, 1), (3, 3): weights (N, top_k) and expert_idx
    (N, top_k); each token's weights sum to 1; the chosen experts are the top_k of softmax(router(x))
    and their weights those probabilities renormalised over the chosen ones, computed here from the
    router weights your module holds. Tokens whose k-th and (k+1)-th probabilities are within 1e-4
    (a near-tie either choice is right for) are left out of the comparison."""
    g = generator(seed)
    d, d_ff, N = 12, 16, 40
    for n_experts, top_k in ((4, 2), (5, 1), (3, 3)):
        router = _router_weights(g, d, n_experts)
        x = torch.randn(N, d, generator=g)
        call = f"MoEFeedForward({d}, {d_ff}, n_experts={n_experts}, top_k={top_k})"
        try:
            result = on_learner_side(call + ".route", lambda cfg=(d, d_ff, n_experts, top_k), r=router, x=x: _run_route(
                live(MoEFeedForward), seed, cfg, r, x))
        except LearnerRaised as exc:
            raise exc.explain(f"{call}.route(x (N, C) = {tuple(x.shape)})") from None
        if not (isinstance(result, tuple) and len(result) == 3):
            raise AssertionError(f"{call}: no result came back")
        state, count, routed = result
        if count != n_experts:
            raise AssertionError(f"{call} has {count} experts, expected n_experts = {n_experts}")
        r = _recorded(state, {"weight": (n_experts, d), "bias": (n_experts,)}, f"{call}.router")
        what = f"{call}.route(x (N, C) = {tuple(x.shape)})"
        weights, idx = _routing(routed, N, n_experts, top_k, what)
        sums = weights.sum(dim=-1)
        if not torch.allclose(sums, torch.ones(N), atol=1e-5):
            raise AssertionError(
                f"{what}: each token's weights must sum to 1, got sums from {sums.min():.4f} to {sums.max():.4f}: "
                "renormalise the top_k probabilities over the chosen experts (divide by their sum)")
        probs = torch.softmax(F.linear(x, r["weight"], r["bias"]), dim=-1)  # (N, E), over the experts
        top = probs.topk(min(top_k + 1, n_experts), dim=-1).values
        clear = torch.ones(N, dtype=torch.bool) if top_k == n_experts else (top[:, top_k - 1] - top[:, top_k]) > 1e-4
        best, best_idx = probs.topk(top_k, dim=-1)
        expected = _dense(best / best.sum(dim=-1, keepdim=True), best_idx, n_experts)  # (N, E)
        mine = _dense(weights, idx, n_experts)
        chosen_ok = ((mine > 0) == (expected > 0)) | ~clear[:, None]
        if not chosen_ok.all():
            t = int(torch.nonzero(~chosen_ok.all(dim=-1))[0])
            raise AssertionError(
                f"{what}: token {t} went to experts {sorted(idx[t].tolist())}, but the top-{top_k} of "
                f"softmax(router(x)) are {sorted(best_idx[t].tolist())} (probabilities "
                f"{[round(p, 3) for p in probs[t].tolist()]}): softmax the router logits over the expert "
                "axis (dim=-1) and keep the top_k")
        assert_close(mine[clear], expected[clear], f"{what}: the weights of the chosen experts", atol=1e-5,
                     hint="weights = the chosen experts' softmax probabilities divided by their sum")


def _run_moe(MoEFeedForward, seed, cfg, router, x):
    """On the learner's side: forward(x), route on the flattened tokens, every expert on every token."""
    d, d_ff, n_experts, top_k = cfg
    moe = _build(MoEFeedForward, seed, d, d_ff, n_experts, top_k)
    load_weights(moe, router)
    flat = x.reshape(-1, d)  # (N, C)
    with torch.no_grad():
        return moe(x), moe.route(flat), tuple(expert(flat) for expert in moe.experts), _state(moe.router)


@trusted_check(points=3)
def check_MoEFeedForward(MoEFeedForward, seed=0):
    """forward(x) keeps x's shape ((B, T, C) and (N, C)) and equals, for every token, the sum over its
    chosen experts of (routing weight) x (that expert's output), with the routing your own route()
    returns and your own experts' outputs (a FeedForward or routing bug is judged elsewhere); with one
    expert it equals that expert; with top_k = n_experts it equals the dense mixture
    sum_e softmax(router(x))_e * expert_e(x), the probabilities computed here from your router's weights."""
    g = generator(seed)
    d, d_ff = 12, 16
    cases = [((2, 9, d), 4, 2), ((2, 9, d), 5, 3), ((11, d), 1, 1), ((3, 5, d), 3, 3)]
    for shape, n_experts, top_k in cases:
        router = _router_weights(g, d, n_experts)
        x = torch.randn(*shape, generator=g)
        N = x.numel() // d
        call = f"MoEFeedForward({d}, {d_ff}, n_experts={n_experts}, top_k={top_k})"
        what = f"{call} on x {tuple(shape)}"
        try:
            result = on_learner_side(call, lambda cfg=(d, d_ff, n_experts, top_k), r=router, x=x: _run_moe(
                live(MoEFeedForward), seed, cfg, r, x))
        except LearnerRaised as exc:
            raise exc.explain(f"{call}(x {tuple(shape)}), its route and its experts") from None
        if not (isinstance(result, tuple) and len(result) == 4 and isinstance(result[0], torch.Tensor)):
            raise AssertionError(f"{what}: no result came back")
        out, routed, experts, state = result
        assert_shape(out, tuple(shape), what, "the MoE layer maps (..., C) to (..., C), like the FFN it replaces")
        experts = _tensors(experts, n_experts, f"{what}: the experts")
        for e, y in enumerate(experts):
            assert_shape(y, (N, d), f"{what}: expert {e} on the (N, C) tokens")
        stacked = torch.stack([y.float() for y in experts])  # (E, N, C)
        out = out.reshape(N, d)
        tokens = torch.arange(N)

        weights, idx = _routing(routed, N, n_experts, top_k, f"{call}.route")
        mixture = sum(weights[:, j, None] * stacked[idx[:, j], tokens] for j in range(top_k))  # (N, C)
        assert_close(out, mixture, f"{what}: out against your route()'s weighted sum of your experts' outputs",
                     hint="out[t] = sum_j weights[t, j] * experts[expert_idx[t, j]](x[t]): use route()'s weights, "
                          "index the experts by expert_idx (not by slot j) and put each result back at its token")
        if n_experts == 1:
            assert_close(out, stacked[0], f"{what}: with one expert, out against that expert's output",
                         hint="one expert gets every token with weight 1")
        if top_k == n_experts:
            r = _recorded(state, {"weight": (n_experts, d), "bias": (n_experts,)}, f"{call}.router")
            probs = torch.softmax(F.linear(x.reshape(N, d), r["weight"], r["bias"]), dim=-1)  # (N, E)
            dense = torch.einsum("ne,enc->nc", probs, stacked)  # (N, C)
            assert_close(out, dense, f"{what}: with top_k = n_experts, out against the dense mixture "
                         "sum_e softmax(router(x))_e * expert_e(x)",
                         hint="softmax the router logits over the experts (dim=-1)")
