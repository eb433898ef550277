"""The learner's real client: JupyterLab in headless Chromium runs the course notebooks.

Every other test runs notebooks through nbclient; a learner runs them in JupyterLab, where what
matters is what the page shows: that the notebook opens on the course's kernel, that a stub's
visible test says "not written yet" instead of a bare NotImplementedError, that a correct answer
typed into the editor passes, and that the plots of a finished notebook render as images.

The server serves a copy of course/ in tmp_path (the test never writes to course/) and reads no
Jupyter state of the user's: config, lab settings, workspaces, runtime and data dirs are tmp
folders. Playwright drives Debian's Chromium (`make browser`): Playwright's own browser download
needs the internet, which the course machines do not have.

Failure artefacts (a screenshot, the page's text, the server log) and the kept screenshots go to
build/test-artifacts/browser/.
"""

import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / ".venv"
JUPYTER = VENV / "bin" / "jupyter"
CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = ROOT / "build" / "test-artifacts" / "browser"

# Playwright gives Chromium a fresh empty profile itself (it refuses a --user-data-dir argument).
# Without the networking flags Chromium's own background connections are refused, many at a time,
# on the closed network of the course machines.
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]

# Lab settings, one file per plugin: no news or update checks (no network, no "Would you like to
# receive official Jupyter news?" toast), no extension manager, and every cell in the DOM (the
# default windowing mode leaves off-screen cells out of it, and the test reads them all).
LAB_SETTINGS = {
    "@jupyterlab/apputils-extension/notification": {"fetchNews": "false", "checkForUpdates": False},
    "@jupyterlab/extensionmanager-extension/plugin": {"enabled": False},
    "@jupyterlab/notebook-extension/tracker": {"windowingMode": "none"},
}
SERVER_CONFIG = {"LabApp": {"news_url": None,
                            "check_for_updates_class": "jupyterlab.handlers.announcements.NeverCheckForUpdate"}}

SERVER_START_S = 90  # ~5-10 s on an idle machine; the machine is shared
KERNEL_IDLE_S = 90  # a fresh kernel on the notebook's page
CELL_S = 90  # module 02's cells take a few seconds
PLOTS_AID = "04_positional_encoding"  # finished in the lab: its plots need the learner's answers (6 s of cells)
RUN_ALL_S = 300  # the whole of PLOTS_AID, generously (a shared CI machine)

SDPA = "scaled_dot_product_attention"
NOT_WRITTEN = f"{SDPA} is not written yet: replace `raise NotImplementedError()`"  # deepdive.feedback.call
PASSED = f"{SDPA}: visible tests passed"
ERROR_TEXT = re.compile(r"Traceback \(most recent call last\)|^\w*(Error|Exception|Interrupt)\b", re.MULTILINE)


# ----------------------------------------------------------------------------- notebooks

def _gid(cell) -> str | None:
    return cell.metadata.get("nbgrader", {}).get("grade_id")


def _index(nb, grade_id: str) -> int:
    """The position of the cell with this grade id: the DOM shows the cells in the same order."""
    found = [i for i, c in enumerate(nb.cells) if _gid(c) == grade_id]
    assert len(found) == 1, f"expected one cell with grade id {grade_id!r} in the notebook, found {len(found)}"
    return found[0]


def _without_markers(source: str) -> str:
    """A solution cell's source as a learner would have written it: no BEGIN/END SOLUTION lines."""
    markers = {"### BEGIN SOLUTION", "### END SOLUTION"}
    return "\n".join(line for line in source.splitlines() if line.strip() not in markers)


def _solutions(aid: str) -> dict[str, str]:
    """grade id -> the reference answer (markers dropped) of every solution cell of the module."""
    nb = nbformat.read(ROOT / "solutions" / aid / f"{aid}.ipynb", as_version=4)
    return {_gid(c): _without_markers(c.source) for c in nb.cells if c.metadata.get("nbgrader", {}).get("solution")}


