"""Where am I in the course? Runs every course notebook you have worked on and lists its exercises.

    make progress                                   # in a checkout of the repository
    .venv/bin/python -m deepdive.progress           # anywhere, the student zip included
    from deepdive.progress import show_progress; show_progress()    # from a notebook cell

A notebook counts as worked on when one of its exercise cells differs from the release (nbgrader's
checksum of the cell, which the release stores in the cell's metadata). Each such notebook is run
headlessly on a copy, in a temporary folder: your notebooks (and the files beside them) are never
touched, and what is read is what is saved on disk, so save first. For every exercise the table
says: visible test passed, failed (with the first line of its message) or not attempted; a written
answer (the reports of modules 04, 08, 09 and 11) is "written: to be graded by hand" or "not written".

In the student zip that is all it can say: the hidden checks are not there. In a full checkout of
the repository (a learner studying from it alone), the notebooks are also graded by the course's
real grader (`grader.grade`, the command an instructor runs), so the table gains each exercise's
points and each module a feedback page. Then the grader's executed notebooks give the visible
tests' results too, so every notebook still runs once.

Writes `progress/progress.html` (the same tables, with links), `progress/progress.json`, and in a
full checkout the grader's output in `progress/graded/`.
"""

import argparse
import csv
import html
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parent.parent
LEARNER = "learner"  # the student id of the learner's own grading run
PASSED_LINE = "visible tests passed"

PASSED, FAILED, NOT_ATTEMPTED, NOT_RUN = "passed", "failed", "not attempted", "not run"
# A written answer (a hand-graded answer cell: the reports of modules 04, 08, 09 and 11) has no visible test.
WRITTEN, NOT_WRITTEN = "written: to be graded by hand", "not written"


@dataclass
class Exercise:
    name: str  # the graded function or class, e.g. "causal_mask"; an answer cell's grade id
    attempted: bool  # its solution cell differs from the release
    status: str = NOT_RUN  # passed / failed / not attempted / not run; answers: written / not written
    kind: str = "exercise"  # "exercise" (code with a visible test) or "answer" (written, graded by hand)
    message: str = ""  # the first line of what went wrong
    detail: str = ""  # all of it (an assertion may go on with the tensors it compared)
    score: float | None = None  # hidden checks' points (full checkout only)
    max_score: float | None = None


@dataclass
class Module:
    module: str  # "02_attention"
    notebook: str  # its path, as given
    started: bool = False  # at least one exercise attempted
    exercises: list[Exercise] = field(default_factory=list)
    note: str = ""  # what stopped the run, or why nothing could be read
    seconds: float | None = None  # how long it ran (or was graded)
    score: float | None = None
    max_score: float | None = None
    feedback: str = ""  # the feedback page (full checkout only)

    def count(self, status: str) -> int:
        return sum(e.status == status for e in self.exercises)

    @property
    def n_exercises(self) -> int:
        """The code exercises, which have visible tests (written answers have none)."""
        return sum(e.kind == "exercise" for e in self.exercises)


# ----------------------------------------------------------------------------- reading a notebook

def _nbgrader(cell) -> dict:
    return cell.get("metadata", {}).get("nbgrader", {})


def _changed(cell) -> bool:
    """True when the cell differs from the release (nbgrader's own checksum of it)."""
    from nbgrader.utils import compute_checksum  # imported late: nbgrader is slow to import

    recorded = _nbgrader(cell).get("checksum")
    return recorded is not None and compute_checksum(cell) != recorded


def _is_answer(cell) -> bool:
    """A hand-graded answer cell (nbgrader's "manually graded answer": markdown you write)."""
    return cell.get("cell_type") == "markdown" and bool(_nbgrader(cell).get("grade")) and bool(_nbgrader(cell).get("solution"))


def exercises(nb) -> list[Exercise]:
    """The exercises of a course notebook, in order: one per `<name>_solution` cell, and one per written
    answer cell (already judged: written or not; a person grades it)."""
    found = []
    for cell in nb.cells:
        grade_id = _nbgrader(cell).get("grade_id", "")
        if _is_answer(cell):
            written = _changed(cell)
            found.append(Exercise(name=grade_id, attempted=written, kind="answer",
                                  status=WRITTEN if written else NOT_WRITTEN,
                                  message="your instructor grades it with a rubric" if written else ""))
        elif _nbgrader(cell).get("solution") and grade_id.endswith("_solution"):
            found.append(Exercise(name=grade_id.removesuffix("_solution"), attempted=_changed(cell)))
    return found


