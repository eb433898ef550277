"""Known bugs of module 08: the learning-rate schedule, gradient clipping, gradient accumulation weighted by
tokens, the mixed-precision training step, the weight-decay parameter groups and the memory count.

The small functions are written out whole, each with its bug. A learner's train_step is a dozen library calls
in a fixed order, and each bug is one of them missing or changed: those mutants are the reference's step handed
an optimizer or GradScaler without that call, or called with the wrong arguments (from_reference=True); the one
that moves a call (clipping after the step) is written out, clipping with torch.nn.utils.clip_grad_norm_ as the
hidden checks do while they judge train_step.
"""

import math

import torch
import torch.nn.functional as F

from grader.mutants import mutant

MUTANTS: list = []


# ------------------------------------------------------------------------------------ warmup_cosine_lr
def _cosine(max_lr, min_lr, progress):
    return min_lr + (max_lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))


@mutant("warmup_cosine_lr", "warmup off by one: (step + 1) / warmup_steps (nanoGPT-style), not transformers' "
        "step / warmup_steps", MUTANTS)
def lr_warmup_off_by_one(step, max_lr, warmup_steps, total_steps, min_lr=0.0):
    if step < warmup_steps:
        return max_lr * (step + 1) / warmup_steps
    return _cosine(max_lr, min_lr, (step - warmup_steps) / (total_steps - warmup_steps))


@mutant("warmup_cosine_lr", "the cosine measured from step 0 (progress = step / total_steps), not from the end of "
        "the warmup", MUTANTS)
def lr_cosine_from_step_0(step, max_lr, warmup_steps, total_steps, min_lr=0.0):
    if step < warmup_steps:
        return max_lr * step / warmup_steps
    return _cosine(max_lr, min_lr, step / total_steps)


@mutant("warmup_cosine_lr", "min_lr ignored: the cosine always decays to 0", MUTANTS)
def lr_ignores_min_lr(step, max_lr, warmup_steps, total_steps, min_lr=0.0):
    if step < warmup_steps:
        return max_lr * step / warmup_steps
    return _cosine(max_lr, 0.0, (step - warmup_steps) / (total_steps - warmup_steps))


@mutant("warmup_cosine_lr", "min_lr added on top of the cosine: min_lr + max_lr * 0.5 (1 + cos) (starts at "
        "max_lr + min_lr)", MUTANTS)
def lr_min_lr_on_top(step, max_lr, warmup_steps, total_steps, min_lr=0.0):
    if step < warmup_steps:
        return max_lr * step / warmup_steps
    progress = min((step - warmup_steps) / (total_steps - warmup_steps), 1.0)
    return min_lr + max_lr * 0.5 * (1.0 + math.cos(math.pi * progress))


@mutant("warmup_cosine_lr", "no clamp after total_steps: the cosine comes back up (transformers' formula past the "
        "end)", MUTANTS)
def lr_cosine_comes_back(step, max_lr, warmup_steps, total_steps, min_lr=0.0):
    if step < warmup_steps:
        return max_lr * step / warmup_steps
    progress = (step - warmup_steps) / (total_steps - warmup_steps)
    return min_lr + (max_lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))


@mutant("warmup_cosine_lr", "a full cosine period (cos(2 pi p)): back at max_lr at total_steps", MUTANTS)
def lr_full_period(step, max_lr, warmup_steps, total_steps, min_lr=0.0):
    if step < warmup_steps:
        return max_lr * step / warmup_steps
    progress = min((step - warmup_steps) / (total_steps - warmup_steps), 1.0)
    return min_lr + (max_lr - min_lr) * 0.5 * (1.0 + math.cos(2 * math.pi * progress))


# -------------------------------------------------------------------------------------- clip_grad_norm
@mutant("clip_grad_norm", "each tensor clipped on its own (per-parameter norms): changes the direction", MUTANTS)
def clip_each_tensor(parameters, max_norm):
    norms = []
    for p in parameters:
        if p.grad is None:
            continue
        norm = p.grad.norm()
        p.grad.mul_(torch.clamp(max_norm / (norm + 1e-6), max=1.0))
        norms.append(norm)
    return torch.stack(norms).norm()


