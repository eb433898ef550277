"""Known bugs of module 04: sinusoidal, learned and rotary positions, as learners write them.

Functions are written out whole (each a few lines with one mistake); the learned-embedding bugs
subclass the reference class and override the one method that holds the bug.
"""

import torch

from grader.mutants import mutant

MUTANTS = []


def _angles(n_positions, d_model, exponent):
    """p / 10000^exponent for positions 0 .. n-1: (n, len(exponent))."""
    return torch.arange(n_positions, dtype=torch.float32)[:, None] / 10000.0 ** exponent


# --------------------------------------------------------------------------------------------- sinusoidal_positions


@mutant("sinusoidal_positions", "sin and cos swapped: cos in the even columns, sin in the odd ones", MUTANTS)
def sinusoidal_sin_cos_swapped(n_positions, d_model):
    angles = _angles(n_positions, d_model, torch.arange(0, d_model, 2) / d_model)  # (T, d/2)
    pe = torch.zeros(n_positions, d_model)
    pe[:, 0::2] = torch.cos(angles)
    pe[:, 1::2] = torch.sin(angles)
    return pe


@mutant("sinusoidal_positions", "exponent i/d with i the column index: every column gets its own frequency, "
        "10000^(j/d) instead of 10000^(2i/d) shared by a pair", MUTANTS)
def sinusoidal_exponent_per_column(n_positions, d_model):
    angles = _angles(n_positions, d_model, torch.arange(d_model) / d_model)  # (T, d)
    pe = torch.zeros(n_positions, d_model)
    pe[:, 0::2] = torch.sin(angles[:, 0::2])
    pe[:, 1::2] = torch.cos(angles[:, 1::2])
    return pe


@mutant("sinusoidal_positions", "exponent i/d with i = 0, 1, 2, ... the pair index: frequencies fall half as fast",
        MUTANTS)
