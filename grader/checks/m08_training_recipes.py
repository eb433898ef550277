"""Hidden checks for module 08, training recipes.

Oracles (grader/README.md, "Oracle rule"):
- `warmup_cosine_lr`: transformers' `get_cosine_schedule_with_warmup` (min_lr 0) and
  `get_cosine_with_min_lr_schedule_with_warmup` (min_lr > 0): a LambdaLR on a dummy SGD optimizer, stepped
  through every step 0 .. total_steps of several schedules, its learning rate read before each step. After
  total_steps the library's formula starts a second cosine cycle; the course's schedule holds min_lr there,
  which is checked as a property.
- `clip_grad_norm`: `torch.nn.utils.clip_grad_norm_` on copies of the same gradients (one of the parameters
  has no gradient; the parameters also come as a generator, as `model.parameters()` does).
- `accumulated_step`: one `F.cross_entropy(..., ignore_index=-100)` over the logits of all micro-batches
  concatenated and one backward (float64), on a copy of the same model: the gradient and loss of the mean over
  every counted target of the batch (what transformers' Trainer computes since its October 2024 fix).
- `train_step`: the same step run by hand with the library, from the same weights and batches: zero_grad,
  forward and the model's float32 loss (module 07's interface, `(logits, loss, present)`), backward (through `torch.amp.GradScaler` when given: scale, unscale_),
  `torch.nn.utils.clip_grad_norm_`, optimizer.step / scaler.step + scaler.update. In float32 the parameters
  after every step must equal the library's to float32 rounding; in bfloat16 autocast within the measured
  tolerance below of the float32 step. Everything runs on CPU (a CPU GradScaler in float32 stands in for
  float16 on CUDA: the order scale -> unscale_ -> clip -> step is the same).
- `param_groups`: transformers' `Trainer.get_decay_parameter_names` (no decay inside `nn.LayerNorm` nor for names
  with bias / layernorm / rmsnorm / norm) and `Trainer.create_optimizer`'s two groups (trainable parameters only),
  on GPT-shaped models whose parameters both that rule and "decay 2 or more dimensions" split alike.
- `training_memory_bytes`: the bytes of the real weight, gradient and optimizer-state tensors after one
  step of torch.optim.AdamW, Adam, SGD and SGD with momentum (`deepdive.recipes.training_state_bytes`:
  state tensors with at least one dimension, so Adam's 0-d `step` counters are left out).

One bug costs points once: while the train_step checks run, the notebook's `clip_grad_norm`, as seen by
`train_step`, is torch's `clip_grad_norm_` (`_library_clip`).
"""

import math

import torch
import torch.nn.functional as F
from torch import nn

from deepdive.recipes import training_state_bytes
from grader.checks._common import assert_close, assert_shape, generator, learner_call, swapped_globals_of
from grader.trusted import LearnerRaised, live, on_learner_side, trusted_check


def _number(value, what: str) -> float:
    """A recorded number (int, float or 0-d tensor) as a float; anything else fails with a message."""
    if isinstance(value, bool) or not isinstance(value, int | float | torch.Tensor):
        raise AssertionError(f"{what}: expected a number, got {type(value).__name__}")
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise AssertionError(f"{what}: expected a single number, got a tensor of shape {tuple(value.shape)}")
        value = value.item()
    return float(value)


# ------------------------------------------------------------------------------------ warmup_cosine_lr
def _library_schedule(max_lr, warmup, total, min_lr) -> list[float]:
    """The learning rates at steps 0 .. total of transformers' schedule (LambdaLR on a dummy optimizer)."""
    from transformers import get_cosine_schedule_with_warmup, get_cosine_with_min_lr_schedule_with_warmup

    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=max_lr)
    if min_lr == 0:
        sched = get_cosine_schedule_with_warmup(opt, num_warmup_steps=warmup, num_training_steps=total)
    else:
        sched = get_cosine_with_min_lr_schedule_with_warmup(opt, num_warmup_steps=warmup, num_training_steps=total,
                                                            min_lr=min_lr)
    lrs = []
    for _ in range(total + 1):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()  # no gradients: changes nothing, but keeps LambdaLR's order check quiet
        sched.step()
    return lrs


def _schedule_hint(step, warmup, total, min_lr) -> str:
    if step < warmup:
        return (f"step {step} is in the warmup (steps 0 .. {warmup - 1}): lr = max_lr * step / warmup_steps, so 0 at "
                f"step 0 and max_lr first reached at step warmup_steps = {warmup}")
    return (f"step {step} is in the decay: progress = (step - warmup_steps) / (total_steps - warmup_steps) runs from 0 "
            f"at step {warmup} to 1 at step {total}, and lr = min_lr + (max_lr - min_lr) * 0.5 * (1 + cos(pi * progress))"
            + (f" with min_lr = {min_lr:g}" if min_lr else ""))


def _compare_schedule(warmup_cosine_lr, max_lr, warmup, total, min_lr):
    call = f"warmup_cosine_lr(step, max_lr={max_lr:g}, warmup_steps={warmup}, total_steps={total}, min_lr={min_lr:g})"
    try:
        mine = on_learner_side(call, lambda: [live(warmup_cosine_lr)(s, max_lr, warmup, total, min_lr)
                                              for s in range(total + 1)])
    except LearnerRaised as exc:
        raise exc.explain(call) from None
    if not (isinstance(mine, list) and len(mine) == total + 1):
        raise AssertionError(f"{call}: no result came back for every step")
    expected = _library_schedule(max_lr, warmup, total, min_lr)
    name = "get_cosine_schedule_with_warmup" if min_lr == 0 else "get_cosine_with_min_lr_schedule_with_warmup"
    for step, (lr, want) in enumerate(zip(mine, expected)):
        got = _number(lr, call.replace("step,", f"{step},"))
        if not math.isfinite(got) or abs(got - want) > 1e-12 + 1e-9 * max_lr:
            raise AssertionError(f"{call.replace('step,', f'{step},')} = {got:.6g}, transformers' {name} gives "
                                 f"{want:.6g}: {_schedule_hint(step, warmup, total, min_lr)}")