@mutant("clip_grad_norm", "the coefficient is not clamped at 1: small gradients are scaled up to max_norm", MUTANTS)
def clip_scales_up(parameters, max_norm):
    grads = [p.grad for p in parameters if p.grad is not None]
    total = torch.stack([g.norm() for g in grads]).norm()
    for g in grads:
        g.mul_(max_norm / (total + 1e-6))
    return total


@mutant("clip_grad_norm", "iterates `parameters` twice: with model.parameters() (a generator) the clipping loop "
        "sees nothing", MUTANTS)
def clip_generator_consumed(parameters, max_norm):
    total = torch.stack([p.grad.norm() for p in parameters if p.grad is not None]).norm()
    coef = torch.clamp(max_norm / (total + 1e-6), max=1.0)
    for p in parameters:  # the bug: a generator is exhausted after the first loop
        if p.grad is not None:
            p.grad.mul_(coef)
    return total


@mutant("clip_grad_norm", "returns the norm after clipping, not before", MUTANTS)
def clip_returns_clipped_norm(parameters, max_norm):
    grads = [p.grad for p in parameters if p.grad is not None]
    total = torch.stack([g.norm() for g in grads]).norm()
    coef = torch.clamp(max_norm / (total + 1e-6), max=1.0)
    for g in grads:
        g.mul_(coef)
    return total * coef


@mutant("clip_grad_norm", "crashes on a parameter without a gradient (p.grad is None)", MUTANTS)
def clip_crashes_on_none(parameters, max_norm):
    params = list(parameters)
    total = torch.stack([p.grad.norm() for p in params]).norm()
    coef = torch.clamp(max_norm / (total + 1e-6), max=1.0)
    for p in params:
        p.grad.mul_(coef)
    return total


@mutant("clip_grad_norm", "the sum of the per-tensor norms instead of the norm of all gradients together", MUTANTS)
def clip_sum_of_norms(parameters, max_norm):
    grads = [p.grad for p in parameters if p.grad is not None]
    total = sum(g.norm() for g in grads)
    coef = torch.clamp(max_norm / (total + 1e-6), max=1.0)
    for g in grads:
        g.mul_(coef)
    return total


# ------------------------------------------------------------------------------------ accumulated_step
# The model has module 07's interface: model(x, y) -> (logits, loss, present), loss the mean over the targets
# that are not -100.
def _counted(y):
    return int((y != -100).sum())


@mutant("accumulated_step", "weights each micro-batch by its examples, len(x) / N (the course's old contract): "
        "right only when every example has as many counted targets", MUTANTS)
def accumulate_by_examples(model, micro_batches):
    model.zero_grad(set_to_none=True)
    n = sum(len(x) for x, _ in micro_batches)
    total = 0.0
    for x, y in micro_batches:
        _, loss, _ = model(x, y)
        (loss * len(x) / n).backward()
        total += loss.item() * len(x) / n
    return total


@mutant("accumulated_step", "mean of means: each micro-batch's loss divided by the number of micro-batches K "
        "(the Trainer's bug before October 2024)", MUTANTS)
def accumulate_mean_of_means(model, micro_batches):
    model.zero_grad(set_to_none=True)
    total = 0.0
    for x, y in micro_batches:
        _, loss, _ = model(x, y)
        (loss / len(micro_batches)).backward()
        total += loss.item() / len(micro_batches)
    return total


@mutant("accumulated_step", "counts the -100 targets: weights by y.numel() / N, every target position, ignored or not",
        MUTANTS)
def accumulate_counts_ignored(model, micro_batches):
    model.zero_grad(set_to_none=True)
    n = sum(y.numel() for _, y in micro_batches)
    total = 0.0
    for x, y in micro_batches:
        _, loss, _ = model(x, y)
        (loss * y.numel() / n).backward()
        total += loss.item() * y.numel() / n
    return total


