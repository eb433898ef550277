"""Every student kernel in a sandbox of its own (bubblewrap), so that a submission can neither read
past its own folder nor break the grading run.

nbgrader starts a notebook's kernel from a kernel spec. `make grade` gives it this one
(`deepdive-sandbox`, written by `write_kernelspec`), whose command is this module: it runs as the
grader for a moment, just before the kernel, and replaces itself with

    bwrap <a new mount, PID, network, IPC and UTS namespace> [setpriv <another uid>] prlimit <limits>
          python -m ipykernel_launcher -f <connection file>

What the kernel then sees and may do:
- **Files**: a root of its own, read-only: the system (/usr, /etc), the Python environment, and of
  this repository only `deepdive/`, `data/` and the part of `grader/` the hidden cells import
  (`grader/trusted.py`, `grader/checks/`). Writable: its own notebook folder (the current
  directory), its records folder (where the checks write what the learner's code returned) and a
  scratch home; /tmp is empty and private. The gradebook, `solutions/`, the instructor zip, the
  mutants, other submissions, the grading run's output and the grader's temporary folders are not
  in its root at all.
- **Processes**: its own PID namespace (it sees its own processes only, so it cannot signal the
  grader's) and no controlling terminal (`--new-session`). When the grader kills the kernel,
  bubblewrap's child dies with it, and everything it started with it.
- **Network**: a namespace with only its own loopback (torchrun's gloo still works inside), so no
  connection leaves it; the kernel talks to nbgrader over Unix sockets in its own folder.
- **Identity**: run as root (a CI machine, a grading server), the kernel drops to a uid of its own
  (`setpriv`, every capability dropped): it reads only world-readable files in what is mounted
  and writes only the folders handed to it. Run as another user, bubblewrap maps that user to
  "nobody" in a user namespace: the same mounts, with that user's permissions on them.
- **Limits** (`prlimit`, set inside the sandbox so that they count its processes only): memory
  (address space, default 8 GiB: `DEEPDIVE_SANDBOX_MEMORY` in GiB or `--sandbox-memory`),
  processes and threads (default 512), the size of one written file (1 GiB) and open files.

`make grade` refuses to run without a working sandbox (`check()` says why and what to do) unless
the instructor passes `--no-sandbox`.
"""

import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
KERNEL_NAME = "deepdive-sandbox"
SPEC_ENV = "DEEPDIVE_SANDBOX"
MEMORY_ENV = "DEEPDIVE_SANDBOX_MEMORY"
GIB = 2**30
DEFAULT_MEMORY_GIB = 8.0
PROCESSES = 512
FILE_BYTES = GIB
OPEN_FILES = 4096
SANDBOX_UID = 64000  # + a per-kernel offset (root only): sandboxes of one run never share a uid
# What a hidden cell imports from this repository; everything else of grader/ stays outside.
REPO_READABLE = ("deepdive", "data", "grader/__init__.py", "grader/trusted.py", "grader/checks")
# The kernel's environment: these names, and names with these prefixes, from the grader's.
ENV_NAMES = {"PATH", "PYTHONPATH", "PYTHONHASHSEED", "LANG", "LANGUAGE", "TZ", "CUDA_VISIBLE_DEVICES",
             "JPY_SESSION_NAME", "MPLBACKEND", "TERM"}
ENV_PREFIXES = ("DEEPDIVE_", "HF_", "TRANSFORMERS_", "OMP_", "MKL_", "OPENBLAS_", "LC_", "TORCH", "TOKENIZERS_")


class SandboxUnavailable(RuntimeError):
    """The sandbox cannot be set up on this machine; the message says why and what to do."""


def memory_bytes(gib: float | None = None) -> int:
    if gib is None:
        gib = float(os.environ.get(MEMORY_ENV) or DEFAULT_MEMORY_GIB)
    if gib <= 0:
        raise ValueError(f"the sandbox's memory limit must be positive, not {gib} GiB")
    return int(gib * GIB)


# ----------------------------------------------------------------------------- the grader's side

def write_kernelspec(folder: Path) -> Path:
    """A Jupyter data folder holding the `deepdive-sandbox` kernel spec (put it on JUPYTER_PATH).
    Interrupts go as messages: a signal to the kernel's process would reach bubblewrap, not
    Python."""
    spec = folder / "kernels" / KERNEL_NAME
    spec.mkdir(parents=True, exist_ok=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "grader.sandbox", "{connection_file}"],
        "display_name": "Python 3 (graded, sandboxed)", "language": "python", "interrupt_mode": "message",
    }, indent=1))
    return folder


