"""Build the student notebooks and the two release zips.

    python -m grader.build student            # course/NN_topic/*.ipynb from solutions/ (nbgrader)
    python -m grader.build release [--dist D] # dist/transformer-deep-dive-{student,instructor}.zip
"""

import argparse
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from grader.assignments import COURSE, ROOT, SOLUTIONS, assignment_ids
from grader.nbgrader_cli import nbgrader

STUDENT_ZIP = "transformer-deep-dive-student.zip"
INSTRUCTOR_ZIP = "transformer-deep-dive-instructor.zip"
# What a learner gets: notebooks, the helper package, the data scripts, the shipped offline checkpoints
# (data/models, verified by data/checkpoints.py), environment files and the learner README
# (course/README.md becomes the zip's README.md). Nothing from solutions/ or grader/.
STUDENT_CONTENT = ["course", "deepdive", "data", "environment.yml", "pyproject.toml"]
# Build outputs and whatever a notebook run saved into a `models/` folder of its own; the shipped
# checkpoints under data/models/ are the exception (shipped_checkpoint).
EXCLUDE_PARTS = {"__pycache__", ".ipynb_checkpoints", "build", "models", ".pytest_cache"}
FIXED_TIME = (2024, 1, 1, 0, 0, 0)  # zips are byte-identical from build to build


def generate_release(dest: Path, assignments: list[str] | None = None) -> None:
    """Run nbgrader generate_assignment for every assignment; write the release into `dest`."""
    with tempfile.TemporaryDirectory(prefix="deepdive-build-") as tmp:
        tmp = Path(tmp)
        shutil.copytree(SOLUTIONS, tmp / "solutions", ignore=shutil.ignore_patterns(*EXCLUDE_PARTS))
        for aid in assignments or assignment_ids():
            result = nbgrader("generate_assignment", aid, "--force", root=tmp, db=tmp / "gradebook.db")
            if result.returncode != 0 or not (tmp / "course" / aid).is_dir():
                sys.exit(f"nbgrader generate_assignment {aid} failed:\n{result.stdout[-3000:]}")
            target = dest / aid
            if target.exists():
                shutil.rmtree(target)
            shutil.copytree(tmp / "course" / aid, target)
            for path in target.rglob("*"):  # nbgrader leaves files read-only for some setups
                path.chmod(0o755 if path.is_dir() else 0o644)


def build_student() -> None:
    generate_release(COURSE)
    stale = sorted({p.name for p in COURSE.iterdir() if p.is_dir()} - set(assignment_ids()))
    for name in stale:  # an assignment removed from solutions/ disappears from course/ too
        shutil.rmtree(COURSE / name)
    print(f"course/: {len(assignment_ids())} student notebooks regenerated from solutions/")


def shipped_checkpoint(rel: Path) -> bool:
    """A file of the committed offline checkpoints (data/models/<family>/..., MANIFEST.json), not a
    half-written build (data/models/.<family>.partial/)."""
    parts = rel.parts
    return parts[:2] == ("data", "models") and not any(p.startswith(".") for p in parts[2:])


def excluded(rel: Path) -> bool:
    return bool(EXCLUDE_PARTS & set(rel.parts[:-1])) and not shipped_checkpoint(rel)


def _tracked_files() -> list[Path]:
    """The instructor release is the repository as committed (plus uncommitted edits of tracked files)."""
    try:
        out = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
        files = [ROOT / f for f in out.decode().split("\0") if f]
    except (OSError, subprocess.CalledProcessError):
        files = [p for p in ROOT.rglob("*") if p.is_file() and ".git" not in p.parts and ".venv" not in p.parts]
    return sorted(p for p in files if p.is_file() and not excluded(p.relative_to(ROOT)))


def _student_files() -> list[tuple[Path, str]]:
    items = []
    for top in STUDENT_CONTENT:
        path = ROOT / top
        paths = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
        for p in paths:
            rel = p.relative_to(ROOT)
            if excluded(rel) or p.suffix == ".pyc":
                continue
            arc = "README.md" if rel.as_posix() == "course/README.md" else rel.as_posix()
            items.append((p, arc))
    return items


def _write_zip(path: Path, items: list[tuple[Path, str]], prefix: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for src, arc in sorted(items, key=lambda x: x[1]):
            info = zipfile.ZipInfo(f"{prefix}/{arc}", date_time=FIXED_TIME)
            info.external_attr = 0o644 << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, src.read_bytes())


def build_release(dist: Path) -> tuple[Path, Path]:
    student = dist / STUDENT_ZIP
    instructor = dist / INSTRUCTOR_ZIP
    _write_zip(student, _student_files(), "transformer-deep-dive")
    _write_zip(instructor, [(p, p.relative_to(ROOT).as_posix()) for p in _tracked_files()],
               "transformer-deep-dive-instructor")
    for z in (student, instructor):
        with zipfile.ZipFile(z) as zf:
            print(f"{z.relative_to(ROOT) if z.is_relative_to(ROOT) else z}: {len(zf.namelist())} files, "
                  f"{z.stat().st_size / 1024:.0f} KiB")
    return student, instructor


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("student", help="regenerate course/ from solutions/ with nbgrader")
    rel = sub.add_parser("release", help="write the student and instructor zips")
    rel.add_argument("--dist", type=Path, default=ROOT / "dist", help="output folder (default: dist/)")
    args = parser.parse_args(argv)
    if args.command == "student":
        build_student()
    else:
        build_release(args.dist)


if __name__ == "__main__":
    main()