def _cell(nb, grade_id: str):
    return next((c for c in nb.cells if _nbgrader(c).get("grade_id") == grade_id), None)


def _error(cell) -> str | None:
    """'ename: evalue' of the cell's error output, or None."""
    for out in cell.get("outputs", []):
        if out.get("output_type") == "error":
            value = (out.get("evalue") or "").strip()
            return f"{out.get('ename', 'Error')}: {value}" if value else out.get("ename", "Error")
    return None


def _say(ex: Exercise, status: str, message: str = "") -> None:
    lines = message.strip().splitlines()
    ex.status, ex.message = status, (lines[0] + (" (...)" if len(lines) > 1 else "")) if lines else ""
    ex.detail = message.strip()[:2000] if len(lines) > 1 else ""


def _printed(cell) -> str:
    return "".join(out.get("text", "") for out in cell.get("outputs", []) if out.get("output_type") == "stream")


def judge(executed, found: list[Exercise]) -> None:
    """Fill each exercise's status and message from an executed copy of its notebook."""
    for ex in (e for e in found if e.kind == "exercise"):
        solution, visible = _cell(executed, f"{ex.name}_solution"), _cell(executed, f"{ex.name}_visible")
        if not ex.attempted:
            _say(ex, NOT_ATTEMPTED)
            continue
        if visible is None:
            _say(ex, FAILED, "its visible test cell is missing from the notebook")
            continue
        if visible.get("execution_count") is None:
            _say(ex, NOT_RUN, "the run stopped before its visible test")
            continue
        own = _error(solution) if solution is not None else None
        seen = _error(visible)
        if own is not None:
            _say(ex, FAILED, f"your cell raised {own}")
        elif seen is not None:
            _say(ex, FAILED, seen)
        elif PASSED_LINE in _printed(visible):
            _say(ex, PASSED)
        else:
            _say(ex, FAILED, "its visible test printed no verdict (was the test cell edited?)")
        if _changed(visible):
            ex.message = (ex.message + "; " if ex.message else "") + "the visible test cell was edited"


def other_errors(executed) -> str:
    """A note on the cells outside the exercises that raised (a plot, a training run, a missing data
    file), which a table of exercises alone would hide: '' when none did."""
    raised = [(i, _error(c)) for i, c in enumerate(executed.cells) if c.get("cell_type") == "code"
              and not _nbgrader(c).get("grade_id", "").endswith(("_solution", "_visible", "_hidden")) and _error(c)]
    if not raised:
        return ""
    i, first = raised[0]
    first = first.splitlines()[0] if first else ""
    return f"{len(raised)} other cell(s) raised, first cell {i + 1}: {first[:120]}"


# ----------------------------------------------------------------------------- running the visible tests

def run_visible(path: Path, cell_timeout: int) -> tuple[nbformat.NotebookNode, str]:
    """Execute a copy of the notebook in a temporary copy of its folder; (executed notebook, note)."""
    from jupyter_client import KernelManager
    from nbclient import NotebookClient
    from nbclient.exceptions import CellTimeoutError, DeadKernelError

    nb = nbformat.read(path, as_version=4)
    with tempfile.TemporaryDirectory(prefix="deepdive-progress-") as tmp:
        work = Path(tmp) / path.parent.name
        shutil.copytree(path.parent, work, ignore=shutil.ignore_patterns(".ipynb_checkpoints", "*.ipynb"))
        # Unix sockets in the private folder, not TCP ports: nothing else on the machine can reach the kernel.
        km = KernelManager(kernel_name="python3", transport="ipc", connection_file=str(Path(tmp) / "kernel.json"))
        client = NotebookClient(nb, km=km, timeout=cell_timeout, interrupt_on_timeout=True, allow_errors=True,
                                resources={"metadata": {"path": str(work)}})
        note = ""
        try:
            client.execute()
        except DeadKernelError:
            note = "the kernel died (out of memory?): cells after it did not run"
        except CellTimeoutError:
            note = f"a cell ran past {cell_timeout} s and could not be interrupted"
        finally:  # a client given its kernel manager leaves the kernel running: one per notebook otherwise
            if client.kc is not None:
                client.kc.stop_channels()
            if km.has_kernel:
                km.shutdown_kernel(now=True)
    for cell in nb.cells:  # a cell interrupted at the time limit says so
        if any(o.get("ename") == "KeyboardInterrupt" for o in cell.get("outputs", [])):
            note = note or f"a cell ran past {cell_timeout} s and was interrupted"
    return nb, note


