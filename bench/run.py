"""Time embcli against the Keras way of doing the same thing, and record peak memory.

Usage:
    python bench/run.py                       # the default benchmark, ~10 minutes
    python bench/run.py --cases layers,rows --repeat 5 --json out.json
    python bench/run.py --big                 # an 8 GB .keras built with h5py; embcli only
    python bench/run.py --cases by-token --gensim-python /path/to/python   # vs gensim

Every measured command runs as its own subprocess, one at a time, started with this
interpreter. Wall time is taken around spawn and `os.wait4`; peak RSS is the child's
`ru_maxrss` from the same `os.wait4`. See bench/README.md for what each case does.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import textwrap
import time
import zipfile
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
WORK = BENCH / "work"
RESULTS = BENCH / "RESULTS.md"
PYTHON = sys.executable
MB = 1024 * 1024
GB = 1024 * MB
LAYER = "words"
ALL_CASES = ("layers", "rows", "export", "assign", "stats", "neighbors", "help")
AUDIT_CASES = ("stats", "neighbors")
FORMATS = {"keras": ".keras", "h5": ".h5"}
NEIGHBOR_K = 10
ASSIGN_COUNT = 10
COPY_BLOCK = "8M"
FIXED_ZIP_DATE = (1980, 1, 1, 0, 0, 0)
WHOLE_TABLE_CASES = ("stats", "neighbors", "export", "assign", "durable")
BY_TOKEN = "by-token"
OPT_IN_CASES = (BY_TOKEN,)
GLOVE_TOKENS = 400_000
GLOVE_DIM = 300
VOCAB_SIZE = 20_000
VOCAB_ABSENT = 1_000

CHILD_ENV = {"TF_CPP_MIN_LOG_LEVEL": "3", "KERAS_BACKEND": "tensorflow"}

GOALS = {
    "layers": {"speedup": 20, "rss_mb": 150},
    "rows": {"speedup": 20, "rss_mb": 150},
    "export": {"speedup": 5, "rss_mb": 300},
    "assign": {"speedup": 5, "rss_mb": 300},
    "assign-copy": {"slowdown": 3},
    "help": {"seconds": 0.3},
    BY_TOKEN: {"speedup": 3, "versus": "gensim", "rss_mb": 300},
}

# Each Keras script gets: argv[1] the model, then case arguments. It loads the model the
# ordinary way and finds the table as users do, through the layer.
KERAS_PRELUDE = f"""\
import os, sys, json
import numpy as np
import keras
model = keras.models.load_model(sys.argv[1])
layer = model.get_layer({LAYER!r})
"""

KERAS_SCRIPTS = {
    "layers": """\
for l in model.layers:
    if type(l).__name__.endswith("Embedding"):
        v = l.embeddings
        print(l.name, type(l).__name__, *v.shape, v.dtype, v.path)
""",
    "rows": """\
rows = [int(a) for a in sys.argv[2:]]
print(keras.ops.convert_to_numpy(keras.ops.take(layer.embeddings, rows, axis=0)))
""",
    "export": """\
np.save(sys.argv[2], keras.ops.convert_to_numpy(layer.embeddings))
""",
    "assign": """\
rows = [int(a) for a in sys.argv[4].split(",")]
table = keras.ops.convert_to_numpy(layer.embeddings).copy()
table[rows] = np.load(sys.argv[3])
layer.embeddings.assign(table)
model.save(sys.argv[2])
""",
    "stats": """\
w = keras.ops.convert_to_numpy(layer.embeddings)
finite = np.isfinite(w).all(axis=1)
norms = np.linalg.norm(w[finite], axis=1)
unique = np.unique(np.ascontiguousarray(w).view(np.dtype((np.void, w.shape[1] * w.itemsize))))
print(json.dumps({"rows": len(w), "nan_rows": int(np.isnan(w).any(axis=1).sum()),
                  "inf_rows": int(np.isinf(w).any(axis=1).sum()),
                  "zero_rows": int((w == 0).all(axis=1).sum()),
                  "duplicate_rows": len(w) - len(unique),
                  "norm_min": float(norms.min()), "norm_mean": float(norms.mean()),
                  "norm_max": float(norms.max())}))
""",
    "neighbors": """\
row, k = int(sys.argv[2]), int(sys.argv[3])
w = keras.ops.convert_to_numpy(layer.embeddings)
scores = (w @ w[row]) / (np.linalg.norm(w, axis=1) * np.linalg.norm(w[row]) + 1e-12)
scores[row] = -np.inf
best = np.argpartition(-scores, k)[:k]
best = best[np.argsort(-scores[best])]
print(json.dumps([{"index": int(i), "score": float(scores[i])} for i in best]))
""",
}

GENERATE_SCRIPT = f"""\
import os, sys
import numpy as np
import keras
rows, dim = int(sys.argv[1]), int(sys.argv[2])
keras_path, h5_path = sys.argv[3], sys.argv[4]
model = keras.Sequential(
    [keras.Input(shape=(None,), dtype="int32"), keras.layers.Embedding(rows, dim, name={LAYER!r})],
    name="bench",
)
rng = np.random.default_rng(0)
model.get_layer({LAYER!r}).set_weights([rng.standard_normal((rows, dim), dtype=np.float32)])
for final in (keras_path, h5_path):
    stem, suffix = os.path.splitext(final)
    temp = stem + ".partial" + suffix
    model.save(temp)
    os.replace(temp, final)
