"""Hidden checks for module 07, a GPT-style decoder.

Oracles (CURRICULUM.md, "Oracle rule"):
- `GPTConfig`: `transformers.GPT2Config()`'s defaults (GPT-2 small).
- `CausalSelfAttention`: transformers' `GPT2Attention` (causal by the library's own `is_causal`) with the
  check's random weights (Conv1D = our nn.Linear weight transposed): y and its `DynamicCache` keys/values;
  with a cache, T new tokens after T_past cached ones (past = the library's own keys and values) against
  those rows of the library's forward over the whole sequence.
- `Block`: transformers' `GPT2Block` the same way.
- `GPT`: `transformers.GPT2LMHeadModel` with the same weights (`grader.checks._gpt2.gpt2_from_gpt`, which
  maps nanoGPT's names to GPT-2's and transposes the Conv1D weights): logits, loss, the KV cache tensors.
  The weights are the check's own random ones, loaded into the learner's model (a record cannot choose
  easy ones). The checks give the learner's classes a config object of their own (a dataclass with
  GPTConfig's fields), so a GPTConfig bug costs points in check_GPTConfig only.
- The trained model: the learner's GPT is trained on the learner's side with this check's own loop, and
  its weights come back; the validation loss is computed here, by GPT2LMHeadModel (always causal) on
  held-out windows of validation.txt.
- `load_gpt2_weights`: a random `GPT2LMHeadModel` (every tensor drawn) loaded into the check's own model
  with GPT-2's names (plain torch modules, not the learner's GPT); each copied nn.Linear against the
  library's Conv1D on random inputs, the rest by equality, the tie, the HF model unchanged.
- `apply_temperature`, `top_k_filter`, `top_p_filter`, `apply_repetition_penalty`: transformers'
  `TemperatureLogitsWarper`, `TopKLogitsWarper`, `TopPLogitsWarper`, `RepetitionPenaltyLogitsProcessor`.
- `generate`: run on a library model (GPT2LMHeadModel behind an adapter with the learner's GPT
  interface), so the learner's GPT is not judged there; greedy tokens against GPT2LMHeadModel.generate;
  sampled tokens against the distribution the library's processors give.

One bug costs points once: while the generate checks run, the notebook's four sampling functions, as
seen by `generate`, are transformers' own processors (`_library_sampling`); while Block's checks build the
learner's Block, the notebook's CausalSelfAttention and MLP are torch-computed stand-ins with GPT-2's names
(`_LibraryAttention`, `_LibraryMLP`), and while GPT's checks build the learner's GPT, its Block is
(`_LibraryBlock`; `_library_parts` swaps the names its `__init__` reads). So an attention bug fails the
attention's checks only, a block bug the block's.
"""

import dataclasses
import math
from contextlib import ExitStack, contextmanager
from types import SimpleNamespace

import torch
import torch.nn.functional as F
from torch import nn

from deepdive.decoders import next_char_batch, shakespeare_chars
from grader.checks._common import (
    assert_close,
    assert_shape,
    build_seeded,
    generator,
    learner_call,
    learner_namespaces,
    swapped_globals,
    swapped_globals_of,
)
from grader.checks._gpt2 import gpt2_from_gpt
from grader.trusted import LearnerRaised, live, on_learner_side, trusted_check


# -------------------------------------------------------------------------------------- GPTConfig
@trusted_check(points=1)
def check_GPTConfig(GPTConfig):
    """A dataclass whose defaults are GPT-2 small's (transformers.GPT2Config()); keyword construction;
    ValueError when n_embd is not a multiple of n_head."""
    from transformers import GPT2Config

    def probe(cls):
        out = {"is_dataclass": dataclasses.is_dataclass(cls)}
        default = cls()
        out["defaults"] = {f: getattr(default, f, None) for f in
                           ("block_size", "vocab_size", "n_layer", "n_head", "n_embd", "dropout", "bias")}
        small = cls(block_size=8, vocab_size=11, n_layer=3, n_head=2, n_embd=6, dropout=0.1, bias=False)
        out["small"] = {f: getattr(small, f, None) for f in out["defaults"]}
        try:
            cls(n_embd=10, n_head=4)
            out["bad"] = "no error"
        except Exception as exc:  # the learner's own exception, by type and message
            out["bad"] = (type(exc).__name__, str(exc)[:300])
        return out

    try:
        out = on_learner_side("GPTConfig", lambda: probe(live(GPTConfig)))
    except LearnerRaised as exc:
        raise exc.explain("GPTConfig() and GPTConfig(block_size=8, ..., n_embd=6)") from None
    if not (isinstance(out, dict) and isinstance(out.get("defaults"), dict) and isinstance(out.get("small"), dict)):
        raise AssertionError("GPTConfig: no result came back")
    if out.get("is_dataclass") is not True:
        raise AssertionError("GPTConfig must be a @dataclass (from dataclasses import dataclass)")
    ref = GPT2Config()
    expected = {"block_size": ref.n_positions, "vocab_size": ref.vocab_size, "n_layer": ref.n_layer,
                "n_head": ref.n_head, "n_embd": ref.n_embd}
    for name, value in expected.items():
        got = out["defaults"].get(name)
        if got != value:
            raise AssertionError(f"GPTConfig().{name} is {got!r}, GPT-2 small's is {value} "
                                 "(transformers.GPT2Config(): n_positions, vocab_size, n_layer, n_head, n_embd)")
    if out["defaults"].get("dropout") != 0.0 or out["defaults"].get("bias") is not True:
        raise AssertionError(f"GPTConfig() should default to dropout=0.0 and bias=True, got dropout="
                             f"{out['defaults'].get('dropout')!r}, bias={out['defaults'].get('bias')!r}")
    asked = {"block_size": 8, "vocab_size": 11, "n_layer": 3, "n_head": 2, "n_embd": 6, "dropout": 0.1, "bias": False}
    if out["small"] != asked:
        raise AssertionError(f"GPTConfig(**{asked}) holds {out['small']}: every field must take its keyword")
    bad = out.get("bad")
    if not (isinstance(bad, tuple) and len(bad) == 2 and bad[0] == "ValueError"):
        raise AssertionError(f"GPTConfig(n_embd=10, n_head=4) should raise ValueError (10 is not a multiple of 4), "
                             f"got {bad if isinstance(bad, str) else bad[0] if isinstance(bad, tuple) else bad!r}: "
                             "check it in __post_init__")
    if not ("10" in str(bad[1]) and "4" in str(bad[1])):
        raise AssertionError(f"GPTConfig(n_embd=10, n_head=4) raised ValueError({bad[1]!r}): say both numbers")


# ------------------------------------------------------------------ the check's config and weights
@dataclasses.dataclass(frozen=True)
class _Config:
    """The check's own config object for the learner's classes: GPTConfig's fields."""

    block_size: int
    vocab_size: int
    n_layer: int
    n_head: int
    n_embd: int
    dropout: float = 0.0
    bias: bool = True


def _attn_layout(cfg: _Config, prefix: str = "") -> dict:
    """CausalSelfAttention's parameters, name -> shape (nn.Linear weights are (out, in))."""
    C = cfg.n_embd
    return {f"{prefix}c_attn.weight": (3 * C, C), f"{prefix}c_attn.bias": (3 * C,),
            f"{prefix}c_proj.weight": (C, C), f"{prefix}c_proj.bias": (C,)}


def _block_layout(cfg: _Config, prefix: str = "") -> dict:
    """Block's parameters (GPT-2's names), name -> shape."""
    C = cfg.n_embd
    shapes = {f"{prefix}ln_1.weight": (C,), f"{prefix}ln_1.bias": (C,)}
    shapes |= _attn_layout(cfg, f"{prefix}attn.")
    shapes |= {f"{prefix}ln_2.weight": (C,), f"{prefix}ln_2.bias": (C,)}
    shapes |= {f"{prefix}mlp.c_fc.weight": (4 * C, C), f"{prefix}mlp.c_fc.bias": (4 * C,),
               f"{prefix}mlp.c_proj.weight": (C, 4 * C), f"{prefix}mlp.c_proj.bias": (C,)}
    return shapes


def _layout(cfg: _Config) -> dict:
    """The nanoGPT state_dict the design asks for: name -> shape (nn.Linear weights are (out, in))."""
    C, V = cfg.n_embd, cfg.vocab_size
    shapes = {"transformer.wte.weight": (V, C), "transformer.wpe.weight": (cfg.block_size, C)}
    for i in range(cfg.n_layer):
        shapes |= _block_layout(cfg, f"transformer.h.{i}.")
    shapes["transformer.ln_f.weight"] = (C,)
    shapes["transformer.ln_f.bias"] = (C,)
    shapes["lm_head.weight"] = (V, C)
    return shapes


def _is_mask_buffer(name: str) -> bool:
    """nanoGPT registers its causal mask as a buffer `attn.bias` (allowed, unused here)."""
    return name == "bias" or name.endswith("attn.bias") and name.count(".") in (1, 4)


