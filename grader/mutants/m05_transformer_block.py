"""Known bugs of module 05: RMSNorm, the feed-forward network, the transformer block, its multiply-adds
(block_flops), the MoE layer.

block_flops's mutants are small functions written out whole. Every other mutant is built from the
reference namespace: a subclass of the notebook's class that overrides the one method holding the bug
(the method is written out with the bug in it), or that passes one wrong argument to the reference's own
__init__.

Left out on purpose: "top-k of the logits, then a softmax over the k kept logits" is *not* a bug: it
equals renormalising the top-k probabilities (softmax is monotonic, and the normalisers cancel).
"""

import torch
import torch.nn.functional as F

from grader.mutants import mutant

MUTANTS: list = []


# ------------------------------------------------------------------------------------------------ RMSNorm
@mutant("RMSNorm", "subtracts the mean first (LayerNorm without its shift, not RMSNorm)", MUTANTS, from_reference=True)
def rms_mean_subtracted(ref):
    class Mutated(ref["RMSNorm"]):
        def forward(self, x):
            x = x - x.mean(dim=-1, keepdim=True)
            return x * torch.rsqrt(x.pow(2).mean(dim=-1, keepdim=True) + self.eps) * self.weight

    return Mutated


@mutant("RMSNorm", "eps added outside the square root: x / (sqrt(mean(x^2)) + eps)", MUTANTS, from_reference=True)
def rms_eps_outside_sqrt(ref):
    class Mutated(ref["RMSNorm"]):
        def forward(self, x):
            return x / (x.pow(2).mean(dim=-1, keepdim=True).sqrt() + self.eps) * self.weight

    return Mutated


@mutant("RMSNorm", "the learnable scale is created but never applied", MUTANTS, from_reference=True)
def rms_weight_unused(ref):
    class Mutated(ref["RMSNorm"]):
        def forward(self, x):
            return x * torch.rsqrt(x.pow(2).mean(dim=-1, keepdim=True) + self.eps)

    return Mutated


@mutant("RMSNorm", "divides by the L2 norm sqrt(sum(x^2)) instead of the root-mean-square", MUTANTS,
        from_reference=True)
def rms_l2_norm(ref):
    class Mutated(ref["RMSNorm"]):
        def forward(self, x):
            return x * torch.rsqrt(x.pow(2).sum(dim=-1, keepdim=True) + self.eps) * self.weight

    return Mutated


@mutant("RMSNorm", "the eps argument is ignored (a hard-coded 1e-6)", MUTANTS, from_reference=True)
def rms_eps_ignored(ref):
    class Mutated(ref["RMSNorm"]):
        def __init__(self, d_model, eps=1e-6):
            super().__init__(d_model, 1e-6)

    return Mutated


# ------------------------------------------------------------------------------------------- FeedForward
@mutant("FeedForward", "uses GELU's tanh approximation where the exact erf GELU was asked", MUTANTS,
        from_reference=True)
def ff_gelu_tanh(ref):
    class Mutated(ref["FeedForward"]):
        def forward(self, x):
            if self.activation != "gelu":
                return super().forward(x)
            return self.fc2(self.dropout(F.gelu(self.fc1(x), approximate="tanh")))

    return Mutated


@mutant("FeedForward", "relu and gelu swapped (the if/elif branches cross)", MUTANTS, from_reference=True)
def ff_relu_gelu_swapped(ref):
    class Mutated(ref["FeedForward"]):
        def forward(self, x):
            if self.activation == "swiglu":
                return super().forward(x)
            act = F.gelu if self.activation == "relu" else F.relu
            return self.fc2(self.dropout(act(self.fc1(x))))

    return Mutated


@mutant("FeedForward", "SwiGLU with SiLU on the wrong branch: silu(fc1(x)) * gate(x)", MUTANTS, from_reference=True)
def ff_swiglu_gate_on_wrong_branch(ref):
    class Mutated(ref["FeedForward"]):
        def forward(self, x):
            if self.activation != "swiglu":
                return super().forward(x)
            return self.fc2(self.dropout(F.silu(self.fc1(x)) * self.gate(x)))

    return Mutated


@mutant("FeedForward", "SwiGLU with a sigmoid gate (that is GLU, not SwiGLU): sigmoid(gate(x)) * fc1(x)", MUTANTS,
        from_reference=True)