@mutant("accumulated_step", "a micro-batch without counted targets not skipped: 0 * nan poisons every gradient",
        MUTANTS)
def accumulate_nan_from_padding(model, micro_batches):
    model.zero_grad(set_to_none=True)
    n = sum(_counted(y) for _, y in micro_batches)
    total = 0.0
    for x, y in micro_batches:
        _, loss, _ = model(x, y)  # nan when every target is -100
        (loss * _counted(y) / n).backward()
        total += loss.item() * _counted(y) / n
    return total


@mutant("accumulated_step", "no scaling: the micro-batches' mean losses summed (K times the gradient)", MUTANTS)
def accumulate_sum_of_means(model, micro_batches):
    model.zero_grad(set_to_none=True)
    total, n = 0.0, sum(_counted(y) for _, y in micro_batches)
    for x, y in micro_batches:
        _, loss, _ = model(x, y)
        loss.backward()
        total += loss.item() * _counted(y) / n
    return total


@mutant("accumulated_step", "no zero_grad: the gradients of an earlier step are still in p.grad", MUTANTS)
def accumulate_no_zero_grad(model, micro_batches):
    n = sum(_counted(y) for _, y in micro_batches)
    total = 0.0
    for x, y in micro_batches:
        if _counted(y):
            _, loss, _ = model(x, y)
            (loss * _counted(y) / n).backward()
            total += loss.item() * _counted(y) / n
    return total


@mutant("accumulated_step", "zero_grad inside the loop: only the last micro-batch's gradient is left", MUTANTS)
def accumulate_zero_grad_in_loop(model, micro_batches):
    n = sum(_counted(y) for _, y in micro_batches)
    total = 0.0
    for x, y in micro_batches:
        model.zero_grad(set_to_none=True)
        if _counted(y):
            _, loss, _ = model(x, y)
            (loss * _counted(y) / n).backward()
            total += loss.item() * _counted(y) / n
    return total


@mutant("accumulated_step", "right gradients, but returns the plain mean of the micro-batch losses", MUTANTS)
def accumulate_returns_unweighted_mean(model, micro_batches):
    model.zero_grad(set_to_none=True)
    n = sum(_counted(y) for _, y in micro_batches)
    losses = []
    for x, y in micro_batches:
        if _counted(y):
            _, loss, _ = model(x, y)
            (loss * _counted(y) / n).backward()
            losses.append(loss.item())
    return sum(losses) / len(losses)


@mutant("accumulated_step", "runs all micro-batches in one forward (right numbers, no memory saved)", MUTANTS)
def accumulate_all_at_once(model, micro_batches):
    model.zero_grad(set_to_none=True)
    T = max(x.size(1) for x, _ in micro_batches)  # pad the shorter windows: their padded targets are -100
    x = torch.cat([F.pad(x, (0, T - x.size(1))) for x, _ in micro_batches])
    y = torch.cat([F.pad(y, (0, T - y.size(1)), value=-100) for _, y in micro_batches])
    _, loss, _ = model(x, y)
    loss.backward()
    return loss.item()


# ------------------------------------------------------------------------------------------- train_step
# Built from the reference's step (from_reference=True), each with one call missing or changed: the
# optimizer or GradScaler the reference is handed lacks that one call (_Without), or the reference is
# called with the wrong arguments. Only the reordered step (clipping after the step) is written out.
class _Without:
    """`obj` with some methods replaced, e.g. a GradScaler whose update() does nothing."""

    def __init__(self, obj, **methods):
        self._obj, self._methods = obj, methods

    def __getattr__(self, name):  # only for names not set in __init__ (copies made without __init__ have none)
        methods, obj = self.__dict__.get("_methods", {}), self.__dict__.get("_obj")
        if name in methods:
            return methods[name]
        if obj is None:
            raise AttributeError(name)
        return getattr(obj, name)


def _nothing(*args, **kwargs):
    return None


