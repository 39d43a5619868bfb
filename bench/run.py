"""Time embcli, as users install it, against the Keras way and against copying the file.

Usage:
    python bench/run.py                       # the default benchmark, ~10 minutes
    python bench/run.py --rows 100000 --repeat 1 --no-results   # a quick look
    python bench/run.py --cases layers,rows --repeat 5 --json out.json --compare old.json
    python bench/run.py --python /path/to/python   # embcli from that interpreter instead
    python bench/run.py --big                 # an 8 GiB .keras built with h5py; embcli only
    python bench/run.py --cases by-token --gensim-python /path/to/python   # vs gensim

embcli runs from a fresh venv built with `pip install .` of this checkout (cached in
bench/work/), the Keras way with this interpreter (or --keras-python). Every measured
command runs as its own subprocess, one at a time: wall time is taken around spawn and
`os.wait4`, peak RSS is the child's `ru_maxrss` from the same `os.wait4`. See
bench/README.md for what each case does and the goals it is held to.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

from environment import (
    EMBCLI_PACKAGES,
    KERAS_PACKAGES,
    Interpreter,
    fresh_venv,
    machine_info,
)
from keras_ref import VERIFY_SCRIPT, keras_argv
from measure import MB, Series, remove, rss_floor, run_rounds, warm
from models import (
    FORMATS,
    LAYER,
    ensure_models,
    ensure_vectors,
    ensure_vocab_model,
    half_vocab,
    spread_rows,
)
from report import (
    AT_LEAST_SPEEDUP,
    AT_MOST_RATIO,
    HEADERS,
    UNDER_MB,
    UNDER_SECONDS,
    Case,
    Goal,
    compare_text,
    goal_lines,
    render_markdown,
    render_text,
    stats_memory_goal,
    table_rows,
    write_results,
)

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
WORK = BENCH / "work"
CHILD_ENV = {"TF_CPP_MIN_LOG_LEVEL": "3", "KERAS_BACKEND": "tensorflow"}
ALL_CASES = (
    "help",
    "layers",
    "rows",
    "export",
    "stats",
    "neighbors",
    "assign",
    "in-place",
    "resize",
    "remap",
)
BY_TOKEN = "by-token"
ASSIGN_COUNT = 10
RESIZE_ADD = 1000
NEIGHBOR_K = 10
COPY_BLOCK = "8M"
IMPORT_FLOOR = "import numpy, h5py"


def embcli_argv(python: Interpreter, *args: object) -> list[str]:
    return [python.python, "-m", "embcli", *map(str, args)]


def durable_copy(source: Path, target: Path) -> list[str]:
    return ["dd", f"if={source}", f"of={target}", f"bs={COPY_BLOCK}", "conv=fsync", "status=none"]


def embcli_commands(python: Interpreter) -> set[str]:
    """The subcommands this embcli has, from its --help."""
    found = subprocess.run(
        embcli_argv(python, "--help"), env=python.env, capture_output=True, text=True, check=True
    )
    names, listing = set(), False
    for line in found.stdout.splitlines():
        if line.strip() == "Commands:":
            listing = True
        elif listing and line.startswith("  ") and line.strip():
            names.add(line.split()[0])
    return names


def has_command(python: Interpreter, name: str) -> bool:
    """Whether `embcli NAME --help` exits 0."""
    found = subprocess.run(embcli_argv(python, name, "--help"), env=python.env, capture_output=True)
    return found.returncode == 0


class Plan:
    """The cases of one default run and the reference commands they share."""

    def __init__(self, args: argparse.Namespace, embcli: Interpreter, keras: Interpreter):
        self.args, self.embcli, self.keras = args, embcli, keras
        self.out = WORK / "out"
        self.out.mkdir(parents=True, exist_ok=True)
        self.cases: list[Case] = []
        self.references: list[tuple[str, Series]] = []
        self.checks: list[dict] = []
        self.notes: list[str] = []
        self.warm: list[Path] = []
        self._shared: dict[str, Series] = {}
        self.verified = True

    def reference(self, name: str, series: Series) -> Series:
        """The reference command `name`, created once and listed once."""
        if name not in self._shared:
            self._shared[name] = series
            self.references.append((name, series))
        return self._shared[name]

    def floor(self) -> Series:
        argv = [self.embcli.python, "-c", IMPORT_FLOOR]
        return self.reference("import floor", Series("import floor", argv))

    def copy(self, model: Path, suffix: str) -> Series:
        target = self.out / f"cp{suffix}"
        argv = ["cp", str(model), str(target)]
        return self.reference(f"cp {suffix}", Series("cp", argv, [target]))

    def durable(self, model: Path, suffix: str, tag: str = "") -> Series:
        target = self.out / f"dd{tag}{suffix}"
        series = Series("dd conv=fsync", durable_copy(model, target), [target])
        return self.reference(f"dd conv=fsync {tag}{suffix}", series)

    def run(self, *args: object, outputs: list[Path] | None = None) -> Series:
        return Series("embcli", embcli_argv(self.embcli, *args), outputs or [])

    def keras_way(self, case: str, *args: object, outputs: list[Path] | None = None) -> Series:
        return Series("keras", keras_argv(self.keras.python, case, *args), outputs or [])


def build_plan(plan: Plan, selected: list[str], models: dict[str, Path], formats: list[str]):
    rows, dim = plan.args.rows, plan.args.dim
    available = embcli_commands(plan.embcli)
    sample = [0, 5, rows // 2, rows - 1]
    targets = spread_rows(rows, ASSIGN_COUNT)
    target_text = ",".join(map(str, targets))
    vectors = None
    if {"assign", "in-place"} & set(selected):
        vectors = ensure_vectors(WORK, ASSIGN_COUNT, dim, plan.keras)
    for name in selected:
        if name in ("stats", "neighbors") and name not in available:
            plan.cases.append(Case(name, None, missing=f"this embcli has no `{name}` command"))
            continue
        if name in ("resize", "remap") and not has_command(plan.embcli, name):
            why = f"`embcli {name} --help` does not exit 0"
            plan.cases.append(Case(name, None, missing=why))
            continue
        if name == "help":
            floor = plan.floor()
            keras = Series("import keras", [plan.keras.python, "-c", "import keras"])
            goals = [Goal("--help < 0.15 s", UNDER_SECONDS, 0.15)]
            plan.cases.append(Case("--help", plan.run("--help"), floor, keras, goals))
            continue
        if name == "remap":
            add_remap(plan, dim)
            continue
        for fmt in formats:
            model, suffix = models[fmt], FORMATS[fmt]
            label = f"{name} {suffix}"
            plan.warm.append(model)
            if name == "layers":
                floor = plan.floor()
                keras = plan.keras_way(name, model)
                speedup = 25 if fmt == "keras" else 20
                goals = [
                    Goal("<= 1.5x import floor", AT_MOST_RATIO, 1.5, [floor]),
                    Goal(f">= {speedup}x Keras", AT_LEAST_SPEEDUP, speedup, [keras]),
                    Goal("< 100 MB", UNDER_MB, 100),
                ]
                plan.cases.append(Case(label, plan.run("layers", model), floor, keras, goals))
            elif name == "rows":
                floor = plan.floor()
                mine = plan.run("rows", model, *sample[:-1], -1)
                keras = plan.keras_way(name, model, *sample)
                goals = [Goal("<= 1.5x import floor", AT_MOST_RATIO, 1.5, [floor])]
                plan.cases.append(Case(label, mine, floor, keras, goals))
            elif name == "export":
                floor, copy = plan.floor(), plan.copy(model, suffix)
                mine_out = plan.out / f"embcli-export{suffix}.npy"
                theirs_out = plan.out / f"keras-export{suffix}.npy"
                mine = plan.run("export", model, "-l", LAYER, "-o", mine_out, outputs=[mine_out])
                keras = plan.keras_way(name, model, theirs_out, outputs=[theirs_out])
                goals = [
                    Goal(">= 10x Keras", AT_LEAST_SPEEDUP, 10, [keras]),
                    Goal("<= 2x (cp + import floor)", AT_MOST_RATIO, 2, [copy, floor]),
                    Goal("< 150 MB", UNDER_MB, 150),
                ]
                plan.cases.append(Case(f"export .npy {suffix}", mine, copy, keras, goals))
                plan.checks.append(check("export", label, model, mine_out))
            elif name == "stats":
                floor = plan.floor()
                goals = [stats_memory_goal(rows, floor)]
                mine = plan.run("stats", model, "--json")
                plan.cases.append(Case(label, mine, floor, plan.keras_way(name, model), goals))
            elif name == "neighbors":
                mine = plan.run("neighbors", model, 5, "-k", NEIGHBOR_K, "--json")
                keras = plan.keras_way(name, model, 5, NEIGHBOR_K)
                plan.cases.append(Case(label, mine, plan.floor(), keras))
            elif name == "assign":
                dd = plan.durable(model, suffix)
                mine_out = plan.out / f"embcli-assign{suffix}"
                theirs_out = plan.out / f"keras-assign{suffix}"
                mine = plan.run(
                    "assign",
                    model,
                    "-l",
                    LAYER,
                    "--from",
                    vectors,
                    "--rows",
                    target_text,
                    "-o",
                    mine_out,
                    outputs=[mine_out],
                )
                keras = plan.keras_way(
                    name, model, theirs_out, vectors, target_text, outputs=[theirs_out]
                )
                goals = [
                    Goal("<= 1.5x dd conv=fsync", AT_MOST_RATIO, 1.5, [dd]),
                    Goal("< 150 MB", UNDER_MB, 150),
                ]
                plan.cases.append(Case(f"assign -o {suffix}", mine, dd, keras, goals))
                plan.checks.append(
                    check(
                        "assign",
                        f"assign -o {suffix}",
                        model,
                        mine_out,
                        rows=targets,
                        vectors=str(vectors),
                    )
                )
            elif name == "in-place":
                dd = plan.durable(model, suffix)
                scratch = plan.out / f"in-place{suffix}"
                mine = plan.run(
                    "assign",
                    scratch,
                    "-l",
                    LAYER,
                    "--from",
                    vectors,
                    "--rows",
                    target_text,
                    "--in-place",
                )
                mine.prepare = [(model, scratch)]
                goals = [Goal("< 0.5x dd conv=fsync", AT_MOST_RATIO, 0.5, [dd])]
                plan.cases.append(Case(f"assign --in-place {suffix}", mine, dd, None, goals))
                plan.checks.append(
                    check(
                        "assign",
                        f"assign --in-place {suffix}",
                        model,
                        scratch,
                        rows=targets,
                        vectors=str(vectors),
                    )
                )
            elif name == "resize":
                dd = plan.durable(model, suffix)
                mine_out = plan.out / f"embcli-resize{suffix}"
                mine = plan.run(
                    "resize",
                    model,
                    "-l",
                    LAYER,
                    "--add",
                    RESIZE_ADD,
                    "-o",
                    mine_out,
                    outputs=[mine_out],
                )
                plan.cases.append(
                    Case(f"resize --add {RESIZE_ADD} {suffix}", mine, dd, None, resize_goals(dd))
                )
                plan.checks.append(check("resize", label, model, mine_out, add=RESIZE_ADD))


def resize_goals(dd: Series) -> list[Goal]:
    return [
        Goal("<= 2x dd conv=fsync", AT_MOST_RATIO, 2, [dd]),
        Goal("< 300 MB", UNDER_MB, 300),
    ]


def add_remap(plan: Plan, dim: int) -> None:
    """`remap` keeping every other row, on a `.keras` whose StringLookup knows the tokens."""
    model, tokens = ensure_vocab_model(WORK, plan.args.rows, dim, plan.keras)
    if has_command(plan.embcli, "vocab"):
        listed = WORK / "vocab-model.embcli-vocab.txt"
        remove(listed)
        argv = embcli_argv(plan.embcli, "vocab", model, "-l", LAYER, "-o", listed)
        if subprocess.run(argv, env=plan.embcli.env, capture_output=True).returncode == 0:
            if listed.read_bytes() != tokens.read_bytes():
                plan.notes.append(
                    "`embcli vocab -o` lists the remap model's tokens unlike "
                    "the file Keras's vocabulary was written from; NEW_VOCAB "
                    "keeps every other line of embcli's list."
                )
                tokens = listed
    half = half_vocab(tokens)
    plan.warm += [model, half]
    dd = plan.durable(model, ".keras", tag="vocab-model")
    mine_out = plan.out / "embcli-remap.keras"
    mine = plan.run("remap", model, "-l", LAYER, "--to", half, "-o", mine_out, outputs=[mine_out])
    plan.cases.append(Case("remap half .keras", mine, dd, None, resize_goals(dd)))
    plan.checks.append(check("remap", "remap half .keras", model, mine_out, keep_every=2))


def check(kind: str, name: str, original: Path, output: Path, **extra: object) -> dict:
    return {"kind": kind, "name": name, "original": str(original), "output": str(output), **extra}


def verify(plan: Plan) -> list[str]:
    """Keras loads embcli's outputs, each of which must hold exactly what it should."""
    checks = [c for c in plan.checks if Path(c["output"]).exists()]
    if not checks:
        return []
    found = subprocess.run(
        [plan.keras.python, "-c", VERIFY_SCRIPT, json.dumps(checks)],
        env=plan.keras.env,
        capture_output=True,
        text=True,
    )
    if found.returncode != 0:
        plan.verified = False
        return [f"Keras could not check embcli's outputs: {' '.join(found.stderr[-500:].split())}"]
    verdicts = json.loads(found.stdout.splitlines()[-1])
    plan.verified = all(verdict == "ok" for verdict in verdicts.values())
    return [
        f"Keras reloads embcli's `{name}` output: {' '.join(verdict.split())}"
        for name, verdict in verdicts.items()
    ]