def ff_swiglu_sigmoid(ref):
    class Mutated(ref["FeedForward"]):
        def forward(self, x):
            if self.activation != "swiglu":
                return super().forward(x)
            return self.fc2(self.dropout(torch.sigmoid(self.gate(x)) * self.fc1(x)))

    return Mutated


@mutant("FeedForward", "SwiGLU with a ReLU gate (ReGLU): relu(gate(x)) * fc1(x)", MUTANTS, from_reference=True)
def ff_swiglu_relu(ref):
    class Mutated(ref["FeedForward"]):
        def forward(self, x):
            if self.activation != "swiglu":
                return super().forward(x)
            return self.fc2(self.dropout(F.relu(self.gate(x)) * self.fc1(x)))

    return Mutated


@mutant("FeedForward", "an unknown activation silently falls back to GELU instead of raising ValueError", MUTANTS,
        from_reference=True)
def ff_unknown_activation_is_gelu(ref):
    class Mutated(ref["FeedForward"]):
        def __init__(self, d_model, d_ff, activation="gelu", dropout=0.0):
            known = activation in ("relu", "gelu", "swiglu")
            super().__init__(d_model, d_ff, activation if known else "gelu", dropout)

    return Mutated


@mutant("FeedForward", "forgets the activation: fc2(fc1(x)) is one linear map", MUTANTS, from_reference=True)
def ff_no_activation(ref):
    class Mutated(ref["FeedForward"]):
        def forward(self, x):
            if self.activation == "swiglu":
                return super().forward(x)
            return self.fc2(self.dropout(self.fc1(x)))

    return Mutated


@mutant("FeedForward", "accepts `dropout` but never applies it (the audit's case: every other check runs in eval mode)",
        MUTANTS, from_reference=True)
def ff_dropout_ignored(ref):
    class Mutated(ref["FeedForward"]):
        def __init__(self, d_model, d_ff, activation="gelu", dropout=0.0):
            super().__init__(d_model, d_ff, activation, 0.0)

    return Mutated


@mutant("FeedForward", "dropout on the output (after fc2, as GPT-2's MLP does) instead of the hidden activations",
        MUTANTS, from_reference=True)
def ff_dropout_on_output(ref):
    class Mutated(ref["FeedForward"]):
        def forward(self, x):
            if self.activation == "swiglu":
                return super().forward(x)
            act = F.gelu if self.activation == "gelu" else F.relu
            return self.dropout(self.fc2(act(self.fc1(x))))

    return Mutated


@mutant("FeedForward", "dropout by hand without the 1 / (1 - p) scale of the kept activations", MUTANTS,
        from_reference=True)
def ff_dropout_unscaled(ref):
    class Mutated(ref["FeedForward"]):
        def forward(self, x):
            if self.activation == "swiglu":
                return super().forward(x)
            act = F.gelu if self.activation == "gelu" else F.relu
            h = act(self.fc1(x))
            if self.training and self.dropout.p > 0:
                h = h * (torch.rand_like(h) >= self.dropout.p)
            return self.fc2(h)

    return Mutated


# -------------------------------------------------------------------------------------- TransformerBlock
@mutant("TransformerBlock", "pre-norm with the residual taken from the normed x: h = ln(x); x = h + attn(h)",
        MUTANTS, from_reference=True)
def block_residual_from_normed(ref):
    class Mutated(ref["TransformerBlock"]):
        def forward(self, x, mask=None):
            if not self.norm_first:
                return super().forward(x, mask)
            h = self.ln1(x)
            x = h + self.attn(h, mask)
            h = self.ln2(x)
            return h + self.ff(h)

    return Mutated


@mutant("TransformerBlock", "norm_first ignored: always post-norm (post-norm where pre-norm was asked)", MUTANTS,
        from_reference=True)
def block_always_post_norm(ref):
    class Mutated(ref["TransformerBlock"]):
        def __init__(self, d_model, n_heads, d_ff, norm_first=True, activation="gelu", dropout=0.0):
            super().__init__(d_model, n_heads, d_ff, False, activation, dropout)

    return Mutated


@mutant("TransformerBlock", "norm_first ignored: always pre-norm, also when post-norm was asked", MUTANTS,
        from_reference=True)
def block_always_pre_norm(ref):
    class Mutated(ref["TransformerBlock"]):
        def __init__(self, d_model, n_heads, d_ff, norm_first=True, activation="gelu", dropout=0.0):
            super().__init__(d_model, n_heads, d_ff, True, activation, dropout)

    return Mutated