# ----------------------------------------------------------------------------- grading (full checkout)

def full_checkout() -> bool:
    """A checkout of the repository (grader and solutions beside deepdive/), not the student zip."""
    return (ROOT / "grader" / "grade.py").is_file() and (ROOT / "solutions").is_dir()


def grade_modules(modules: list[Module], out: Path, workers: int | None) -> str:
    """Grade the started notebooks with the course's grader into `out` (replaced); fill scores,
    statuses and feedback pages. Returns a note on how it graded."""
    # The grader's worker processes and kernels import grader/ from the repository, wherever this runs.
    sys.path.insert(0, str(ROOT))
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    from grader.grade import GradingError, grade

    started = [m for m in modules if m.started]
    out.parent.mkdir(parents=True, exist_ok=True)
    fresh = out.with_name(out.name + ".new")
    shutil.rmtree(fresh, ignore_errors=True)
    note = "graded in the grader's sandbox"
    with tempfile.TemporaryDirectory(prefix="deepdive-progress-") as tmp:
        for m in started:
            dest = Path(tmp) / LEARNER / m.module / f"{m.module}.ipynb"
            dest.parent.mkdir(parents=True)
            shutil.copy2(m.notebook, dest)
        try:
            grade(Path(tmp), fresh, workers=workers)
        except GradingError as exc:
            if "no sandbox" not in str(exc):
                raise
            # Your own code on your own machine: the sandbox guards other students' grades, not yours.
            note = f"graded without the sandbox ({exc}); the verdicts are the same for your own code"
            shutil.rmtree(fresh, ignore_errors=True)
            grade(Path(tmp), fresh, workers=workers, sandbox=False)
    shutil.rmtree(out, ignore_errors=True)
    fresh.rename(out)
    rows = {r["assignment"]: r for r in _read_csv(out / "grades.csv")}
    cells = {(r["assignment"], r["grade_id"]): r for r in _read_csv(out / "cell_grades.csv")}
    timing = {r["assignment"]: r for r in _read_csv(out / "timing.csv")}
    for m in started:
        row = rows.get(m.module, {})
        m.score, m.max_score = _number(row.get("score")), _number(row.get("max_score"))
        m.seconds = _number(timing.get(m.module, {}).get("wall_s"))
        page = out / "feedback" / LEARNER / m.module / f"{m.module}.html"
        m.feedback = str(page) if page.exists() else ""
        if row.get("status") != "graded":
            m.note = f"grader: {row.get('status', 'no row')}: {row.get('message', '')}".strip()
        executed = out / "autograded" / LEARNER / m.module / f"{m.module}.ipynb"
        if executed.exists():
            executed = nbformat.read(executed, as_version=4)
            judge(executed, m.exercises)
            m.note = "; ".join(n for n in (m.note, other_errors(executed)) if n)
        for ex in m.exercises:
            cell = cells.get((m.module, f"{ex.name}_hidden" if ex.kind == "exercise" else ex.name), {})
            ex.score, ex.max_score = _number(cell.get("score")), _number(cell.get("max_score"))
            if ex.kind == "answer" and cell.get("needs_manual_grade") == "True":
                ex.score = None  # not graded yet: its 0 is a placeholder (_exercise_points says "by hand")
    return note


def _read_csv(path: Path) -> list[dict]:
    if not path.exists():
        return []
    with path.open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def _number(text) -> float | None:
    try:
        return float(text)
    except (TypeError, ValueError):
        return None


# ----------------------------------------------------------------------------- the report

def find_notebooks(course: Path) -> list[Path]:
    """course/NN_topic/NN_topic.ipynb, in module order."""
    return sorted(p / f"{p.name}.ipynb" for p in course.iterdir() if (p / f"{p.name}.ipynb").is_file()
                  and p.name[:2].isdigit())