def interpreters(args: argparse.Namespace) -> tuple[Interpreter, Interpreter]:
    """The embcli side (a fresh venv, or --python) and the Keras side, probed."""
    env = dict(os.environ, **CHILD_ENV)
    if args.python:
        embcli = Interpreter(args.python, env, "--python")
    else:
        embcli = fresh_venv(REPO, WORK, env)
    keras = Interpreter(args.keras_python or sys.executable, env, "Keras side")
    return embcli.probe(EMBCLI_PACKAGES), keras.probe(KERAS_PACKAGES)


def info_lines(info: dict, embcli: Interpreter, keras: Interpreter) -> list[str]:
    return [
        f"- Date: {info['date']}",
        f"- Machine: {info['cpu']}, {info['cores']} cores, {info['memory_gb']} GB RAM, "
        f"{info['os']}",
        f"- embcli side ({embcli.origin}): {embcli.versions_line()}",
        f"- Keras side ({keras.python}): {keras.versions_line()}",
        f"- embcli commit: {info['commit']}",
        f"- Load average at start: {info['load_average']}, at end: {info.get('load_average_end')}",
        f"- Peak RSS floor (`true` measured the same way): {info.get('rss_floor_mb')} MB",
    ]


def default_benchmark(args: argparse.Namespace, selected: list[str]) -> tuple[int, dict]:
    """The cases of ALL_CASES in `selected`; the exit code and the JSON report."""
    embcli, keras = interpreters(args)
    formats = [f.strip() for f in args.formats.split(",") if f.strip()]
    models = ensure_models(WORK, args.rows, args.dim, keras)
    plan = Plan(args, embcli, keras)
    build_plan(plan, selected, models, formats)
    info = machine_info(WORK, REPO)
    logs = WORK / "logs"
    info["rss_floor_mb"] = round(rss_floor(keras.env, logs), 1)
    for path in dict.fromkeys(plan.warm):
        warm(path)
    order = [(name, series) for name, series in plan.references]
    for case in plan.cases:
        order += [(case.name, series) for series in case.series()]
    print(f"{len(plan.cases)} cases x {args.repeat} runs; model {args.rows} x {args.dim}")
    print(f"embcli: {embcli.python} ({embcli.versions_line()})", flush=True)
    run_rounds(order, args.repeat, keras.env, logs)
    if not args.no_verify:
        plan.notes.extend(verify(plan))
    if not args.keep_outputs:
        shutil.rmtree(plan.out, ignore_errors=True)
    info["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    rows = table_rows(plan.cases, plan.references)
    goals = goal_lines(plan.cases)
    print()
    print(render_text(rows, HEADERS))
    print()
    for line in goals:
        print(line)
    for note in plan.notes:
        print(f"note: {note}")
    report = {
        "machine": info,
        "embcli_side": embcli.record(),
        "keras_side": keras.record(),
        "rows": args.rows,
        "dim": args.dim,
        "repeat": args.repeat,
        "notes": plan.notes,
        "references": [{"case": name, **s.record()} for name, s in plan.references],
        "cases": [case.record() for case in plan.cases],
    }
    if not args.no_results:
        size = args.rows * args.dim * 4 / MB
        body = "\n\n".join(
            [
                f"## Default benchmark: {args.rows} x {args.dim} float32 table ({size:.0f} MiB), "
                f"median of {args.repeat}",
                "\n".join(info_lines(info, embcli, keras)),
                render_markdown(rows, HEADERS),
                "Goals (issue 16):\n\n" + "\n".join(f"- {line}" for line in goals),
                "\n".join(f"- {note}" for note in plan.notes),
                EXPLANATION,
            ]
        )
        write_results("default", body)
    failed = not plan.verified
    failed |= any(case.command is not None and not case.command.ok for case in plan.cases)
    return (1 if failed else 0), report


EXPLANATION = (
    '`vs` is the baseline each case is held to: the import floor (`python -c "import '
    'numpy, h5py"` in the embcli venv), `cp` of the model file, or `dd bs=8M conv=fsync` '
    "(a durable copy). `x vs` is embcli's median time over the baseline's (below 1: faster "
    "than it); `Keras/embcli` is the Keras way's median over embcli's (the speedup). "
    "`assign --in-place` edits a fresh copy of the model each run (copied untimed). "
    'The Keras column of `--help` is `python -c "import keras"`.'
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Benchmark embcli against Keras and file copies (see bench/README.md).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=textwrap.dedent(f"""\
            cases: {", ".join(ALL_CASES)} (the default); also {BY_TOKEN}
            Models, the venv and outputs go to {WORK} (reused between runs)."""),
    )
    parser.add_argument("--rows", type=int, default=1_000_000, help="table rows (default 1000000)")
    parser.add_argument("--dim", type=int, default=128, help="table width (default 128)")
    parser.add_argument(
        "--repeat", type=int, default=None, help="runs per command (default 3; 1 with --big)"
    )
    parser.add_argument("--cases", default=",".join(ALL_CASES), help="comma-separated cases")
    parser.add_argument(
        "--python", metavar="PATH", help="run embcli with this interpreter instead of a fresh venv"
    )
    parser.add_argument(
        "--keras-python",
        metavar="PATH",
        help="run the Keras side with this interpreter (default: this one)",
    )
    parser.add_argument(
        "--gensim-python", metavar="PATH", help=f"an interpreter that has gensim, for {BY_TOKEN}"
    )
    parser.add_argument("--formats", default="keras,h5", help="model formats: keras,h5")
    parser.add_argument("--json", metavar="OUT", help="also write the results as JSON")
    parser.add_argument(
        "--compare",
        metavar="OLD.json",
        help="print this run's medians over those of an earlier --json",
    )
    parser.add_argument(
        "--no-verify",
        action="store_true",
        help="skip reloading embcli's outputs with Keras afterwards",
    )
    parser.add_argument("--no-results", action="store_true", help="leave bench/RESULTS.md alone")
    parser.add_argument(
        "--keep-outputs",
        action="store_true",
        help="keep the files the commands wrote, in bench/work/out",
    )
    parser.add_argument(
        "--big",
        action="store_true",
        help="build an 8 GiB .keras with h5py and time embcli alone on it",
    )
    parser.add_argument("--big-gb", type=float, default=8, help="table size for --big, in GiB")
    args = parser.parse_args(argv)
    if args.repeat is None:
        args.repeat = 1 if args.big else 3
    for name in ("json", "compare", "python", "keras_python", "gensim_python"):
        value = getattr(args, name)
        if value and (name in ("json", "compare") or os.sep in value):
            setattr(args, name, os.path.abspath(value))
    # Children start here, where no copy of embcli can shadow the one being measured.
    WORK.mkdir(parents=True, exist_ok=True)
    os.chdir(WORK)
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    if args.big:
        from big import big_benchmark

        code, report = big_benchmark(args, interpreters(args))
    else:
        selected = [c.strip() for c in args.cases.split(",") if c.strip()]
        unknown = set(selected) - set(ALL_CASES) - {BY_TOKEN}
        if unknown:
            parser.error(
                f"unknown cases: {', '.join(sorted(unknown))}; "
                f"known: {', '.join((*ALL_CASES, BY_TOKEN))}"
            )
        standard = [c for c in selected if c in ALL_CASES]
        code, report = 0, {}
        if standard:
            code, report = default_benchmark(args, standard)
        if BY_TOKEN in selected:
            from by_token import by_token_benchmark

            token_code, token_report = by_token_benchmark(args, interpreters(args))
            code = max(code, token_code)
            report = {**report, "by_token": token_report} if report else token_report
    if args.compare:
        print()
        print(compare_text(report, Path(args.compare)))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    return code


if __name__ == "__main__":
    sys.exit(main())