def _random_schedule(g):
    total = int(torch.randint(20, 120, (1,), generator=g))
    warmup = int(torch.randint(0, total // 2, (1,), generator=g))
    max_lr = float(10 ** (-4 * torch.rand(1, generator=g)))  # 1e-4 .. 1
    return max_lr, warmup, total


@trusted_check(points=2)
def check_warmup_cosine_lr(warmup_cosine_lr, seed=0):
    """Against transformers' get_cosine_schedule_with_warmup (min_lr 0) at every step 0 .. total_steps of several
    schedules: long and short warmups, no warmup, one warmup step, warmup one step short of the end, and one
    schedule drawn from the seed."""
    g = generator(seed)
    for max_lr, warmup, total in ((3e-4, 10, 100), (1.0, 0, 30), (6e-3, 1, 17), (2e-2, 25, 26), (5e-4, 37, 200),
                                  _random_schedule(g)):
        _compare_schedule(warmup_cosine_lr, max_lr, warmup, total, 0.0)


@trusted_check(points=2)
def check_warmup_cosine_lr_min_lr(warmup_cosine_lr, seed=0):
    """Against transformers' get_cosine_with_min_lr_schedule_with_warmup (min_lr > 0) at every step 0 ..
    total_steps; after total_steps the learning rate stays at min_lr (0 by default)."""
    g = generator(seed)
    max_lr, warmup, total = _random_schedule(g)
    cases = ((1e-3, 10, 80, 1e-4), (0.5, 0, 40, 0.05), (3e-3, 5, 6, 3e-4), (max_lr, warmup, total, 0.1 * max_lr))
    for max_lr, warmup, total, min_lr in cases:
        _compare_schedule(warmup_cosine_lr, max_lr, warmup, total, min_lr)
    for max_lr, warmup, total, min_lr in ((1e-3, 10, 80, 1e-4), (2e-3, 4, 50, 0.0)):
        for step in (total + 1, total + 7, 3 * total):
            call = f"warmup_cosine_lr({step}, {max_lr:g}, {warmup}, {total}, min_lr={min_lr:g})"
            try:
                got = _number(warmup_cosine_lr(step, max_lr, warmup, total, min_lr), call)
            except LearnerRaised as exc:
                raise exc.explain(call) from None
            if not abs(got - min_lr) <= 1e-12 + 1e-9 * max_lr:
                raise AssertionError(f"{call} = {got:.6g}: after total_steps the schedule stays at min_lr = {min_lr:g} "
                                     "(the cosine must not come back up)")


# -------------------------------------------------------------------------------------- clip_grad_norm
_CLIP_SHAPES = ((4, 6), (6,), (3, 4, 2), (1,), (5, 5))


def _clip_grads(g, scale):
    """Gradients for the parameters of _CLIP_SHAPES, the fourth one None (a parameter that got no gradient)."""
    grads = [torch.randn(s, generator=g) * scale for s in _CLIP_SHAPES]
    grads[3] = None
    return grads


def _learner_clip(fn, grads, max_norm, as_generator):
    """On the learner's side: parameters with these gradients, clipped by fn; (returned norm, gradients after)."""
    params = [nn.Parameter(torch.zeros(s)) for s in _CLIP_SHAPES]
    for p, gr in zip(params, grads):
        p.grad = None if gr is None else gr.clone()
    norm = fn((p for p in params) if as_generator else params, max_norm)
    return norm, [None if p.grad is None else p.grad.detach().clone() for p in params]


def _library_clip_result(grads, max_norm):
    params = [nn.Parameter(torch.zeros(s)) for s in _CLIP_SHAPES]
    for p, gr in zip(params, grads):
        p.grad = None if gr is None else gr.clone()
    norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
    return float(norm), [None if p.grad is None else p.grad for p in params]


def _compare_clip(clip_grad_norm, grads, max_norm, as_generator, hint):
    kind = "model.parameters() (a generator)" if as_generator else "a list of parameters"
    call = (f"clip_grad_norm({kind} of shapes {', '.join(str(s) for s in _CLIP_SHAPES)}, the 4th without a "
            f"gradient (grad None), max_norm={max_norm:g})")
    try:
        result = on_learner_side(call, lambda: _learner_clip(live(clip_grad_norm), grads, max_norm, as_generator))
    except LearnerRaised as exc:
        raise exc.explain(call) from None
    if not (isinstance(result, tuple) and len(result) == 2 and isinstance(result[1], list)
            and len(result[1]) == len(_CLIP_SHAPES)):
        raise AssertionError(f"{call}: no result came back")
    norm, after = result
    want_norm, want = _library_clip_result(grads, max_norm)
    got_norm = _number(norm, f"{call}: the returned total norm")
    if not abs(got_norm - want_norm) <= 1e-5 + 1e-5 * want_norm:
        raise AssertionError(f"{call} returned {got_norm:.6g}, torch.nn.utils.clip_grad_norm_ returns {want_norm:.6g}: "
                             "return the total norm *before* clipping, sqrt of the sum of squares of every gradient "
                             "entry of every parameter (as if all gradients were one vector)")
    for i, (mine, ref) in enumerate(zip(after, want)):
        if ref is None:
            if mine is not None:
                raise AssertionError(f"{call}: parameter {i} had no gradient (None) and must keep none")
            continue
        if not isinstance(mine, torch.Tensor):
            raise AssertionError(f"{call}: parameter {i} lost its gradient")
        assert_close(mine, ref, f"{call}: the gradient of parameter {i} {tuple(ref.shape)} after clipping",
                     atol=1e-6, rtol=1e-5, hint=hint)


@trusted_check(points=3)
def check_clip_grad_norm(clip_grad_norm, seed=0):
    """Against torch.nn.utils.clip_grad_norm_ on parameters of five shapes, one without a gradient (grad None),
    given as a list and as a generator, for gradients whose total norm is above max_norm: the returned total
    norm (before clipping) and every gradient after (scaled in place by max_norm / total_norm, all alike)."""
    g = generator(seed)
    hint = ("one coefficient for all gradients, max_norm / (total_norm + 1e-6), from the norm over *all* of them "
            "together; multiply every gradient in place (p.grad.mul_(coef)). Collect `parameters` into a list first: "
            "model.parameters() is a generator, and a second loop over it sees nothing")
    for scale, max_norm, as_generator in ((1.0, 1.0, False), (0.5, 0.25, True), (3.0, 2.5, False), (2.0, 0.7, True)):
        _compare_clip(clip_grad_norm, _clip_grads(g, scale), max_norm, as_generator, hint)


@trusted_check(points=1)
def check_clip_grad_norm_no_scale_up(clip_grad_norm, seed=0):
    """Gradients whose total norm is below max_norm stay as they are (torch.nn.utils.clip_grad_norm_ clamps its
    coefficient at 1), and the returned norm is still their total norm."""
    g = generator(seed)
    hint = "the coefficient is min(1, max_norm / (total_norm + 1e-6)): clipping only ever shrinks gradients"
    for scale, max_norm, as_generator in ((0.05, 1.0, False), (0.2, 100.0, True)):
        _compare_clip(clip_grad_norm, _clip_grads(g, scale), max_norm, as_generator, hint)


# ------------------------------------------------------------------------- the checks' model (07's interface)
def _quietly(build):
    """`build()` with the global RNG forked: module constructors draw initial weights that are overwritten at
    once, and neither the notebook's random state nor a later check may depend on them."""
    with torch.random.fork_rng(devices=[]):
        return build()


class _TinyLM(nn.Module):
    """The checks' model, behind module 07's GPT interface: forward(idx (B, T), targets=None, past_key_values=None,
    use_cache=False) -> (logits (B, T, V), loss, None), the loss the mean cross-entropy over the targets that are
    not -100 (in float32 under autocast; float64 for a float64 model). Embedding, LayerNorm, two Linear layers.
    `unused` never gets a gradient (its grad stays None), as a frozen or unused parameter in a real model."""

    def __init__(self, V=11, C=12, H=20):
        super().__init__()
        self.emb = nn.Embedding(V, C)
        self.ln = nn.LayerNorm(C)
        self.fc1 = nn.Linear(C, H)
        self.fc2 = nn.Linear(H, V)
        self.unused = nn.Parameter(torch.zeros(3))

    def forward(self, idx, targets=None, past_key_values=None, use_cache=False):
        logits = self.fc2(torch.tanh(self.fc1(self.ln(self.emb(idx)))))  # (B, T, V)
        loss = None
        if targets is not None:
            flat = logits.flatten(0, -2)  # (B * T, V)
            flat = flat if flat.dtype == torch.float64 else flat.float()
            loss = F.cross_entropy(flat, targets.flatten(), ignore_index=-100)
        return logits, loss, None


def _ignored(g, y, n_ignored):
    """y with `n_ignored` of its targets, drawn from g, set to -100 (padding: they do not count)."""
    y = y.clone()
    y.view(-1)[torch.randperm(y.numel(), generator=g)[:n_ignored]] = -100
    return y


# ------------------------------------------------------------------------------------ accumulated_step
# Each case: (V, C, H) of the model, and per micro-batch (B, T, targets set to -100). Micro-batches of one shape
# hold different numbers of counted targets (padding), shapes differ (sequences of different lengths).
_ACCUMULATION_CASES = (
    ((7, 6, 9), ((2, 6, 3), (2, 6, 0), (3, 4, 7), (1, 5, 1))),
    ((5, 4, 8), ((2, 5, 0), (2, 5, 4), (2, 5, 8))),
    ((6, 5, 7), ((1, 3, 0), (4, 6, 17))),
    ((9, 4, 6), ((3, 5, 6),)),
)
_NO_TARGETS_CASE = ((7, 5, 8), ((2, 5, 2), (2, 5, 10), (1, 5, 0)))  # the second micro-batch: every target -100


def _lm_weights(g, sizes) -> dict:
    """Random float64 weights of _TinyLM(V, C, H)."""
    V, C, H = sizes
    with torch.device("meta"):  # shapes only
        shapes = {n: p.shape for n, p in _TinyLM(V, C, H).state_dict().items()}
    out = {n: torch.randn(s, generator=g, dtype=torch.float64) * (0.5 if len(s) > 1 else 0.1) for n, s in shapes.items()}
    out["ln.weight"] = 1 + 0.1 * torch.randn(shapes["ln.weight"], generator=g, dtype=torch.float64)
    return out


def _lm(weights) -> _TinyLM:
    V, C = weights["emb.weight"].shape
    model = _quietly(lambda: _TinyLM(V, C, weights["fc1.weight"].shape[0]).double())
    model.load_state_dict(weights)
    return model


def _accumulation_case(g, case):
    sizes, micro = case
    weights = _lm_weights(g, sizes)
    batches = []
    for B, T, n_ignored in micro:
        x = torch.randint(0, sizes[0], (B, T), generator=g)
        batches.append((x, _ignored(g, torch.randint(0, sizes[0], (B, T), generator=g), n_ignored)))
    stale = {k: torch.randn(v.shape, generator=g, dtype=torch.float64) for k, v in weights.items()}
    return weights, batches, stale


def _learner_accumulate(fn, weights, batches, stale):
    """On the learner's side: the model with stale gradients already in p.grad (from an earlier step), then fn;
    (returned loss, gradients, parameters after, the largest number of rows one forward call saw)."""
    model = _lm(weights)
    for name, p in model.named_parameters():
        p.grad = stale[name].clone()
    rows = []
    model.register_forward_hook(lambda module, args, out: rows.append(int(args[0].shape[0])))
    out = fn(model, [(x.clone(), y.clone()) for x, y in batches])
    grads = {n: None if p.grad is None else p.grad.detach().clone() for n, p in model.named_parameters()}
    params = {n: p.detach().clone() for n, p in model.named_parameters()}
    return out, grads, params, max(rows, default=0)


def _whole_batch(weights, batches):
    """The oracle: one F.cross_entropy (ignore_index=-100) over the logits of every micro-batch concatenated, one
    backward, in float64: the mean over all counted targets of the batch, and autograd's gradients."""
    model = _lm(weights)
    logits = torch.cat([model(x)[0].flatten(0, -2) for x, _ in batches])  # (sum of B_k * T_k, V)
    targets = torch.cat([y.flatten() for _, y in batches])
    value = F.cross_entropy(logits, targets, ignore_index=-100)
    value.backward()
    return value.item(), {n: p.grad for n, p in model.named_parameters()}


def _describe(batches):
    return ", ".join(f"({tuple(x.shape)}, {int((y != -100).sum())} counted)" for x, y in batches)


def _run_accumulation(accumulated_step, g, case):
    weights, batches, stale = _accumulation_case(g, case)
    call = f"accumulated_step(model, micro-batches (x shape, targets that are not -100): {_describe(batches)})"
    try:
        result = on_learner_side(call, lambda: _learner_accumulate(live(accumulated_step), weights, batches, stale))
    except LearnerRaised as exc:
        raise exc.explain(call) from None
    if not (isinstance(result, tuple) and len(result) == 4 and isinstance(result[1], dict)
            and isinstance(result[2], dict)):
        raise AssertionError(f"{call}: no result came back")
    return call, weights, batches, stale, result, _whole_batch(weights, batches)


_TOKEN_HINT = ("weight each micro-batch's loss (the mean over its own counted targets) by n_k / N, n_k = (y != -100)"
               ".sum() its counted targets and N the total over all micro-batches: not by its examples len(x) / N, "
               "not by 1 / K, and not by y.numel() (that counts the ignored targets too)")


def _compare_gradients(call, grads, want, stale, n_micro):
    for name, ref in want.items():
        mine = grads.get(name)
        if ref is None:  # `unused`: the loss does not depend on it
            if isinstance(mine, torch.Tensor) and not torch.equal(mine, torch.zeros_like(mine)):
                raise AssertionError(f"{call}: the parameter {name}, which the loss does not use, has a nonzero "
                                     "gradient: an earlier step's gradient is still there; zero the gradients first "
                                     "(model.zero_grad(set_to_none=True))")
            continue
        if not isinstance(mine, torch.Tensor):
            raise AssertionError(f"{call}: the parameter {name} has no gradient afterwards")
        assert_shape(mine, tuple(ref.shape), f"{call}: the gradient of {name}")
        mine = mine.to(torch.float64)
        if not torch.isfinite(mine).all():
            raise AssertionError(f"{call}: the gradient of {name} is not finite: a micro-batch whose targets are all "
                                 "-100 has a mean loss of nan (0 / 0); it counts 0 tokens, so skip it")
        if torch.allclose(mine, ref + stale[name], atol=1e-9, rtol=1e-7) and not torch.allclose(mine, ref):
            raise AssertionError(f"{call}: the gradients include the ones already in p.grad before the call: "
                                 "zero them first (model.zero_grad(set_to_none=True))")
        hint = _TOKEN_HINT
        if n_micro > 1 and torch.allclose(mine, ref * n_micro, atol=1e-9, rtol=1e-7):
            hint = f"your gradients are {n_micro} x the whole batch's (the sum of the micro-batches' means): " + hint
        assert_close(mine, ref, f"{call}: the gradient of {name}", atol=1e-10, rtol=1e-8, hint=hint)


@trusted_check(points=3)
def check_accumulated_step(accumulated_step, seed=0):
    """In float64, on a small LM behind module 07's interface: after accumulated_step every p.grad equals autograd's
    gradient of one F.cross_entropy (ignore_index=-100) over all micro-batches concatenated (the mean over every
    counted target of the batch), for micro-batches with different numbers of -100 targets, of different shapes,
    of one shape, and a single one; gradients left over from an earlier step (already in p.grad) must not count."""
    g = generator(seed)
    for case in _ACCUMULATION_CASES:
        call, _, _, stale, (_, grads, _, _), (_, want) = _run_accumulation(accumulated_step, g, case)
        _compare_gradients(call, grads, want, stale, len(case[1]))


@trusted_check(points=1)
def check_accumulated_step_contract(accumulated_step, seed=0):
    """accumulated_step returns the mean loss over all counted targets (one F.cross_entropy over the whole batch,
    as a number), runs the model on one micro-batch at a time (never on more rows than the largest micro-batch),
    and does not change the parameters (it accumulates gradients; the optimizer steps)."""
    g = generator(seed)
    for case in _ACCUMULATION_CASES[:3]:
        call, weights, _, _, (out, _, params, rows), (want_loss, _) = _run_accumulation(accumulated_step, g, case)
        got = _number(out, f"{call}: the returned loss")
        if not abs(got - want_loss) <= 1e-9 + 1e-9 * abs(want_loss):
            raise AssertionError(f"{call} returned {got:.6g}; the mean loss over all counted targets is {want_loss:.6g}: "
                                 "add up each micro-batch's loss weighted by its share n_k / N of the counted targets "
                                 "(a plain mean of the micro-batch losses overweights the ones with few targets)")
        biggest = max(B for B, _, _ in case[1])
        if rows > biggest:
            raise AssertionError(f"{call}: the model was run on {rows} rows at once, but the largest micro-batch has "
                                 f"{biggest}: run one micro-batch at a time (that is what saves the memory)")
        for name, w in weights.items():
            p = params.get(name)
            if not (isinstance(p, torch.Tensor) and p.shape == w.shape and torch.equal(p.to(w.dtype), w)):
                raise AssertionError(f"{call} changed the parameter {name}: accumulate gradients only, the optimizer "
                                     "step comes after")


@trusted_check(points=1)
def check_accumulated_step_no_targets(accumulated_step, seed=0):
    """A micro-batch whose targets are all -100 (a window of padding) counts 0 tokens: the gradients and the
    returned loss equal the whole batch's (finite), as if that micro-batch were not there."""
    g = generator(seed)
    call, _, _, stale, (out, grads, _, _), (want_loss, want) = _run_accumulation(accumulated_step, g, _NO_TARGETS_CASE)
    _compare_gradients(call, grads, want, stale, len(_NO_TARGETS_CASE[1]))
    got = _number(out, f"{call}: the returned loss")
    if not abs(got - want_loss) <= 1e-9 + 1e-9 * abs(want_loss):
        raise AssertionError(f"{call} returned {got:.6g}; the mean loss over all counted targets is {want_loss:.6g}: a "
                             "micro-batch without counted targets adds nothing (its own mean is 0 / 0 = nan: skip it)")


# ------------------------------------------------------------------------------------------- train_step
_V = 11


def _tiny_weights(g, logit_gain=1.0) -> dict:
    with torch.device("meta"):  # shapes only
        ref = _TinyLM()
    out = {}
    for name, p in ref.state_dict().items():
        out[name] = torch.randn(p.shape, generator=g) * (0.5 if p.dim() > 1 else 0.1)
        if name == "ln.weight":
            out[name] = 1 + 0.1 * torch.randn(p.shape, generator=g)
    out["fc2.weight"] = out["fc2.weight"] * logit_gain
    return out


def _batches(g, n, B=4, T=7):
    """n batches (x, y), each with 3 of its B * T targets set to -100 (the model's loss skips them)."""
    return [(torch.randint(0, _V, (B, T), generator=g), _ignored(g, torch.randint(0, _V, (B, T), generator=g), 3))
            for _ in range(n)]


def _make_optimizer(kind, params):
    if kind == "sgd":
        return torch.optim.SGD(params, lr=0.1, momentum=0.9)
    return torch.optim.AdamW(params, lr=1e-2, weight_decay=0.1)


def _make_scaler(init_scale):
    return None if init_scale is None else torch.amp.GradScaler("cpu", init_scale=init_scale, growth_interval=1)


def _library_clip(fn):
    """On the learner's side: while train_step runs, the notebook's `clip_grad_norm` as seen by `fn` (decorators
    followed) is torch's clip_grad_norm_ (restored afterwards)."""
    return swapped_globals_of(fn, {"clip_grad_norm": lambda parameters, max_norm: torch.nn.utils.clip_grad_norm_(
        parameters, max_norm)})


def _learner_steps(fn, weights, batches, opt_kind, max_norm, amp_dtype, init_scale):
    """On the learner's side: _TinyLM with these weights, its optimizer (and a CPU GradScaler from init_scale),
    one train_step per batch; per step (what train_step returned, the parameters after, the scale after), and
    the dtypes the Linear layers' outputs had and the parameters' dtypes."""
    model = _quietly(_TinyLM)
    model.load_state_dict(weights)
    opt = _make_optimizer(opt_kind, model.parameters())
    scaler = _make_scaler(init_scale)
    seen = set()
    for layer in (model.fc1, model.fc2):
        layer.register_forward_hook(lambda module, args, out: seen.add(str(out.dtype)))
    steps = []
    with _library_clip(fn):
        for x, y in batches:
            out = fn(model, (x.clone(), y.clone()), opt, scaler=scaler, max_norm=max_norm, amp_dtype=amp_dtype)
            params = {n: p.detach().clone() for n, p in model.named_parameters()}
            steps.append((out, params, None if scaler is None else float(scaler.get_scale())))
    return steps, sorted(seen), sorted({str(p.dtype) for p in model.parameters()})


def _library_steps(weights, batches, opt_kind, max_norm, init_scale):
    """The oracle, by hand with the library, in float32: per step (loss, norm before clipping, parameters, scale)."""
    model = _quietly(_TinyLM)
    model.load_state_dict(weights)
    opt = _make_optimizer(opt_kind, model.parameters())
    scaler = _make_scaler(init_scale)
    out = []
    for x, y in batches:
        opt.zero_grad(set_to_none=True)
        _, loss, _ = model(x, y)  # module 07's interface: the mean cross-entropy over the counted targets, float32
        if scaler is None:
            loss.backward()
        else:
            scaler.scale(loss).backward()
            scaler.unscale_(opt)
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), float("inf") if max_norm is None else max_norm)
        if scaler is None:
            opt.step()
        else:
            scaler.step(opt)
            scaler.update()
        out.append((loss.item(), float(norm), {n: p.detach().clone() for n, p in model.named_parameters()},
                    None if scaler is None else float(scaler.get_scale())))
    return out