@mutant("TransformerBlock", "ln1 and ln2 swapped: ln2 around attention, ln1 around the FFN", MUTANTS,
        from_reference=True)
def block_norms_swapped(ref):
    class Mutated(ref["TransformerBlock"]):
        def forward(self, x, mask=None):
            if self.norm_first:
                x = x + self.attn(self.ln2(x), mask)
                return x + self.ff(self.ln1(x))
            x = self.ln2(x + self.attn(x, mask))
            return self.ln1(x + self.ff(x))

    return Mutated


@mutant("TransformerBlock", "hand-written LayerNorm over the time axis (dim=1) instead of the features", MUTANTS,
        from_reference=True)
def block_norm_over_time(ref):
    def norm(ln, x):
        mu = x.mean(dim=1, keepdim=True)  # (B, 1, C): the bug, dim=1 is time
        var = x.var(dim=1, unbiased=False, keepdim=True)
        return (x - mu) / torch.sqrt(var + ln.eps) * ln.weight + ln.bias

    class Mutated(ref["TransformerBlock"]):
        def forward(self, x, mask=None):
            if self.norm_first:
                x = x + self.attn(norm(self.ln1, x), mask)
                return x + self.ff(norm(self.ln2, x))
            x = norm(self.ln1, x + self.attn(x, mask))
            return norm(self.ln2, x + self.ff(x))

    return Mutated


@mutant("TransformerBlock", "the mask is accepted but never passed to attention", MUTANTS, from_reference=True)
def block_mask_dropped(ref):
    class Mutated(ref["TransformerBlock"]):
        def forward(self, x, mask=None):
            return super().forward(x)

    return Mutated


@mutant("TransformerBlock", "post-norm without the residual: x = ln1(attn(x)); x = ln2(ff(x))", MUTANTS,
        from_reference=True)
def block_post_norm_no_residual(ref):
    class Mutated(ref["TransformerBlock"]):
        def forward(self, x, mask=None):
            if self.norm_first:
                return super().forward(x, mask)
            x = self.ln1(self.attn(x, mask))
            return self.ln2(self.ff(x))

    return Mutated


@mutant("TransformerBlock", "the activation argument is not passed to FeedForward (always GELU)", MUTANTS,
        from_reference=True)
def block_ignores_activation(ref):
    class Mutated(ref["TransformerBlock"]):
        def __init__(self, d_model, n_heads, d_ff, norm_first=True, activation="gelu", dropout=0.0):
            super().__init__(d_model, n_heads, d_ff, norm_first, "gelu", dropout)

    return Mutated


@mutant("TransformerBlock", "the norm argument is accepted but ignored: always LayerNorm", MUTANTS,
        from_reference=True)
def block_norm_ignored(ref):
    class Mutated(ref["TransformerBlock"]):
        def __init__(self, d_model, n_heads, d_ff, norm_first=True, activation="gelu", dropout=0.0, norm="layernorm"):
            super().__init__(d_model, n_heads, d_ff, norm_first, activation, dropout)

    return Mutated


@mutant("TransformerBlock", "norm='rmsnorm' swaps ln1 only; ln2 stays a LayerNorm", MUTANTS, from_reference=True)
def block_rmsnorm_ln1_only(ref):
    class Mutated(ref["TransformerBlock"]):
        def __init__(self, d_model, n_heads, d_ff, norm_first=True, activation="gelu", dropout=0.0, norm="layernorm"):
            super().__init__(d_model, n_heads, d_ff, norm_first, activation, dropout, norm)
            self.ln2 = torch.nn.LayerNorm(d_model)

    return Mutated


@mutant("TransformerBlock", "an unknown norm silently falls back to LayerNorm instead of raising ValueError",
        MUTANTS, from_reference=True)
def block_unknown_norm_is_layernorm(ref):
    class Mutated(ref["TransformerBlock"]):
        def __init__(self, d_model, n_heads, d_ff, norm_first=True, activation="gelu", dropout=0.0, norm="layernorm"):
            norm = norm if norm in ("layernorm", "rmsnorm") else "layernorm"
            super().__init__(d_model, n_heads, d_ff, norm_first, activation, dropout, norm)

    return Mutated


# ------------------------------------------------------------------------------------------- block_flops
@mutant("block_flops", "forgets attention's T^2 terms (Q K^T and weights x V): projections and FFN only", MUTANTS)
def flops_no_t_squared(d_model, n_heads, d_ff, T):
    return 4 * T * d_model**2 + 2 * T * d_model * d_ff


