"""Writing split files reproducibly: JSONL/text writers, sha256, stable hash-based ordering.

Every set is built without a random number generator: examples are ordered by the sha256 of
a salt plus a stable key (`stable_rank`), so that the same inputs give byte-identical files
on every machine and every Python version.
"""

import hashlib
import json
from collections.abc import Iterable, Sequence
from pathlib import Path


def stable_rank(key: str, salt: str) -> str:
    """A pseudo-random but reproducible sort key for `key` (hex sha256 of "salt|key")."""
    return hashlib.sha256(f"{salt}|{key}".encode()).hexdigest()


def stable_shuffle(items: Sequence, key, salt: str) -> list:
    """Items sorted by `stable_rank(key(item), salt)`: a shuffle that never changes."""
    return sorted(items, key=lambda item: stable_rank(key(item), salt))


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_jsonl(path: Path, rows: Iterable[dict]) -> int:
    """Write one compact JSON object per line (UTF-8, "\\n" endings); returns the row count."""
    path.parent.mkdir(parents=True, exist_ok=True)
    n = 0
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False, separators=(",", ":")) + "\n")
            n += 1
    return n


def write_text(path: Path, text: str) -> None:
    """Write UTF-8 text with "\\n" line endings on every platform."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        f.write(text)


def write_json(path: Path, obj) -> None:
    """Pretty-printed, key-sorted JSON (for manifests and label files that people read)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        json.dump(obj, f, indent=2, sort_keys=True, ensure_ascii=False)
        f.write("\n")


def count_rows(path: Path) -> int:
    """Rows of a split file: lines for .jsonl and .txt files."""
    with open(path, "rb") as f:
        return sum(1 for _ in f)
