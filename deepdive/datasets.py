"""Load the course data sets that `make data` builds (offline; nothing is downloaded).

The files live in `data/build/` of the repository (or in `$DEEPDIVE_DATA_DIR`):

| set           | splits                     | one row                                                  |
|---------------|----------------------------|----------------------------------------------------------|
| `shakespeare` | train, validation (.txt)   | a speech: `"SPEAKER:\\nline\\nline"` (text: speeches + "\\n\\n") |
| `sentiment`   | train, validation, test    | `{"text": str, "label": 0 negative / 1 positive, "source": "imdb" or "rotten_tomatoes"}` |
| `characters`  | train, validation, test    | `{"tokens": [str], "tags": [0 O / 1 B-PER / 2 I-PER], "play": slug}` |
| `mentions`    | train, validation, test    | `{"text": str, "label": 0 no_name / 1 names_character, "play": slug}` (the lines of `characters`) |
| `t2t`         | train, validation, test    | `{"source": "<task prefix>: ...", "target": str, "task": str}` |

API:
- `load_text("shakespeare", split) -> str`: the whole split as one string (character-level GPT).
- `load_split(name, split) -> datasets.Dataset`: one row per example, columns as above;
  `label`/`tags` are `ClassLabel`s, so `ds.features["label"].names == ["negative", "positive"]`.
  For `shakespeare`, one row per speech with a single `text` column (for `group_texts`).
- `load_texts(name, split) -> list[str]`: plain strings (speeches, review texts, or the
  space-joined tokens of `characters`, lines of `mentions`), e.g. as pretraining text.
- `label_names(name) -> list[str]`: id -> name for `sentiment`, `characters` and `mentions`.
- `split_path(name, split) -> Path`: the file, after checking that it exists and is intact.
- `t2t_tasks() -> list[str]`, and `load_split("t2t", split, task=...)` keeps one task;
  `keep_prefix=False` drops the task prefix (`T2T_PREFIXES`) from every source.

Every file is checked against the sha256 in `data/checksums.json` the first time it is read
in a process, so a learner never trains on a half-written or edited split: a missing file
raises `DataNotBuiltError` and a corrupt one `DataCorruptError`, both saying what to run
(`make data`). Set `DEEPDIVE_DATA_DIR` to read the files from somewhere else.

Datasheets (source, licence, label rules, sizes): `data/datasheets/<set>.md`.
"""

import hashlib
import json
import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
CHECKSUMS = REPO_ROOT / "data" / "checksums.json"
BUILD_COMMAND = "make data   (or: .venv/bin/python data/build_data.py)"

SPLITS = {
    "shakespeare": ("train", "validation"),
    "sentiment": ("train", "validation", "test"),
    "characters": ("train", "validation", "test"),
    "mentions": ("train", "validation", "test"),
    "t2t": ("train", "validation", "test"),
}
SENTIMENT_LABELS = ["negative", "positive"]
CHARACTER_TAGS = ["O", "B-PER", "I-PER"]
MENTION_LABELS = ["no_name", "names_character"]
T2T_PREFIXES = {"date": "normalize date: ", "modernize": "modernize: "}  # task -> the prefix its sources start with
_LABELS = {"sentiment": SENTIMENT_LABELS, "characters": CHARACTER_TAGS, "mentions": MENTION_LABELS}

_verified: dict[Path, tuple[int, int]] = {}  # path -> (size, mtime_ns) when its sha256 last matched


class DataNotBuiltError(FileNotFoundError):
    """A data file is missing: the data have not been built (run `make data`)."""


class DataCorruptError(RuntimeError):
    """A data file exists but is not what `make data` wrote (truncated, edited, stale)."""


def data_dir() -> Path:
    """Where the built files are: `$DEEPDIVE_DATA_DIR` if set, else `<repo>/data/build`."""
    return Path(os.environ.get("DEEPDIVE_DATA_DIR") or REPO_ROOT / "data" / "build")


def _check_name(name: str, split: str) -> None:
    if name not in SPLITS:
        raise ValueError(f"unknown data set {name!r}; choose from {sorted(SPLITS)}")
    if split not in SPLITS[name]:
        raise ValueError(f"{name!r} has no split {split!r}; choose from {list(SPLITS[name])}")


def _expected_sha256(relpath: str) -> str | None:
    if CHECKSUMS.exists():
        return json.loads(CHECKSUMS.read_text()).get(relpath)
    manifest = data_dir() / "MANIFEST.json"  # outside the repo: trust the build's own manifest
    if manifest.exists():
        return json.loads(manifest.read_text())["files"].get(relpath, {}).get("sha256")
    return None


def _verify(path: Path, relpath: str) -> None:
    stat = path.stat()
    if _verified.get(path) == (stat.st_size, stat.st_mtime_ns):
        return
    expected = _expected_sha256(relpath)
    if expected is not None:
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        if digest != expected:
            raise DataCorruptError(
                f"{path} is corrupt or out of date (sha256 {digest[:12]}... but data/checksums.json "
                f"expects {expected[:12]}...). Rebuild it with:\n    {BUILD_COMMAND}"
            )
    _verified[path] = (stat.st_size, stat.st_mtime_ns)


def _file(name: str, split: str) -> Path:
    suffix = ".txt" if name == "shakespeare" else ".jsonl"
    return data_dir() / name / f"{split}{suffix}"


