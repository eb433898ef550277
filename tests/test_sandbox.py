"""The sandbox every graded kernel runs in (grader/sandbox.py), seen from inside: what it can read,
write, reach and spend. The whole batch of hostile submissions is graded in tests/test_grading.py;
these are the same walls, each on its own, in a second or so."""

import json
import os
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from grader import sandbox
from grader.assignments import ROOT
from grader.grade import _trusted_or_flagged
from grader.task import Row


def run_inside(code: str, tmp_path, memory_gib: float = 2.0, env: dict | None = None) -> dict:
    """Run `code` (which sets `result`) in the sandbox, with tmp_path/work as its writable folder."""
    work = tmp_path / "work"
    work.mkdir(exist_ok=True)
    if os.geteuid() == 0:
        os.chown(work, sandbox.SANDBOX_UID, sandbox.SANDBOX_UID)
    program = "import json\n" + textwrap.dedent(code) + "\nprint('RESULT' + json.dumps(result))\n"
    argv = sandbox.bwrap_argv({"rw": [str(work)], "memory": int(memory_gib * sandbox.GIB)}, cwd=str(work),
                              command=[sys.executable, "-c", program])
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=120,
                          env=sandbox.kernel_env({**os.environ, **(env or {})}, home=str(work)))
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.split("RESULT", 1)[1])


def test_it_sees_only_what_the_hidden_cells_need(tmp_path):
    seen = run_inside(f"""
        import os
        result = {{"repo": sorted(os.listdir({str(ROOT)!r})), "grader": sorted(os.listdir({str(ROOT / 'grader')!r})),
                   "tmp": os.listdir("/tmp"), "cwd": os.getcwd(), "uid": os.getuid(),
                   "pids": [p for p in os.listdir("/proc") if p.isdigit()]}}
    """, tmp_path)
    assert set(seen["repo"]) <= {".venv", "data", "deepdive", "grader"}, seen["repo"]
    assert "solutions" not in seen["repo"] and "dist" not in seen["repo"]
    assert sorted(seen["grader"]) == ["__init__.py", "checks", "trusted.py"]
    work = tmp_path / "work"
    # /tmp holds only the way to what is bound: its own folder, and the repository or Python if they live there
    ways = {p.relative_to("/tmp").parts[0] for p in (work, ROOT, Path(sys.prefix)) if p.is_relative_to("/tmp")}
    assert sorted(seen["tmp"]) == sorted(ways) and seen["cwd"] == str(work)
    assert seen["uid"] != os.getuid() or os.getuid() != 0
    assert len(seen["pids"]) <= 3, f"the sandbox sees other processes: {seen['pids']}"


def test_it_writes_only_its_own_folder(tmp_path):
    probe = tmp_path / "outside.txt"
    seen = run_inside(f"""
        result = {{}}
        for name, path in {{"own": "mine.txt", "deepdive": {str(ROOT / 'deepdive' / 'x.txt')!r},
                            "checks": {str(ROOT / 'grader' / 'checks' / 'x.py')!r}, "outside": {str(probe)!r}}}.items():
            try:
                open(path, "w").write("x")
                result[name] = "written"
            except OSError as exc:
                result[name] = exc.strerror
    """, tmp_path)
    assert seen["own"] == "written" and (tmp_path / "work" / "mine.txt").exists()
    assert all(seen[k] != "written" for k in ("deepdive", "checks", "outside")), seen
    assert not probe.exists() and not (ROOT / "deepdive" / "x.txt").exists()


def test_no_connection_leaves_it(tmp_path):
    server = socket.create_server(("127.0.0.1", 0))
    got = []
    threading.Thread(target=lambda: got.append(server.accept()), daemon=True).start()
    seen = run_inside(f"""
        import socket
        try:
            socket.create_connection(("127.0.0.1", {server.getsockname()[1]}), timeout=2).sendall(b"x")
            result = "connected"
        except OSError as exc:
            result = type(exc).__name__
    """, tmp_path)
    server.close()
    assert seen != "connected" and got == []


def test_the_environment_keeps_no_secret_of_the_grader(tmp_path):
    seen = run_inside("import os\nresult = dict(os.environ)", tmp_path,
                      env={"AWS_SECRET_ACCESS_KEY": "s3cr3t", "DEEPDIVE_DEVICE": "cpu"})
    assert "AWS_SECRET_ACCESS_KEY" not in seen and seen["DEEPDIVE_DEVICE"] == "cpu"
    assert seen["HOME"] == str(tmp_path / "work") and seen["HF_HUB_OFFLINE"] == "1"


def test_memory_and_processes_are_limited(tmp_path):
    seen = run_inside("""
        import os, time
        hog, forked = [], 0
        try:
            while True:
                hog.append(b"1" * 2**27)
        except MemoryError:
            pass
        mib = len(hog) * 128
        del hog
        try:
            while True:
                if os.fork() == 0:
                    time.sleep(60)
                    os._exit(0)
                forked += 1
        except OSError:
            pass
        result = {"mib": mib, "forked": forked}
    """, tmp_path, memory_gib=1.0)
    assert 0 < seen["mib"] <= 1024, seen
    assert 0 < seen["forked"] < sandbox.PROCESSES, seen