_USED_LIBRARY = ("(This check ran your train_step with torch.nn.utils.clip_grad_norm_ in place of your clip_grad_norm, "
                 "so only train_step itself is judged.)")


def _run_train_steps(train_step, weights, batches, opt_kind, max_norm, amp_dtype, init_scale):
    scaler = "" if init_scale is None else f", scaler=GradScaler('cpu', init_scale={init_scale:g}, growth_interval=1)"
    dtype = "None" if amp_dtype is None else str(amp_dtype)
    opt = "SGD(lr=0.1, momentum=0.9)" if opt_kind == "sgd" else "AdamW(lr=1e-2, weight_decay=0.1)"
    call = f"train_step(model, batch (4, 7), {opt}{scaler}, max_norm={max_norm}, amp_dtype={dtype})"
    try:
        steps, linear_dtypes, param_dtypes = on_learner_side(call, lambda: _learner_steps(
            live(train_step), weights, batches, opt_kind, max_norm, amp_dtype, init_scale))
    except LearnerRaised as exc:
        raise AssertionError(exc.describe(call) + "\n" + _USED_LIBRARY) from None
    except (TypeError, ValueError):
        raise AssertionError(f"{call}: no result came back") from None
    if not (isinstance(steps, list) and len(steps) == len(batches)
            and all(isinstance(s, tuple) and len(s) == 3 and isinstance(s[1], dict) for s in steps)):
        raise AssertionError(f"{call}: no result came back for every step")
    if param_dtypes != ["torch.float32"]:
        raise AssertionError(f"{call}: after the step the parameters are {', '.join(param_dtypes)}; they must stay "
                             "float32 (the master weights): mixed precision is torch.autocast around the forward and "
                             "the loss, never model.to(amp_dtype)")
    return call, steps, linear_dtypes


