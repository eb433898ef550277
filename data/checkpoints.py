"""The shipped offline checkpoints: verify them against data/models/MANIFEST.json, rebuild only what is
missing or whose build inputs changed.

    .venv/bin/python data/checkpoints.py                 # verify (what `make` runs); build only what needs it
    .venv/bin/python data/checkpoints.py --rebuild t5    # rebuild a family on purpose (`make models REBUILD=t5`)

The three small checkpoints (data/build_models.py: ~15 MB in all) are committed and shipped in both
zips, so a newcomer does not spend ten minutes of CPU building them. MANIFEST.json records, for each
family, the sha256 of every file the build wrote and the build's inputs: the build script, the
WordPiece trainer it imports, the data checksums and the pins of the packages that compute the
weights. What this script does with each family:

| what it finds                                   | what it does                                                   |
|-------------------------------------------------|----------------------------------------------------------------|
| every file present, sha256 as in the manifest   | nothing ("verified")                                           |
| a build input changed (script, data, pins)      | rebuilds the family and records the new files in the manifest  |
| files missing (e.g. a checkout without them)    | rebuilds the family; says whether the bytes equal the shipped  |
| a file whose sha256 differs, inputs unchanged   | stops (exit 1), naming the file and the commands that fix it:  |
|                                                 | restore the shipped copy, or rebuild on purpose                |

A damaged checkpoint is never rebuilt over silently: the grades' thresholds were calibrated on the
shipped bytes, and a file someone edited on purpose is theirs to keep or restore.
The build is deterministic (same seed, flags and pinned packages: byte-identical weights and
tokenizers); tests/test_checkpoints.py::test_shipped_checkpoints_rebuild_byte_for_byte rebuilds all three
and compares them with the manifest (`make test-calibration`).
"""

import argparse
import hashlib
import json
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODELS = ROOT / "data" / "models"
MANIFEST = MODELS / "MANIFEST.json"
FAMILIES = ("distilbert", "distilgpt2", "t5")
# The files whose content decides the weights, and the packages whose arithmetic computes them.
INPUT_FILES = ("data/build_models.py", "deepdive/wordpiece.py", "data/checksums.json")
BUILD_PACKAGES = ("torch", "transformers", "tokenizers", "numpy", "safetensors")
# build_info.json records how long its build took and on how many threads: its other fields are compared,
# not its bytes.
TIMING_KEYS = ("tokenizer_seconds", "total_seconds", "cpu_seconds", "torch_threads")
BUILD_MINUTES = {"distilbert": "about 2 min", "distilgpt2": "about 1 min", "t5": "about 8 min"}


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def text_sha256(path: Path) -> str:
    """sha256 of a text file with its line endings as committed (a Windows checkout's CRLF counts as LF)."""
    return hashlib.sha256(path.read_bytes().replace(b"\r\n", b"\n")).hexdigest()


def build_pins(pyproject: Path = ROOT / "pyproject.toml") -> dict[str, str]:
    """The exact versions pyproject.toml pins for the packages that compute the weights."""
    deps = tomllib.loads(pyproject.read_text())["project"]["dependencies"]
    pins = {}
    for dep in deps:
        name, sep, version = dep.partition("==")
        if sep and name.strip().lower() in BUILD_PACKAGES:
            pins[name.strip().lower()] = version.strip()
    return pins


def build_inputs(root: Path = ROOT) -> dict:
    """What a build depends on: the input files' sha256 and the build packages' pins."""
    return {"files": {f: text_sha256(root / f) for f in INPUT_FILES}, "pins": build_pins(root / "pyproject.toml")}


def comparable_info(path: Path) -> dict:
    """build_info.json without the fields that measure how long the build took."""
    info = json.loads(path.read_text())
    drop = set(TIMING_KEYS)
    out = {k: v for k, v in info.items() if k not in drop}
    out["versions"] = {k: v for k, v in info.get("versions", {}).items() if k != "python"}
    return out


def info_digest(path: Path) -> str:
    return hashlib.sha256(json.dumps(comparable_info(path), sort_keys=True).encode()).hexdigest()


def file_digests(folder: Path) -> dict[str, str]:
    """sha256 of every file of a family's folder; build_info.json by its fields without timings."""
    return {
        p.name: info_digest(p) if p.name == "build_info.json" else sha256(p)
        for p in sorted(folder.iterdir())
        if p.is_file()
    }


def show(path: Path) -> str:
    """A path as a learner types it: relative to the course folder when it is inside."""
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def read_manifest(models: Path = MODELS) -> dict:
    path = models / MANIFEST.name
    if not path.is_file():
        return {"families": {}}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        sys.exit(f"error: {show(path)} is not valid JSON ({e}): restore it with `git checkout -- {show(path)}` "
                 f"(in the student zip: unpack it from the zip again)")