def _scaler_without(ref, **methods):
    """The reference's step handed a GradScaler (when there is one) without `methods`."""
    step = ref["train_step"]

    def train_step(model, batch, optimizer, scaler=None, max_norm=1.0, amp_dtype=None):
        scaler = scaler if scaler is None else _Without(scaler, **methods)
        return step(model, batch, optimizer, scaler, max_norm, amp_dtype)

    return train_step


@mutant("train_step", "no zero_grad: every step's gradients add to the previous ones", MUTANTS, from_reference=True)
def step_no_zero_grad(ref):
    step = ref["train_step"]  # the reference (the namespace will hold this mutant)

    def train_step(model, batch, optimizer, scaler=None, max_norm=1.0, amp_dtype=None):
        return step(model, batch, _Without(optimizer, zero_grad=_nothing), scaler, max_norm, amp_dtype)

    return train_step


@mutant("train_step", "clips the scaled gradients: no scaler.unscale_ before clipping (scaler.step unscales after)",
        MUTANTS, from_reference=True)
def step_clips_scaled_gradients(ref):
    return _scaler_without(ref, unscale_=_nothing)


@mutant("train_step", "optimizer.step() instead of scaler.step(optimizer): an overflowing step is not skipped",
        MUTANTS, from_reference=True)
def step_bypasses_scaler(ref):
    return _scaler_without(ref, step=lambda opt, *args, **kwargs: opt.step())


@mutant("train_step", "no scaler.update(): the scale never adapts", MUTANTS, from_reference=True)
def step_no_scaler_update(ref):
    return _scaler_without(ref, update=_nothing)


@mutant("train_step", "autocast never enabled: amp_dtype ignored, everything in float32", MUTANTS, from_reference=True)
def step_ignores_amp_dtype(ref):
    step = ref["train_step"]  # the reference (the namespace will hold this mutant)

    def train_step(model, batch, optimizer, scaler=None, max_norm=1.0, amp_dtype=None):
        return step(model, batch, optimizer, scaler, max_norm, None)

    return train_step


@mutant("train_step", "model.to(amp_dtype) instead of autocast: the master weights become 16-bit", MUTANTS,
        from_reference=True)
def step_casts_the_model(ref):
    step = ref["train_step"]  # the reference (the namespace will hold this mutant)

    def train_step(model, batch, optimizer, scaler=None, max_norm=1.0, amp_dtype=None):
        if amp_dtype is not None:
            model.to(amp_dtype)
        return step(model, batch, optimizer, scaler, max_norm, None)

    return train_step


@mutant("train_step", "returns the scaled loss (scaler.scale(loss).item()) instead of the loss", MUTANTS,
        from_reference=True)
def step_returns_scaled_loss(ref):
    step = ref["train_step"]  # the reference (the namespace will hold this mutant)

    def train_step(model, batch, optimizer, scaler=None, max_norm=1.0, amp_dtype=None):
        scale = 1.0 if scaler is None else float(scaler.get_scale())  # the scale the loss was multiplied by
        loss, norm = step(model, batch, optimizer, scaler, max_norm, amp_dtype)
        return loss * scale, norm

    return train_step


@mutant("train_step", "clips after optimizer.step(): the step used the unclipped gradients", MUTANTS)
def step_clips_after_step(model, batch, optimizer, scaler=None, max_norm=1.0, amp_dtype=None):
    x, y = batch
    optimizer.zero_grad(set_to_none=True)
    with torch.autocast(device_type=x.device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
        _, loss, _ = model(x, y)
    if scaler is not None:
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        scaler.step(optimizer)
        scaler.update()
    else:
        loss.backward()
        optimizer.step()
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), float("inf") if max_norm is None else max_norm)
    return loss.item(), float(norm)


# ------------------------------------------------------------------------------------------ param_groups
def _groups(decay, no_decay, weight_decay):
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


@mutant("param_groups", "decays every parameter, biases and norm weights too (AdamW(model.parameters(), ...))",
        MUTANTS)
def groups_decay_everything(model, weight_decay):
    return _groups([p for p in model.parameters() if p.requires_grad], [], weight_decay)