def _finish(notebook: Path, aid: str) -> None:
    """Rewrite a student notebook as a learner who finished it: every code solution cell answered (a written
    answer cell keeps the release's text: the instructor notebook holds a rubric there, not an answer)."""
    answers = _solutions(aid)
    nb = nbformat.read(notebook, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code" and cell.metadata.get("nbgrader", {}).get("solution"):
            cell.source = answers[_gid(cell)]
    nbformat.write(nb, notebook)


def _figure_cells(nb) -> list[int]:
    """Indices of the code cells that draw a figure (each ends with plt.show() in this course)."""
    return [i for i, c in enumerate(nb.cells) if c.cell_type == "code" and re.search(r"\bplt\.show\(\)", c.source)]


# ----------------------------------------------------------------------------- the server

@dataclass
class Lab:
    url: str
    token: str
    course: Path  # the folder it serves: a copy of course/, or a graded run (the formgrader)
    log: Path
    runtime_dir: Path

    def api(self, path: str):
        with urllib.request.urlopen(f"{self.url}/api/{path}?token={self.token}", timeout=10) as reply:
            return json.load(reply)

    def api_formgrader(self, path: str):
        with urllib.request.urlopen(f"{self.url}/formgrader/api/{path}?token={self.token}", timeout=10) as reply:
            return json.load(reply)

    def shut_down_sessions(self) -> None:
        for session in self.api("sessions"):
            request = urllib.request.Request(f"{self.url}/api/sessions/{session['id']}?token={self.token}",
                                             method="DELETE")
            urllib.request.urlopen(request, timeout=30).close()

    def page_url(self, notebook: str) -> str:
        # reset: a fresh workspace, so the notebook of an earlier test is not reopened beside it
        return f"{self.url}/lab/tree/{notebook}?reset&token={self.token}"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _isolated_env(home: Path) -> dict[str, str]:
    """The environment of `make lab` (the course's bin/ first on PATH, the repo on PYTHONPATH),
    with every Jupyter state directory in tmp. JUPYTER_DATA_DIR replaces only the user's data dir:
    the kernelspec in .venv/share/jupyter stays on the path."""
    dirs = {name: home / name.lower() for name in
            ["JUPYTER_CONFIG_DIR", "JUPYTERLAB_SETTINGS_DIR", "JUPYTERLAB_WORKSPACES_DIR", "JUPYTER_RUNTIME_DIR",
             "JUPYTER_DATA_DIR", "IPYTHONDIR"]}
    for d in dirs.values():
        d.mkdir(parents=True)
    (dirs["JUPYTER_CONFIG_DIR"] / "jupyter_server_config.json").write_text(json.dumps(SERVER_CONFIG))
    for plugin, settings in LAB_SETTINGS.items():
        path = dirs["JUPYTERLAB_SETTINGS_DIR"] / f"{plugin}.jupyterlab-settings"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(settings))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JUPYTER", "MPLBACKEND"))}
    # MPLBACKEND (Agg in many CI environments) would beat the kernel's inline backend: no images.
    env.update({k: str(v) for k, v in dirs.items()})
    env.update(PATH=f"{VENV / 'bin'}{os.pathsep}{env.get('PATH', '')}", PYTHONPATH=str(ROOT), JUPYTER_PLATFORM_DIRS="1")
    return env


def _wait_for_server(lab: Lab, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + SERVER_START_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"jupyter lab exited with status {proc.returncode} before answering; its log "
                        f"({lab.log}):\n{_tail(lab.log)}")
        try:
            lab.api("status")
            return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            time.sleep(0.25)  # poll interval, not a wait for a condition
    pytest.fail(f"jupyter lab did not answer /api/status within {SERVER_START_S} s; its log ({lab.log}):\n"
                f"{_tail(lab.log)}")


def _tail(path: Path, n: int = 40) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-n:]) if path.exists() else "(no log)"


def _processes_mentioning(text: str) -> list[int]:
    """Pids whose command line contains `text` (the kernels of this server name its runtime dir)."""
    pids = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if text in (proc / "cmdline").read_bytes().decode(errors="replace"):
                    pids.append(int(proc.name))
            except OSError:
                pass  # ended meanwhile
    return pids


