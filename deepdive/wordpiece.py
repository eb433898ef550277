"""The course's WordPiece training: the code behind the course tokenizer (`data/build_models.py`)
and module 06's small vocabularies (`deepdive.encoders.small_tokenizer`).

It lives in the helper package, not in data/, because a notebook's kernel (which starts in the
notebook's own folder) can import only what `pip install -e .` installed: `deepdive`.
"""

from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers
from transformers import DistilBertTokenizer


def train_wordpiece(docs: list[str], vocab_size: int) -> DistilBertTokenizer:
    """Uncased WordPiece with BERT's normalizer and pre-tokenizer, wrapped in DistilBertTokenizer.

    `tokenizers`' WordPieceTrainer learns the vocabulary with BPE merges, but it numbers the
    "##" continuation characters in hash-map order and breaks ties between equally frequent
    merges by those numbers, so two runs can end with different pieces. We run the same BPE
    learning without the "##" prefix (which is deterministic: the alphabet is sorted), marking
    word starts with "▁" instead, then rewrite the pieces as WordPiece: "▁play" -> "play",
    "ing" -> "##ing".
    """
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    normalizer = normalizers.BertNormalizer(lowercase=True)  # as DistilBertTokenizer(do_lower_case=True)
    bpe = Tokenizer(models.BPE())
    bpe.normalizer = normalizer
    bpe.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.BertPreTokenizer(), pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")]
    )
    bpe.train_from_iterator(docs, trainer=trainers.BpeTrainer(vocab_size=vocab_size, show_progress=False))
    learned = sorted(bpe.get_vocab().items(), key=lambda kv: kv[1])  # alphabet, then merges in order
    alphabet = sorted({c for piece, _ in learned for c in piece.removeprefix("▁")})
    pieces = [c for c in alphabet] + [f"##{c}" for c in alphabet]  # every character, in both positions
    for piece, _ in learned:
        wp = piece[1:] if piece.startswith("▁") else f"##{piece}"
        if wp not in ("", "##") and wp not in pieces:
            pieces.append(wp)
    vocab = {t: i for i, t in enumerate(specials + pieces[: vocab_size - len(specials)])}
    # The real class builds the same pipeline (BertNormalizer, BertPreTokenizer, WordPiece with
    # "##") around our vocabulary, and rebuilds it the same way when loaded.
    return DistilBertTokenizer(vocab=vocab, do_lower_case=True, model_max_length=512)
