"""Text-to-text pairs for T5 with one exact answer each: dates (generated) and Shakespeare (real text).

Two tasks, told apart by a T5-style prefix in `source` and by the `task` column:

`date` -- "normalize date: <a date in words>" -> ISO 8601 "YYYY-MM-DD".
    Dates are drawn from 1500-01-01 .. 2099-12-31 by a stable hash (`_date_for`) and written
    with one of `DATE_TEMPLATES`, e.g. "3rd of May 1599", "May 3, 1599", "3 May 1599",
    "the third of May, 1599", "Monday, May 3, 1599" (weekday of the proleptic Gregorian calendar). A date belongs to
    exactly one split (by the hash of its ISO form), so no test date was seen in training.
    Copying the source never gives the target.

`modernize` -- "modernize: <a Shakespeare line>" -> the line with the fixed rewrite table
    `MODERN` applied (longest phrase first, whole words only, case-insensitive; the
    replacement keeps the capital of the first letter it replaces): "'tis" -> "it is",
    "thou art" -> "you are", "art thou" -> "are you", "thee" -> "you", "thy" -> "your",
    "hath" -> "has", "o'er" -> "over", ... `thine` becomes "your" before a word and "yours"
    otherwise. Only lines where at least one rule fires are used, so copying scores 0
    exact match. It is a mechanical normalisation, not a translation: "thou lovest" ->
    "you lovest". Lines come from train plays for train, and from the held-out plays
    (`shakespeare.EVAL_PLAYS`) for validation and test.

Metric: exact match of the whole target string (after stripping surrounding whitespace).
Sizes: `SIZES` rows per task and split; rows of both tasks are interleaved by a stable hash.
"""

import datetime as dt
import re
from collections import Counter
from pathlib import Path

from data.fileio import stable_rank, write_jsonl
from data.shakespeare import Play, eval_split_of

TASKS = {"date": "normalize date: ", "modernize": "modernize: "}  # task -> source prefix
SIZES = {"train": 2000, "validation": 250, "test": 250}  # per task
SALT = "t2t-v1"
MAX_LINE_CHARS = 100

# ---------------------------------------------------------------------------------------- dates
ORDINAL_WORDS = (
    "first second third fourth fifth sixth seventh eighth ninth tenth eleventh twelfth thirteenth "
    "fourteenth fifteenth sixteenth seventeenth eighteenth nineteenth twentieth twenty-first "
    "twenty-second twenty-third twenty-fourth twenty-fifth twenty-sixth twenty-seventh "
    "twenty-eighth twenty-ninth thirtieth thirty-first"
).split()
# Spelled out rather than taken from `calendar`, whose names follow the locale.
MONTHS = "January February March April May June July August September October November December".split()
WEEKDAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
DATE_TEMPLATES = (
    "{dth} of {Month} {year}",  # 3rd of May 1599
    "{Month} {d}, {year}",  # May 3, 1599
    "{d} {Mon} {year}",  # 3 May 1599
    "the {dword} of {Month}, {year}",  # the third of May, 1599
    "{Weekday}, {Month} {d}, {year}",  # Monday, May 3, 1599
)
FIRST_DAY, N_DAYS = dt.date(1500, 1, 1), (dt.date(2099, 12, 31) - dt.date(1500, 1, 1)).days + 1


def ordinal_suffix(d: int) -> str:
    """1 -> "1st", 2 -> "2nd", 11 -> "11th", 22 -> "22nd"."""
    suffix = "th" if 11 <= d % 100 <= 13 else {1: "st", 2: "nd", 3: "rd"}.get(d % 10, "th")
    return f"{d}{suffix}"


def render_date(date: dt.date, template: int) -> str:
    """Write `date` with DATE_TEMPLATES[template] (English names, independent of the locale)."""
    month = MONTHS[date.month - 1]
    return DATE_TEMPLATES[template].format(
        d=date.day,
        dth=ordinal_suffix(date.day),
        dword=ORDINAL_WORDS[date.day - 1],
        Month=month,
        Mon=month[:3],
        year=date.year,
        Weekday=WEEKDAYS[date.weekday()],
    )


