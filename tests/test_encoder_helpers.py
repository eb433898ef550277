"""Module 06's helpers: the DistilBERT weight map (deepdive.oracles), the tokenizer loader (deepdive.hub)
and the data/plot helpers (deepdive.encoders). A wrong name map here would make every Encoder check wrong."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from deepdive.encoders import sample_windows, shakespeare_tokens, show_top_k, smooth
from deepdive.hub import load_tokenizer
from deepdive.oracles import distilbert_from_encoder, distilbert_names, encoder_state_from_distilbert


class _Block(nn.Module):
    """A post-norm block written from the formulas (not the notebook's), with the course's names."""

    def __init__(self, C, d_ff):
        super().__init__()
        self.attn = nn.Module()
        for name in ("q_proj", "k_proj", "v_proj", "out_proj"):
            setattr(self.attn, name, nn.Linear(C, C))
        self.ln1, self.ln2 = nn.LayerNorm(C, eps=1e-12), nn.LayerNorm(C, eps=1e-12)
        self.ff = nn.Module()
        self.ff.fc1, self.ff.fc2 = nn.Linear(C, d_ff), nn.Linear(d_ff, C)


class _Layout(nn.Module):
    """Just the parameters of the course Encoder (tok_emb, pos_emb, emb_ln, blocks, head), tied head."""

    def __init__(self, V=29, max_len=10, C=12, L=2, d_ff=20):
        super().__init__()
        self.tok_emb, self.pos_emb, self.emb_ln = nn.Embedding(V, C), nn.Embedding(max_len, C), nn.LayerNorm(C, eps=1e-12)
        self.blocks = nn.ModuleList(_Block(C, d_ff) for _ in range(L))
        self.mlm_dense, self.mlm_ln, self.mlm_out = nn.Linear(C, C), nn.LayerNorm(C, eps=1e-12), nn.Linear(C, V)
        self.mlm_out.weight = self.tok_emb.weight
        with torch.no_grad():
            for p in self.parameters():
                p.add_(0.1 * torch.randn_like(p))  # LayerNorms and biases away from 1 / 0


def _by_formula(m, ids, n_heads, key_mask=None):
    """The DistilBERT computation spelled out with F.* on our names."""
    B, T = ids.shape
    x = F.layer_norm(m.tok_emb(ids) + m.pos_emb(torch.arange(T)), m.emb_ln.normalized_shape, m.emb_ln.weight,
                     m.emb_ln.bias, 1e-12)
    mask = None if key_mask is None else key_mask.bool()[:, None, None, :]
    for blk in m.blocks:
        C = x.shape[-1]
        q, k, v = (getattr(blk.attn, n)(x).view(B, T, n_heads, C // n_heads).transpose(1, 2)
                   for n in ("q_proj", "k_proj", "v_proj"))
        a = blk.attn.out_proj(F.scaled_dot_product_attention(q, k, v, attn_mask=mask).transpose(1, 2).reshape(B, T, C))
        x = blk.ln1(x + a)
        x = blk.ln2(x + blk.ff.fc2(F.gelu(blk.ff.fc1(x))))
    logits = m.mlm_out(m.mlm_ln(F.gelu(m.mlm_dense(x))))
    return x, logits


@pytest.mark.parametrize("attn_implementation", ["eager", "sdpa"])
def test_distilbert_from_encoder_computes_the_same_function(attn_implementation):
    torch.manual_seed(0)
    m = _Layout()
    ids = torch.randint(0, 29, (3, 7))
    key_mask = torch.tensor([[1] * 7, [1] * 4 + [0] * 3, [1, 1] + [0] * 5])
    oracle = distilbert_from_encoder(m, n_heads=3, attn_implementation=attn_implementation)
    assert not oracle.training and oracle.config.dropout == 0 and oracle.config.attention_dropout == 0
    with torch.no_grad():
        for mask in (None, key_mask):
            hidden, logits = _by_formula(m, ids, 3, mask)
            out = oracle(input_ids=ids, attention_mask=mask)
            assert torch.allclose(oracle.distilbert(input_ids=ids, attention_mask=mask).last_hidden_state, hidden,
                                  atol=1e-5)
            assert torch.allclose(out.logits, logits, atol=1e-5)
    assert sum(p.numel() for p in oracle.parameters()) == sum(p.numel() for p in m.parameters())


def test_distilbert_from_encoder_takes_a_state_dict_and_leaves_it_alone():
    torch.manual_seed(1)
    m = _Layout(L=1)
    state = {k: v.clone() for k, v in m.state_dict().items() if k != "mlm_out.weight"}
    before = {k: v.clone() for k, v in state.items()}
    oracle = distilbert_from_encoder(state, n_heads=2)
    assert oracle.config.n_layers == 1 and oracle.config.hidden_dim == 20 and oracle.config.max_position_embeddings == 10
    assert all(torch.equal(state[k], before[k]) for k in state)
    assert torch.equal(oracle.vocab_projector.weight, state["tok_emb.weight"])
    assert set(distilbert_names(1).values()) <= {k.rsplit(".", 1)[0] for k in oracle.state_dict()}


def test_distilbert_from_encoder_names_a_wrong_shape():
    m = _Layout()
    state = dict(m.state_dict())
    state["blocks.0.ff.fc2.weight"] = torch.zeros(12, 21)
    with pytest.raises(ValueError, match=r"blocks\.0\.ff\.fc2\.weight has shape \(12, 21\)"):
        distilbert_from_encoder(state, n_heads=3)


def test_encoder_state_from_distilbert_is_the_inverse_map():
    from transformers import DistilBertForMaskedLM, DistilBertModel

    from deepdive.oracles import distilbert_config

    torch.manual_seed(2)
    lib = DistilBertForMaskedLM(distilbert_config(29, 10, 12, 3, 2, 20)).eval()
    with torch.no_grad():
        for p in lib.parameters():
            p.add_(0.1 * torch.randn_like(p))  # LayerNorms and biases away from 1 / 0
    before = {k: v.clone() for k, v in lib.state_dict().items()}
    m = _Layout()
    state = encoder_state_from_distilbert(lib)
    assert state["mlm_out.weight"] is state["tok_emb.weight"], "tied, as in the Encoder"
    m.load_state_dict(state)  # strict: every Encoder name, nothing else
    assert all(torch.equal(lib.state_dict()[k], before[k]) for k in before), "the library model is left alone"
    ids = torch.randint(0, 29, (2, 6))
    key_mask = torch.tensor([[1] * 6, [1] * 3 + [0] * 3])
    with torch.no_grad():
        hidden, logits = _by_formula(m, ids, 3, key_mask)
        assert torch.allclose(lib.distilbert(input_ids=ids, attention_mask=key_mask).last_hidden_state, hidden, atol=1e-5)
        assert torch.allclose(lib(input_ids=ids, attention_mask=key_mask).logits, logits, atol=1e-5)
    back = distilbert_from_encoder(m, n_heads=3).state_dict()
    assert all(torch.equal(back[k], before[k]) for k in before), "there and back gives the same weights"

    base = encoder_state_from_distilbert(DistilBertModel(distilbert_config(29, 10, 12, 3, 1, 20)))
    assert set(base) == {k for k in _Layout(L=1).state_dict() if not k.startswith("mlm_")}, "no head, no prefix"

    relu = distilbert_config(29, 10, 12, 3, 1, 20)
    relu.activation = "relu"
    with pytest.raises(ValueError, match="exact GELU"):
        encoder_state_from_distilbert(DistilBertModel(relu))
    untied = dict(lib.state_dict())
    untied["vocab_projector.weight"] = untied["vocab_projector.weight"] + 1
    with pytest.raises(ValueError, match="untied"):
        encoder_state_from_distilbert(untied)


def test_load_tokenizer_local_and_missing_build(tmp_path, monkeypatch):
    tok = load_tokenizer("distilbert", verbose=False)
    assert len(tok) == 4096 and tok.mask_token == "[MASK]" and tok.cls_token_id in tok.all_special_ids
    monkeypatch.setenv("DEEPDIVE_MODELS_DIR", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="make models"):
        load_tokenizer("distilbert", verbose=False)
    with pytest.raises(ValueError, match="unknown family"):
        load_tokenizer("bert")


def test_sample_windows_wraps_consecutive_tokens_and_follows_the_generator():
    tok = load_tokenizer("distilbert", verbose=False)
    stream = torch.arange(100, 400)
    a = sample_windows(stream, 5, 12, tok, torch.Generator().manual_seed(3))
    b = sample_windows(stream, 5, 12, tok, torch.Generator().manual_seed(3))
    assert a.shape == (5, 12) and a.dtype == torch.long and torch.equal(a, b)
    assert (a[:, 0] == tok.cls_token_id).all() and (a[:, -1] == tok.sep_token_id).all()
    assert ((a[:, 2:-1] - a[:, 1:-2]) == 1).all(), "a window is consecutive tokens of the stream"
    with pytest.raises(ValueError):
        sample_windows(stream[:5], 2, 12, tok)


def test_shakespeare_tokens_are_cached_copies():
    tok = load_tokenizer("distilbert", verbose=False)
    a = shakespeare_tokens(tok, "validation", max_chars=2000)
    a[0] = -1
    b = shakespeare_tokens(tok, "validation", max_chars=2000)
    assert b[0] != -1 and b.dim() == 1 and 200 < b.numel() < 2000
    assert tok.decode(b[:5]).split()[0].isalpha() or b.numel() > 0


def test_smooth_and_show_top_k(capsys):
    assert smooth([1.0, 3.0, 5.0], window=2) == [1.0, 2.0, 4.0]
    tok = load_tokenizer("distilbert", verbose=False)
    ids = torch.tensor([tok.cls_token_id, tok.mask_token_id, tok.sep_token_id])
    labels = torch.tensor([-100, 200, -100])
    logits = torch.full((3, len(tok)), -10.0)
    logits[1, 200] = 10.0
    show_top_k(tok, ids, labels, logits, k=2)
    out = capsys.readouterr().out
    assert "[MASK]" in out and "* position  1" in out and math.isfinite(1.0)


# The 160-piece vocabulary's pieces, as `small_tokenizer()` learns them from the training plays (sha256 of
# the sorted {piece: id} JSON). The same on every machine: grades and the notebook's numbers depend on it.
SMALL_VOCAB_SHA256 = "6ced88f5f833079947c5758d4114a4e7b6c9a5f3edd253efbe96689a0e47c13d"


def test_small_tokenizer_is_the_same_wordpiece_everywhere():
    import hashlib
    import json

    from deepdive.encoders import SMALL_VOCAB, small_tokenizer

    tok = small_tokenizer()
    assert len(tok) == SMALL_VOCAB == 160
    assert set(tok.all_special_ids) == set(range(5)) and tok.mask_token == "[MASK]" and tok.cls_token == "[CLS]"
    assert hashlib.sha256(json.dumps(tok.get_vocab(), sort_keys=True).encode()).hexdigest() == SMALL_VOCAB_SHA256
    assert tok.tokenize("Good morrow") == ["g", "##oo", "##d", "m", "##or", "##ro", "##w"]
    assert small_tokenizer().name_or_path == tok.name_or_path, "trained once per process"
    with pytest.raises(ValueError, match="between 16 and 4096"):
        small_tokenizer(5)


def test_init_like_distilbert_matches_the_library_rule():
    from transformers import DistilBertForMaskedLM

    from deepdive.encoders import init_like_distilbert
    from deepdive.oracles import distilbert_config

    torch.manual_seed(0)
    m = init_like_distilbert(_Layout(V=300, C=64, d_ff=256), std=0.06)
    assert m.mlm_out.weight is m.tok_emb.weight, "tying survives"
    assert abs(m.tok_emb.weight.std().item() - 0.06) < 0.003 and abs(m.blocks[0].ff.fc1.weight.std().item() - 0.06) < 0.003
    assert (m.blocks[0].ff.fc1.bias == 0).all() and (m.emb_ln.weight == 1).all() and (m.mlm_ln.bias == 0).all()
    config = distilbert_config(300, 10, 64, 4, 2, 256)
    config.initializer_range = 0.06
    lib = DistilBertForMaskedLM(config)
    w = lib.distilbert.transformer.layer[0].ffn.lin1
    assert abs(w.weight.std().item() - 0.06) < 0.003 and (w.bias == 0).all(), "the library draws the same way"