def split_path(name: str, split: str) -> Path:
    """Path of a built split file, checked to exist and to match data/checksums.json."""
    _check_name(name, split)
    path = _file(name, split)
    if not path.is_file():
        raise DataNotBuiltError(
            f"{path} does not exist: the course data have not been built yet. From the repository root run:\n"
            f"    {BUILD_COMMAND}"
        )
    _verify(path, f"{name}/{path.name}")
    return path


def _read_jsonl(path: Path) -> list[dict]:
    rows = []
    with open(path, encoding="utf-8") as f:
        for i, line in enumerate(f, 1):
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataCorruptError(
                    f"{path}, line {i}: not valid JSON ({e}). Rebuild with:\n    {BUILD_COMMAND}"
                ) from e
            if not isinstance(row, dict):
                raise DataCorruptError(
                    f"{path}, line {i}: expected a JSON object. Rebuild with:\n    {BUILD_COMMAND}"
                )
            rows.append(row)
    return rows


_COLUMNS = {
    "sentiment": {"text": str, "label": int, "source": str},
    "characters": {"tokens": list, "tags": list, "play": str},
    "mentions": {"text": str, "label": int, "play": str},
    "t2t": {"source": str, "target": str, "task": str},
}


def load_rows(name: str, split: str) -> list[dict]:
    """The rows of a JSONL set as plain dicts (no `datasets` needed); columns are checked."""
    _check_name(name, split)
    if name == "shakespeare":
        return [{"text": t} for t in load_texts(name, split)]
    path = split_path(name, split)
    rows = _read_jsonl(path)
    for i, row in enumerate(rows, 1):
        for col, typ in _COLUMNS[name].items():
            if not isinstance(row.get(col), typ):
                raise DataCorruptError(
                    f"{path}, line {i}: column {col!r} should be {typ.__name__}, got {row.get(col)!r}. "
                    f"Rebuild with:\n    {BUILD_COMMAND}"
                )
    return rows


def load_text(name: str = "shakespeare", split: str = "train") -> str:
    """A text split as one string: `load_text("shakespeare", "train")` (about 4.4 M characters)."""
    _check_name(name, split)
    if name != "shakespeare":
        raise ValueError(
            f"load_text reads the plain-text set 'shakespeare'; use load_split({name!r}, {split!r})"
        )
    path = split_path(name, split)
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise DataCorruptError(f"{path} is not UTF-8 text ({e}). Rebuild with:\n    {BUILD_COMMAND}") from e


def load_texts(name: str, split: str) -> list[str]:
    """Plain strings of a split: speeches (`shakespeare`), reviews (`sentiment`), lines
    (`mentions`) or space-joined tokens (`characters`). `t2t` has two texts per row: use `load_split`."""
    _check_name(name, split)
    if name == "shakespeare":
        return [block for block in load_text(name, split).split("\n\n") if block.strip()]
    if name in ("sentiment", "mentions"):
        return [r["text"] for r in load_rows(name, split)]
    if name == "characters":
        return [" ".join(r["tokens"]) for r in load_rows(name, split)]
    raise ValueError("t2t rows have a source and a target; use load_split('t2t', split)")


def label_names(name: str) -> list[str]:
    """Label id -> name: `sentiment` -> ["negative", "positive"], `characters` -> ["O", "B-PER", "I-PER"],
    `mentions` -> ["no_name", "names_character"]."""
    if name not in _LABELS:
        raise ValueError(f"{name!r} has no labels; sets with labels: {', '.join(_LABELS)}")
    return list(_LABELS[name])


def t2t_tasks() -> list[str]:
    """The task names in the `t2t` set (its rows' `task` column), e.g. for `load_split(..., task=)`."""
    return sorted({r["task"] for r in load_rows("t2t", "train")})


def load_split(name: str, split: str, task: str | None = None, keep_prefix: bool = True):
    """One split as a `datasets.Dataset` (columns in the module docstring).

    `task` (only for `t2t`) keeps the rows of one task, e.g. `load_split("t2t", "train", task="date")`.
    `keep_prefix=False` (only for `t2t`) removes each source's task prefix (`T2T_PREFIXES`), for code that
    adds the prefix itself: "normalize date: 9 Nov 1823" -> "9 Nov 1823".
    """
    import datasets  # imported here: `import deepdive.datasets` stays light

    rows = load_rows(name, split)
    if not keep_prefix:
        if name != "t2t":
            raise ValueError("keep_prefix only applies to the 't2t' set")
        rows = [dict(r, source=r["source"].removeprefix(T2T_PREFIXES[r["task"]])) for r in rows]
    if task is not None:
        if name != "t2t":
            raise ValueError("task= only applies to the 't2t' set")
        rows = [r for r in rows if r["task"] == task]
        if not rows:
            raise ValueError(f"no t2t rows with task {task!r}; tasks: {t2t_tasks()}")
    if name == "shakespeare":
        features = datasets.Features({"text": datasets.Value("string")})
    elif name in ("sentiment", "mentions"):  # text, label and one string column (source / play)
        features = datasets.Features(
            {
                col: datasets.ClassLabel(names=_LABELS[name]) if col == "label" else datasets.Value("string")
                for col in _COLUMNS[name]
            }
        )
    elif name == "characters":
        features = datasets.Features(
            {
                "tokens": datasets.Sequence(datasets.Value("string")),
                "tags": datasets.Sequence(datasets.ClassLabel(names=CHARACTER_TAGS)),
                "play": datasets.Value("string"),
            }
        )
    else:
        features = datasets.Features({c: datasets.Value("string") for c in ("source", "target", "task")})
    return datasets.Dataset.from_list(rows, features=features, split=datasets.NamedSplit(split))