def _random_weights(g, layout: dict) -> dict:
    """The check's weights for `layout`: large enough that attention is far from uniform and every part matters."""
    out = {}
    for name, shape in layout.items():
        if name == "lm_head.weight":
            continue
        if name.endswith(("ln_1.weight", "ln_2.weight", "ln_f.weight")):
            out[name] = 1 + 0.2 * torch.randn(shape, generator=g)
        elif name.endswith(".bias"):
            out[name] = 0.1 * torch.randn(shape, generator=g)
        else:
            out[name] = torch.randn(shape, generator=g) * (1.0 if name.endswith(("wte.weight", "wpe.weight"))
                                                           else 1 / math.sqrt(shape[1]))
    if "lm_head.weight" in layout:
        out["lm_head.weight"] = out["transformer.wte.weight"]
    return out


_NAMES = {"CausalSelfAttention": "c_attn (nn.Linear(C, 3C)) and c_proj (nn.Linear(C, C))",
          "Block": "ln_1, attn, ln_2, mlp",
          "GPT": "nanoGPT's (= GPT-2's) names: transformer.wte, wpe, drop, h, ln_f; lm_head"}


def _check_shapes(shapes, layout: dict, call: str, what: str = "GPT") -> None:
    if not (isinstance(shapes, dict) and all(isinstance(k, str) for k in shapes)):
        raise AssertionError(f"{call}: no state_dict came back")
    for name, shape in layout.items():
        if name not in shapes:
            raise AssertionError(f"{call} has no parameter {name}: use {_NAMES[what]}")
        got = shapes[name]
        if not (isinstance(got, tuple) and all(isinstance(i, int) for i in got)) or got != shape:
            raise AssertionError(f"{call}: {name} has shape {got}, expected {shape}")
    extra = sorted(n for n in shapes if n not in layout and not _is_mask_buffer(n))
    if extra:
        hint = " (lm_head has no bias: nn.Linear(n_embd, vocab_size, bias=False))" if "lm_head.bias" in extra else ""
        raise AssertionError(f"{call} has parameters GPT-2 does not have: {', '.join(extra[:4])}{hint}")