def _pair(out, what):
    if not (isinstance(out, tuple | list) and len(out) == 2):
        raise AssertionError(f"{what}: train_step must return (loss, grad_norm), got {type(out).__name__}")
    return _number(out[0], f"{what}: the returned loss"), _number(out[1], f"{what}: the returned gradient norm")


def _compare_steps(call, steps, expected, *, loss_tol, norm_rtol, param_atol, param_rtol, hint):
    for i, ((out, params, scale), (want_loss, want_norm, want_params, want_scale)) in enumerate(zip(steps, expected)):
        what = f"{call}, step {i + 1} of {len(expected)}"
        loss, norm = _pair(out, what)
        if not abs(loss - want_loss) <= loss_tol:
            raise AssertionError(f"{what}: returned loss {loss:.6g}, the library step's loss is {want_loss:.6g}: return "
                                 "the batch's cross-entropy (float32, before the step; not the scaled loss). "
                                 + hint + " " + _USED_LIBRARY)
        if math.isfinite(want_norm) and not abs(norm - want_norm) <= norm_rtol * want_norm + 1e-6:
            raise AssertionError(f"{what}: returned gradient norm {norm:.6g}, the library's total norm before clipping "
                                 f"is {want_norm:.6g}: return what clip_grad_norm returns, computed on the unscaled "
                                 "gradients (scaler.unscale_ first). " + hint + " " + _USED_LIBRARY)
        for name, ref in want_params.items():
            mine = params.get(name)
            if not isinstance(mine, torch.Tensor):
                raise AssertionError(f"{what}: the parameter {name} did not come back")
            assert_close(mine, ref, f"{what}: {name} after the step against the library step", atol=param_atol,
                         rtol=param_rtol, hint=hint + " " + _USED_LIBRARY)
        if want_scale is not None and scale != want_scale:
            raise AssertionError(f"{what}: the GradScaler's scale is {scale}, the library's is {want_scale}: call "
                                 "scaler.step(optimizer) and then scaler.update() once per step")