"""

VERIFY_SCRIPT = f"""\
import sys
import numpy as np
import keras
original, edited, vectors, rows = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
rows = [int(a) for a in rows.split(",")]
def table(path):
    layer = keras.models.load_model(path).get_layer({LAYER!r})
    return keras.ops.convert_to_numpy(layer.embeddings)
before, after = table(original), table(edited)
expected = before.copy()
expected[rows] = np.load(vectors)
np.testing.assert_array_equal(after, expected)
for exported in sys.argv[5:]:
    np.testing.assert_array_equal(np.load(exported, mmap_mode="r"), before)
print("ok")
"""


VECTORS_SCRIPT = """\
import sys
import numpy as np
path, count, dim = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
np.save(path, np.random.default_rng(1).standard_normal((count, dim), dtype=np.float32))
"""

# The by-token case: a GloVe text file and a model whose StringLookup feeds its Embedding.
# Every 97th token is non-ASCII; the vocabulary holds VOCAB_SIZE - VOCAB_ABSENT tokens of
# the file and VOCAB_ABSENT that it lacks, in random order.
BY_TOKEN_GENERATE_SCRIPT = f"""\
import os, sys
import numpy as np
import keras
count, dim, vocab_size, absent = (int(a) for a in sys.argv[1:5])
glove_path, model_path = sys.argv[5], sys.argv[6]
def token(i):
    return f"w\u00e9{{i}}" if i % 97 == 0 else f"w{{i}}"
scale = 100_000
text = [f"{{s / scale:.5f}}" for s in range(-4 * scale, 4 * scale)]
rng = np.random.default_rng(3)
partial = glove_path + ".partial"
with open(partial, "w", encoding="utf-8", newline="\\n") as handle:
    for start in range(0, count, 2000):
        block = rng.standard_normal((min(2000, count - start), dim)) * (0.4 * scale)
        block = (np.rint(block).clip(-4 * scale, 4 * scale - 1) + 4 * scale).astype(np.int64)
        handle.write("".join(
            token(start + i) + " " + " ".join(map(text.__getitem__, row)) + "\\n"
            for i, row in enumerate(block.tolist())))
vocab = [token(int(i)) for i in rng.choice(count, vocab_size - absent, replace=False)]
vocab += [f"absent{{i}}" if i % 2 else f"fehlt\u00e4{{i}}" for i in range(absent)]
vocab = [vocab[i] for i in rng.permutation(vocab_size)]
inputs = keras.Input(shape=(None,), dtype="string")
ids = keras.layers.StringLookup(vocabulary=vocab, num_oov_indices=1, name="lookup")(inputs)
outputs = keras.layers.Embedding(vocab_size + 1, dim, name={LAYER!r})(ids)
model = keras.Model(inputs, outputs, name="by_token")
stem, suffix = os.path.splitext(model_path)
model.save(stem + ".partial" + suffix)
os.replace(stem + ".partial" + suffix, model_path)
os.replace(partial, glove_path)
"""

GENSIM_SCRIPT = """\
import sys
from gensim.models import KeyedVectors
KeyedVectors.load_word2vec_format(sys.argv[1], binary=False, no_header=True)
"""

# The vocabulary comes from config.json as Keras wrote it (row 0 is the OOV row), the
# vectors from the GloVe text cast to float32, the tables through embcli's library.
BY_TOKEN_VERIFY_SCRIPT = f"""\
import json, sys, zipfile
import numpy as np
from embcli.model import find_table, open_model, read_rows
original, edited, glove = sys.argv[1:4]
with zipfile.ZipFile(original) as archive:
    layers = json.loads(archive.read("config.json"))["config"]["layers"]
vocab = next(l["config"]["vocabulary"] for l in layers if l["class_name"] == "StringLookup")
row_of = {{token: row for row, token in enumerate(vocab, start=1)}}
def table(path):
    with open_model(path) as model:
        found = find_table(model, {LAYER!r})
        return read_rows(model, found, np.arange(found.rows))
before, after = table(original), table(edited)
expected = before.copy()
matched = set()
with open(glove, "rb") as handle:
    for line in handle:
        token, _, values = line.decode("utf-8").rstrip("\\n").partition(" ")
        if token in row_of:
            expected[row_of[token]] = np.array(values.split(" "), dtype=np.float64)
            matched.add(token)
np.testing.assert_array_equal(after, expected)
wide = sum(not t.isascii() for t in matched)
print(f"{{len(matched)}} matched rows ({{wide}} with non-ASCII tokens) hold the GloVe vectors "
      f"cast to float32; the other {{len(before) - len(matched)}} rows are unchanged")