# ------------------------------------------------------- library stand-ins: one bug costs points once
# While Block is judged, the notebook's CausalSelfAttention (and the given MLP) are these torch-computed
# modules; while GPT is judged, Block is. They have GPT-2's names and nn.Linear layout, so the learner's
# class builds them with `CausalSelfAttention(config)` / `Block(config)` as it would its own.
class _LibraryAttention(nn.Module):
    """CausalSelfAttention's interface computed by torch: F.scaled_dot_product_attention with the causal mask
    aligned to the end of the keys (query i of T new tokens sees keys 0 .. T_past + i)."""

    def __init__(self, config):
        super().__init__()
        self.n_head = config.n_head
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)

    def forward(self, x, past=None):
        B, T, C = x.shape
        q, k, v = (t.unflatten(-1, (self.n_head, C // self.n_head)).transpose(1, 2)
                   for t in self.c_attn(x).split(C, dim=-1))  # each (B, nh, T, hs)
        if past is not None:
            k, v = torch.cat([past[0], k], dim=2), torch.cat([past[1], v], dim=2)  # (B, nh, T_all, hs)
        T_all = k.size(2)
        mask = torch.ones(T, T_all, dtype=torch.bool, device=x.device).tril(diagonal=T_all - T)  # (T, T_all)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # (B, nh, T, hs)
        return self.c_proj(y.transpose(1, 2).flatten(2)), (k, v)  # (B, T, C)


class _LibraryMLP(nn.Module):
    """GPT-2's MLP from torch layers: c_fc, GELU (tanh approximation), c_proj."""

    def __init__(self, config):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)

    def forward(self, x):
        return self.c_proj(F.gelu(self.c_fc(x), approximate="tanh"))


class _LibraryBlock(nn.Module):
    """Block's interface from the stand-ins: x + attn(ln_1(x)), then x + mlp(ln_2(x)); returns (x, (k, v))."""

    def __init__(self, config):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.attn = _LibraryAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.mlp = _LibraryMLP(config)

    def forward(self, x, past=None):
        a, kv = self.attn(self.ln_1(x), past)
        x = x + a
        return x + self.mlp(self.ln_2(x)), kv


_FOR_BLOCK = {"CausalSelfAttention": _LibraryAttention, "MLP": _LibraryMLP}
_FOR_GPT = {"Block": _LibraryBlock, "CausalSelfAttention": _LibraryAttention, "MLP": _LibraryMLP}
_BLOCK_ONLY = ("(This check built your Block with torch-computed attention and MLP in place of your "
               "CausalSelfAttention and the given MLP, so only Block itself is judged.)")
_GPT_ONLY = ("(This check built your GPT with torch-computed blocks in place of your Block and "
             "CausalSelfAttention, so only GPT itself is judged.)")


@contextmanager
def _library_parts(cls, replacements: dict):
    """On the learner's side: while the block runs, the names of `replacements` that the __init__ of `cls`
    or of any class it derives from (a mutant subclasses the reference) reads from its notebook namespace are
    the library stand-ins (decorators followed: _common.learner_namespaces). Restored afterwards."""
    namespaces = []
    for klass in getattr(cls, "__mro__", ()):
        init = vars(klass).get("__init__")
        if init is None or klass.__module__.split(".")[0] in ("torch", "builtins"):
            continue
        namespaces += [n for n in learner_namespaces(init) if all(n is not m for m in namespaces)]
    with ExitStack() as stack:
        for namespace in namespaces:
            stack.enter_context(swapped_globals(namespace, replacements))
        yield


# ------------------------------------------------------------------ the learner's module, built and run
def _build(cls, seed, cfg, state, replacements):
    """On the learner's side: cls(cfg) from `seed`, with the library stand-ins for its parts; its shapes."""
    with _library_parts(cls, replacements):
        module = build_seeded(cls, seed, cfg).eval()
    state["module"] = module
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


def _load_and_run(state, weights, runs):
    """On the learner's side: load the check's weights, say whether lm_head is tied to wte (for a GPT), run
    each function of `runs` on the module under no_grad."""
    module = state["module"]
    module.load_state_dict(weights, strict=False)
    tied = getattr(getattr(module, "lm_head", None), "weight", None) is getattr(
        getattr(getattr(module, "transformer", None), "wte", None), "weight", False)
    with torch.no_grad():
        return tied, tuple(run(module) for run in runs)


def _learner_module(cls, seed, cfg, weights, runs, call, layout, what, replacements=None):
    """Build the learner's `what` (with the stand-ins for its parts), check its layout, load the check's
    weights and run `runs` on it."""
    state = {}
    try:
        shapes = on_learner_side(call, lambda: _build(live(cls), seed, cfg, state, replacements or {}))
    except LearnerRaised as exc:
        raise exc.explain(call) from None
    _check_shapes(shapes, layout, call, what)
    try:
        tied, outs = on_learner_side(f"{call}: forward", lambda: _load_and_run(state, weights, runs))
    except LearnerRaised as exc:
        raise exc.explain(f"{call}(...).forward") from None
    except (TypeError, ValueError):
        raise AssertionError(f"{call}: no result came back from forward") from None
    if not (isinstance(outs, tuple) and len(outs) == len(runs)):
        raise AssertionError(f"{call}: no result came back from forward")
    return tied, outs


def _learner_model(GPT, seed, cfg, weights, runs, call):
    return _learner_module(GPT, seed, cfg, weights, runs, call, _layout(cfg), "GPT", _FOR_GPT)


def _pair(out, what, returns):
    """(y, (k, v)) as CausalSelfAttention and Block return it."""
    if not (isinstance(out, tuple | list) and len(out) == 2 and isinstance(out[1], tuple | list) and len(out[1]) == 2):
        raise AssertionError(f"{what}: forward must return {returns}, got {type(out).__name__}")
    return out[0], out[1][0], out[1][1]


# ------------------------------------------------------------------ library oracles: GPT-2's own layers
def _hf_config(cfg: _Config):
    from transformers import GPT2Config

    config = GPT2Config(vocab_size=max(cfg.vocab_size, 1), n_positions=cfg.block_size, n_embd=cfg.n_embd,
                        n_layer=max(cfg.n_layer, 1), n_head=cfg.n_head, resid_pdrop=0.0, embd_pdrop=0.0,
                        attn_pdrop=0.0, activation_function="gelu_new", bos_token_id=None, eos_token_id=None)
    config._attn_implementation = "sdpa"  # causal by the library's own is_causal when no mask is given
    return config


def _conv1d_state(weights: dict) -> dict:
    """nn.Linear (out, in) -> GPT-2's Conv1D (in, out) for the four projections."""
    return {k: (v.t().contiguous() if k.endswith(("c_attn.weight", "c_proj.weight", "c_fc.weight")) else v)
            for k, v in weights.items()}


def _gpt2_layer(kind: str, weights: dict, cfg: _Config):
    """transformers' GPT2Attention or GPT2Block (layer 0) with the check's weights."""
    from transformers.models.gpt2.modeling_gpt2 import GPT2Attention, GPT2Block

    with torch.random.fork_rng(devices=[]):  # the random initialisation is overwritten
        layer = (GPT2Attention if kind == "attention" else GPT2Block)(_hf_config(cfg), layer_idx=0)
    missing, unexpected = layer.load_state_dict(_conv1d_state(weights), strict=False)
    if missing or unexpected:
        raise RuntimeError(f"GPT-2 {kind} layout mismatch: missing {missing}, unexpected {unexpected}")
    return layer.eval()


def _gpt2_full(kind: str, weights: dict, cfg: _Config, x):
    """The library layer on the whole sequence x (B, T, C), causal: output (B, T, C), k and v (B, nh, T, hs)."""
    from transformers import DynamicCache

    layer, cache = _gpt2_layer(kind, weights, cfg), DynamicCache()
    with torch.no_grad():
        out = layer(x, past_key_values=cache, use_cache=True)
    y = out[0] if isinstance(out, tuple) else out
    return y, cache.layers[0].keys, cache.layers[0].values


_ATTN_CONFIGS = (_Config(block_size=16, vocab_size=0, n_layer=1, n_head=2, n_embd=16),
                 _Config(block_size=16, vocab_size=0, n_layer=1, n_head=4, n_embd=24))
_CHUNKS = ((5, 1), (3, 2), (4, 3), (6, 3))  # (T_past, T): T new tokens after T_past cached ones


def _cached_runs(kind: str, layout, seed):
    """The cache checks' set-up for GPT-2's attention or block ("attention" / "block"): random weights in
    `layout(cfg)`, x (2, 9, C), the library's output and (k, v) over the whole sequence, and one run per chunk
    of _CHUNKS: the module called on the chunk's new tokens with past = the library's (k, v) of the tokens
    before it. Returns (cfg, weights, full, runs, nh, hs)."""
    g = generator(seed)
    cfg = _ATTN_CONFIGS[0]
    weights = _random_weights(g, layout(cfg))
    x = torch.randn(2, 9, cfg.n_embd, generator=g)  # (B, T_all, C)
    full = _gpt2_full(kind, weights, cfg, x)  # (y, k, v) over all 9 tokens
    runs = tuple(lambda m, p=p, t=t: m(x[:, p:p + t], past=(full[1][:, :, :p], full[2][:, :, :p])) for p, t in _CHUNKS)
    return cfg, weights, full, runs, cfg.n_head, cfg.n_embd // cfg.n_head


# ----------------------------------------------------------------------------- CausalSelfAttention
def _attn_call(cfg):
    return f"CausalSelfAttention(config with n_embd={cfg.n_embd}, n_head={cfg.n_head})"


@trusted_check(points=2)
def check_CausalSelfAttention(CausalSelfAttention, seed=0):
    """Without a cache, against transformers' GPT2Attention (causal) with the same (the check's random)
    weights, for two configs: c_attn (3C, C) and c_proj (C, C) with biases; y (B, T, C); k and v
    (B, nh, T, hs) equal to GPT2Attention's cache."""
    g = generator(seed)
    for cfg, (B, T) in zip(_ATTN_CONFIGS, ((3, 9), (2, 7))):
        weights = _random_weights(g, _attn_layout(cfg))
        x = torch.randn(B, T, cfg.n_embd, generator=g)
        call = _attn_call(cfg)
        _, (out,) = _learner_module(CausalSelfAttention, seed, cfg, weights, (lambda m, x=x: m(x),), call,
                                    _attn_layout(cfg), "CausalSelfAttention")
        what = f"{call}(x {(B, T, cfg.n_embd)})"
        y, k, v = _pair(out, what, "(y, (k, v))")
        y_ref, k_ref, v_ref = _gpt2_full("attention", weights, cfg, x)
        hs = cfg.n_embd // cfg.n_head
        for name, t, ref in (("k", k, k_ref), ("v", v, v_ref)):
            assert_shape(t, (B, cfg.n_head, T, hs), f"{what}: {name}", "(B, nh, T, hs): split into heads, time on dim 2")
            assert_close(t, ref, f"{what}: {name} against GPT2Attention's cache", atol=1e-5, rtol=1e-4,
                         hint="q, k, v are the three C-wide thirds of c_attn(x), in that order; each "
                              ".view(B, T, nh, hs).transpose(1, 2)")
        assert_shape(y, (B, T, cfg.n_embd), f"{what}: y")
        assert_close(y, y_ref, f"{what}: y against transformers' GPT2Attention", atol=1e-5, rtol=1e-4,
                     hint="scores q @ k^T / sqrt(hs), -inf above the diagonal, softmax over the keys, @ v, then "
                          "merge the heads with .transpose(1, 2) before .reshape(B, T, C), then c_proj")


@trusted_check(points=1)
def check_CausalSelfAttention_causal(CausalSelfAttention, seed=0):
    """Changing the inputs from position j on never changes the outputs before j (for several j), and does
    change them from j on, with the check's random weights."""
    g = generator(seed)
    cfg = _ATTN_CONFIGS[0]
    weights = _random_weights(g, _attn_layout(cfg))
    B, T = 2, 10
    x = torch.randn(B, T, cfg.n_embd, generator=g)
    cuts = (1, 4, 9)
    changed = []
    for j in cuts:
        other = x.clone()
        other[:, j:] = torch.randn(B, T - j, cfg.n_embd, generator=g)
        changed.append(other)
    call = _attn_call(cfg)
    runs = (lambda m: m(x),) + tuple(lambda m, o=o: m(o) for o in changed)
    _, outs = _learner_module(CausalSelfAttention, seed, cfg, weights, runs, call, _attn_layout(cfg),
                              "CausalSelfAttention")
    base = _pair(outs[0], f"{call}(x)", "(y, (k, v))")[0]
    assert_shape(base, (B, T, cfg.n_embd), f"{call}(x {(B, T, cfg.n_embd)}): y")
    for j, out in zip(cuts, outs[1:]):
        y = _pair(out, f"{call}(x)", "(y, (k, v))")[0]
        assert_shape(y, (B, T, cfg.n_embd), f"{call}(x {(B, T, cfg.n_embd)}): y")
        if not torch.allclose(y[:, :j], base[:, :j], atol=1e-5, rtol=1e-5):
            raise AssertionError(
                f"{call}: changing the inputs at positions {j} .. {T - 1} changed the outputs at positions 0 .. "
                f"{j - 1}: a token must not see the future. Mask the scores with a lower-triangular mask "
                "(False above the diagonal -> -inf) before the softmax")
        if torch.allclose(y[:, j:], base[:, j:]):
            raise AssertionError(f"{call}: changing the inputs from position {j} on did not change the outputs there")


def _check_chunks(outs, full, what_of, returns, nh, hs, hint_mask):
    """Each (T_past, T) chunk's output against the rows T_past .. T_past + T - 1 of the full causal forward, and
    its returned k, v against the first T_past + T positions of the full cache."""
    y_full, k_full, v_full = full
    B = y_full.size(0)
    for (T_past, T), out in zip(_CHUNKS, outs):
        what = what_of(T_past, T)
        y, k, v = _pair(out, what, returns)
        for name, t, ref in (("k", k, k_full), ("v", v, v_full)):
            assert_shape(t, (B, nh, T_past + T, hs), f"{what}: the returned {name}",
                         "(B, nh, T_past + T, hs): the cached keys/values, then the new ones, along dim=2")
            assert_close(t, ref[:, :, :T_past + T], f"{what}: the returned {name} against the library's cache",
                         atol=1e-5, rtol=1e-4, hint="past's tensors first, then the new tokens' "
                                                    "(torch.cat([past[0], k], dim=2))")
        hint = "the new tokens' keys and values go after the cached ones"
        if T > 1:
            hint += ("; with a cache the mask is (T, T_past + T) and aligned to the end: query i sees keys 0 .. "
                     "T_past + i (torch.ones(T, T_all).tril(diagonal=T_all - T)), not a (T, T) mask")
        assert_shape(y, (B, T, y_full.size(2)), f"{what}: y")
        assert_close(y, y_full[:, T_past:T_past + T], f"{what}: y against rows {T_past} .. {T_past + T - 1} of the "
                     "library's causal forward over the whole sequence", atol=1e-5, rtol=1e-4,
                     hint=hint if hint_mask else hint + "; pass past on to self.attn")


@trusted_check(points=2)
def check_CausalSelfAttention_kv_cache(CausalSelfAttention, seed=0):
    """With a cache: T new tokens after T_past cached ones (1 after 5, 2 after 3, 3 after 4 and after 6), past =
    GPT2Attention's own keys and values of the earlier tokens: y equals those rows of GPT2Attention's causal
    output on the whole sequence (the mask aligned to the end), and the returned k, v (B, nh, T_past + T, hs)
    equal GPT2Attention's cache."""
    cfg, weights, full, runs, nh, hs = _cached_runs("attention", _attn_layout, seed)
    call = _attn_call(cfg)
    _, outs = _learner_module(CausalSelfAttention, seed, cfg, weights, runs, call, _attn_layout(cfg),
                              "CausalSelfAttention")
    _check_chunks(outs, full, lambda p, t: f"{call}(x of {t} new tokens, past = (k, v) of {p} cached tokens)",
                  "(y, (k, v))", nh, hs, hint_mask=True)


# --------------------------------------------------------------------------------------------- Block
def _block_call(cfg):
    return f"Block(config with n_embd={cfg.n_embd}, n_head={cfg.n_head})"


def _learner_block(Block, seed, cfg, weights, runs):
    try:
        return _learner_module(Block, seed, cfg, weights, runs, _block_call(cfg), _block_layout(cfg), "Block",
                               _FOR_BLOCK)[1]
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{_BLOCK_ONLY}") from None


@trusted_check(points=2)
def check_Block(Block, seed=0):
    """Without a cache, against transformers' GPT2Block with the same (the check's random) weights, two
    configs: ln_1, attn, ln_2, mlp; y (B, T, C) = x + attn(ln_1(x)), then + mlp(ln_2(.)); the (k, v) it returns
    are the attention's, equal to GPT2Block's cache. Your Block is built with torch-computed attention and MLP
    in place of your CausalSelfAttention and the given MLP."""
    g = generator(seed)
    for cfg, (B, T) in zip(_ATTN_CONFIGS, ((3, 8), (2, 6))):
        weights = _random_weights(g, _block_layout(cfg))
        x = torch.randn(B, T, cfg.n_embd, generator=g)
        (out,) = _learner_block(Block, seed, cfg, weights, (lambda m, x=x: m(x),))
        what = f"{_block_call(cfg)}(x {(B, T, cfg.n_embd)})"
        y, k, v = _pair(out, what, "(x, (k, v))")
        y_ref, k_ref, v_ref = _gpt2_full("block", weights, cfg, x)
        assert_shape(y, (B, T, cfg.n_embd), f"{what}: output")
        assert_close(y, y_ref, f"{what}: output against transformers' GPT2Block", atol=1e-5, rtol=1e-4,
                     hint="pre-norm: x = x + attn(ln_1(x)), then x = x + mlp(ln_2(x)); the residual adds the "
                          "un-normalised x, each norm is used once. " + _BLOCK_ONLY)
        for name, t, ref in (("k", k, k_ref), ("v", v, v_ref)):
            assert_close(t, ref, f"{what}: the returned {name} against GPT2Block's cache", atol=1e-5, rtol=1e-4,
                         hint="return the (k, v) that self.attn returns. " + _BLOCK_ONLY)


@trusted_check(points=1)
def check_Block_kv_cache(Block, seed=0):
    """With a cache (T new tokens after T_past cached ones, past = the library's keys and values): the output
    equals those rows of GPT2Block's causal forward over the whole sequence, and the returned (k, v) hold
    T_past + T positions: past is passed on to the attention."""
    cfg, weights, full, runs, nh, hs = _cached_runs("block", _block_layout, seed)
    outs = _learner_block(Block, seed, cfg, weights, runs)
    try:
        _check_chunks(outs, full, lambda p, t: f"{_block_call(cfg)}(x of {t} new tokens, past = (k, v) of {p} cached "
                      "tokens)", "(x, (k, v))", nh, hs, hint_mask=False)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{_BLOCK_ONLY}") from None


# -------------------------------------------------------------------------------------------- GPT
def _triple(out, what):
    if not (isinstance(out, tuple | list) and len(out) == 3):
        raise AssertionError(f"{what}: forward must return a tuple (logits, loss, present), got "
                             f"{type(out).__name__}{' of ' + str(len(out)) if isinstance(out, tuple | list) else ''}")
    return out


def _gpt_only(check):
    """The GPT checks' failures end with what was swapped in."""
    import functools

    @functools.wraps(check)
    def body(GPT, seed=0):
        try:
            return check(GPT, seed)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{_GPT_ONLY}") from None

    return body


_CONFIGS = (_Config(block_size=16, vocab_size=23, n_layer=2, n_head=2, n_embd=16),
            _Config(block_size=12, vocab_size=13, n_layer=1, n_head=4, n_embd=24))


@trusted_check(points=2)
@_gpt_only
def check_GPT(GPT, seed=0):
    """Against transformers' GPT2LMHeadModel with the same (the check's random) weights, for two small
    configs: the layout (nanoGPT's names and nn.Linear shapes, lm_head without bias and tied to wte),
    the logits (B, T, V), loss None without targets and present None without use_cache, and the loss
    with targets (some of them -100, ignored) = cross-entropy of GPT-2's logits against the targets.
    Your GPT is built with torch-computed blocks in place of your Block and CausalSelfAttention."""
    g = generator(seed)
    for cfg, (B, T) in zip(_CONFIGS, ((3, 10), (2, 12))):
        weights = _random_weights(g, _layout(cfg))
        idx = torch.randint(0, cfg.vocab_size, (B, T), generator=g)
        targets = torch.randint(0, cfg.vocab_size, (B, T), generator=g)
        targets[0, :3] = -100
        targets[-1, -2:] = -100
        call = (f"GPT(config with n_layer={cfg.n_layer}, n_head={cfg.n_head}, n_embd={cfg.n_embd}, "
                f"vocab_size={cfg.vocab_size}, block_size={cfg.block_size})")
        tied, (plain, with_targets) = _learner_model(
            GPT, seed, cfg, weights, (lambda m, i=idx: m(i), lambda m, i=idx, t=targets: m(i, t)), call)
        if tied is not True:
            raise AssertionError(f"{call}: lm_head.weight must be the same Parameter as transformer.wte.weight "
                                 "(weight tying, as GPT-2): self.transformer.wte.weight = self.lm_head.weight")
        oracle = gpt2_from_gpt(weights, cfg.n_head)
        with torch.no_grad():
            expected = oracle(idx).logits  # (B, T, V)
        logits, loss, present = _triple(plain, f"{call}(idx {(B, T)})")
        assert_shape(logits, (B, T, cfg.vocab_size), f"{call}(idx {(B, T)}): logits", "(B, T, vocab_size)")
        assert_close(logits, expected, f"{call}(idx {(B, T)}): logits against GPT2LMHeadModel", atol=1e-4, rtol=1e-4,
                     hint="wte(idx) + wpe(positions 0 .. T-1), drop, every block in order, ln_f before lm_head")
        if loss is not None:
            raise AssertionError(f"{call}(idx): without targets the loss must be None")
        if present is not None:
            raise AssertionError(f"{call}(idx): with use_cache=False, present must be None")
        logits_t, loss_t, _ = _triple(with_targets, f"{call}(idx, targets)")
        ce = F.cross_entropy(expected.reshape(B * T, -1), targets.reshape(B * T), ignore_index=-100)
        if not (isinstance(loss_t, torch.Tensor) and loss_t.numel() == 1):
            raise AssertionError(f"{call}(idx, targets): the loss must be a scalar tensor, got {type(loss_t).__name__}")
        assert_close(loss_t.reshape(()), ce, f"{call}(idx, targets): the loss against cross-entropy of GPT-2's logits",
                     atol=1e-4, rtol=1e-4,
                     hint="targets are already the next tokens (do not shift them again): "
                          "F.cross_entropy(logits.view(B*T, V), targets.view(B*T), ignore_index=-100)")


def _decode_runs(idx, chunks, block_size):
    """Learner-side runs: full forward (use_cache False and True), chunked decoding with the cache for
    each chunk plan, and two calls that exceed block_size (they must raise ValueError)."""
    def full(m):
        return m(idx), m(idx, use_cache=True)

    def decode(m, plan):
        past, outs, shapes, start = None, [], [], 0
        for size in plan:
            logits, _, past = m(idx[:, start:start + size], past_key_values=past, use_cache=True)
            outs.append(logits)
            shapes.append(tuple(tuple(t.shape) for kv in past for t in kv))
            start += size
        return tuple(outs), tuple(shapes)

    def too_long(m):
        result = []
        long_idx = idx[:, :1].repeat(1, block_size + 1)  # (B, block_size + 1)
        _, _, past = m(long_idx[:, :block_size - 1], use_cache=True)
        for f in (lambda: m(long_idx), lambda: m(long_idx[:, :2], past_key_values=past, use_cache=True)):
            try:
                f()
                result.append("no error")
            except Exception as exc:  # the learner's exception, by type
                result.append(type(exc).__name__)
        return tuple(result)

    return (full,) + tuple(lambda m, p=p: decode(m, p) for p in chunks) + (too_long,)




@trusted_check(points=2)
@_gpt_only
def check_GPT_kv_cache(GPT, seed=0):
    """Decoding with the cache equals the full forward, position by position: one token at a time, and in
    chunks of 2 and 3 after a cache (positions continue at T_past); every present holds one (k, v) per
    layer of shape (B, nh, T_past + T, hs), equal to GPT2LMHeadModel's cache for the same weights;
    use_cache=False gives present None; T_past + T > block_size raises ValueError. Your GPT is built with
    torch-computed blocks in place of your Block and CausalSelfAttention."""
    g = generator(seed)
    cfg = _CONFIGS[0]
    weights = _random_weights(g, _layout(cfg))
    B, T = 2, 11
    nh, hs = cfg.n_head, cfg.n_embd // cfg.n_head
    idx = torch.randint(0, cfg.vocab_size, (B, T), generator=g)
    chunks = ((1,) * T, (3, 2, 3, 3), (2, 3, 2, 1, 3))
    call = f"GPT(config with n_layer={cfg.n_layer}, n_head={nh}, n_embd={cfg.n_embd}, block_size={cfg.block_size})"
    _, outs = _learner_model(GPT, seed, cfg, weights, _decode_runs(idx, chunks, cfg.block_size), call)
    oracle = gpt2_from_gpt(weights, nh)
    with torch.no_grad():
        ref = oracle(idx, use_cache=True)
    ref_kv = [(layer.keys, layer.values) for layer in ref.past_key_values.layers]  # each (B, nh, T, hs)

    if not (isinstance(outs[0], tuple) and len(outs[0]) == 2):
        raise AssertionError(f"{call}: no result came back from the full forward")
    plain, cached = (_triple(o, f"{call}(idx)") for o in outs[0])
    if plain[2] is not None:
        raise AssertionError(f"{call}(idx, use_cache=False): present must be None")
    full_logits = plain[0]
    assert_shape(full_logits, (B, T, cfg.vocab_size), f"{call}(idx {(B, T)}): logits")
    present = cached[2]
    if not (isinstance(present, tuple | list) and len(present) == cfg.n_layer
            and all(isinstance(kv, tuple | list) and len(kv) == 2 for kv in present)):
        raise AssertionError(f"{call}(idx, use_cache=True): present must be a tuple with one (k, v) per layer "
                             f"({cfg.n_layer} layers)")
    for i, (kv, (k_ref, v_ref)) in enumerate(zip(present, ref_kv)):
        for name, t, r in (("k", kv[0], k_ref), ("v", kv[1], v_ref)):
            what = f"{call}(idx {(B, T)}, use_cache=True): present[{i}] {name}"
            assert_shape(t, (B, nh, T, hs), what + " (B, nh, T, hs)", "present[i] is the (k, v) that block i returns")
            assert_close(t, r, what + " against GPT2LMHeadModel's cache", atol=1e-4, rtol=1e-4,
                         hint="present[i] is the (k, v) that block i returns, in the order of the blocks")

    for plan, result in zip(chunks, outs[1:-1]):
        if not (isinstance(result, tuple) and len(result) == 2 and isinstance(result[0], tuple)
                and len(result[0]) == len(plan) and isinstance(result[1], tuple) and len(result[1]) == len(plan)):
            raise AssertionError(f"{call}: no result came back from decoding in chunks {plan}")
        start = 0
        for size, logits, shapes in zip(plan, *result):
            what = f"{call}: decoding in chunks {plan}, the chunk of positions {start} .. {start + size - 1}"
            assert_shape(logits, (B, size, cfg.vocab_size), what + ": logits")
            want = tuple((B, nh, start + size, hs) for _ in range(2 * cfg.n_layer))
            if shapes != want:
                raise AssertionError(f"{what}: present holds tensors of shapes {shapes[:2]}..., expected "
                                     f"(B, nh, T_past + T, hs) = {want[0]} for every k and v: pass "
                                     "past_key_values[i] to block i and keep the (k, v) it returns")
            assert_close(logits, full_logits[:, start:start + size], what + ": logits against the full forward",
                         atol=1e-4, rtol=1e-4,
                         hint="positions continue after the cache: wpe of T_past .. T_past + T - 1, with T_past = "
                              "past_key_values[0][0].size(2); block i gets past_key_values[i]")
            start += size

    too_long = outs[-1]
    if too_long != ("ValueError", "ValueError"):
        raise AssertionError(
            f"{call}: a sequence of {cfg.block_size + 1} tokens, and 2 new tokens after {cfg.block_size - 1} cached "
            f"ones, must raise ValueError (T_past + T > block_size = {cfg.block_size}); got "
            f"{too_long if isinstance(too_long, tuple) else 'no result'}")


# ---------------------------------------------------------------------------------- the trained GPT
# The check's training run: the learner's GPT (with the library blocks), this config, this loop, from the seed.
TRAIN_CFG = _Config(block_size=32, vocab_size=0, n_layer=2, n_head=4, n_embd=48)  # vocab_size set from the data
TRAIN_STEPS, TRAIN_BATCH, TRAIN_LR = 300, 32, 4e-3
EVAL_WINDOWS = 128

# Calibration (reference GPT from the instructor notebook built with the library blocks, as this check builds it;
# CPU float32, this config and loop; validation loss computed here by GPT2LMHeadModel on 128 windows of 33
# characters of validation.txt, nats/character; re-measured 2026-12 when the blocks were swapped in):
#   reference, seeds 0-4:                  2.383 2.337 2.303 2.344 2.264   (log V = 4.25; unigram 3.31)
# Known-broken GPTs (grader/mutants/m07_decoder_gpt.py), seeds 0-2:
#   gpt_targets_shifted_twice (learns to predict x_{t+2}):   3.361 3.348 3.283
#   gpt_untied (lm_head trained apart from wte; judged tied): 4.105 4.180 3.946
# (The attention bugs that this threshold used to catch, such as a missing causal mask, are CausalSelfAttention's
# and judged by its own checks now.) Threshold 2.6: margin 0.22 above the worst reference run, 0.68 below the best
# broken one. Training takes ~4 s per seed on an idle core (much longer when other jobs compete for them).
MAX_VAL_LOSS = 2.6


def _train_cfg() -> _Config:
    vocab, _, _ = shakespeare_chars()
    return dataclasses.replace(TRAIN_CFG, vocab_size=vocab.size)


def _learner_train(GPT, seed, cfg):
    """On the learner's side: GPT(cfg) from `seed`, built with the library blocks, trained with this check's loop
    (AdamW, next-character batches of train.txt from a generator of its own), its state_dict returned."""
    _, train, _ = shakespeare_chars()
    with _library_parts(GPT, _FOR_GPT):
        model = build_seeded(GPT, seed, cfg)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=TRAIN_LR, weight_decay=0.0)
    g = torch.Generator().manual_seed(20_000 + seed)
    for _ in range(TRAIN_STEPS):
        x, y = next_char_batch(train, TRAIN_BATCH, cfg.block_size, g)  # (B, T), (B, T)
        _, loss, _ = model(x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return {k: v.detach() for k, v in model.state_dict().items()}


def validation_loss(state: dict, cfg: _Config, seed: int) -> float:
    """Mean next-character cross-entropy of GPT2LMHeadModel (with these weights) on held-out windows of
    validation.txt, drawn from `seed`."""
    _, _, val = shakespeare_chars()
    x, y = next_char_batch(val, EVAL_WINDOWS, cfg.block_size, generator(10_000 + seed))  # (N, T), (N, T)
    oracle = gpt2_from_gpt(state, cfg.n_head)
    with torch.no_grad():
        logits = oracle(x).logits  # (N, T, V)
    return F.cross_entropy(logits.reshape(-1, cfg.vocab_size), y.reshape(-1)).item()


@trusted_check(points=2)
@_gpt_only
def check_GPT_trained(GPT, seed=0):
    """Your GPT (n_layer=2, n_head=4, n_embd=48, block_size=32, character vocabulary of train.txt), built with
    torch-computed blocks in place of your Block and CausalSelfAttention and trained with the check's own loop
    (AdamW, lr 4e-3, 300 steps of 32 windows), reaches a validation loss below the threshold on held-out windows
    of validation.txt, computed by GPT2LMHeadModel with your trained weights. Judged here: your GPT's
    embeddings, initialisation, weight tying, ln_f, lm_head and loss."""
    cfg = _train_cfg()
    call = f"training GPT(n_layer={cfg.n_layer}, n_head={cfg.n_head}, n_embd={cfg.n_embd}, block_size={cfg.block_size})"
    try:
        state = on_learner_side(call, lambda: _learner_train(live(GPT), seed, cfg))
    except LearnerRaised as exc:
        raise exc.explain(call) from None
    plain = isinstance(state, dict) and all(isinstance(v, torch.Tensor) for v in state.values())
    _check_shapes({k: tuple(v.shape) for k, v in state.items()} if plain else None, _layout(cfg), call)
    if not all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point()):
        raise AssertionError(f"{call}: the trained weights contain NaN or inf")
    loss = validation_loss(state, cfg, seed)
    if not loss < MAX_VAL_LOSS:
        raise AssertionError(
            f"{call}: validation loss {loss:.3f} nats/character (computed by GPT-2's causal forward with your "
            f"trained weights); a working model gets below {MAX_VAL_LOSS}. Check that the loss uses the targets as "
            "given (already shifted), weight tying, and the initialisation")