@mutant("param_groups", "minGPT's rule: decays nn.Linear weights only, so the embeddings are not decayed", MUTANTS)
def groups_linear_only(model, weight_decay):
    decay = {id(m.weight) for m in model.modules() if isinstance(m, torch.nn.Linear)} - {
        id(m.weight) for m in model.modules() if isinstance(m, torch.nn.Embedding)}  # a tied head is the embedding
    params = [p for p in model.parameters() if p.requires_grad]
    return _groups([p for p in params if id(p) in decay], [p for p in params if id(p) not in decay], weight_decay)


@mutant("param_groups", "excludes names ending in 'bias' only: LayerNorm and RMSNorm weights are decayed", MUTANTS)
def groups_bias_only(model, weight_decay):
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    return _groups([p for n, p in named if not n.endswith("bias")], [p for n, p in named if n.endswith("bias")],
                   weight_decay)


@mutant("param_groups", "frozen parameters (requires_grad False) put in a group", MUTANTS)
def groups_include_frozen(model, weight_decay):
    params = list(model.parameters())
    return _groups([p for p in params if p.dim() >= 2], [p for p in params if p.dim() < 2], weight_decay)


@mutant("param_groups", "walks the modules' own parameters: a tied weight (wte = lm_head) is listed twice", MUTANTS)
def groups_tied_twice(model, weight_decay):
    params = [p for m in model.modules() for p in m.parameters(recurse=False) if p.requires_grad]
    return _groups([p for p in params if p.dim() >= 2], [p for p in params if p.dim() < 2], weight_decay)


@mutant("param_groups", "the weight decays swapped: biases and norms decayed, matrices not", MUTANTS)
def groups_swapped(model, weight_decay):
    params = [p for p in model.parameters() if p.requires_grad]
    return _groups([p for p in params if p.dim() < 2], [p for p in params if p.dim() >= 2], weight_decay)


# ------------------------------------------------------------------------------- training_memory_bytes
@mutant("training_memory_bytes", "forgets Adam's second moment (exp_avg_sq): 3 copies instead of 4", MUTANTS)
def memory_one_adam_moment(n_params, param_bytes=4, optimizer="adamw"):
    copies = {"adamw": 3, "adam": 3, "sgd": 2, "sgd_momentum": 3}
    if optimizer not in copies:
        raise ValueError(optimizer)
    return n_params * param_bytes * copies[optimizer]


@mutant("training_memory_bytes", "counts a momentum buffer for plain SGD (which keeps none)", MUTANTS)
def memory_sgd_has_momentum(n_params, param_bytes=4, optimizer="adamw"):
    copies = {"adamw": 4, "adam": 4, "sgd": 3, "sgd_momentum": 3}
    if optimizer not in copies:
        raise ValueError(optimizer)
    return n_params * param_bytes * copies[optimizer]


@mutant("training_memory_bytes", "forgets the gradients (weights + optimizer state only)", MUTANTS)
def memory_no_gradients(n_params, param_bytes=4, optimizer="adamw"):
    copies = {"adamw": 3, "adam": 3, "sgd": 1, "sgd_momentum": 2}
    if optimizer not in copies:
        raise ValueError(optimizer)
    return n_params * param_bytes * copies[optimizer]


@mutant("training_memory_bytes", "optimizer state always float32 (8 bytes per parameter for Adam whatever "
        "param_bytes is)", MUTANTS)
def memory_state_always_fp32(n_params, param_bytes=4, optimizer="adamw"):
    state = {"adamw": 8, "adam": 8, "sgd": 0, "sgd_momentum": 4}
    if optimizer not in state:
        raise ValueError(optimizer)
    return n_params * (2 * param_bytes + state[optimizer])


@mutant("training_memory_bytes", "an unknown optimizer name is counted as plain SGD instead of raising", MUTANTS)
def memory_unknown_is_sgd(n_params, param_bytes=4, optimizer="adamw"):
    copies = {"adamw": 4, "adam": 4, "sgd_momentum": 3}
    return n_params * param_bytes * copies.get(optimizer, 2)