def _date_for(i: int) -> tuple[dt.date, int]:
    h = int(stable_rank(str(i), SALT + "-date"), 16)
    return FIRST_DAY + dt.timedelta(days=h % N_DAYS), (h // N_DAYS) % len(DATE_TEMPLATES)


def date_split(date: dt.date) -> str:
    """Every date belongs to one split: 80% train, 10% validation, 10% test, by hash."""
    bucket = int(stable_rank(date.isoformat(), SALT + "-split"), 16) % 10
    return "test" if bucket == 0 else "validation" if bucket == 1 else "train"


def date_rows() -> dict[str, list[dict]]:
    """SIZES[split] date pairs per split, distinct dates, in generation order."""
    rows = {split: [] for split in SIZES}
    seen, i = set(), 0
    while any(len(rows[s]) < n for s, n in SIZES.items()):
        date, template = _date_for(i)
        i += 1
        split = date_split(date)
        if date in seen or len(rows[split]) >= SIZES[split]:
            continue
        seen.add(date)
        rows[split].append(
            {
                "source": TASKS["date"] + render_date(date, template),
                "target": date.isoformat(),
                "task": "date",
            }
        )
    return rows


# ------------------------------------------------------------------------------------ modernize
MODERN = {
    # verb after/before "thou" first (longest match wins)
    "thou art": "you are", "thou hast": "you have", "thou wilt": "you will", "thou shalt": "you shall",
    "thou wast": "you were", "thou dost": "you do", "thou canst": "you can", "thou didst": "you did",
    "thou wouldst": "you would", "thou shouldst": "you should", "thou couldst": "you could",
    "thou mayst": "you may", "art thou": "are you", "hast thou": "have you", "wilt thou": "will you",
    "shalt thou": "shall you", "wast thou": "were you", "dost thou": "do you", "canst thou": "can you",
    "didst thou": "did you", "wouldst thou": "would you", "shouldst thou": "should you",
    "couldst thou": "could you", "mayst thou": "may you", "i' the": "in the", "o' the": "of the",
    # single words
    "thou": "you", "thee": "you", "thy": "your", "thyself": "yourself", "ye": "you",
    "hath": "has", "doth": "does", "'tis": "it is", "'twas": "it was", "'twere": "it were",
    "'twill": "it will", "'twould": "it would", "ne'er": "never", "e'er": "ever", "o'er": "over",
    "'em": "them", "oft": "often", "whither": "where", "hither": "here", "thither": "there",
    "wherefore": "why",
}  # fmt: skip
_THINE = "thine"
_MODERN_RE = re.compile(
    r"(?<![A-Za-z'])("
    + "|".join(re.escape(k).replace(r"\ ", r"\s+") for k in sorted([*MODERN, _THINE], key=len, reverse=True))
    + r")(?![A-Za-z'])",
    re.IGNORECASE,
)


def modernize(line: str) -> str:
    """Apply the MODERN table to a line (see the module docstring).

    >>> modernize("'Tis thine own; art thou mad? I'll ne'er see thee, nor thine.")
    "It is your own; are you mad? I'll never see you, nor yours."
    """

    def replace(m: re.Match) -> str:
        word = re.sub(r"\s+", " ", m.group(1)).lower()
        if word == _THINE:
            new = "your" if re.match(r"\s+[A-Za-z]", line[m.end() :]) else "yours"
        else:
            new = MODERN[word]
        first = m.group(1).lstrip("'")[:1]
        return new[0].upper() + new[1:] if first.isupper() else new

    return _MODERN_RE.sub(replace, line)


def modernize_rows(plays: list[Play]) -> dict[str, list[dict]]:
    """Up to SIZES[split] distinct lines per split in which a rule fires, ranked by stable hash."""
    pools = {split: {} for split in SIZES}
    for play in plays:
        split = eval_split_of(play.slug)
        for speech in play.speeches:
            for line in speech.lines:
                target = modernize(line)
                if target != line and len(line) <= MAX_LINE_CHARS:
                    pools[split].setdefault(line, target)
    rows = {}
    for split, pool in pools.items():
        lines = sorted(pool, key=lambda s: stable_rank(s, SALT + "-modernize"))[: SIZES[split]]
        rows[split] = [
            {"source": TASKS["modernize"] + s, "target": pool[s], "task": "modernize"} for s in lines
        ]
    return rows


def build(out: Path, plays: list[Play]) -> dict:
    """Write t2t/{train,validation,test}.jsonl; return statistics to print."""
    dates, modern = date_rows(), modernize_rows(plays)
    stats = {"tasks": TASKS, "splits": {}}
    for split in SIZES:
        rows = sorted(dates[split] + modern[split], key=lambda r: stable_rank(r["source"], SALT + "-order"))
        write_jsonl(out / "t2t" / f"{split}.jsonl", rows)
        rule_hits = Counter()
        for r in modern[split]:
            line = r["source"][len(TASKS["modernize"]) :]
            rule_hits.update(re.sub(r"\s+", " ", m.group(1)).lower() for m in _MODERN_RE.finditer(line))
        stats["splits"][split] = {
            "rows": len(rows),
            "by_task": dict(sorted(Counter(r["task"] for r in rows).items())),
            "copy_baseline_exact_match": sum(r["source"].split(": ", 1)[1] == r["target"] for r in rows)
            / len(rows),
            "date_templates": dict(sorted(Counter(_template_of(r["source"]) for r in dates[split]).items())),
            "date_years": [
                min(int(r["target"][:4]) for r in dates[split]),
                max(int(r["target"][:4]) for r in dates[split]),
            ],
            "modernize_top_rules": dict(rule_hits.most_common(12)),
            "modernize_mean_rules_per_line": round(sum(rule_hits.values()) / max(1, len(modern[split])), 2),
        }
    return stats


def _template_of(source: str) -> int:
    text = source[len(TASKS["date"]) :]
    if text.startswith("the "):
        return 3
    if text.split(",")[0] in WEEKDAYS:
        return 4
    if " of " in text:
        return 0
    return 1 if "," in text else 2