def kernel_settings(folder: Path, records: Path, memory: int, jupyter_path: Path) -> tuple[dict, dict]:
    """nbgrader configuration and environment that make its kernels start in the sandbox. `folder`
    (new, private to one notebook) holds the connection file, the kernel's sockets and its home."""
    folder.mkdir(parents=True, exist_ok=True)
    config = {"Execute.kernel_name": KERNEL_NAME, "KernelManager.transport": "ipc",
              "KernelManager.ip": str(folder / "kernel"), "KernelManager.connection_file": str(folder / "kernel.json")}
    env = {"JUPYTER_PATH": str(jupyter_path), "JUPYTER_RUNTIME_DIR": str(folder),
           SPEC_ENV: json.dumps({"rw": [str(folder), str(records)], "memory": memory})}
    return config, env


def _probe_argv(memory: int, torch: bool) -> list[str]:
    code = "import torch" if torch else "pass"
    return bwrap_argv({"rw": [], "memory": memory}, cwd=None, command=[sys.executable, "-c", code])


@cache
def check(memory: int | None = None, torch: bool = True) -> None:
    """Raise SandboxUnavailable unless a sandboxed Python can start here (and, with `torch`, import
    torch within the memory limit: what a grading worker checks; the dispatcher checks only the
    sandbox, in a tenth of a second)."""
    if shutil.which("bwrap") is None:
        raise SandboxUnavailable(
            "bubblewrap (bwrap) is not installed, so student kernels cannot be sandboxed. Install it "
            "(Debian/Ubuntu: `sudo apt-get install bubblewrap`; `make` does it when run as root), or grade "
            "without a sandbox with --no-sandbox (NOBOX=1 for make grade) if you trust every submission")
    if os.geteuid() == 0:  # the kernel reads the repository as a uid of its own
        hidden = [str(p.relative_to(ROOT)) for rel in REPO_READABLE for p in _tree(ROOT / rel)
                  if not p.stat().st_mode & (0o005 if p.is_dir() else 0o004)]
        if hidden:
            raise SandboxUnavailable(
                f"{len(hidden)} file(s) the graded kernels must read are readable by their owner only "
                f"({', '.join(hidden[:3])}{', ...' if len(hidden) > 3 else ''}); make them readable: "
                f"chmod -R a+rX {' '.join(REPO_READABLE)}")
    for tool in ("prlimit", "setpriv"):
        if shutil.which(tool) is None:
            raise SandboxUnavailable(f"`{tool}` (util-linux) is not installed; it sets the sandbox's limits")
    try:
        proc = subprocess.run(_probe_argv(memory or memory_bytes(), torch), capture_output=True, text=True, timeout=120,
                              env=kernel_env(dict(os.environ), home="/tmp"))
    except subprocess.TimeoutExpired:
        raise SandboxUnavailable("a sandboxed Python did not start within 120 s") from None
    if proc.returncode != 0:
        raise SandboxUnavailable(
            "bubblewrap cannot create a sandbox here:\n  " + (proc.stderr.strip()[-600:] or f"exit {proc.returncode}")
            + "\nUnprivileged user namespaces may be disabled (sysctl kernel.unprivileged_userns_clone=1, or "
            "kernel.apparmor_restrict_unprivileged_userns=0 on Ubuntu 24.04), or the container forbids them: "
            "run the grader as root there, or pass --no-sandbox if you trust every submission")


def _tree(path: Path) -> list[Path]:
    if not path.exists():
        return []
    return [path, *path.rglob("*")] if path.is_dir() else [path]


# ----------------------------------------------------------------------------- the launcher's side

def kernel_env(env: dict, home: str) -> dict:
    keep = {k: v for k, v in env.items() if k in ENV_NAMES or k.startswith(ENV_PREFIXES)}
    keep.pop(SPEC_ENV, None)
    return {**keep, "HOME": home, "TMPDIR": "/tmp", "MPLCONFIGDIR": f"{home}/.matplotlib",
            "HF_HUB_OFFLINE": "1", "HF_HOME": f"{home}/.cache/huggingface"}


def _python_dirs() -> list[str]:
    dirs = {sys.prefix, sys.base_prefix, sys.exec_prefix, os.path.dirname(os.path.realpath(sys.executable))}
    dirs = {d for d in dirs if d and d != "/usr" and not d.startswith(("/usr/", "/etc/"))}
    return sorted(d for d in dirs if not any(d.startswith(other + "/") for other in dirs))


HOSTNAME = "sandbox"
HOSTS = f"127.0.0.1\tlocalhost {HOSTNAME}\n::1\tlocalhost ip6-localhost ip6-loopback {HOSTNAME}\n"


def _hosts_file() -> str:
    """The sandbox's /etc/hosts, written once per machine and user into the temporary folder."""
    path = Path(tempfile.gettempdir()) / f"deepdive-sandbox-hosts-{os.geteuid()}"
    if not path.exists() or path.read_text() != HOSTS:
        tmp = path.with_name(f"{path.name}.{os.getpid()}")
        tmp.write_text(HOSTS)
        tmp.chmod(0o644)
        os.replace(tmp, path)
    return str(path)