"""


@dataclass
class Run:
    """One finished subprocess."""

    seconds: float
    rss_mb: float
    code: int


@dataclass
class Series:
    """Repeated runs of one command."""

    label: str
    argv: list[str]
    outputs: list[Path] = field(default_factory=list)
    runs: list[Run] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return bool(self.runs) and all(r.code == 0 for r in self.runs)

    @property
    def seconds(self) -> float | None:
        return statistics.median(r.seconds for r in self.runs) if self.ok else None

    @property
    def rss_mb(self) -> float | None:
        return statistics.median(r.rss_mb for r in self.runs) if self.ok else None


@dataclass
class Case:
    """embcli against a reference (the Keras way, or a durable copy) on one model file."""

    name: str
    goal_key: str
    embcli: Series
    reference: Series | None


# Measuring -------------------------------------------------------------------------------


def measure(argv: list[str], log: Path, env: dict[str, str]) -> Run:
    """Run `argv` to completion, alone; its wall time and peak RSS."""
    log.parent.mkdir(parents=True, exist_ok=True)
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
    actions = [
        (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
        (os.POSIX_SPAWN_OPEN, 1, str(log.with_suffix(".out")), flags, 0o644),
        (os.POSIX_SPAWN_OPEN, 2, str(log.with_suffix(".err")), flags, 0o644),
    ]
    start = time.perf_counter()
    pid = os.posix_spawnp(argv[0], argv, env, file_actions=actions)
    _, status, usage = os.wait4(pid, 0)
    seconds = time.perf_counter() - start
    return Run(seconds, usage.ru_maxrss / 1024, os.waitstatus_to_exitcode(status))


def rss_floor(env: dict[str, str]) -> float:
    """The peak RSS `measure` reports for `true`: on Linux a spawned child's peak starts
    at this script's own, so smaller numbers mean nothing."""
    return measure(["true"], WORK / "logs" / "floor", env).rss_mb


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(CHILD_ENV)
    return env


def embcli(*args: object) -> list[str]:
    return [PYTHON, "-m", "embcli", *map(str, args)]


def keras_script(case: str, *args: object) -> list[str]:
    return [PYTHON, "-c", KERAS_PRELUDE + KERAS_SCRIPTS[case], *map(str, args)]


def durable_copy(source: Path, target: Path) -> list[str]:
    return ["dd", f"if={source}", f"of={target}", f"bs={COPY_BLOCK}", "conv=fsync", "status=none"]


def warm(path: Path) -> None:
    """Read a file once so that every run starts from the page cache."""
    buffer = bytearray(MB)
    with open(path, "rb", buffering=0) as handle:
        while handle.readinto(buffer):
            pass


def remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()


def series_log(series: Series, case: Case, logs: Path) -> Path:
    """Where `measure` sends the output of `series` (with .out and .err suffixes)."""
    slug = f"{case.name}-{series.label}".replace(" ", "_").replace(".", "").replace("/", "_")
    return logs / slug


def run_series(series: Series, case: Case, env: dict[str, str], logs: Path) -> None:
    for path in series.outputs:
        remove(path)
    if series.outputs:
        os.sync()
    log = series_log(series, case, logs)
    run = measure(series.argv, log, env)
    series.runs.append(run)
    if run.code != 0:
        error = log.with_suffix(".err").read_text(errors="replace")[-2000:]
        print(f"  ! {case.name} / {series.label} exited {run.code}:\n{error}", file=sys.stderr)


def run_rounds(cases: list[Case], repeat: int, env: dict[str, str], logs: Path) -> None:
    """Run every series `repeat` times, a round at a time, so that background load hits
    both sides alike; a series shared by two cases runs once per round."""
    for round_ in range(repeat):
        done: set[int] = set()
        for case in cases:
            for series in (case.embcli, case.reference):
                if series is None or id(series) in done:
                    continue
                done.add(id(series))
                run_series(series, case, env, logs)
                last = series.runs[-1]
                print(f"  [{round_ + 1}/{repeat}] {case.name:<22} {series.label:<14}"
                      f" {last.seconds:8.2f} s {last.rss_mb:8.0f} MB", flush=True)


# The default benchmark ---------------------------------------------------------------------


def model_paths(rows: int, dim: int) -> dict[str, Path]:
    return {fmt: WORK / f"model-{rows}x{dim}{suffix}" for fmt, suffix in FORMATS.items()}


def ensure_models(rows: int, dim: int, env: dict[str, str]) -> dict[str, Path]:
    paths = model_paths(rows, dim)
    if all(p.is_file() for p in paths.values()):
        return paths
    WORK.mkdir(parents=True, exist_ok=True)
    size = rows * dim * 4 / MB
    print(f"generating a {rows} x {dim} float32 model ({size:.0f} MiB) with Keras ...", flush=True)
    subprocess.run([PYTHON, "-c", GENERATE_SCRIPT, str(rows), str(dim),
                    str(paths["keras"]), str(paths["h5"])], env=env, check=True)
    return paths