_ORDER = ("in this order: optimizer.zero_grad(); forward and loss; loss.backward(); clip the gradients; "
          "optimizer.step()")


@trusted_check(points=3)
def check_train_step(train_step, seed=0):
    """In float32 (amp_dtype None, no scaler), two consecutive steps of SGD with momentum with clipping active
    (max_norm 0.3) and two of AdamW without clipping (max_norm None): the returned (loss, grad_norm) and every
    parameter after each step equal a library step run by hand from the same weights (zero_grad, forward,
    float32 cross-entropy, backward, clip_grad_norm_, step) to float32 rounding; the forward runs in float32."""
    g = generator(seed)
    for opt_kind, max_norm in (("sgd", 0.3), ("adamw", None)):
        weights, batches = _tiny_weights(g), _batches(g, 2)
        call, steps, linear_dtypes = _run_train_steps(train_step, weights, batches, opt_kind, max_norm, None, None)
        if linear_dtypes != ["torch.float32"]:
            raise AssertionError(f"{call}: with amp_dtype=None the Linear layers computed in {', '.join(linear_dtypes)}:"
                                 " autocast must be off (enabled=amp_dtype is not None)")
        expected = _library_steps(weights, batches, opt_kind, max_norm, None)
        # The reference is bitwise equal to the library step; the tolerance admits another order of float32 sums.
        _compare_steps(call, steps, expected, loss_tol=1e-6, norm_rtol=1e-5, param_atol=1e-6, param_rtol=1e-5,
                       hint=_ORDER + " (max_norm=None: no clipping, but still return the norm).")