def sinusoidal_exponent_i_over_d(n_positions, d_model):
    angles = _angles(n_positions, d_model, torch.arange(d_model // 2) / d_model)  # (T, d/2)
    pe = torch.zeros(n_positions, d_model)
    pe[:, 0::2] = torch.sin(angles)
    pe[:, 1::2] = torch.cos(angles)
    return pe


@mutant("sinusoidal_positions", "two halves [sin | cos] instead of interleaved columns (the rotate-half layout "
        "of RoPE, not the paper's)", MUTANTS)
def sinusoidal_halves(n_positions, d_model):
    angles = _angles(n_positions, d_model, torch.arange(0, d_model, 2) / d_model)  # (T, d/2)
    return torch.cat([torch.sin(angles), torch.cos(angles)], dim=-1)


@mutant("sinusoidal_positions", "positions counted from 1 (arange(1, T + 1))", MUTANTS)
def sinusoidal_positions_from_one(n_positions, d_model):
    position = torch.arange(1, n_positions + 1, dtype=torch.float32)[:, None]  # (T, 1): 1 .. T
    angles = position / 10000.0 ** (torch.arange(0, d_model, 2) / d_model)  # (T, d/2)
    pe = torch.zeros(n_positions, d_model)
    pe[:, 0::2] = torch.sin(angles)
    pe[:, 1::2] = torch.cos(angles)
    return pe


@mutant("sinusoidal_positions", "multiplies by 10000^(2i/d) instead of dividing", MUTANTS)
def sinusoidal_multiplies(n_positions, d_model):
    angles = torch.arange(n_positions, dtype=torch.float32)[:, None] * 10000.0 ** (torch.arange(0, d_model, 2) / d_model)
    pe = torch.zeros(n_positions, d_model)
    pe[:, 0::2] = torch.sin(angles)
    pe[:, 1::2] = torch.cos(angles)
    return pe


# --------------------------------------------------------------------------------------------- LearnedPositionalEmbedding


@mutant("LearnedPositionalEmbedding", "indexes the table by the batch index instead of the position", MUTANTS,
        from_reference=True)
def learned_indexed_by_batch(ref):
    class Mutated(ref["LearnedPositionalEmbedding"]):
        def forward(self, x):
            B = x.size(0)
            return x + self.embedding(torch.arange(B))[:, None, :]  # (B, 1, C): one vector per sequence

    return Mutated


@mutant("LearnedPositionalEmbedding", "positions start at 1 (arange(1, T + 1)), so row 0 is never used", MUTANTS,
        from_reference=True)
def learned_positions_from_one(ref):
    class Mutated(ref["LearnedPositionalEmbedding"]):
        def forward(self, x):
            T = x.size(1)
            if T > self.max_len:
                raise ValueError(f"T = {T} > max_len = {self.max_len}")
            return x + self.embedding(torch.arange(1, T + 1))  # IndexError once T = max_len

    return Mutated


@mutant("LearnedPositionalEmbedding", "no length check: relies on nn.Embedding's IndexError for T > max_len",
        MUTANTS, from_reference=True)
def learned_no_length_check(ref):
    class Mutated(ref["LearnedPositionalEmbedding"]):
        def forward(self, x):
            return x + self.embedding(torch.arange(x.size(1)))

    return Mutated


@mutant("LearnedPositionalEmbedding", "clamps positions beyond max_len to the last row instead of raising", MUTANTS,
        from_reference=True)
def learned_clamps(ref):
    class Mutated(ref["LearnedPositionalEmbedding"]):
        def forward(self, x):
            return x + self.embedding(torch.arange(x.size(1)).clamp(max=self.max_len - 1))

    return Mutated


@mutant("LearnedPositionalEmbedding", "returns only the position vectors and forgets to add x", MUTANTS,
        from_reference=True)
def learned_forgets_x(ref):
    class Mutated(ref["LearnedPositionalEmbedding"]):
        def forward(self, x):
            return super().forward(x) - x

    return Mutated


@mutant("LearnedPositionalEmbedding", "reads the table through .weight.detach(): the table never learns", MUTANTS,
        from_reference=True)
def learned_detached_table(ref):
    class Mutated(ref["LearnedPositionalEmbedding"]):
        def forward(self, x):
            T = x.size(1)
            if T > self.max_len:
                raise ValueError(f"T = {T} > max_len = {self.max_len}")
            return x + self.embedding.weight.detach()[:T]

    return Mutated


@mutant("LearnedPositionalEmbedding", "nn.Embedding(d_model, max_len): the two sizes swapped", MUTANTS,
        from_reference=True)
def learned_sizes_swapped(ref):
    class Mutated(ref["LearnedPositionalEmbedding"]):
        def __init__(self, max_len, d_model):
            super().__init__(d_model, max_len)

    return Mutated


# --------------------------------------------------------------------------------------------- rope_cos_sin


def _inv_freq(head_dim, base):
    return 1.0 / base ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)  # (hs/2,)


@mutant("rope_cos_sin", "frequencies not repeated: cos and sin are (n_positions, head_dim / 2)", MUTANTS)
def rope_half_width(n_positions, head_dim, base=10000.0):
    freqs = torch.outer(torch.arange(n_positions, dtype=torch.float32), _inv_freq(head_dim, base))  # (T, hs/2)
    return freqs.cos(), freqs.sin()


@mutant("rope_cos_sin", "frequencies repeated interleaved (f0, f0, f1, f1, ...) instead of cat(freqs, freqs)",
        MUTANTS)
def rope_interleaved_repeat(n_positions, head_dim, base=10000.0):
    freqs = torch.outer(torch.arange(n_positions, dtype=torch.float32), _inv_freq(head_dim, base))  # (T, hs/2)
    angles = freqs.repeat_interleave(2, dim=-1)  # (T, hs)
    return angles.cos(), angles.sin()


@mutant("rope_cos_sin", "ignores base: always 10000", MUTANTS)
def rope_base_ignored(n_positions, head_dim, base=10000.0):
    freqs = torch.outer(torch.arange(n_positions, dtype=torch.float32), _inv_freq(head_dim, 10000.0))
    angles = torch.cat((freqs, freqs), dim=-1)
    return angles.cos(), angles.sin()


@mutant("rope_cos_sin", "exponent i/head_dim with i = 0, 1, 2, ... instead of 2i/head_dim", MUTANTS)
def rope_exponent_i(n_positions, head_dim, base=10000.0):
    inv_freq = 1.0 / base ** (torch.arange(head_dim // 2, dtype=torch.float32) / head_dim)
    freqs = torch.outer(torch.arange(n_positions, dtype=torch.float32), inv_freq)
    angles = torch.cat((freqs, freqs), dim=-1)
    return angles.cos(), angles.sin()


@mutant("rope_cos_sin", "returns (sin, cos)", MUTANTS)
def rope_returns_sin_cos(n_positions, head_dim, base=10000.0):
    freqs = torch.outer(torch.arange(n_positions, dtype=torch.float32), _inv_freq(head_dim, base))
    angles = torch.cat((freqs, freqs), dim=-1)
    return angles.sin(), angles.cos()


# --------------------------------------------------------------------------------------------- apply_rope


def _rows(cos, sin, offset, T):
    return cos[offset:offset + T], sin[offset:offset + T]  # (T, hs) each


@mutant("apply_rope", "rotates the wrong way: rotate_half returns cat(x2, -x1) instead of cat(-x2, x1)", MUTANTS)
def rope_rotates_backwards(x, cos, sin, offset=0):
    cos, sin = _rows(cos, sin, offset, x.size(-2))
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat((x2, -x1), dim=-1) * sin


@mutant("apply_rope", "rotates interleaved pairs (x0, x1), (x2, x3), ... with rotate-half cos/sin", MUTANTS)
def rope_interleaved_pairs(x, cos, sin, offset=0):
    cos, sin = _rows(cos, sin, offset, x.size(-2))
    even, odd = x[..., 0::2], x[..., 1::2]  # (B, nh, T, hs/2) each
    rotated = torch.stack((-odd, even), dim=-1).flatten(-2)  # (-x1, x0, -x3, x2, ...)
    return x * cos + rotated * sin


@mutant("apply_rope", "ignores offset: always rotates by the angles of positions 0 .. T-1", MUTANTS)
def rope_offset_ignored(x, cos, sin, offset=0):
    cos, sin = _rows(cos, sin, 0, x.size(-2))
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat((-x2, x1), dim=-1) * sin


@mutant("apply_rope", "forgets the minus sign: cat(x2, x1), a reflection mix instead of a rotation", MUTANTS)
def rope_no_minus(x, cos, sin, offset=0):
    cos, sin = _rows(cos, sin, offset, x.size(-2))
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat((x2, x1), dim=-1) * sin


@mutant("apply_rope", "splits x along the head axis (dim=1) instead of the last axis", MUTANTS)
def rope_splits_heads(x, cos, sin, offset=0):
    cos, sin = _rows(cos, sin, offset, x.size(-2))
    x1, x2 = x.chunk(2, dim=1)  # halves of the heads, not of each head's vector
    return x * cos + torch.cat((-x2, x1), dim=1) * sin


@mutant("apply_rope", "reads the last T rows of the table (cos[-T:]) instead of rows offset .. offset + T - 1",
        MUTANTS)
def rope_last_rows(x, cos, sin, offset=0):
    T = x.size(-2)
    cos, sin = cos[-T:], sin[-T:]
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat((-x2, x1), dim=-1) * sin