def collect(course: Path, grade_out: Path | None, cell_timeout: int, workers: int | None,
            echo=print) -> tuple[list[Module], str]:
    """Read every course notebook, run (or grade) those worked on; (modules, note on grading)."""
    modules = []
    for path in find_notebooks(course):
        m = Module(module=path.parent.name, notebook=str(path))
        try:
            m.exercises = exercises(nbformat.read(path, as_version=4))
        except Exception as exc:  # not JSON, not a notebook: say so and go on
            m.note = f"unreadable ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})"
        else:
            m.started = any(e.attempted for e in m.exercises)
            if not m.exercises:
                m.note = "no exercise cells found (the cells' nbgrader metadata is missing)"
        modules.append(m)
    started = [m for m in modules if m.started]
    if not started:
        return modules, ""
    fallback = ""
    if grade_out is not None:
        echo(f"grading {len(started)} notebook(s) with the course's grader: " + ", ".join(m.module for m in started))
        try:
            return modules, grade_modules(modules, grade_out, workers)
        except Exception as exc:  # the grading machinery itself failed: the visible tests still say something
            fallback = f"the grader failed ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); "
            echo(fallback + "running the visible tests only")
            for m in started:
                m.score = m.max_score = None
                m.feedback = m.note = ""
    for m in started:
        echo(f"running {m.module} (visible tests) ...")
        t0 = time.perf_counter()
        executed, m.note = run_visible(Path(m.notebook), cell_timeout)
        m.seconds = time.perf_counter() - t0
        judge(executed, m.exercises)
        m.note = "; ".join(n for n in (m.note, other_errors(executed)) if n)
    return modules, fallback + "visible tests only"


def _points(score, max_score) -> str:
    if score is None or max_score is None:
        return ""
    return f"{score:g} / {max_score:g}"


def _exercise_points(e: Exercise) -> str:
    if e.kind == "answer" and e.score is None and e.max_score is not None:
        return f"by hand / {e.max_score:g}"  # written: a person grades it
    return _points(e.score, e.max_score)


def _table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    line = lambda r: "  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip()
    return "\n".join([line(header), line(["-" * w for w in widths]), *map(line, rows)])


def text_report(modules: list[Module], graded: bool) -> str:
    """The exercise table (modules worked on) and the per-module summary."""
    head = ["module", "exercise", "visible test / answer"] + (["points"] if graded else []) + ["message"]
    rows = []
    for m in modules:
        if not m.started:
            continue
        for e in m.exercises:
            message = e.message if len(e.message) <= 100 else e.message[:97] + "..."
            rows.append([m.module, e.name, e.status] + ([_exercise_points(e)] if graded else [])
                        + [message])
    parts = [_table(head, rows)] if rows else ["No exercise attempted yet: open course/01_rnn_bottleneck first."]
    head = ["module", "passed", "failed", "not attempted"] + (["points", "feedback"] if graded else []) + ["note"]
    rows = []
    for m in modules:
        n = m.n_exercises
        if not m.started:
            rows.append([m.module, f"0 / {n}", "", "", *([""] * 2 * graded), m.note or "not started"])
            continue
        rows.append([m.module, f"{m.count(PASSED)} / {n}", str(m.count(FAILED)), str(m.count(NOT_ATTEMPTED))]
                    + ([_points(m.score, m.max_score), _relative(m.feedback)] if graded else [])
                    + [m.note or (f"not run: {m.count(NOT_RUN)}" if m.count(NOT_RUN) else "")])
    parts.append(_table(head, rows))
    return "\n\n".join(parts)


def _relative(path: str) -> str:
    """The path from the current folder when it lies below it, else the whole path."""
    if not path:
        return ""
    absolute = Path(path).resolve()
    return str(absolute.relative_to(Path.cwd())) if absolute.is_relative_to(Path.cwd()) else str(absolute)