# ---------------------------------------------------------------------------- sampling functions
@trusted_check(points=1)
def check_apply_temperature(apply_temperature, seed=0):
    """Against TemperatureLogitsWarper for several temperatures and shapes; temperature <= 0 raises ValueError."""
    from transformers import TemperatureLogitsWarper

    g = generator(seed)
    for shape, t in (((3, 17), 0.7), ((2, 11), 1.0), ((4, 9), 2.5), ((5, 13), 0.05)):
        logits = torch.randn(shape, generator=g) * 3
        call = f"apply_temperature(logits {shape}, {t})"
        try:
            out = apply_temperature(logits.clone(), t)
        except LearnerRaised as exc:
            raise exc.explain(call) from None
        expected = TemperatureLogitsWarper(t)(None, logits.clone())
        assert_close(out, expected, call, hint="divide the logits by the temperature (before the softmax)")
    for t in (0, -1.0):
        try:
            apply_temperature(torch.randn(2, 5, generator=g), t)
        except LearnerRaised as exc:
            if exc.type_name != "ValueError":
                raise AssertionError(f"apply_temperature(logits, {t}) raised {exc.type_name}, expected ValueError") from None
        else:
            raise AssertionError(f"apply_temperature(logits, {t}) must raise ValueError: a temperature must be > 0 "
                                 "(generate handles temperature=0 as greedy)")