def bwrap_argv(spec: dict, cwd: str | None, command: list[str], uid: int | None = None) -> list[str]:
    """The command line that runs `command` in the sandbox `spec` describes."""
    argv = ["bwrap", "--unshare-pid", "--unshare-net", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try",
            "--die-with-parent", "--new-session", "--hostname", HOSTNAME,
            "--ro-bind", "/usr", "/usr", "--ro-bind", "/etc", "/etc"]
    for link in ("bin", "sbin", "lib", "lib64", "lib32", "libx32"):
        target = os.path.join("/", link)
        if os.path.islink(target):
            argv += ["--symlink", os.readlink(target), target]
        elif os.path.isdir(target):
            argv += ["--ro-bind", target, target]
    # Its hostname resolves to its own loopback (torchrun's rendezvous looks it up; there is no DNS)
    argv += ["--ro-bind", _hosts_file(), "/etc/hosts"]
    argv += ["--proc", "/proc", "--dev", "/dev", "--perms", "1777", "--tmpfs", "/tmp", "--tmpfs", "/run"]
    binds = [("--ro-bind", d) for d in _python_dirs()]
    binds += [("--ro-bind", str(ROOT / rel)) for rel in REPO_READABLE if (ROOT / rel).exists()]
    binds += [("--bind", d) for d in [*spec["rw"], *([cwd] if cwd else [])]]
    # bubblewrap makes a bind's missing parents private (0700); the kernel's uid must pass through them
    parents = {str(p) for _, d in binds for p in Path(d).parents if str(p) not in ("/", "/tmp", "/run")}
    for p in sorted(parents, key=lambda p: p.count("/")):
        argv += ["--perms", "0755", "--dir", p]
    for flag, d in binds:
        argv += [flag, d, d]
    if cwd:
        argv += ["--chdir", cwd]
    root = os.geteuid() == 0
    if not root:
        argv += ["--unshare-user", "--uid", "65534", "--gid", "65534"]
    argv += ["--"]
    if root:  # a real uid of its own: reads only what anyone may read, writes only its folders
        uid = uid or SANDBOX_UID
        argv += ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "--inh-caps=-all",
                 "--bounding-set=-all", "--no-new-privs", "--"]
    limits = {"as": (resource.RLIMIT_AS, int(spec["memory"])), "nproc": (resource.RLIMIT_NPROC, PROCESSES),
              "fsize": (resource.RLIMIT_FSIZE, FILE_BYTES), "nofile": (resource.RLIMIT_NOFILE, OPEN_FILES)}
    argv += ["prlimit", "--core=0"]
    for name, (which, value) in limits.items():
        hard = resource.getrlimit(which)[1]  # never above what this machine already allows
        argv.append(f"--{name}={value if hard == resource.RLIM_INFINITY else min(value, hard)}")
    return argv + ["--", *command]


def _hand_over(paths: list[str], uid: int) -> None:
    """Root only: the sandbox's uid owns its writable folders (and what nbgrader put there)."""
    for top in paths:
        os.chown(top, uid, uid)
        for base, dirs, files in os.walk(top):
            for name in dirs + files:
                os.chown(os.path.join(base, name), uid, uid, follow_symlinks=False)


def _free_uid() -> int:
    """A uid no running process has, so that a sandbox's process limit counts its own processes only."""
    used = set()
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            used.update(int(u) for u in next(ln for ln in status.read_text().splitlines() if ln.startswith("Uid:")).split()[1:])
        except (OSError, StopIteration, ValueError):
            continue
    uid = SANDBOX_UID + os.getpid() % 1000
    while uid in used:
        uid += 1
    return uid


def launch(connection_file: str) -> None:
    """The kernel spec's command: start the kernel for `connection_file` in the sandbox."""
    spec = json.loads(os.environ[SPEC_ENV])
    cwd = os.getcwd()
    folder = os.path.dirname(os.path.abspath(connection_file))
    home = os.path.join(folder, "home")
    os.makedirs(home, exist_ok=True)
    uid = None
    if os.geteuid() == 0:
        uid = _free_uid()
        _hand_over([cwd, *spec["rw"]], uid)
        os.chmod(connection_file, 0o400)  # the kernel reads it as its own uid
        os.chown(connection_file, uid, uid)
    command = [sys.executable, "-m", "ipykernel_launcher", "-f", connection_file]
    os.execvpe("bwrap", bwrap_argv(spec, cwd, command, uid), kernel_env(dict(os.environ), home))


if __name__ == "__main__":
    launch(sys.argv[1])