def test_grading_refuses_without_a_sandbox_and_says_what_to_do(tmp_path):
    (tmp_path / "subs" / "alice" / "02_attention").mkdir(parents=True)
    env = {**os.environ, "PATH": os.path.dirname(sys.executable)}  # no /usr/bin: no bwrap
    proc = subprocess.run([sys.executable, "-m", "grader.grade", str(tmp_path / "subs"), str(tmp_path / "out")],
                          cwd=ROOT, capture_output=True, text=True, env=env)
    assert proc.returncode == 2, proc
    assert "bubblewrap" in proc.stderr and "--no-sandbox" in proc.stderr, proc.stderr
    assert not (tmp_path / "out" / "grades.csv").exists()


@pytest.mark.parametrize("change,flagged", [
    (None, False),
    (("a_hidden", 999.0), True),   # above the cell's maximum
    (("a_hidden", -1.0), True),    # below zero
    (("b_hidden", 2.0), True),     # possible, but not what the grader judged
])
def test_impossible_or_altered_gradebook_scores_are_flagged_not_trusted(change, flagged):
    verdicts = [{"grade_id": "a_hidden", "score": 3.0, "points": 3.0}, {"grade_id": "b_hidden", "score": 0.0, "points": 2.0}]
    grades = {"a_hidden": [3.0, 3.0], "b_hidden": [0.0, 2.0]}
    if change:
        grades[change[0]][0] = change[1]
    row = Row("s", "02_attention", score=sum(g[0] for g in grades.values()), max_score=5.0, verdicts=verdicts)
    cells = _trusted_or_flagged(row, [(k, *v) for k, v in grades.items()])
    assert (row.status == "flagged") == flagged, row
    assert row.score == 3.0 and cells == [("a_hidden", 3.0, 3.0), ("b_hidden", 0.0, 2.0)]
    if flagged:
        assert "not trusted" in row.notes[-1]


def test_killing_the_sandbox_kills_everything_in_it(tmp_path):
    """A grading run that dies (or kills a kernel at its cap) leaves no student process behind:
    every process of the sandbox goes when bubblewrap goes, even ones that dropped to another uid."""
    marker = f"sandbox-orphan-{os.getpid()}"
    program = f"import time\ntime.sleep(300)  # {marker}"
    argv = sandbox.bwrap_argv({"rw": [], "memory": 2 * sandbox.GIB}, cwd=None, command=[sys.executable, "-c", program])
    proc = subprocess.Popen(argv, env=sandbox.kernel_env(dict(os.environ), home="/tmp"))

    def inside() -> list[str]:
        found = []
        for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
            try:
                text = cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if marker in text and not text.startswith("bwrap"):
                found.append(text)
        return found

    deadline = time.monotonic() + 30
    while not inside() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert inside(), "the sandboxed process never started"
    proc.kill()
    proc.wait()
    deadline = time.monotonic() + 10
    while inside() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not inside(), f"left running after bubblewrap was killed: {inside()}"


def test_torchrun_finds_its_own_host_inside(tmp_path):
    """Module 09 runs `torchrun --nproc_per_node=2`: its rendezvous looks up the sandbox's hostname,
    which must resolve to the sandbox's own loopback (there is no DNS and no other interface)."""
    seen = run_inside("""
        import os, socket, subprocess, sys
        # each rank writes its own file: two ranks printing to one pipe interleave their characters
        open("ddp.py", "w").write("import torch.distributed as d\\nd.init_process_group('gloo')\\n"
                                  "r, n = d.get_rank(), d.get_world_size()\\n"
                                  "open(f'rank{r}.txt', 'w').write(f'rank {r} of {n}')\\nd.destroy_process_group()\\n")
        proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "ddp.py"],
                              capture_output=True, text=True, timeout=60)
        ranks = sorted(open(f).read() for f in ("rank0.txt", "rank1.txt") if os.path.exists(f))
        result = {"host": socket.gethostbyname(socket.gethostname()), "rc": proc.returncode, "ranks": ranks,
                  "err": proc.stderr[-2000:]}
    """, tmp_path, memory_gib=8.0)
    assert seen["host"] == "127.0.0.1"
    assert seen["rc"] == 0 and seen["ranks"] == ["rank 0 of 2", "rank 1 of 2"], seen


@pytest.mark.skipif(os.geteuid() != 0, reason="as another user the kernel keeps that user's permissions")
def test_a_file_the_kernel_could_not_read_is_named_before_grading(tmp_path, monkeypatch):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "model.safetensors").write_bytes(b"weights")
    (tmp_path / "data" / "model.safetensors").chmod(0o600)  # what save_pretrained writes
    monkeypatch.setattr(sandbox, "ROOT", tmp_path)
    monkeypatch.setattr(sandbox, "REPO_READABLE", ("data",))
    with pytest.raises(sandbox.SandboxUnavailable, match=r"data/model\.safetensors.*chmod -R a\+rX data"):
        sandbox.check.__wrapped__(sandbox.GIB, torch=False)
    (tmp_path / "data" / "model.safetensors").chmod(0o644)
    sandbox.check.__wrapped__(sandbox.GIB, torch=False)