def _logit_rows(g, V):
    """Rows that make filters fail visibly: random, ties at many values, -inf entries, huge values."""
    rows = [torch.randn(V, generator=g) * 2 for _ in range(3)]
    tied = torch.randint(0, 4, (V,), generator=g).float()  # 4 distinct values, many ties
    rows.append(tied)
    with_inf = torch.randn(V, generator=g)
    with_inf[torch.randperm(V, generator=g)[: V // 3]] = float("-inf")
    rows.append(with_inf)
    huge = torch.randn(V, generator=g)
    huge[int(torch.randint(0, V, (1,), generator=g))] = 1e4
    rows.append(huge)
    return torch.stack(rows)  # (6, V)


@trusted_check(points=2)
def check_top_k_filter(top_k_filter, seed=0):
    """Against TopKLogitsWarper on batched rows (random, ties at the k-th value, -inf entries, a 1e4
    logit), 2-D and 3-D, several k, and k >= V (unchanged). Ties with the k-th value are kept, as the
    library keeps them (scores < k-th largest are removed)."""
    from transformers import TopKLogitsWarper

    g = generator(seed)
    V = 12
    for k in (1, 3, 5, V, V + 4):
        logits = _logit_rows(g, V)
        for x in (logits, logits.view(2, 3, V)):
            call = f"top_k_filter(logits {tuple(x.shape)}, k={k})"
            try:
                out = top_k_filter(x.clone(), k)
            except LearnerRaised as exc:
                raise exc.explain(call) from None
            assert_shape(out, tuple(x.shape), call)
            expected = TopKLogitsWarper(top_k=k)(None, x.clone())
            if not torch.equal(out.isneginf(), expected.isneginf()):
                kept, want = (~out.isneginf()).sum(-1).flatten().tolist(), (~expected.isneginf()).sum(-1).flatten().tolist()
                hint = ("keep every logit >= the k-th largest of its row (ties with it too: logits < kth -> -inf), "
                        "row by row (dim=-1)")
                if k >= V:
                    hint = "k >= V keeps every token"
                raise AssertionError(f"{call}: kept {kept} tokens per row, transformers keeps {want}: {hint}")
            keep = ~expected.isneginf()
            if not torch.equal(out[keep], expected[keep]):
                raise AssertionError(f"{call}: the kept logits changed: leave them as they are")


@trusted_check(points=2)
def check_top_p_filter(top_p_filter, seed=0):
    """Against TopPLogitsWarper on batched rows (random, ties, -inf entries, a 1e4 logit), several p.
    Where tokens of equal value straddle the cut the library's choice among them is arbitrary, so there the
    number kept and the sorted kept values are compared; elsewhere the result must be equal. Rows where a
    cumulative probability lies within 1e-5 of p (rounding decides) are left out."""
    from transformers import TopPLogitsWarper

    g = generator(seed)
    V = 12
    for p in (0.1, 0.5, 0.8, 0.95, 1.0):
        logits = _logit_rows(g, V)
        call = f"top_p_filter(logits {tuple(logits.shape)}, p={p})"
        try:
            out = top_p_filter(logits.clone(), p)
        except LearnerRaised as exc:
            raise exc.explain(call) from None
        assert_shape(out, tuple(logits.shape), call)
        expected = TopPLogitsWarper(top_p=p)(None, logits.clone())
        probs = logits.softmax(-1).sort(dim=-1, descending=True).values
        close = ((probs.cumsum(-1) - p).abs() < 1e-5).any(-1)  # (rows,)
        for r in range(logits.shape[0]):
            if close[r]:
                continue
            mine, ref = out[r], expected[r]
            kept, want = int((~mine.isneginf()).sum()), int((~ref.isneginf()).sum())
            if kept == 0:
                raise AssertionError(f"{call}: row {r} keeps no token: the most probable token is always kept")
            if kept != want:
                raise AssertionError(
                    f"{call}: row {r} keeps {kept} tokens, transformers keeps {want}: sort the probabilities "
                    "(softmax of the logits) in descending order and keep tokens until their cumulative sum "
                    "reaches p, the token that crosses p included; then put the mask back in vocabulary order")
            cut = ref[~ref.isneginf()].min()
            straddles = bool((logits[r] == cut).sum() > (ref == cut).sum())
            if straddles:
                same = torch.equal(mine[~mine.isneginf()].sort().values, ref[~ref.isneginf()].sort().values)
            else:
                same = torch.equal(mine.isneginf(), ref.isneginf()) and torch.equal(mine[~mine.isneginf()],
                                                                                   ref[~ref.isneginf()])
            if not same:
                raise AssertionError(f"{call}: row {r} keeps other tokens than transformers does: the mask computed "
                                     "in sorted order must be put back in vocabulary order (scatter with the sort "
                                     "indices), and the kept logits left unchanged")


@trusted_check(points=2)
def check_apply_repetition_penalty(apply_repetition_penalty, seed=0):
    """Against RepetitionPenaltyLogitsProcessor on batched logits (positive and negative) with contexts
    that repeat tokens and differ per row, penalties > 1 and < 1."""
    from transformers import RepetitionPenaltyLogitsProcessor

    g = generator(seed)
    for (B, V, T), penalty in (((3, 15, 6), 1.3), ((4, 10, 9), 2.0), ((2, 20, 4), 0.7)):
        logits = torch.randn(B, V, generator=g) * 2
        idx = torch.randint(0, V // 2, (B, T), generator=g)  # few distinct tokens: repeats in every row
        idx[:, 0] = idx[:, 1]  # at least one token twice in every row
        idx[0] = (idx[0] + V // 2) % V  # row 0 uses other tokens than the rest
        call = f"apply_repetition_penalty(logits {(B, V)}, idx {(B, T)}, {penalty})"
        try:
            out = apply_repetition_penalty(logits.clone(), idx.clone(), penalty)
        except LearnerRaised as exc:
            raise exc.explain(call) from None
        expected = RepetitionPenaltyLogitsProcessor(penalty)(idx.clone(), logits.clone())
        assert_close(out, expected, call, hint=(
            "only the tokens that occur in the row's own context, each once however often it occurs; a positive "
            "logit is divided by the penalty, a negative one multiplied (both make the token less likely for "
            "penalty > 1)"))


# -------------------------------------------------------------------------------------- generate
def _library_processors():
    from transformers import (
        RepetitionPenaltyLogitsProcessor,
        TemperatureLogitsWarper,
        TopKLogitsWarper,
        TopPLogitsWarper,
    )

    return {
        "apply_temperature": lambda logits, temperature: TemperatureLogitsWarper(temperature)(None, logits),
        "top_k_filter": lambda logits, k: TopKLogitsWarper(top_k=int(k))(None, logits),
        "top_p_filter": lambda logits, p: TopPLogitsWarper(top_p=p)(None, logits),
        "apply_repetition_penalty": lambda logits, idx, penalty: RepetitionPenaltyLogitsProcessor(penalty)(idx, logits),
    }


_USED_LIBRARY = ("(This check ran your generate with transformers' own temperature, top-k, top-p and repetition "
                 "penalty in place of your four functions, and on GPT2LMHeadModel instead of your GPT, so only "
                 "generate itself is judged.)")


def _library_sampling(fn):
    """On the learner's side: while generate runs, the notebook's sampling functions as seen by `fn` (through
    `@torch.no_grad()` and any other decorator: `__wrapped__`) are transformers' processors (restored afterwards)."""
    return swapped_globals_of(fn, _library_processors())


_GEN_CFG = dict(vocab_size=17, n_positions=24, n_embd=16, n_layer=2, n_head=2)


def _library_gpt2(seed):
    """A random GPT2LMHeadModel from `seed`, with weights large enough that its logits are far from
    uniform (no near-ties for argmax)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(**_GEN_CFG, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, initializer_range=0.3,
                        bos_token_id=None, eos_token_id=None)  # no end-of-text token: generate never stops early
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(30_000 + seed)
        return GPT2LMHeadModel(config).eval()


class _LibraryGPT(nn.Module):
    """GPT2LMHeadModel behind the notebook's GPT interface: forward(idx, targets=None, past_key_values=None,
    use_cache=False) -> (logits, loss, present as a tuple of (k, v)). It logs every call (T, T_past, use_cache)."""

    def __init__(self, hf):
        super().__init__()
        self.hf = hf
        self.config = SimpleNamespace(block_size=hf.config.n_positions, vocab_size=hf.config.vocab_size,
                                      n_layer=hf.config.n_layer, n_head=hf.config.n_head, n_embd=hf.config.n_embd)
        self.calls = []

    def forward(self, idx, targets=None, past_key_values=None, use_cache=False):
        from transformers import DynamicCache

        T_past = 0 if past_key_values is None else int(past_key_values[0][0].size(2))
        self.calls.append((int(idx.size(1)), T_past, bool(use_cache)))
        cache = None if past_key_values is None else DynamicCache(ddp_cache_data=[tuple(kv) for kv in past_key_values])
        if use_cache and cache is None:
            cache = DynamicCache()
        out = self.hf(idx, past_key_values=cache, use_cache=bool(use_cache))
        present = tuple((layer.keys, layer.values) for layer in out.past_key_values.layers) if use_cache else None
        loss = None if targets is None else F.cross_entropy(out.logits.flatten(0, 1), targets.flatten(), ignore_index=-100)
        return out.logits, loss, present


def _run_generate(generate, seed, prompt, n, kwargs):
    """On the learner's side: generate(library model, prompt, n, **kwargs), with library processors; the
    tokens and the adapter's call log."""
    model = _LibraryGPT(_library_gpt2(seed))
    with _library_sampling(generate):
        out = generate(model, prompt.clone(), n, **kwargs)
    return out, tuple(model.calls)


def _tokens(out, shape, prompt, what):
    assert_shape(out, shape, what, "(B, T + max_new_tokens): append each new token along dim=1")
    if out.dtype != torch.long:
        raise AssertionError(f"{what}: expected int64 token ids, got {out.dtype}")
    if not torch.equal(out[:, :prompt.size(1)], prompt):
        raise AssertionError(f"{what}: the output must start with the prompt")
    return out


@trusted_check(points=2)
def check_generate(generate, seed=0):
    """Greedy decoding (temperature=0) on GPT2LMHeadModel behind the GPT interface equals
    GPT2LMHeadModel.generate(do_sample=False), with use_cache True and False and with a repetition
    penalty; with use_cache the prompt is run once and then one new token per call with the cache;
    without it the whole sequence every call and never a cache."""
    g = generator(seed)
    B, T, n = 3, 5, 9
    prompt = torch.randint(0, _GEN_CFG["vocab_size"], (B, T), generator=g)
    hf = _library_gpt2(seed)
    for use_cache, penalty in ((True, 1.0), (False, 1.0), (True, 1.5)):
        kwargs = dict(temperature=0, use_cache=use_cache, repetition_penalty=penalty)
        call = f"generate(model, idx {(B, T)}, {n}, temperature=0, repetition_penalty={penalty}, use_cache={use_cache})"
        try:
            out, calls = on_learner_side(call, lambda kw=kwargs: _run_generate(live(generate), seed, prompt, n, kw))
        except LearnerRaised as exc:
            raise AssertionError(exc.describe(call) + "\n" + _USED_LIBRARY) from None
        out = _tokens(out, (B, T + n), prompt, call)
        with torch.no_grad():
            expected = hf.generate(prompt, attention_mask=torch.ones_like(prompt), do_sample=False, max_new_tokens=n,
                                   repetition_penalty=penalty)
        if not (isinstance(calls, tuple) and len(calls) == n and all(isinstance(c, tuple) and len(c) == 3 for c in calls)):
            raise AssertionError(f"{call}: the model was called {len(calls) if isinstance(calls, tuple) else '?'} "
                                 f"times, expected once per new token ({n})")
        if use_cache:
            want = ((T, 0, True),) + tuple((1, T + i, True) for i in range(n - 1))
            if calls != want:
                raise AssertionError(
                    f"{call}: the model saw (new tokens, cached tokens, use_cache) = {list(calls[:4])}..., expected "
                    f"{list(want[:4])}...: run the prompt once with use_cache=True, then only the newest token "
                    "idx[:, -1:] with past_key_values=present of the previous call")
        else:
            want = tuple((T + i, 0, False) for i in range(n))
            if calls != want:
                raise AssertionError(f"{call}: the model saw (new tokens, cached tokens, use_cache) = {list(calls[:4])}"
                                     f"..., expected {list(want[:4])}...: without the cache run the whole sequence "
                                     "(cropped to block_size) at every step")
        if not torch.equal(out, expected):
            raise AssertionError(f"{call}: tokens {out[0].tolist()} (row 0), GPT2LMHeadModel.generate(do_sample=False) "
                                 f"gives {expected[0].tolist()}: temperature=0 means argmax of the last position's "
                                 "logits (after the repetition penalty). " + _USED_LIBRARY)


def _processed_probs(hf, prompt, kwargs):
    """The distribution of the first sampled token after the library's processors, in generate's order."""
    proc = _library_processors()
    with torch.no_grad():
        logits = hf(prompt).logits[:, -1, :]  # (B, V)
    if kwargs["repetition_penalty"] != 1.0:
        logits = proc["apply_repetition_penalty"](logits, prompt, kwargs["repetition_penalty"])
    logits = proc["apply_temperature"](logits, kwargs["temperature"])
    if kwargs["top_k"] is not None:
        logits = proc["top_k_filter"](logits, kwargs["top_k"])
    if kwargs["top_p"] is not None:
        logits = proc["top_p_filter"](logits, kwargs["top_p"])
    return logits.softmax(dim=-1)  # (B, V)


@trusted_check(points=2)
def check_generate_sampling(generate, seed=0):
    """Sampling on GPT2LMHeadModel behind the GPT interface, with transformers' processors in place of your
    four functions: the same generator seed gives the same tokens; top_k=1 gives the greedy tokens; over
    many copies of one prompt the first sampled token's frequencies match softmax of the processed logits
    (repetition penalty, temperature, top-k, top-p; and temperatures 0.5 and 1.8 alone) within 5 standard
    errors, and filtered tokens never come."""
    g = generator(seed)
    V = _GEN_CFG["vocab_size"]
    B, T, n = 2, 4, 6
    prompt = torch.randint(0, V, (B, T), generator=g)
    s = int(torch.randint(0, 2**31 - 1, (1,), generator=g))
    kw = dict(temperature=0.9, top_k=6, top_p=0.9, repetition_penalty=1.2)

    def runs(generate):
        a = _run_generate(generate, seed, prompt, n, dict(kw, generator=torch.Generator().manual_seed(s)))[0]
        b = _run_generate(generate, seed, prompt, n, dict(kw, generator=torch.Generator().manual_seed(s)))[0]
        k1 = _run_generate(generate, seed, prompt, n, dict(top_k=1, generator=torch.Generator().manual_seed(s)))[0]
        greedy = _run_generate(generate, seed, prompt, n, dict(temperature=0))[0]
        return a, b, k1, greedy

    call = f"generate(model, idx {(B, T)}, {n}, temperature=0.9, top_k=6, top_p=0.9, repetition_penalty=1.2, generator=...)"
    try:
        result = on_learner_side(call, lambda: runs(live(generate)))
    except LearnerRaised as exc:
        raise AssertionError(exc.describe(call) + "\n" + _USED_LIBRARY) from None
    if not (isinstance(result, tuple) and len(result) == 4):
        raise AssertionError(f"{call}: no result came back")
    a, b, k1, greedy = (_tokens(t, (B, T + n), prompt, call) for t in result)
    if not torch.equal(a, b):
        raise AssertionError(f"{call}: two runs with generators of the same seed gave different tokens: pass "
                             "generator=generator to torch.multinomial")
    if not torch.equal(k1, greedy):
        raise AssertionError("generate(..., top_k=1) must give the greedy tokens (only the best token survives "
                             f"top-k): got {k1[0].tolist()}, greedy {greedy[0].tolist()}. " + _USED_LIBRARY)

    N = 3000
    many = prompt[:1].repeat(N, 1)  # (N, T): one prompt, N times
    hf = _library_gpt2(seed)
    for i, settings in enumerate((kw, dict(temperature=0.5, top_k=None, top_p=None, repetition_penalty=1.0),
                                  dict(temperature=1.8, top_k=None, top_p=None, repetition_penalty=1.0))):
        shown = ", ".join(f"{k}={v}" for k, v in settings.items())
        call = f"generate(model, the same prompt x {N}, 1, {shown})"
        try:
            out = on_learner_side(call, lambda st=settings, i=i: _run_generate(live(generate), seed, many, 1, dict(
                st, generator=torch.Generator().manual_seed(s + 1 + i)))[0])
        except LearnerRaised as exc:
            raise AssertionError(exc.describe(call) + "\n" + _USED_LIBRARY) from None
        out = _tokens(out, (N, T + 1), many, call)
        first = out[:, -1]
        if ((first < 0) | (first >= V)).any():
            raise AssertionError(f"{call}: sampled token ids outside 0 .. {V - 1}")
        freq = torch.bincount(first, minlength=V).float() / N  # (V,)
        probs = _processed_probs(hf, prompt[:1], settings)[0]  # (V,)
        if (freq[probs == 0] > 0).any():
            bad = torch.nonzero((freq > 0) & (probs == 0))[0].item()
            raise AssertionError(f"{call}: token {bad} was sampled, but top-k / top-p remove it (probability 0): "
                                 "sample from softmax of the filtered logits. " + _USED_LIBRARY)
        tol = 5 * torch.sqrt(probs * (1 - probs) / N) + 2 / N  # 5 standard errors of a frequency over N draws
        worst = int(((freq - probs).abs() / tol).argmax())
        if ((freq - probs).abs() > tol).any():
            raise AssertionError(
                f"{call}: token {worst} came with frequency {freq[worst]:.3f}, its probability after the processors "
                f"is {probs[worst]:.3f}: sample with torch.multinomial(softmax(processed logits), 1) (not argmax, not "
                "the raw logits), with the processors in the order repetition penalty, temperature, top-k, top-p. "
                + _USED_LIBRARY)


# ------------------------------------------------------------------------------- load_gpt2_weights
_LOAD_CFG = _Config(block_size=11, vocab_size=19, n_layer=2, n_head=3, n_embd=12)
_CONV1D = ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")


def _gpt2_to_load(seed):
    """A random GPT2LMHeadModel from `seed` in _LOAD_CFG's sizes, every parameter drawn (biases and norms too, so
    a tensor left out shows)."""
    from transformers import GPT2LMHeadModel

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(40_000 + seed)
        hf = GPT2LMHeadModel(_hf_config(_LOAD_CFG))
        with torch.no_grad():
            for p in hf.parameters():
                p.copy_(torch.randn_like(p))
    return hf.eval()


class _Target(nn.Module):
    """The check's own model with GPT-2's names (plain torch modules, not the learner's GPT, so a GPT bug costs
    nothing here): transformer.wte / wpe / drop / h[i] (ln_1, attn.c_attn, attn.c_proj, ln_2, mlp.c_fc,
    mlp.c_proj) / ln_f, lm_head tied to wte. Every parameter starts at 0, so one left out shows."""

    def __init__(self, cfg: _Config):
        super().__init__()
        self.config = cfg
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(cfg.vocab_size, cfg.n_embd), wpe=nn.Embedding(cfg.block_size, cfg.n_embd),
            drop=nn.Dropout(0.0), h=nn.ModuleList(_LibraryBlock(cfg) for _ in range(cfg.n_layer)),
            ln_f=nn.LayerNorm(cfg.n_embd)))
        self.lm_head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        self.transformer.wte.weight = self.lm_head.weight
        with torch.no_grad():
            for p in self.parameters():
                p.zero_()


def _storages(module) -> set:
    return {t.untyped_storage().data_ptr() for t in module.state_dict().values()}


def _run_load(load_gpt2_weights, seed):
    """On the learner's side: load_gpt2_weights(target, hf); what came back, the tie, whether the HF model was left
    unchanged and unshared, and the target's tensors."""
    hf, target = _gpt2_to_load(seed), _Target(_LOAD_CFG)
    before = {k: v.clone() for k, v in hf.state_dict().items()}
    returned = load_gpt2_weights(target, hf)
    after = hf.state_dict()
    unchanged = set(after) == set(before) and all(torch.equal(after[k], v) for k, v in before.items())
    shared = bool(_storages(target) & _storages(hf))
    tied = target.lm_head.weight is target.transformer.wte.weight
    return (returned is target, tied, unchanged, shared,
            {k: v.detach().clone() for k, v in target.state_dict().items()})


@trusted_check(points=2)
def check_load_gpt2_weights(load_gpt2_weights, seed=0):
    """A random GPT2LMHeadModel (2 layers, C = 12, every parameter drawn) loaded into the check's own model with
    GPT-2's names and nn.Linear layers: every Linear then computes what the matching Conv1D computes on random
    inputs (the four projection weights transposed), embeddings, LayerNorms and biases equal, lm_head still the
    same Parameter as wte, the model returned, the HF model unchanged and sharing no memory with it."""
    g = generator(seed)
    call = "load_gpt2_weights(model, GPT2LMHeadModel(n_layer=2, n_head=3, n_embd=12, vocab_size=19, n_positions=11))"
    result = learner_call(call, lambda: _run_load(live(load_gpt2_weights), seed))
    if not (isinstance(result, tuple) and len(result) == 5 and isinstance(result[4], dict)):
        raise AssertionError(f"{call}: no result came back")
    returned, tied, unchanged, shared, state = result
    hf = _gpt2_to_load(seed)
    theirs = dict(hf.state_dict())
    _check_shapes({k: tuple(v.shape) for k, v in state.items() if isinstance(v, torch.Tensor)}, _layout(_LOAD_CFG),
                  call)
    for name, t in theirs.items():
        module = name.rsplit(".", 1)[0]
        mine = state[name]
        if module.endswith(_CONV1D):
            if name.endswith(".bias"):
                assert_close(mine, t, f"{call}: {name}", atol=0, rtol=0, hint="copy the biases as they are")
                continue
            x = torch.randn(3, t.shape[0], generator=g)  # (N, in)
            with torch.no_grad():
                expected = hf.get_submodule(module)(x)  # Conv1D: x @ W + b
                got = F.linear(x, mine, state[f"{module}.bias"]) if mine.shape == t.t().shape else None
            if got is None:
                raise AssertionError(f"{call}: {name} has shape {tuple(mine.shape)}, nn.Linear needs (out, in) = "
                                     f"{tuple(t.t().shape)}: GPT-2's Conv1D stores (in, out), transpose it")
            if not torch.allclose(got, expected, atol=1e-5, rtol=1e-5):
                square = " (square, so its shape cannot tell you)" if t.shape[0] == t.shape[1] else ""
                untransposed = torch.equal(mine, t)
                raise AssertionError(
                    f"{call}: your {module} computes other outputs than GPT-2's Conv1D on the same inputs"
                    + (f": its weight was copied without the transpose{square}. Conv1D computes x @ W + b with W "
                       "(in, out); nn.Linear computes x @ W.T + b, so copy W.t() into every one of the four "
                       "projections (attn.c_attn, attn.c_proj, mlp.c_fc, mlp.c_proj)" if untransposed else
                       ": copy W.t() of the matching GPT-2 weight (and its bias)"))
        elif name == "lm_head.weight":
            continue  # checked through the tie below
        else:
            assert_close(mine, t, f"{call}: {name}", atol=0, rtol=0,
                         hint="embeddings and LayerNorms are copied as they are (only the four Conv1D weights are "
                              "transposed); do not skip ln_f or the biases")
    if tied is not True:
        raise AssertionError(f"{call}: after loading, model.lm_head.weight is no longer the same Parameter as "
                             "model.transformer.wte.weight: copy into the existing tensors (.copy_ under "
                             "torch.no_grad()) instead of assigning new Parameters; lm_head then follows wte")
    assert_close(state["lm_head.weight"], theirs["transformer.wte.weight"], f"{call}: lm_head.weight", atol=0,
                 rtol=0, hint="lm_head is wte (tied)")
    if unchanged is not True:
        raise AssertionError(f"{call}: the GPT2LMHeadModel was changed: copy from it, never transpose its tensors in "
                             "place (.t() gives a new view; .t_() changes the model)")
    if shared is not False:
        raise AssertionError(f"{call}: your model shares memory with the GPT2LMHeadModel (a tensor assigned, not "
                             "copied): training one would change the other. Use p.copy_(w) under torch.no_grad()")
    if returned is not True:
        raise AssertionError(f"{call} must return the model it loaded into")
