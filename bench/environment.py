"""The interpreters the benchmark runs, and what is installed in them.

embcli runs from a fresh virtual environment built with `pip install .` of this checkout,
as a user gets it, so that the versions measured are the ones users install. It is cached
under bench/work/ in a folder named after the checkout's embcli/ tree and pyproject.toml
(and any uncommitted change to embcli/), and rebuilt when those change.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from measure import remove

EMBCLI_PACKAGES = ("embcli", "numpy", "h5py", "ml_dtypes", "click")
KERAS_PACKAGES = ("keras", "tensorflow", "numpy", "h5py")
COMPLETE_MARKER = ".bench-complete"

# Prints, as JSON, the interpreter's Python version, where embcli would be imported from
# (without importing it) and the installed versions of the packages named in argv.
PROBE_SCRIPT = """\
import json, platform, sys
from importlib import metadata, util
versions = {}
for name in sys.argv[1:]:
    try:
        versions[name] = metadata.version(name)
    except metadata.PackageNotFoundError:
        versions[name] = None
spec = util.find_spec("embcli")
print(json.dumps({"python": platform.python_version(), "executable": sys.executable,
                  "embcli_from": spec.origin if spec else None, "versions": versions}))
"""


@dataclass
class Interpreter:
    """A Python to run one side of the benchmark with, and the environment to give it."""

    python: str
    env: dict[str, str]
    origin: str
    python_version: str = "?"
    versions: dict[str, str | None] | None = None
    embcli_from: str | None = None
    venv: Path | None = None

    def probe(self, packages: tuple[str, ...]) -> Interpreter:
        """Fill in the Python and package versions this interpreter has."""
        found = subprocess.run(
            [self.python, "-c", PROBE_SCRIPT, *packages],
            env=self.env,
            capture_output=True,
            text=True,
        )
        if found.returncode != 0:
            raise SystemExit(f"{self.python} could not be probed:\n{found.stderr[-1000:]}")
        data = json.loads(found.stdout)
        self.python_version = data["python"]
        self.versions = data["versions"]
        self.embcli_from = data["embcli_from"]
        if self.venv is not None and not str(self.embcli_from).startswith(str(self.venv)):
            raise SystemExit(f"{self.python} imports embcli from {self.embcli_from}, not its venv")
        return self

    def record(self) -> dict:
        return {
            "python": self.python,
            "origin": self.origin,
            "python_version": self.python_version,
            "versions": self.versions,
            "embcli_from": self.embcli_from,
        }

    def versions_line(self) -> str:
        installed = ", ".join(f"{k} {v}" for k, v in (self.versions or {}).items() if v)
        return f"Python {self.python_version}; {installed}"


def git(repo: Path, *args: str) -> str:
    found = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True)
    return found.stdout.strip() if found.returncode == 0 else ""


def source_key(repo: Path) -> str:
    """Names what `pip install .` of `repo` installs: the committed embcli/ (its git tree,
    so that commits elsewhere keep the venv), a hash of pyproject.toml, and a hash of
    uncommitted changes under embcli/ when there are any."""
    tree = git(repo, "rev-parse", "--short=12", "HEAD:embcli") or "nogit"
    pyproject = hashlib.sha256((repo / "pyproject.toml").read_bytes()).hexdigest()[:12]
    key = f"{tree}-{pyproject}"
    changes = git(repo, "status", "--porcelain", "--untracked-files=all", "--", "embcli")
    if changes:
        digest = hashlib.sha256(git(repo, "diff", "HEAD", "--", "embcli").encode())
        for line in sorted(changes.splitlines()):
            path = repo / line[3:]
            digest.update(line.encode())
            if path.is_file():
                digest.update(path.read_bytes())
        key += f"-dirty{digest.hexdigest()[:8]}"
    return key


def clean_env(base: dict[str, str]) -> dict[str, str]:
    """`base` without what would make a venv's Python import another copy of embcli."""
    env = dict(base)
    for name in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "PYTHONUSERBASE"):
        env.pop(name, None)
    env["PYTHONNOUSERSITE"] = "1"
    env["PYTHONSAFEPATH"] = "1"  # `-m` and `-c` must not import embcli from the cwd
    return env


def fresh_venv(repo: Path, work: Path, base: dict[str, str]) -> Interpreter:
    """The venv for this checkout under `work`, built with `pip install .` if missing.

    Venvs built for earlier states of the checkout are removed when a new one is built.
    """
    key = source_key(repo)
    target = work / f"venv-{key}"
    python = target / "bin" / "python"
    env = clean_env(base)
    if not (target / COMPLETE_MARKER).is_file():
        for old in work.glob("venv-*"):
            remove(old)
        work.mkdir(parents=True, exist_ok=True)
        print(f"building {target.name}: a fresh venv with `pip install .` ...", flush=True)
        base_python = getattr(sys, "_base_executable", None) or sys.executable
        subprocess.run([base_python, "-m", "venv", str(target)], env=env, check=True)
        leftovers = [p for p in (repo / "build", repo / "embcli.egg-info") if not p.exists()]
        pip = [str(python), "-m", "pip", "--disable-pip-version-check", "--no-input"]
        subprocess.run([*pip, "install", "-q", str(repo)], env=env, check=True, cwd=work)
        for path in leftovers:
            remove(path)
        (target / COMPLETE_MARKER).write_text(key + "\n")
    return Interpreter(str(python), env, f"fresh venv {target.name} (pip install .)", venv=target)


def machine_info(work: Path, repo: Path) -> dict[str, object]:
    """Date, processor, memory, OS, commit and load of this run."""
    cpu = platform.processor() or "?"
    memory = None
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory = round(int(line.split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass
    commit = git(repo, "rev-parse", "--short", "HEAD")
    if git(repo, "status", "--porcelain", "--", "embcli", "pyproject.toml"):
        commit += " (embcli/ has uncommitted changes)"
    usage = shutil.disk_usage(work if work.exists() else work.parent)
    return {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gb": memory,
        "os": f"{platform.system()} {platform.release()}",
        "commit": commit,
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "disk": f"{usage.free / 1024**3:.0f} GB free of {usage.total / 1024**3:.0f} GB",
    }