def _stop(proc: subprocess.Popen, runtime_dir: Path) -> None:
    """SIGTERM to the server's process group (the server shuts its kernels down), SIGKILL if it
    hangs; then any kernel of this server still alive (kernels run in their own session)."""
    for sig, wait_s in [(signal.SIGTERM, 20), (signal.SIGKILL, 10)]:
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        try:
            proc.wait(timeout=wait_s)
            break
        except subprocess.TimeoutExpired:
            continue
    for pid in _processes_mentioning(str(runtime_dir)):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """JupyterLab on a free loopback port with a random token, serving a copy of course/ in which
    module PLOTS_AID is finished (its plots need the learner's answers); stopped even when a test fails."""
    assert JUPYTER.exists(), f"{JUPYTER} not found: run `make setup` (the course environment)"
    tmp = tmp_path_factory.mktemp("lab")
    course = tmp / "course"
    shutil.copytree(ROOT / "course", course, ignore=shutil.ignore_patterns(".ipynb_checkpoints"))
    _finish(course / PLOTS_AID / f"{PLOTS_AID}.ipynb", PLOTS_AID)
    env = _isolated_env(tmp / "jupyter")
    port, token = _free_port(), secrets.token_hex(16)
    cmd = [str(JUPYTER), "lab", "--no-browser", "--ip=127.0.0.1", f"--port={port}", "--ServerApp.port_retries=0",
           f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={course}"]
    if os.geteuid() == 0:
        cmd.append("--allow-root")
    with _serving(cmd, course, env, tmp / "jupyter-lab.log", port, token) as server:
        yield server


@contextmanager
def _serving(cmd: list[str], root: Path, env: dict, log: Path, port: int, token: str):
    """A Jupyter server started by `cmd` in `root`, its output in `log`: yields it once it answers, and
    stops it (and its kernels) afterwards, even when a test fails."""
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, cwd=root, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    server = Lab(f"http://127.0.0.1:{port}", token, root, log, Path(env["JUPYTER_RUNTIME_DIR"]))
    try:
        _wait_for_server(server, proc)
        yield server
    finally:
        _stop(proc, server.runtime_dir)


# ----------------------------------------------------------------------------- the browser

@pytest.fixture(scope="module")
def browser():
    """Debian's Chromium under Playwright (its own browser build is never downloaded)."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("playwright is not installed in the course environment: run `make setup` "
                    "(pip install -e '.[dev]' installs playwright==1.65.2)")
    assert CHROMIUM.exists(), f"chromium not found at {CHROMIUM}: run `make browser` (apt-get install chromium)"
    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def page(browser, lab):
    """A fresh browser context per test; afterwards its kernels are shut down, so that the next
    test does not share the two cores with a kernel left busy by a failure."""
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    context.set_default_timeout(30_000)
    try:
        yield context.new_page()
    finally:
        context.close()
        lab.shut_down_sessions()


@contextmanager
def _artefacts_on_failure(page, lab: Lab, name: str):
    """On any failure keep a screenshot, the page's text and the server log for diagnosis."""
    try:
        yield
    except BaseException:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        saved = []
        try:
            page.screenshot(path=ARTIFACTS / f"{name}-failure.png", full_page=True)
            saved.append(ARTIFACTS / f"{name}-failure.png")
            (ARTIFACTS / f"{name}-failure.txt").write_text(page.inner_text("body"))
            saved.append(ARTIFACTS / f"{name}-failure.txt")
        except Exception as exc:  # the page may be gone: the log is still worth keeping
            print(f"could not save the page: {exc}")
        shutil.copy(lab.log, ARTIFACTS / f"{name}-jupyter-lab.log")
        saved.append(ARTIFACTS / f"{name}-jupyter-lab.log")
        print("failure artefacts:", *saved, sep="\n  ")
        raise


def _keep_screenshot(page, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=path)
    print(f"screenshot: {path}")
    return path


# ----------------------------------------------------------------------------- the page

def _panel(page):
    return page.locator(".jp-NotebookPanel:visible")


def _cells(page):
    return _panel(page).locator(".jp-Notebook .jp-Cell")


def _prompt(cell) -> str:
    return cell.locator(".jp-InputPrompt").inner_text().strip()


def _open(page, lab: Lab, notebook: str, n_cells: int) -> str:
    """Open a notebook and wait until every cell is in the DOM and its kernel is idle; returns the
    kernel's display name, checked against the kernelspec of the session the server started."""
    page.goto(lab.page_url(notebook))
    cells = _cells(page)
    cells.first.wait_for(timeout=KERNEL_IDLE_S * 1000)
    display_name = _course_kernel(lab, notebook)
    status = page.locator(".jp-StatusBar-TextItem", has_text=f"{display_name} | Idle")
    status.wait_for(timeout=KERNEL_IDLE_S * 1000)
    assert cells.count() == n_cells, (
        f"the page shows {cells.count()} cells of {notebook}, the file has {n_cells}: are cells windowed? "
        "(lab setting @jupyterlab/notebook-extension:tracker windowingMode should be 'none')"
    )
    shown = _panel(page).locator(".jp-Toolbar-kernelName").inner_text().strip()
    assert shown == display_name, f"the notebook's toolbar shows kernel {shown!r}, the session runs {display_name!r}"
    return display_name


def _course_kernel(lab: Lab, notebook: str) -> str:
    """Check that the notebook's session runs the course's Python (.venv), and return the kernel's
    display name. The kernelspec's argv[0] is "python", which the server replaces with its own
    sys.executable, and .venv/bin/python is a symlink to the base interpreter: so the check is on
    the live kernel's argv[0], whose *directory* must be .venv/bin (that is what makes sys.prefix
    the venv), not on the resolved file."""
    deadline = time.monotonic() + KERNEL_IDLE_S
    while not (sessions := [s for s in lab.api("sessions") if s["path"] == notebook and s.get("kernel")]):
        assert time.monotonic() < deadline, f"no kernel session for {notebook}: {lab.api('sessions')}"
        time.sleep(0.25)  # poll interval
    kernel = sessions[0]["kernel"]
    spec = lab.api("kernelspecs")["kernelspecs"][kernel["name"]]["spec"]
    python = Path(spec["argv"][0])
    assert python.name.startswith("python") and (not python.is_absolute() or python.parent == VENV / "bin"), (
        f"kernelspec {kernel['name']!r} runs {spec['argv']}: not the course's Python; the lab must find the "
        f"kernelspec in {VENV}/share/jupyter/kernels (is a user kernelspec shadowing it?)"
    )
    pids = _processes_mentioning(f"kernel-{kernel['id']}.json")
    assert pids, f"no process of kernel {kernel['id']} found in /proc"
    argv0 = (Path("/proc") / str(pids[0]) / "cmdline").read_bytes().split(b"\0")[0].decode()
    assert Path(argv0).parent.resolve() == (VENV / "bin").resolve(), (
        f"the kernel runs {argv0}, not {VENV / 'bin'}/python: its sys.prefix is not the course's venv "
        "(start jupyter from .venv/bin, as `make lab` does)"
    )
    return spec["display_name"]


def _run_menu(page, item: str) -> None:
    """Run -> item, from the menu bar, as a learner does."""
    page.locator(".lm-MenuBar-item", has_text=re.compile(r"^Run$")).click()
    label = page.locator(".lm-Menu-itemLabel", has_text=re.compile(f"^{re.escape(item)}$"))
    page.locator(".lm-Menu:visible .lm-Menu-item").filter(has=label).click()


def _wait_until_run(page, indices: list[int], timeout_s: float, above: dict[int, str] | None = None) -> None:
    """Wait until each code cell at `indices` shows an execution count and the kernel is idle.
    `above`: prompts seen before the run; those cells must show a new count."""
    page.wait_for_function(
        """([indices, before]) => {
            const panel = [...document.querySelectorAll('.jp-NotebookPanel')].find(p => p.offsetParent !== null);
            const cells = panel.querySelectorAll('.jp-Notebook .jp-Cell');
            const idle = panel.querySelector('.jp-Notebook-ExecutionIndicator[data-status="idle"]');
            return idle && indices.every(i => {
                if (!cells[i].classList.contains('jp-CodeCell')) return true;
                const p = cells[i].querySelector('.jp-InputPrompt').textContent.trim();
                return /^\\[\\d+\\]:$/.test(p) && p !== before[i];
            });
        }""",
        arg=[indices, above or {}], timeout=timeout_s * 1000, polling=250,  # leave the CPU to the kernel
    )


def _shift_enter(page, cell, timeout_s: float = CELL_S) -> None:
    """Select the cell by its prompt, press Shift+Enter, wait for its new execution count."""
    index = int(cell.get_attribute("data-windowed-list-index"))
    before = _prompt(cell)
    cell.locator(".jp-InputPrompt").click()
    page.keyboard.press("Shift+Enter")
    _wait_until_run(page, [index], timeout_s, above={index: before})


def _error_outputs(cell) -> list[str]:
    """Texts of the cell's tracebacks (JupyterLab renders an error as stderr text)."""
    texts = cell.locator('.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stderr"]').all_inner_texts()
    return [t for t in texts if ERROR_TEXT.search(t)]


def _wait_for_images(page, indices: list[int], timeout_s: float = 30) -> None:
    """Wait until each cell at `indices` shows an image and every image has decoded (a broken one
    never gets a natural width). On a timeout, return: the caller's assertion says what is missing."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    try:
        page.wait_for_function(
            """indices => {
                const panel = [...document.querySelectorAll('.jp-NotebookPanel')].find(p => p.offsetParent !== null);
                const cells = panel.querySelectorAll('.jp-Notebook .jp-Cell');
                return indices.every(i => {
                    const imgs = [...cells[i].querySelectorAll('.jp-OutputArea-output img')];
                    return imgs.length > 0 && imgs.every(img => img.complete && img.naturalWidth > 0);
                });
            }""",
            arg=indices, timeout=timeout_s * 1000, polling=250,
        )
    except PlaywrightTimeout:
        pass


def _editor_text(cell) -> str:
    return "\n".join(cell.locator(".cm-content .cm-line").all_text_contents())


def _type_into(page, cell, source: str) -> None:
    """Replace the cell's text as typed by a learner. insert_text inserts it in one input event,
    so CodeMirror neither auto-indents the new lines nor closes brackets."""
    cell.locator(".cm-content").click()
    page.keyboard.press("ControlOrMeta+a")
    page.keyboard.insert_text(source)
    shown = _editor_text(cell)
    assert shown == source, f"the editor holds other text than was typed:\n--- typed\n{source}\n--- shown\n{shown}"


# ----------------------------------------------------------------------------- the tests

@pytest.mark.slow
def test_a_stub_says_not_written_yet_and_a_typed_answer_passes(lab, page):
    aid = "02_attention"
    notebook = f"{aid}/{aid}.ipynb"
    nb = nbformat.read(lab.course / notebook, as_version=4)
    solution_at, visible_at = _index(nb, f"{SDPA}_solution"), _index(nb, f"{SDPA}_visible")
    assert visible_at == solution_at + 1, "the visible test should follow the exercise"
    assert "raise NotImplementedError()" in nb.cells[solution_at].source, "the course copy should hold the stub"

    with _artefacts_on_failure(page, lab, aid):
        _open(page, lab, notebook, len(nb.cells))
        cells = _cells(page)
        exercise, visible = cells.nth(solution_at), cells.nth(visible_at)

        # The learner's path: select the visible test, run everything above it, then the test.
        visible.locator(".jp-InputPrompt").click()
        _run_menu(page, "Run All Above Selected Cell")
        _wait_until_run(page, list(range(visible_at)), CELL_S)
        for i in range(visible_at):
            assert not _error_outputs(cells.nth(i)), f"cell {i} of {notebook} failed: {_error_outputs(cells.nth(i))}"
        _shift_enter(page, visible)
        errors = _error_outputs(visible)
        assert any(NOT_WRITTEN in e for e in errors), (
            f"the stub's visible test should fail with {NOT_WRITTEN!r} (deepdive.feedback.call), but shows "
            f"errors {errors} and outputs {visible.locator('.jp-OutputArea').inner_text()!r}"
        )

        # A correct answer typed into the exercise passes the visible test.
        _type_into(page, exercise, _solutions(aid)[f"{SDPA}_solution"])
        _shift_enter(page, exercise)
        assert not _error_outputs(exercise), f"the typed answer failed to run: {_error_outputs(exercise)}"
        _shift_enter(page, visible)
        output = visible.locator(".jp-OutputArea").inner_text()
        assert PASSED in output and not _error_outputs(visible), (
            f"after a correct answer the visible test should print {PASSED!r}; it shows {output!r}"
        )
        visible.locator(".jp-OutputArea").scroll_into_view_if_needed()
        _keep_screenshot(page, f"{aid}-visible-test-passed")


@pytest.mark.slow
def test_the_plots_of_a_finished_notebook_render_as_images(lab, page):
    aid = PLOTS_AID
    notebook = f"{aid}/{aid}.ipynb"
    nb = nbformat.read(lab.course / notebook, as_version=4)  # the finished copy (fixture `lab`)
    figures = _figure_cells(nb)
    assert figures, f"no cell of {notebook} calls plt.show(): update this test's _figure_cells"
    code = [i for i, c in enumerate(nb.cells) if c.cell_type == "code"]

    with _artefacts_on_failure(page, lab, aid):
        _open(page, lab, notebook, len(nb.cells))
        _run_menu(page, "Run All Cells")
        _wait_until_run(page, code, RUN_ALL_S)
        cells = _cells(page)
        errors = {i: _error_outputs(cells.nth(i)) for i in code if _error_outputs(cells.nth(i))}
        assert not errors, f"cells of the finished {notebook} failed in JupyterLab: {errors}"

        _wait_for_images(page, figures)
        widths = {i: cells.nth(i).locator(".jp-OutputArea-output img").evaluate_all(
            "imgs => imgs.map(img => img.naturalWidth)") for i in figures}
        assert all(w and all(x > 0 for x in w) for w in widths.values()), (
            f"each figure cell of {notebook} should show decoded images; natural widths by cell: {widths} "
            "(no image at all: is MPLBACKEND set to a non-inline backend? width 0: a broken image)"
        )
        images = _panel(page).locator(".jp-OutputArea-output img")
        assert images.count() >= len(figures), f"{images.count()} images for {len(figures)} figure cells"
        cells.nth(figures[-1]).locator(".jp-OutputArea-output img").first.scroll_into_view_if_needed()
        _keep_screenshot(page, f"{aid}-plots")


# ----------------------------------------------------------------------------- the instructor's formgrader

WRITTEN_AID = "04_positional_encoding"  # a module with a hand-graded answer cell (grader/manual.py)
WRITTEN_ID = "positions_report_answer"
ANSWER = ("Within the training length every scheme with positions is near 1.0, so the learned table is enough. "
          "Beyond it the learned rows were never trained and fall to chance; RoPE degrades least.")
COMMENT = "Good reading of the table; say which row shows the untrained positions."
FORMGRADER_SAVE_S = 30


@pytest.fixture(scope="module")
def formgrader(tmp_path_factory):
    """A graded batch of module 04 and nbgrader's formgrader on it, started as `make formgrader` starts it
    (grader.manual: the run's folder made a course, the Jupyter server run from it), with every Jupyter
    state directory in tmp. Two learners: `ada` wrote the report (her code exercises are the release's
    stubs, so the notebook grades in seconds), `bob` handed in the release untouched."""
    from grader.manual import formgrader_command, prepare_formgrader

    tmp = tmp_path_factory.mktemp("formgrader")
    subs, out = tmp / "submitted", tmp / "out"
    release = nbformat.read(ROOT / "course" / WRITTEN_AID / f"{WRITTEN_AID}.ipynb", as_version=4)
    for student, text in (("ada", ANSWER), ("bob", None)):
        nb = nbformat.from_dict(json.loads(json.dumps(release)))
        if text:
            nb.cells[_index(nb, WRITTEN_ID)].source = text
        (subs / student / WRITTEN_AID).mkdir(parents=True)
        nbformat.write(nb, subs / student / WRITTEN_AID / f"{WRITTEN_AID}.ipynb")
    graded = subprocess.run([str(VENV / "bin" / "python"), "-m", "grader.grade", str(subs), str(out), "--workers", "2"],
                            cwd=ROOT, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert graded.returncode == 0, f"grading the batch failed:\n{graded.stdout[-2000:]}\n{graded.stderr[-3000:]}"
    prepare_formgrader(out)
    env = _isolated_env(tmp / "jupyter")
    port, token = _free_port(), secrets.token_hex(16)
    cmd = formgrader_command(out, port, ["--no-browser", "--ServerApp.ip=127.0.0.1", f"--IdentityProvider.token={token}"])
    with _serving(cmd, out, env, tmp / "formgrader.log", port, token) as server:
        yield server


def _grades_row(out: Path, student: str) -> dict:
    import csv

    with (out / "grades.csv").open(newline="") as f:
        return next(r for r in csv.DictReader(f) if r["student_id"] == student and r["assignment"] == WRITTEN_AID)


def _hand_grade(out: Path, student: str):
    """(manual score, manual comment) of the answer cell in the run's gradebook."""
    from nbgrader.api import Gradebook

    with Gradebook(f"sqlite:///{out / 'gradebook.db'}") as gb:
        grade = gb.find_grade(WRITTEN_ID, WRITTEN_AID, WRITTEN_AID, student)
        comment = gb.find_comment(WRITTEN_ID, WRITTEN_AID, WRITTEN_AID, student)
        return grade.manual_score, comment.manual_comment


def test_an_instructor_grades_a_written_answer_in_the_formgrader(formgrader, browser):
    """The instructor's path of issue 30 in a real browser: Manage Assignments lists the graded module,
    the submission's page shows the learner's answer with the rubric under it, a score and a comment
    typed into the formgrader reach the gradebook, and `make grades` (python -m grader.manual grades)
    puts them into grades.csv and the learner's feedback page, without the rubric."""
    out = formgrader.course
    before = {s: _grades_row(out, s) for s in ("ada", "bob")}
    assert before["ada"]["needs_manual_grade"] == "True" and "waiting for hand-grading: positions_report_answer" in (
        before["ada"]["message"]), before["ada"]
    assert before["bob"]["needs_manual_grade"] == "False" and "not written: positions_report_answer" in (
        before["bob"]["message"]), before["bob"]
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    context.set_default_timeout(30_000)
    page = context.new_page()
    try:
        with _artefacts_on_failure(page, formgrader, "formgrader"):
            page.goto(f"{formgrader.url}/formgrader/manage_assignments?token={formgrader.token}")
            page.locator("#main-table").get_by_text(WRITTEN_AID).first.wait_for()
            submissions = formgrader.api_formgrader(f"submitted_notebooks/{WRITTEN_AID}/{WRITTEN_AID}")
            ada = next(s for s in submissions if s["student"] == "ada")
            assert ada["needs_manual_grade"], ada
            page.goto(f"{formgrader.url}/formgrader/submissions/{ada['id']}/?token={formgrader.token}")
            page.get_by_text(ANSWER[:60]).wait_for()
            page.get_by_text("For the grader, not the learner").wait_for()
            text = page.inner_text("body")
            where = [text.find(part) for part in (ANSWER[:60], "For the grader, not the learner", f"Rubric: {WRITTEN_ID}")]
            assert -1 not in where and where == sorted(where), (
                f"expected the learner's answer, then the rubric under it; found at {where}")
            score = page.locator(f"input#{WRITTEN_ID}")
            score.fill("2.5")
            score.press("Tab")
            comment = page.locator(f"textarea#{WRITTEN_ID}-comment")
            comment.fill(COMMENT)
            comment.press("Tab")
            deadline = time.monotonic() + FORMGRADER_SAVE_S
            while _hand_grade(out, "ada") != (2.5, COMMENT):
                assert time.monotonic() < deadline, f"the formgrader did not save within {FORMGRADER_SAVE_S} s: " \
                                                    f"{_hand_grade(out, 'ada')}"
                time.sleep(0.25)  # poll interval: the page saves on its own
            _keep_screenshot(page, "formgrader")
    finally:
        context.close()
    done = subprocess.run([str(VENV / "bin" / "python"), "-m", "grader.manual", "grades", str(out)], cwd=ROOT,
                          capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stderr[-3000:]
    after = {s: _grades_row(out, s) for s in ("ada", "bob")}
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / "formgrader-grades.txt").write_text(
        "".join(f"{when} {s}: {row}\n" for when, rows in (("before", before), ("after", after)) for s, row in rows.items()))
    print(f"grades.csv before and after: {ARTIFACTS / 'formgrader-grades.txt'}")
    assert float(after["ada"]["score"]) == float(before["ada"]["score"]) + 2.5, (before["ada"], after["ada"])
    assert after["ada"]["needs_manual_grade"] == "False", after["ada"]
    assert "graded by hand: positions_report_answer 2.5/3" in after["ada"]["message"], after["ada"]
    assert "waiting for hand-grading" not in after["ada"]["message"], after["ada"]
    assert after["bob"] == before["bob"] | {"score": after["bob"]["score"]} and float(after["bob"]["score"]) == 0.0
    page_html = (out / "feedback" / "ada" / WRITTEN_AID / f"{WRITTEN_AID}.html").read_text()
    assert COMMENT in page_html and "2.5 / 3.0" in page_html, "the feedback page lacks the hand grade or comment"
    assert "For the grader" not in page_html and "Rubric:" not in page_html, "the rubric reached the feedback page"