@mutant("block_flops", "counts FLOPs, not multiply-adds (everything twice)", MUTANTS)
def flops_not_multiply_adds(d_model, n_heads, d_ff, T):
    return 2 * (4 * T * d_model**2 + 2 * T * T * d_model + 2 * T * d_model * d_ff)


@mutant("block_flops", "misses the output projection: 3 T C^2 for the projections", MUTANTS)
def flops_no_out_proj(d_model, n_heads, d_ff, T):
    return 3 * T * d_model**2 + 2 * T * T * d_model + 2 * T * d_model * d_ff


@mutant("block_flops", "one FFN matmul counted (T C d_ff instead of 2 T C d_ff)", MUTANTS)
def flops_one_ffn_matmul(d_model, n_heads, d_ff, T):
    return 4 * T * d_model**2 + 2 * T * T * d_model + T * d_model * d_ff


@mutant("block_flops", "attention's T^2 terms multiplied by n_heads (each head counted at full width C)", MUTANTS)
def flops_heads_times_width(d_model, n_heads, d_ff, T):
    return 4 * T * d_model**2 + 2 * n_heads * T * T * d_model + 2 * T * d_model * d_ff


@mutant("block_flops", "only Q K^T counted, not weights x V", MUTANTS)
def flops_scores_only(d_model, n_heads, d_ff, T):
    return 4 * T * d_model**2 + T * T * d_model + 2 * T * d_model * d_ff


# ---------------------------------------------------------------------------------------- MoEFeedForward
@mutant("MoEFeedForward", "keeps the top-k probabilities without renormalising them to sum to 1", MUTANTS,
        from_reference=True)
def moe_not_renormalised(ref):
    class Mutated(ref["MoEFeedForward"]):
        def route(self, x):
            probs = torch.softmax(self.router(x), dim=-1)
            return probs.topk(self.top_k, dim=-1)

    return Mutated


@mutant("MoEFeedForward", "softmax over the tokens (dim=0) instead of over the experts", MUTANTS,
        from_reference=True)
def moe_softmax_over_tokens(ref):
    class Mutated(ref["MoEFeedForward"]):
        def route(self, x):
            probs = torch.softmax(self.router(x), dim=0)
            weights, expert_idx = probs.topk(self.top_k, dim=-1)
            return weights / weights.sum(dim=-1, keepdim=True), expert_idx

    return Mutated


@mutant("MoEFeedForward", "argmax top-1 routing whatever top_k says", MUTANTS, from_reference=True)
def moe_argmax_ignores_top_k(ref):
    class Mutated(ref["MoEFeedForward"]):
        def route(self, x):
            expert_idx = self.router(x).argmax(dim=-1, keepdim=True)  # (N, 1)
            return torch.ones(expert_idx.shape, dtype=x.dtype), expert_idx

    return Mutated


@mutant("MoEFeedForward", "no softmax: the top-k logits divided by their sum (logits can be negative)", MUTANTS,
        from_reference=True)
def moe_no_softmax(ref):
    class Mutated(ref["MoEFeedForward"]):
        def route(self, x):
            weights, expert_idx = self.router(x).topk(self.top_k, dim=-1)
            return weights / weights.sum(dim=-1, keepdim=True), expert_idx

    return Mutated


@mutant("MoEFeedForward", "forward adds the chosen experts' outputs without their routing weights", MUTANTS,
        from_reference=True)
def moe_forward_ignores_weights(ref):
    class Mutated(ref["MoEFeedForward"]):
        def forward(self, x):
            shape = x.shape
            x = x.reshape(-1, shape[-1])
            _, expert_idx = self.route(x)
            out = torch.zeros_like(x)
            for e, expert in enumerate(self.experts):
                token, _ = torch.where(expert_idx == e)
                out = out.index_add(0, token, expert(x[token]))
            return out.reshape(shape)

    return Mutated


@mutant("MoEFeedForward", "forward indexes the experts by slot j (experts[j]) instead of by expert_idx[:, j]",
        MUTANTS, from_reference=True)
def moe_forward_expert_by_slot(ref):
    class Mutated(ref["MoEFeedForward"]):
        def forward(self, x):
            shape = x.shape
            x = x.reshape(-1, shape[-1])
            weights, _ = self.route(x)
            out = sum(weights[:, j, None] * self.experts[j](x) for j in range(self.top_k))
            return out.reshape(shape)

    return Mutated
