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
import sys
import textwrap
from pathlib import Path

from cases import ALL_CASES, Plan, build_plan, verify
from environment import (
    EMBCLI_PACKAGES,
    KERAS_PACKAGES,
    Interpreter,
    fresh_venv,
    machine_info,
)
from measure import Series, rss_floor, run_rounds, slug, warm
from models import FORMATS, ensure_models
from report import (
    HEADERS,
    compare_text,
    goal_lines,
    render_markdown,
    render_text,
    table_rows,
    write_results,
)

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
WORK = BENCH / "work"
CHILD_ENV = {"TF_CPP_MIN_LOG_LEVEL": "3", "KERAS_BACKEND": "tensorflow"}
BY_TOKEN = "by-token"


def interpreters(args: argparse.Namespace) -> tuple[Interpreter, Interpreter]:
    """The embcli side (a fresh venv, or --python) and the Keras side, probed."""
    env = dict(os.environ, **CHILD_ENV)
    if args.python:
        embcli = Interpreter(args.python, env, "--python")
    else:
        embcli = fresh_venv(REPO, WORK, env)
    keras = Interpreter(args.keras_python or sys.executable, env, "Keras side")
    return embcli.probe(EMBCLI_PACKAGES), keras.probe(KERAS_PACKAGES)


def failure_notes(order: list[tuple[str, Series]], logs: Path) -> list[str]:
    """The last line of stderr of each command that failed, to say why in the results."""
    notes = []
    for case, series in order:
        if series.runs and not series.ok:
            err = (logs / slug(f"{case}-{series.label}")).with_suffix(".err")
            lines = err.read_text(errors="replace").strip().splitlines() if err.exists() else []
            notes.append(f"{case} ({series.label}) failed: {lines[-1] if lines else 'no message'}")
    return notes


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
    generated = ensure_models(WORK, args.rows, args.dim, keras)
    models = {FORMATS[fmt]: generated[fmt] for fmt in formats}
    plan = Plan(embcli, keras, WORK, args.rows, args.dim)
    plan.out.mkdir(parents=True, exist_ok=True)
    build_plan(plan, selected, models)
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
    plan.notes.extend(failure_notes(order, logs))
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
        size = args.rows * args.dim * 4 / 1e6
        body = "\n\n".join(
            [
                f"## Default benchmark: {args.rows} x {args.dim} float32 table ({size:.0f} MB), "
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