@trusted_check(points=2)
def check_train_step_grad_scaler(train_step, seed=0):
    """With a torch.amp.GradScaler (on CPU, float32, growth_interval=1), against the library recipe run by hand:
    scaler.scale(loss).backward(), scaler.unscale_(optimizer) *before* clipping, scaler.step(optimizer),
    scaler.update(). Two normal steps (the scale doubles after each), then a step whose scaled gradients
    overflow to inf: the library skips it (the parameters stay) and halves the scale."""
    g = generator(seed)
    hint = ("with a scaler: scaler.scale(loss).backward(); scaler.unscale_(optimizer) before clipping (else the "
            "scaled gradients are clipped); scaler.step(optimizer) (it skips the step when a gradient is inf or nan); "
            "scaler.update()")
    for init_scale, gain, n_steps in ((2.0**12, 1.0, 2), (2.0**126, 40.0, 1)):
        weights, batches = _tiny_weights(g, logit_gain=gain), _batches(g, n_steps)
        call, steps, _ = _run_train_steps(train_step, weights, batches, "sgd", 0.3, None, init_scale)
        expected = _library_steps(weights, batches, "sgd", 0.3, init_scale)
        _compare_steps(call, steps, expected, loss_tol=1e-6, norm_rtol=1e-5, param_atol=1e-6, param_rtol=1e-5,
                       hint=hint + ".")


# bfloat16 tolerance. Calibration: the reference on this model and these steps (2 SGD-momentum steps with clipping
# at 0.3, bfloat16 autocast on CPU, 3 of the 28 targets of each batch -100) against the float32 library step,
# largest difference over both steps (re-measured when the model took module 07's interface, issue 32):
#   seeds 0-4:   |loss - loss_fp32| 1.3e-3 2.1e-3 1.1e-3 2.4e-3 2.2e-3; relative norm difference 1.2e-3 8.7e-4
#                1.7e-3 1.7e-3 5.0e-4; parameters 9.5e-5 1.0e-4 1.4e-4 6.1e-5 1.0e-4
#   seeds 0-29:  at most 4.4e-3 (loss), 4.8e-3 (norm, relative), 1.5e-4 (parameters)
# (bfloat16 keeps 8 significant bits: 2^-8 = 3.9e-3 relative per rounding). Tolerances: loss 2e-2 (4.5x the worst
# of 30 seeds), norm 2e-2 relative (4.2x), parameters 1.5e-3 (10x). A forward that ignores amp_dtype would pass these
# (float32 is within them), so the Linear layers' output dtype is checked as well.
BF16_LOSS_TOL, BF16_NORM_RTOL, BF16_PARAM_ATOL = 2e-2, 2e-2, 1.5e-3