def assign_rows(rows: int) -> list[int]:
    return sorted({(i * (rows - 1)) // (ASSIGN_COUNT - 1) for i in range(ASSIGN_COUNT)})


def ensure_vectors(count: int, dim: int) -> Path:
    path = WORK / f"vectors-{count}x{dim}.npy"
    if not path.is_file():
        subprocess.run([PYTHON, "-c", VECTORS_SCRIPT, str(path), str(count), str(dim)], check=True)
    return path


def embcli_commands() -> set[str]:
    """The subcommands this embcli has, from its --help."""
    result = subprocess.run(embcli("--help"), capture_output=True, text=True, check=True)
    names, listing = set(), False
    for line in result.stdout.splitlines():
        if line.strip() == "Commands:":
            listing = True
        elif listing and line.startswith("  ") and line.strip():
            names.add(line.split()[0])
    return names


def build_cases(selected: list[str], formats: list[str], models: dict[str, Path], rows: int,
                dim: int, available: set[str], notes: list[str]) -> list[Case]:
    out = WORK / "out"
    out.mkdir(parents=True, exist_ok=True)
    vectors = ensure_vectors(ASSIGN_COUNT, dim) if "assign" in selected else None
    targets = ",".join(map(str, assign_rows(rows)))
    sample = [0, 5, rows // 2, rows - 1]
    cases: list[Case] = []
    for case in selected:
        if case in AUDIT_CASES and case not in available:
            notes.append(f"`{case}` skipped: this embcli has no `{case}` command yet.")
            continue
        if case == "help":
            cases.append(Case("--help", "help", Series("embcli", embcli("--help")),
                              Series("import keras", [PYTHON, "-c", "import keras"])))
            continue
        for fmt in formats:
            model = models[fmt]
            suffix = FORMATS[fmt]
            name = f"{case} {suffix}"
            if case == "layers":
                cases.append(Case(name, case, Series("embcli", embcli("layers", model)),
                                  Series("keras", keras_script(case, model))))
            elif case == "rows":
                cases.append(Case(name, case,
                                  Series("embcli", embcli("rows", model, *sample[:-1], -1)),
                                  Series("keras", keras_script(case, model, *sample))))
            elif case == "export":
                mine, theirs = out / f"embcli-export{suffix}.npy", out / f"keras-export{suffix}.npy"
                cases.append(Case(name, case,
                                  Series("embcli", embcli("export", model, "-o", mine), [mine]),
                                  Series("keras", keras_script(case, model, theirs), [theirs])))
            elif case == "assign":
                mine, theirs = out / f"embcli-assign{suffix}", out / f"keras-assign{suffix}"
                copy = out / f"copy{suffix}"
                edit = Series("embcli", embcli("assign", model, "--from", vectors, "--rows",
                                               targets, "-o", mine), [mine])
                keras_edit = keras_script(case, model, theirs, vectors, targets)
                cases.append(Case(name, case, edit, Series("keras", keras_edit, [theirs])))
                cases.append(Case(f"{name} vs copy", "assign-copy", edit,
                                  Series("dd conv=fsync", durable_copy(model, copy), [copy])))
            elif case == "stats":
                cases.append(Case(name, case, Series("embcli", embcli("stats", model, "--json")),
                                  Series("keras", keras_script(case, model))))
            elif case == "neighbors":
                cases.append(Case(name, case,
                                  Series("embcli", embcli("neighbors", model, 5, "-k", NEIGHBOR_K,
                                                          "--json")),
                                  Series("keras", keras_script(case, model, 5, NEIGHBOR_K))))
    return cases


def verify(models: dict[str, Path], dim: int, rows: int, formats: list[str],
           env: dict[str, str]) -> list[str]:
    """Load embcli's outputs with Keras: the assigned copy and the exported table must hold
    exactly what they should."""
    out = WORK / "out"
    vectors = WORK / f"vectors-{ASSIGN_COUNT}x{dim}.npy"
    targets = ",".join(map(str, assign_rows(rows)))
    results = []
    for fmt in formats:
        suffix = FORMATS[fmt]
        edited = out / f"embcli-assign{suffix}"
        if not edited.exists():
            continue
        exports = [str(p) for p in [out / f"embcli-export{suffix}.npy"] if p.exists()]
        check = subprocess.run([PYTHON, "-c", VERIFY_SCRIPT, str(models[fmt]), str(edited),
                                str(vectors), targets, *exports],
                               env=env, capture_output=True, text=True)
        verdict = "ok" if check.returncode == 0 else "FAILED: " + check.stderr[-500:]
        results.append(f"Keras reloads embcli's `assign` output{' and `export`' if exports else ''}"
                       f" for {suffix}: {verdict}")
    return results


def judge(case: Case) -> tuple[str, str]:
    """The goal as text, and pass/fail/-."""
    goal = GOALS.get(case.goal_key)
    mine, ref = case.embcli, case.reference
    if not goal:
        return "-", "-"
    if not mine.ok or (ref is not None and not ref.ok and "seconds" not in goal):
        return _goal_text(goal), "error"
    if ref is None and ("speedup" in goal or "slowdown" in goal):
        memory = ""
        if "rss_mb" in goal:
            memory = "; memory " + ("pass" if mine.rss_mb <= goal["rss_mb"] else "FAIL")
        return _goal_text(goal), "speed not compared" + memory
    checks = []
    if "speedup" in goal:
        checks.append(ref.seconds / mine.seconds >= goal["speedup"])
    if "rss_mb" in goal:
        checks.append(mine.rss_mb <= goal["rss_mb"])
    if "slowdown" in goal:
        checks.append(mine.seconds <= goal["slowdown"] * ref.seconds)
    if "seconds" in goal:
        checks.append(mine.seconds <= goal["seconds"])
    return _goal_text(goal), "pass" if all(checks) else "FAIL"


def _goal_text(goal: dict) -> str:
    parts = []
    if "speedup" in goal:
        versus = f" {goal['versus']}" if "versus" in goal else ""
        parts.append(f">={goal['speedup']}x{versus}")
    if "rss_mb" in goal:
        parts.append(f"<={goal['rss_mb']} MB")
    if "slowdown" in goal:
        parts.append(f"<={goal['slowdown']}x copy")
    if "seconds" in goal:
        parts.append(f"<={goal['seconds']} s")
    return ", ".join(parts)


def fmt_number(value: float | None, digits: int = 2) -> str:
    return "error" if value is None else f"{value:.{digits}f}"


def table_rows(cases: list[Case]) -> list[list[str]]:
    rows = []
    for case in cases:
        mine, ref = case.embcli, case.reference
        ratio = None
        if mine.ok and ref is not None and ref.ok:
            ratio = ref.seconds / mine.seconds
        goal, verdict = judge(case)
        rows.append([
            case.name, ref.label if ref else "-", fmt_number(mine.seconds),
            fmt_number(ref.seconds) if ref else "-",
            f"{ratio:.1f}x" if ratio is not None else "-",
            fmt_number(mine.rss_mb, 0), fmt_number(ref.rss_mb, 0) if ref else "-",
            goal, verdict,
        ])
    return rows


HEADERS = ["case", "vs", "embcli s", "vs s", "speedup", "embcli MB", "vs MB", "goal", "result"]


def render_text(rows: list[list[str]], headers: list[str]) -> str:
    widths = [max(len(str(r[i])) for r in [headers, *rows]) for i in range(len(headers))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
             for r in [headers, ["-" * w for w in widths], *rows]]
    return "\n".join(lines)


def render_markdown(rows: list[list[str]], headers: list[str]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


# Machine and run information ---------------------------------------------------------------


def machine_info() -> dict[str, object]:
    cpu = platform.processor() or "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory = round(int(line.split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass
    versions = {}
    for package in ("embcli", "numpy", "h5py", "click", "keras", "tensorflow", "tensorflow-cpu"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            pass
    commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
                            capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--", "embcli"],
                           capture_output=True, text=True).stdout.strip()
    return {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gb": memory,
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "versions": versions,
        "commit": commit + (" (embcli/ has uncommitted changes)" if dirty else ""),
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "filesystem": disk_line(WORK),
    }


def disk_line(path: Path) -> str:
    usage = shutil.disk_usage(path if path.exists() else path.parent)
    return f"{usage.free / GB:.0f} GB free of {usage.total / GB:.0f} GB"


def info_markdown(info: dict[str, object]) -> str:
    versions = ", ".join(f"{k} {v}" for k, v in info["versions"].items())
    return "\n".join([
        f"- Date: {info['date']}",
        f"- Machine: {info['cpu']}, {info['cores']} cores, {info['memory_gb']} GB RAM, "
        f"{info['os']}",
        f"- Python {info['python']}; {versions}",
        f"- embcli commit: {info['commit']}",
        f"- Load average at start: {info['load_average']}",
        f"- Peak RSS floor (`true` measured the same way): {info.get('rss_floor_mb')} MB",
    ])


def write_results(section: str, body: str) -> None:
    """Replace one section (`default`, `by-token` or `big`) of bench/RESULTS.md, keeping
    the others."""
    begin, end = f"<!-- {section}:begin -->", f"<!-- {section}:end -->"
    body = "\n\n".join(part.strip() for part in body.split("\n\n") if part.strip())
    block = f"{begin}\n{body.strip()}\n{end}"
    text = RESULTS.read_text() if RESULTS.exists() else RESULTS_HEADER
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        text = head + block + rest.split(end, 1)[1]
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    RESULTS.write_text(text)


RESULTS_HEADER = """\
# Benchmark results

Written by `python bench/run.py` (and `--big`); see bench/README.md for what each case does.
Times are medians of wall time, in seconds; memory is the median of each process's peak RSS.
"""


def default_benchmark(args: argparse.Namespace, selected: list[str]) -> tuple[int, dict]:
    """The cases of ALL_CASES in `selected`; the exit code and the JSON report."""
    env = child_env()
    formats = [f.strip() for f in args.formats.split(",") if f.strip()]
    models = ensure_models(args.rows, args.dim, env)
    notes: list[str] = []
    available = embcli_commands()
    cases = build_cases(selected, formats, models, args.rows, args.dim, available, notes)
    info = machine_info()
    info["rss_floor_mb"] = round(rss_floor(env), 1)
    logs = WORK / "logs"
    for path in models.values():
        warm(path)
    print(f"{len(cases)} cases x {args.repeat} runs; model {args.rows} x {args.dim}", flush=True)
    run_rounds(cases, args.repeat, env, logs)
    if not args.no_verify:
        notes.extend(verify(models, args.dim, args.rows, formats, env))
    if not args.keep_outputs:
        shutil.rmtree(WORK / "out", ignore_errors=True)
    info["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    rows = table_rows(cases)
    print()
    print(render_text(rows, HEADERS))
    for note in notes:
        print(f"note: {note}")
    report = {
        "machine": info,
        "rows": args.rows,
        "dim": args.dim,
        "repeat": args.repeat,
        "notes": notes,
        "cases": [_case_record(c) for c in cases],
    }
    if not args.no_results:
        size = args.rows * args.dim * 4 / 1e6
        body = "\n\n".join([
            f"## Default benchmark: {args.rows} x {args.dim} float32 table ({size:.0f} MB), "
            f"median of {args.repeat}",
            info_markdown(info) + f"\n- Load average at end: {info['load_average_end']}",
            render_markdown(rows, HEADERS),
            "\n".join(f"- {note}" for note in notes) if notes else "",
            "`speedup` is the reference's median time over embcli's (for `vs copy`, below 1 "
            "means embcli is slower than a durable copy of the file). The reference for "
            "`--help` is `python -c \"import keras\"`.",
        ])
        write_results("default", body)
    return (0 if all(c.embcli.ok for c in cases) else 1), report


def _case_record(case: Case) -> dict:
    record = {"case": case.name, "goal_key": case.goal_key}
    goal, verdict = judge(case)
    record.update(goal=goal, result=verdict)
    for key, series in (("embcli", case.embcli), ("reference", case.reference)):
        if series is None:
            continue
        record[key] = {
            "label": series.label,
            "argv": [a if len(a) < 200 else "<script>" for a in series.argv],
            "median_seconds": series.seconds,
            "median_rss_mb": series.rss_mb,
            "runs": [asdict(r) for r in series.runs],
        }
    return record


# by-token: assign --by-token from a GloVe file against gensim loading it ------------------


def by_token_paths() -> tuple[Path, Path]:
    glove = WORK / f"glove-{GLOVE_TOKENS}x{GLOVE_DIM}.txt"
    model = WORK / f"vocab-model-{VOCAB_SIZE}x{GLOVE_DIM}.keras"
    return glove, model


def ensure_by_token_files(env: dict[str, str]) -> tuple[Path, Path]:
    glove, model = by_token_paths()
    if glove.is_file() and model.is_file():
        return glove, model
    WORK.mkdir(parents=True, exist_ok=True)
    print(f"generating a {GLOVE_TOKENS} x {GLOVE_DIM} GloVe file and a model with a "
          f"{VOCAB_SIZE}-token vocabulary with Keras ...", flush=True)
    subprocess.run([PYTHON, "-c", BY_TOKEN_GENERATE_SCRIPT, str(GLOVE_TOKENS), str(GLOVE_DIM),
                    str(VOCAB_SIZE), str(VOCAB_ABSENT), str(glove), str(model)],
                   env=env, check=True)
    return glove, model


def gensim_version(python: str, env: dict[str, str]) -> str | None:
    """gensim's version as `python` imports it, or None when it cannot."""
    try:
        found = subprocess.run([python, "-c", "import gensim; print(gensim.__version__)"],
                               env=env, capture_output=True, text=True)
    except OSError:
        return None
    return (found.stdout.strip() or None) if found.returncode == 0 else None


def gensim_interpreter(requested: str | None, env: dict[str, str]) -> tuple[str, str] | None:
    """The interpreter to run gensim with and its gensim version: `requested`, which must
    have gensim, else this one if it has gensim, else None."""
    python = requested or PYTHON
    version = gensim_version(python, env)
    if version is None and requested:
        raise SystemExit(f"--gensim-python {requested} cannot import gensim")
    return (python, version) if version else None


def verify_by_token(model: Path, edited: Path, glove: Path, env: dict[str, str]) -> str:
    check = subprocess.run([PYTHON, "-c", BY_TOKEN_VERIFY_SCRIPT, str(model), str(edited),
                            str(glove)], env=env, capture_output=True, text=True)
    if check.returncode != 0:
        return "embcli's output, read back with embcli's library: FAILED: " + check.stderr[-500:]
    return f"embcli's output, read back with embcli's library: {check.stdout.strip()}: ok"


def coverage_notes(log: Path) -> list[str]:
    """embcli's coverage report, from the stderr of its last run."""
    err = log.with_suffix(".err")
    lines = err.read_text(errors="replace").splitlines() if err.exists() else []
    return [f"embcli reported: {line}" for line in lines
            if line.startswith(("matched ", "skipped "))]


def by_token_benchmark(args: argparse.Namespace) -> tuple[int, dict]:
    """`assign --by-token` from a GloVe text file against gensim loading the same file."""
    env = child_env()
    gensim = gensim_interpreter(args.gensim_python, env)
    glove, model = ensure_by_token_files(env)
    out = WORK / "out"
    out.mkdir(parents=True, exist_ok=True)
    edited = out / "embcli-by-token.keras"
    mine = Series("embcli", embcli("assign", model, "-l", LAYER, "--by-token", "--from", glove,
                                   "-o", edited, "--force"), [edited])
    theirs = Series("gensim", [gensim[0], "-c", GENSIM_SCRIPT, str(glove)]) if gensim else None
    case = Case("assign --by-token", BY_TOKEN, mine, theirs)
    notes = []
    info = machine_info()
    info["rss_floor_mb"] = round(rss_floor(env), 1)
    if gensim:
        info["versions"]["gensim"] = gensim[1]
        notes.append(f"gensim {gensim[1]} ran with {gensim[0]}.")
    else:
        notes.append("gensim comparison skipped: this interpreter cannot import gensim; give "
                     "--gensim-python PATH of one that can.")
    logs = WORK / "logs"
    for path in (glove, model):
        warm(path)
    size = glove.stat().st_size / 1e9
    print(f"{BY_TOKEN} x {args.repeat} runs; {GLOVE_TOKENS} x {GLOVE_DIM} GloVe text "
          f"({size:.2f} GB), {VOCAB_SIZE}-token vocabulary", flush=True)
    run_rounds([case], args.repeat, env, logs)
    notes.extend(coverage_notes(series_log(mine, case, logs)))
    if not args.no_verify and mine.ok:
        notes.append(verify_by_token(model, edited, glove, env))
    if not args.keep_outputs:
        remove(edited)
    info["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    rows = table_rows([case])
    if not gensim:
        rows[0][1] = "gensim (skipped)"
    print()
    print(render_text(rows, HEADERS))
    for note in notes:
        print(f"note: {note}")
    report = {
        "machine": info,
        "glove": {"tokens": GLOVE_TOKENS, "dim": GLOVE_DIM, "bytes": glove.stat().st_size},
        "vocabulary": VOCAB_SIZE,
        "repeat": args.repeat,
        "notes": notes,
        "cases": [_case_record(case)],
    }
    if not args.no_results:
        body = "\n\n".join([
            f"## assign --by-token: {GLOVE_TOKENS} x {GLOVE_DIM} GloVe text ({size:.2f} GB), "
            f"{VOCAB_SIZE}-token vocabulary, median of {args.repeat}",
            info_markdown(info) + f"\n- Load average at end: {info['load_average_end']}",
            render_markdown(rows, HEADERS),
            "\n".join(f"- {note}" for note in notes),
            f"embcli runs `assign MODEL -l {LAYER} --by-token --from GLOVE -o OUT --force` on a "
            f".keras whose StringLookup (vocabulary in its config, {VOCAB_SIZE - VOCAB_ABSENT} "
            f"of the tokens in the file) feeds an Embedding of {VOCAB_SIZE + 1} x {GLOVE_DIM}, "
            "and writes the edited model. gensim runs `KeyedVectors.load_word2vec_format("
            "GLOVE, binary=False, no_header=True)` and writes nothing. `speedup` is gensim's "
            "median time over embcli's.",
        ])
        write_results(BY_TOKEN, body)
    return (0 if mine.ok else 1), report


# --big: an 8 GB .keras, built without Keras --------------------------------------------------


def build_big_model(target: Path, rows: int, dim: int, template: Path) -> None:
    """An 8 GB-class `.keras` laid out as Keras lays it out, written a block at a time.

    config.json and metadata.json are those of `template` (a small `.keras` saved by real
    Keras) with the table's size changed; model.weights.h5 holds the table at
    layers/embedding/vars/0, its `vars` group named by a `name` attribute, and goes into
    the archive uncompressed (ZIP_STORED, zip64).
    """
    import h5py
    import numpy as np

    with zipfile.ZipFile(template) as source:
        config = json.loads(source.read("config.json"))
        meta = source.read("metadata.json")
    for layer in config["config"]["layers"]:
        if layer.get("class_name") == "Embedding":
            layer["config"]["input_dim"] = rows
            layer["config"]["output_dim"] = dim
    weights = target.with_suffix(".weights.h5.partial")
    partial = target.with_suffix(".keras.partial")
    block_rows = max(1, 64 * MB // (dim * 4))
    rng = np.random.default_rng(2)
    print(f"writing {rows} x {dim} float32 to {weights.name} ...", flush=True)
    with h5py.File(weights, "w") as handle:
        handle.create_group("layers/embedding/vars").attrs["name"] = LAYER
        handle.create_group("vars").attrs["name"] = config["config"]["name"]
        table = handle["layers/embedding/vars"].create_dataset("0", (rows, dim), dtype="float32")
        for start in range(0, rows, block_rows):
            stop = min(rows, start + block_rows)
            table[start:stop] = rng.standard_normal((stop - start, dim), dtype=np.float32)
    print(f"storing it in {target.name} ...", flush=True)
    with zipfile.ZipFile(partial, "w", compression=zipfile.ZIP_STORED) as archive:
        for name, data in (("metadata.json", meta), ("config.json", json.dumps(config))):
            archive.writestr(zipfile.ZipInfo(name, date_time=FIXED_ZIP_DATE), data)
        info = zipfile.ZipInfo("model.weights.h5", date_time=time.localtime()[:6])
        info.compress_type = zipfile.ZIP_STORED
        with open(weights, "rb") as src, archive.open(info, "w", force_zip64=True) as dst:
            shutil.copyfileobj(src, dst, 8 * MB)
    weights.unlink()
    os.replace(partial, target)


def big_benchmark(args: argparse.Namespace) -> int:
    env = child_env()
    size = args.big_gb * GB
    rows = size // (args.dim * 4)
    target = WORK / f"big-{rows}x{args.dim}.keras"
    out = WORK / "out"
    WORK.mkdir(parents=True, exist_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(WORK).free
    existing = target.stat().st_size if target.exists() else 0
    needed = 3 * size - existing
    if free < needed:
        raise SystemExit(
            f"--big needs about {needed / GB:.0f} GB free in {WORK} (the archive, one "
            f"output at a time, and the HDF5 file while building); {free / GB:.0f} GB free"
        )
    small = ensure_models(1000, args.dim, env)["keras"]
    if not target.is_file():
        subprocess.run([PYTHON, __file__, "--build-big", str(target), str(rows), str(args.dim),
                        str(small)], check=True)
    available = embcli_commands()
    vectors = ensure_vectors(ASSIGN_COUNT, args.dim)
    targets = ",".join(map(str, assign_rows(rows)))
    exported, assigned = out / "big-export.npy", out / "big-assign.keras"
    copied = out / "big-copy.keras"
    steps: list[tuple[str, list[str], list[Path]]] = [
        ("layers", embcli("layers", target), []),
        ("rows", embcli("rows", target, 0, 5, rows // 2, -1), []),
    ]
    notes = []
    if "stats" in available:
        steps.append(("stats", embcli("stats", target, "--json"), []))
    else:
        notes.append("`stats` skipped: this embcli has no `stats` command yet.")
    if "neighbors" in available:
        steps.append(("neighbors", embcli("neighbors", target, 5, "-k", NEIGHBOR_K, "--json"), []))
    steps += [
        ("export .npy", embcli("export", target, "-o", exported), [exported]),
        ("assign -o (10 rows)",
         embcli("assign", target, "--from", vectors, "--rows", targets, "-o", assigned),
         [assigned]),
        ("durable copy (dd conv=fsync)", durable_copy(target, copied), [copied]),
    ]
    info = machine_info()
    info["rss_floor_mb"] = round(rss_floor(env), 1)
    warm(target)
    results = []
    for name, argv, outputs in steps:
        runs = []
        for _ in range(args.repeat):
            for path in outputs:
                remove(path)
            os.sync()
            run = measure(argv, WORK / "logs" / f"big-{name.split()[0]}", env)
            runs.append(run)
            print(f"  {name:<30} {run.seconds:8.2f} s {run.rss_mb:8.0f} MB exit {run.code}",
                  flush=True)
        for path in outputs:
            remove(path)
        ok = all(r.code == 0 for r in runs)
        results.append({
            "case": name,
            "median_seconds": statistics.median(r.seconds for r in runs) if ok else None,
            "median_rss_mb": statistics.median(r.rss_mb for r in runs) if ok else None,
            "runs": [asdict(r) for r in runs],
        })
    headers = ["case", "median s", "peak RSS MB", "GB/s"]
    rows_out = []
    for result in results:
        seconds = result["median_seconds"]
        through = "-"
        if seconds and result["case"].startswith(WHOLE_TABLE_CASES):
            through = f"{size / GB / seconds:.2f}"
        rows_out.append([result["case"], fmt_number(seconds),
                         fmt_number(result["median_rss_mb"], 0), through])
    print()
    print(render_text(rows_out, headers))
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": info, "rows": rows, "dim": args.dim,
                                               "bytes": size, "notes": notes, "cases": results},
                                              indent=2))
    if not args.no_results:
        body = "\n\n".join([
            f"## --big: {rows} x {args.dim} float32 table ({size / GB:.0f} GiB) in a .keras "
            f"built with h5py, median of {args.repeat}",
            info_markdown(info),
            render_markdown(rows_out, headers),
            "\n".join(f"- {note}" for note in notes) if notes else "",
            "No Keras comparison here: loading this model takes more than its 8 GB in RAM. "
            "GB/s is the table's size over the median time.",
        ])
        write_results("big", body)
    return 0 if all(r["median_seconds"] is not None for r in results) else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Benchmark embcli against Keras (see bench/README.md).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=textwrap.dedent(f"""\
            cases: {', '.join(ALL_CASES)} (the default); also {', '.join(OPT_IN_CASES)}
            Model files and outputs go to {WORK} (reused between runs)."""),
    )
    parser.add_argument("--rows", type=int, default=1_000_000, help="table rows (default 1000000)")
    parser.add_argument("--dim", type=int, default=128, help="table width (default 128)")
    parser.add_argument("--repeat", type=int, default=None,
                        help="runs per command (default 3; 1 with --big)")
    parser.add_argument("--cases", default=",".join(ALL_CASES), help="comma-separated cases")
    parser.add_argument("--gensim-python", metavar="PATH",
                        help=f"an interpreter that has gensim, for {BY_TOKEN} (default: this "
                        "one if it has gensim, else no gensim comparison)")
    parser.add_argument("--formats", default="keras,h5", help="model formats: keras,h5")
    parser.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    parser.add_argument("--no-verify", action="store_true",
                        help="skip reloading embcli's outputs with Keras afterwards")
    parser.add_argument("--no-results", action="store_true", help="leave bench/RESULTS.md alone")
    parser.add_argument("--keep-outputs", action="store_true",
                        help="keep the files the commands wrote, in bench/work/out")
    parser.add_argument("--big", action="store_true",
                        help="build an 8 GB .keras with h5py and time embcli alone on it")
    parser.add_argument("--big-gb", type=int, default=8, help="table size for --big, in GB")
    parser.add_argument("--build-big", nargs=4, help=argparse.SUPPRESS,
                        metavar=("TARGET", "ROWS", "DIM", "TEMPLATE"))
    args = parser.parse_args(argv)
    if args.build_big:
        target, rows, dim, template = args.build_big
        build_big_model(Path(target), int(rows), int(dim), Path(template))
        return 0
    if args.repeat is None:
        args.repeat = 1 if args.big else 3
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    if args.big:
        return big_benchmark(args)
    selected = [c.strip() for c in args.cases.split(",") if c.strip()]
    unknown = set(selected) - set(ALL_CASES) - set(OPT_IN_CASES)
    if unknown:
        raise SystemExit(f"unknown cases: {', '.join(sorted(unknown))}; "
                         f"known: {', '.join(ALL_CASES + OPT_IN_CASES)}")
    standard = [c for c in selected if c in ALL_CASES]
    code, report = 0, {}
    if standard or BY_TOKEN not in selected:
        code, report = default_benchmark(args, standard)
    if BY_TOKEN in selected:
        by_token_code, by_token_report = by_token_benchmark(args)
        code = max(code, by_token_code)
        report = {**report, "by_token": by_token_report} if report else by_token_report
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    return code


if __name__ == "__main__":
    sys.exit(main())