def html_report(modules: list[Module], graded: bool, note: str) -> str:
    """The same tables as a page, each status coloured, feedback pages linked."""
    colour = {PASSED: "#1a7f37", FAILED: "#cf222e", NOT_ATTEMPTED: "#6e7781", NOT_RUN: "#9a6700", WRITTEN: "#0969da",
              NOT_WRITTEN: "#6e7781"}
    esc = html.escape
    out = ["<!doctype html><meta charset='utf-8'><title>Transformer Deep Dive: progress</title>",
           "<style>body{font-family:system-ui,sans-serif;margin:2em}table{border-collapse:collapse;margin:1em 0}"
           "td,th{border:1px solid #d0d7de;padding:.3em .6em;text-align:left}th{background:#f6f8fa}</style>",
           f"<h1>Progress</h1><p>{esc(note or 'nothing run yet')}; {time.strftime('%Y-%m-%d %H:%M')}</p>",
           "<h2>Modules</h2><table><tr><th>module</th><th>visible tests passed</th><th>failed</th>"
           "<th>not attempted</th>" + ("<th>points</th><th>feedback</th>" if graded else "") + "<th>note</th></tr>"]
    for m in modules:
        link = f"<a href='{esc(Path(m.feedback).as_uri())}'>feedback</a>" if m.feedback else ""
        cols = ([f"{m.count(PASSED)} / {m.n_exercises}", str(m.count(FAILED)), str(m.count(NOT_ATTEMPTED))]
                if m.started else [f"0 / {m.n_exercises}", "", ""])
        cells = [esc(c) for c in cols] + ([esc(_points(m.score, m.max_score)), link] if graded else [])
        out.append(f"<tr><td>{esc(m.module)}</td>" + "".join(f"<td>{c}</td>" for c in cells)
                   + f"<td>{esc(m.note or ('' if m.started else 'not started'))}</td></tr>")
    out.append("</table><h2>Exercises</h2><table><tr><th>module</th><th>exercise</th><th>visible test / answer</th>"
               + ("<th>points</th>" if graded else "") + "<th>message</th></tr>")
    for m in (m for m in modules if m.started):
        for e in m.exercises:
            out.append(f"<tr><td>{esc(m.module)}</td><td><code>{esc(e.name)}</code></td>"
                       f"<td style='color:{colour[e.status]}'>{esc(e.status)}</td>"
                       + (f"<td>{esc(_exercise_points(e))}</td>" if graded else "")
                       + (f"<td><details><summary>{esc(e.message)}</summary><pre>{esc(e.detail)}</pre></details></td>"
                          if e.detail else f"<td>{esc(e.message)}</td>") + "</tr>")
    out.append("</table>")
    return "\n".join(out)


def _locate(course: Path | None, out: Path | None) -> tuple[Path | None, Path | None]:
    """(course folder, report folder): course/ beside deepdive/ or in the current folder; progress/ beside it."""
    course = course or next((c for c in (ROOT / "course", Path.cwd() / "course") if c.is_dir()), None)
    if course is None or not course.is_dir():
        return None, None
    return course, out or course.resolve().parent / "progress"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--course", type=Path, default=None,
                        help="the folder of your course notebooks (default: course/ beside deepdive/, or in the "
                             "current folder)")
    parser.add_argument("--out", type=Path, default=None,
                        help="where the report (and in a full checkout the grading) goes (default: progress/ "
                             "beside course/)")
    parser.add_argument("--visible-only", action="store_true",
                        help="in a full checkout, run only the visible tests (no grading)")
    parser.add_argument("--cell-timeout", type=int, default=600,
                        help="seconds one cell may run before it is interrupted (visible tests; default 600)")
    parser.add_argument("--workers", type=int, default=None,
                        help="notebooks graded at once (full checkout; default: the cores this process may use)")
    args = parser.parse_args(argv)
    course, out = _locate(args.course, args.out)
    if course is None:
        print(f"no course folder at {args.course or ROOT / 'course'}: run this in the folder that holds course/ "
              "(the unpacked student zip, or the repository), or pass --course DIR", file=sys.stderr)
        return 2
    graded = full_checkout() and not args.visible_only
    modules, note = collect(course, out / "graded" if graded else None, args.cell_timeout, args.workers,
                            echo=lambda s: print(s, file=sys.stderr, flush=True))
    graded = graded and any(m.score is not None for m in modules)
    print(text_report(modules, graded))
    if note:
        print(f"\n({note}{'' if graded else '; the hidden checks run when your notebook is graded'})")
    out.mkdir(parents=True, exist_ok=True)
    (out / "progress.html").write_text(html_report(modules, graded, note), encoding="utf-8")
    (out / "progress.json").write_text(json.dumps({"note": note, "graded": graded,
                                                   "modules": [asdict(m) for m in modules]}, indent=1))
    print(f"report: {_relative(str(out / 'progress.html'))}")
    return 0


def show_progress(*options: str) -> None:
    """From a notebook cell: the same report, run in its own process (your kernel keeps its variables and
    threads), shown as a page. `options` are the command's, e.g. show_progress("--visible-only")."""
    from IPython.display import HTML, display

    done = subprocess.run([sys.executable, "-m", "deepdive.progress", *options], capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"the progress report failed:\n{(done.stderr or done.stdout)[-2000:]}")
    given = {k: Path(options[i + 1]) for i, k in enumerate(options[:-1]) if k in ("--course", "--out")}
    _, out = _locate(given.get("--course"), given.get("--out"))
    display(HTML((out / "progress.html").read_text(encoding="utf-8")))


if __name__ == "__main__":
    sys.exit(main())