@trusted_check(points=2)
def check_train_step_bf16(train_step, seed=0):
    """amp_dtype=torch.bfloat16 on CPU, no scaler, two SGD-momentum steps with clipping: the Linear layers compute
    in bfloat16 (torch.autocast around the forward), the parameters stay float32, and the returned loss, norm and
    parameters after each step are within the measured bfloat16 tolerance of the float32 library step."""
    g = generator(seed)
    weights, batches = _tiny_weights(g), _batches(g, 2)
    call, steps, linear_dtypes = _run_train_steps(train_step, weights, batches, "sgd", 0.3, torch.bfloat16, None)
    if linear_dtypes != ["torch.bfloat16"]:
        raise AssertionError(f"{call}: the Linear layers computed in {', '.join(linear_dtypes) or 'nothing'}, expected "
                             "bfloat16: run the forward and the loss inside torch.autocast(device_type=x.device.type, "
                             "dtype=amp_dtype, enabled=amp_dtype is not None)")
    expected = _library_steps(weights, batches, "sgd", 0.3, None)
    _compare_steps(call, steps, expected, loss_tol=BF16_LOSS_TOL, norm_rtol=BF16_NORM_RTOL,
                   param_atol=BF16_PARAM_ATOL, param_rtol=0.0,
                   hint="compute the loss in float32 (logits.float()) inside autocast; " + _ORDER + ".")


# ------------------------------------------------------------------------------------------ param_groups
class _Block(nn.Module):
    """A pre-norm block with GPT-2's names (norm="layer": LayerNorm ln_1, ln_2) or Llama's (norm="rms": RMSNorm
    input_layernorm, post_attention_layernorm)."""

    def __init__(self, C, norm, bias):
        super().__init__()
        if norm == "layer":
            self.ln_1, self.ln_2 = nn.LayerNorm(C), nn.LayerNorm(C)
        else:
            self.input_layernorm, self.post_attention_layernorm = nn.RMSNorm(C), nn.RMSNorm(C)
        self.c_attn = nn.Linear(C, 3 * C, bias=bias)
        self.c_proj = nn.Linear(C, C, bias=bias)
        self.c_fc = nn.Linear(C, 4 * C, bias=bias)
        self.mlp_proj = nn.Linear(4 * C, C, bias=bias)


class _DecayNet(nn.Module):
    """GPT-shaped parameters (never run): token and position embeddings, blocks, a final norm, a head tied to the
    token embedding (one Parameter under two names); optionally a frozen position embedding."""

    def __init__(self, V, T, C, L, norm, bias, frozen):
        super().__init__()
        self.wte, self.wpe = nn.Embedding(V, C), nn.Embedding(T, C)
        self.h = nn.ModuleList(_Block(C, norm, bias) for _ in range(L))
        if norm == "layer":
            self.ln_f = nn.LayerNorm(C)
        else:
            self.norm = nn.RMSNorm(C)
        self.lm_head = nn.Linear(C, V, bias=False)
        self.lm_head.weight = self.wte.weight  # tied: one Parameter
        if frozen:
            self.wpe.weight.requires_grad_(False)


# (V, T, C, L, norm, bias, frozen): GPT-2's layout with biases, Llama's (RMSNorm, no bias), a frozen embedding.
_DECAY_MODELS = ((13, 8, 6, 2, "layer", True, False), (11, 6, 4, 1, "rms", False, False),
                 (9, 5, 4, 2, "layer", True, True))


def _groups_by_name(model, groups):
    """On the learner's side: what param_groups returned, as [(names of its params in order, weight_decay)]; a
    parameter is named by its first name in model.named_parameters() ("?" for one the model does not hold)."""
    names = {id(p): n for n, p in model.named_parameters()}
    return [([names.get(id(p), "?") for p in group["params"]], group.get("weight_decay")) for group in groups]


def _trainer_split(model):
    """The oracle: transformers' Trainer rule (Trainer.get_decay_parameter_names: no decay inside nn.LayerNorm nor
    for names with bias / layernorm / rmsnorm / norm), and Trainer.create_optimizer's groups (trainable only)."""
    from transformers import Trainer

    decay_names = set(Trainer.get_decay_parameter_names(None, model))  # `self` is not used
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    return [n for n, _ in params if n in decay_names], [n for n, _ in params if n not in decay_names]


@trusted_check(points=3)
def check_param_groups(param_groups, seed=0):
    """On GPT-shaped models (GPT-2's names with LayerNorm and biases; Llama's with RMSNorm and no biases; tied
    embedding and head; a frozen embedding): two groups, the one with weight_decay=weight_decay holding exactly the
    parameters transformers' Trainer decays (Trainer.get_decay_parameter_names: not biases, not norm weights), the
    one with weight_decay=0.0 the other trainable ones; every trainable parameter once, frozen ones in neither."""
    g = generator(seed)
    for V, T, C, L, norm, bias, frozen in _DECAY_MODELS:
        wd = round(float(0.01 + 0.2 * torch.rand(1, generator=g)), 4)
        model = _quietly(lambda shape=(V, T, C, L, norm, bias, frozen): _DecayNet(*shape))
        what = (f"param_groups(model, {wd}) on a GPT with {'LayerNorm' if norm == 'layer' else 'RMSNorm'}"
                f"{' and biases' if bias else ', no biases'}, tied wte / lm_head"
                + (", wpe frozen (requires_grad False)" if frozen else ""))
        got = learner_call(what, lambda m=model, wd=wd: _groups_by_name(m, live(param_groups)(m, wd)))
        if not (isinstance(got, list | tuple) and len(got) == 2 and all(isinstance(x, tuple | list) and len(x) == 2
                                                                         and isinstance(x[0], list) for x in got)):
            raise AssertionError(f"{what}: return a list of two dicts, [{{'params': [...], 'weight_decay': "
                                 f"weight_decay}}, {{'params': [...], 'weight_decay': 0.0}}]")
        decay, no_decay = _trainer_split(model)
        by_wd = {}
        for names, group_wd in got:
            value = _number(group_wd, f"{what}: a group's weight_decay")
            if value in by_wd:
                raise AssertionError(f"{what}: both groups have weight_decay {value:g}; one has {wd}, the other 0.0")
            by_wd[value] = names
        if set(by_wd) != {wd, 0.0}:
            raise AssertionError(f"{what}: the groups' weight_decay values are {sorted(by_wd)}, expected {wd} (the "
                                 "decayed group) and 0.0 (the rest)")
        listed = by_wd[wd] + by_wd[0.0]
        twice = sorted({n for n in listed if listed.count(n) > 1})
        if twice:
            raise AssertionError(f"{what}: {', '.join(twice)} listed more than once (torch.optim refuses a parameter in "
                                 "two groups; a tied weight is one Parameter: model.named_parameters() gives it once)")
        if "?" in listed:
            raise AssertionError(f"{what}: a group holds a tensor that is not one of the model's parameters")
        frozen_listed = sorted(set(listed) - set(decay) - set(no_decay))
        if frozen_listed:
            raise AssertionError(f"{what}: {', '.join(frozen_listed)} is frozen (requires_grad False) and must be in "
                                 "neither group, as transformers' Trainer and nanoGPT leave it out")
        for names, want, label in ((by_wd[wd], decay, "decayed"), (by_wd[0.0], no_decay, "not decayed")):
            missing, extra = sorted(set(want) - set(names)), sorted(set(names) - set(want))
            if missing or extra:
                raise AssertionError(
                    f"{what}: the {label} group (weight_decay {wd if label == 'decayed' else 0.0}) "
                    + (f"lacks {', '.join(missing)}" if missing else "")
                    + ("; " if missing and extra else "") + (f"holds {', '.join(extra)}" if extra else "")
                    + ". transformers' Trainer decays the weight matrices and the embeddings (2 or more dimensions) "
                    "and not the biases nor the weights of LayerNorm or RMSNorm (1 dimension)")