def write_manifest(manifest: dict, models: Path = MODELS) -> None:
    manifest["about"] = ("sha256 of every file of the shipped checkpoints (build_info.json: of its fields without "
                         "the build's timings) and the build inputs they came from; data/checkpoints.py checks it")
    (models / MANIFEST.name).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")


def record(family: str, models: Path = MODELS) -> None:
    """Write `family`'s current files and today's build inputs into the manifest."""
    manifest = read_manifest(models)
    manifest.setdefault("families", {})[family] = {"inputs": build_inputs(), "files": file_digests(models / family)}
    write_manifest(manifest, models)


def check_family(family: str, manifest: dict, models: Path = MODELS) -> tuple[str, str]:
    """(state, detail): "ok", "stale" (not recorded, or its build inputs changed), "missing" (files
    absent) or "damaged" (a file whose sha256 differs from the manifest's)."""
    entry = manifest.get("families", {}).get(family)
    folder = models / family
    if entry is None:
        return "stale", f"not recorded in {show(models / MANIFEST.name)}"
    now = build_inputs()
    if entry["inputs"] != now:
        changed = [f for f in INPUT_FILES if entry["inputs"]["files"].get(f) != now["files"][f]]
        changed += [f"{p}=={v}" for p, v in now["pins"].items() if entry["inputs"]["pins"].get(p) != v]
        return "stale", f"its build inputs changed since it was built ({', '.join(changed)})"
    missing = [name for name in entry["files"] if not (folder / name).is_file()]
    if missing:
        return "missing", f"missing {', '.join(show(folder / m) for m in missing)}"
    have = file_digests(folder)
    damaged = [name for name, digest in entry["files"].items() if have[name] != digest]
    if damaged:
        return "damaged", ", ".join(show(folder / m) for m in damaged)
    extra = sorted(set(have) - set(entry["files"]))  # loaders read only the files they name: noted, not fatal
    note = f" (not from the build, ignored: {', '.join(extra)})" if extra else ""
    return "ok", f"{len(entry['files'])} files verified (sha256){note}"


def rebuild(family: str, models: Path = MODELS) -> None:
    from data import build_models  # imports torch and transformers: only when a build is needed

    build_models.main(["--only", family, "--out", str(models)])


def main(argv: list[str] | None = None, models: Path = MODELS) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rebuild", nargs="*", choices=(*FAMILIES, "all"), default=None,
                   help="rebuild these families on purpose (all three without a name) and record them in the manifest")
    p.add_argument("--check-only", action="store_true", help="verify and report; build nothing (exit 1 if any is not ok)")
    args = p.parse_args(argv)
    asked = args.rebuild
    forced = set() if asked is None else set(FAMILIES) if (not asked or "all" in asked) else set(asked)

    manifest = read_manifest(models)
    manifest_name = show(models / MANIFEST.name)
    problems = []
    for family in FAMILIES:
        folder = show(models / family)
        state, detail = ("forced", "rebuild asked for") if family in forced else check_family(family, manifest, models)
        if state == "ok":
            print(f"{folder}: {detail} against {manifest_name}")
            continue
        if state == "damaged":
            problems.append(
                f"{detail} does not match {manifest_name} (changed or damaged since it was shipped).\n"
                f"  Restore the shipped copy: `git checkout -- {folder}` in the repository (from the student zip: "
                f"unpack {folder} again),\n"
                f"  or rebuild it on purpose ({BUILD_MINUTES[family]} on 2 cores): `make models REBUILD={family}` "
                f"(in the student zip: `.venv/bin/python data/checkpoints.py --rebuild {family}`)."
            )
            continue
        if args.check_only:
            problems.append(f"{folder}: {detail}; `make models` rebuilds it ({BUILD_MINUTES[family]} on 2 cores)")
            continue
        shipped = manifest.get("families", {}).get(family, {}).get("files")
        print(f"{folder}: {detail}; building it ({BUILD_MINUTES[family]} on 2 cores)", flush=True)
        rebuild(family, models)
        record(family, models)
        now = read_manifest(models)["families"][family]["files"]
        if state == "missing" and now != shipped:
            print(f"warning: the rebuilt {folder} differs from the shipped one (this machine's arithmetic differs); "
                  f"the course's thresholds were calibrated on the shipped files: `git checkout -- {folder} "
                  f"{manifest_name}` restores them", file=sys.stderr)
        elif state == "missing":
            print(f"{folder}: rebuilt byte for byte as shipped")
        else:
            print(f"{folder}: rebuilt and recorded in {manifest_name}: commit both")
    for problem in problems:
        print(f"error: {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    if str(ROOT) not in sys.path:  # `python data/checkpoints.py` puts data/, not the repo root, on sys.path
        sys.path.insert(0, str(ROOT))
    sys.exit(main())
