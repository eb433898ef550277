"""Sequence classification on real text: does a Shakespeare line name a character of its play?

One row per dialogue line: `{"text": the line as printed, "label": 0 no_name / 1 names_character,
"play": slug}`. The lines, the splits and the labels all come from the `characters` set
(`characters.select`, computed once for both sets): a line's label is 1 exactly when its BIO tags there contain a `B-PER`
(`characters.has_name`), so the rule that decides what counts as a name is written once
(data/datasheets/characters.md) and the two sets can never disagree. Module 10 asks the
question first per line (a classification head on the whole sequence), then per word (a token
classification head on the same lines, `characters`).

Why this task and not `sentiment` for module 10's offline path: a course-built DistilBERT
pretrained for ~100 s on two cores learns which words occur together (including the names of
plays it has read), which is what this task needs, but not what separates "great" from
"awful": fine-tuned on sentiment it is no better than the same model from random weights
(bench/RESULTS.md), while here it beats random initialisation by about 0.2 accuracy.

Splits are by play, as in `characters`: train = the 34 `shakespeare` training plays,
validation = The Tempest and Twelfth Night, test = Julius Caesar and Macbeth. Every split is
exactly half positive.
"""

from collections import Counter
from pathlib import Path

from data.characters import has_name
from data.fileio import write_json, write_jsonl

LABELS = ["no_name", "names_character"]  # index = label id


def label_of(tags: list[str]) -> int:
    """1 when a tagged line of `characters` names a character, else 0.

    >>> label_of(["O", "B-PER", "O"]), label_of(["O", "O"])
    (1, 0)
    """
    return int(has_name(tags))


def rows_from(chosen: list[dict]) -> list[dict]:
    """The `mentions` rows for the selected `characters` rows (same order)."""
    return [{"text": r["line"], "label": label_of(r["tags"]), "play": r["play"]} for r in chosen]


def build(out: Path, chosen_by_split: dict[str, list[dict]], info: dict[str, dict]) -> dict:
    """Write mentions/{train,validation,test}.jsonl and labels.json for the rows that
    `characters.select` chose; return the statistics."""
    stats = {"labels": LABELS, "split_plays": {}, "splits": {}}
    for split, chosen in chosen_by_split.items():
        rows = rows_from(chosen)
        write_jsonl(out / "mentions" / f"{split}.jsonl", rows)
        counts = Counter(r["label"] for r in rows)
        words = [len(r["text"].split()) for r in rows]
        stats["split_plays"][split] = info[split]["plays"]
        stats["splits"][split] = {
            "rows": len(rows),
            "label_counts": {name: counts[i] for i, name in enumerate(LABELS)},
            "words_per_line_mean": round(sum(words) / max(1, len(words)), 2),
            "words_per_line_max": max(words, default=0),
        }
    write_json(out / "mentions" / "labels.json", LABELS)
    return stats