# ------------------------------------------------------------------------------- training_memory_bytes
_OPTIMIZERS = {
    "adamw": lambda params: torch.optim.AdamW(params, lr=1e-3),
    "adam": lambda params: torch.optim.Adam(params, lr=1e-3),
    "sgd": lambda params: torch.optim.SGD(params, lr=0.1),
    "sgd_momentum": lambda params: torch.optim.SGD(params, lr=0.1, momentum=0.9),
}
GPT2_SMALL_PARAMS = 124_439_808  # GPT-2 small, tied embeddings (transformers' GPT2LMHeadModel)


def _measured_bytes(shapes, dtype, name) -> dict:
    """The real tensors after one step of the named torch optimizer on parameters of these shapes and dtype."""
    params = [nn.Parameter(torch.ones(s, dtype=dtype)) for s in shapes]
    opt = _OPTIMIZERS[name](params)
    sum((p.float() ** 2).sum() for p in params).backward()
    opt.step()
    return training_state_bytes(params, opt)


@trusted_check(points=3)
def check_training_memory_bytes(training_memory_bytes, seed=0):
    """Equal to the bytes of the real weight, gradient and optimizer-state tensors after one step of
    torch.optim.AdamW ("adamw"), Adam ("adam"), SGD ("sgd") and SGD with momentum ("sgd_momentum"), for float32,
    bfloat16 and float64 parameters (param_bytes 4, 2, 8); the defaults are float32 AdamW; GPT-2 small's
    124,439,808 parameters; an unknown optimizer name raises ValueError."""
    g = generator(seed)
    shapes = [tuple(int(d) for d in torch.randint(1, 9, (int(torch.randint(1, 3, (1,), generator=g)),), generator=g))
              for _ in range(4)]
    n = sum(math.prod(s) for s in shapes)
    for name in _OPTIMIZERS:
        for dtype in (torch.float32, torch.bfloat16, torch.float64):
            size = torch.empty((), dtype=dtype).element_size()
            measured = _measured_bytes(shapes, dtype, name)
            want = sum(measured.values())
            call = f"training_memory_bytes({n}, param_bytes={size}, optimizer={name!r})"
            try:
                got = training_memory_bytes(n, size, name)
            except LearnerRaised as exc:
                raise exc.explain(call) from None
            got = _number(got, call)
            if got != want:
                parts = ", ".join(f"{k} {v}" for k, v in measured.items())
                raise AssertionError(f"{call} = {got:g}, the real tensors after one step of torch.optim."
                                     f"{'SGD' if name.startswith('sgd') else 'AdamW' if name == 'adamw' else 'Adam'} "
                                     f"hold {want} bytes ({parts}): weights + gradients + optimizer state, each "
                                     "n_params * param_bytes per copy (Adam keeps 2 copies, SGD with momentum 1, plain SGD 0)")
            big = f"training_memory_bytes({GPT2_SMALL_PARAMS:,}, {size}, {name!r})"
            try:
                got_big = _number(training_memory_bytes(GPT2_SMALL_PARAMS, size, name), big)
            except LearnerRaised as exc:
                raise exc.explain(big) from None
            if got_big != want // n * GPT2_SMALL_PARAMS:
                raise AssertionError(f"{big} = {got_big:g}, expected {want // n * GPT2_SMALL_PARAMS:,} "
                                     f"({want // n} bytes per parameter, as measured)")
    try:
        got = _number(training_memory_bytes(n), f"training_memory_bytes({n})")
    except LearnerRaised as exc:
        raise exc.explain(f"training_memory_bytes({n})") from None
    default = sum(_measured_bytes(shapes, torch.float32, "adamw").values())
    if got != default:
        raise AssertionError(f"training_memory_bytes({n}) = {got:g}: the defaults are param_bytes=4, optimizer='adamw' "
                             f"({default} bytes)")
    try:
        training_memory_bytes(n, 4, "lion")
    except LearnerRaised as exc:
        if exc.type_name != "ValueError":
            raise AssertionError(f"training_memory_bytes({n}, 4, 'lion') raised {exc.type_name}, expected "
                                 "ValueError") from None
    else:
        raise AssertionError(f"training_memory_bytes({n}, 4, 'lion') must raise ValueError naming the optimizers it "
                             "knows ('adamw', 'adam', 'sgd', 'sgd_momentum'), not guess")
