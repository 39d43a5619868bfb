"""`--big`: an 8 GiB `.keras` built without Keras, and embcli alone on it.

Run as a script (by the Keras side's interpreter, which has numpy and h5py) it builds the
model: `python bench/big.py TARGET ROWS DIM TEMPLATE`.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path

from cases import ASSIGN_COUNT, IMPORT_FLOOR, durable_copy, embcli_argv
from environment import Interpreter, machine_info
from measure import MB, Series, remove, rss_floor, run_once, warm
from models import LAYER, ensure_models, ensure_vectors, spread_rows
from report import (
    AT_MOST_RATIO,
    HEADERS,
    UNDER_MB,
    Case,
    Goal,
    goal_lines,
    render_markdown,
    render_text,
    stats_memory_goal,
    table_rows,
    write_results,
)

BENCH = Path(__file__).resolve().parent
WORK = BENCH / "work"
GB = 1024 * MB
FIXED_ZIP_DATE = (1980, 1, 1, 0, 0, 0)


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


def big_benchmark(
    args: argparse.Namespace, sides: tuple[Interpreter, Interpreter]
) -> tuple[int, dict]:
    """Builds the model if missing, times each command, writes the `big` section."""
    embcli, keras = sides
    rows = int(args.big_gb * GB) // (args.dim * 4)
    size = rows * args.dim * 4
    target = WORK / f"big-{rows}x{args.dim}.keras"
    out = WORK / "out"
    out.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(WORK).free
    needed = 3 * size - (target.stat().st_size if target.exists() else 0)
    if free < needed:
        raise SystemExit(
            f"--big needs about {needed / GB:.0f} GiB free in {WORK} (the archive and two "
            f"copies of it at a time); {free / GB:.0f} GiB free"
        )
    if not target.is_file():
        small = ensure_models(WORK, 1000, args.dim, keras)["keras"]
        argv = [keras.python, __file__, str(target), str(rows), str(args.dim), str(small)]
        subprocess.run(argv, env=keras.env, check=True)
    vectors = ensure_vectors(WORK, ASSIGN_COUNT, args.dim, keras)
    targets = ",".join(map(str, spread_rows(rows, ASSIGN_COUNT)))
    exported, assigned = out / "big-export.npy", out / "big-assign.keras"
    scratch, copied, durable = (
        out / "big-in-place.keras",
        out / "big-cp.keras",
        out / "big-dd.keras",
    )
    floor = Series("import floor", [embcli.python, "-c", IMPORT_FLOOR], env=embcli.env)
    cp = Series("cp", ["cp", str(target), str(copied)], [copied])
    dd = Series("dd conv=fsync", durable_copy(target, durable), [durable])
    references = [("import floor", floor), ("cp .keras", cp), ("dd conv=fsync .keras", dd)]

    def run(*argv: object, outputs: list[Path] | None = None) -> Series:
        return Series("embcli", embcli_argv(embcli, *argv), outputs or [], env=embcli.env)

    in_place = run(
        "assign", scratch, "-l", LAYER, "--from", vectors, "--rows", targets, "--in-place"
    )
    in_place.prepare = [(target, scratch)]
    cases = [
        Case(
            "layers",
            run("layers", target),
            floor,
            None,
            [Goal("<= 1.5x import floor", AT_MOST_RATIO, 1.5, [floor])],
        ),
        Case(
            "rows",
            run("rows", target, 0, 5, rows // 2, -1),
            floor,
            None,
            [Goal("<= 1.5x import floor", AT_MOST_RATIO, 1.5, [floor])],
        ),
        Case(
            "stats", run("stats", target, "--json"), floor, None, [stats_memory_goal(rows, floor)]
        ),
        Case("neighbors", run("neighbors", target, 5, "-k", 10, "--json"), floor),
        Case(
            "export .npy",
            run("export", target, "-l", LAYER, "-o", exported, outputs=[exported]),
            cp,
            None,
            [
                Goal("<= 2x (cp + import floor)", AT_MOST_RATIO, 2, [cp, floor]),
                Goal("< 150 MB", UNDER_MB, 150),
            ],
        ),
        Case(
            "assign -o (10 rows)",
            run(
                "assign",
                target,
                "-l",
                LAYER,
                "--from",
                vectors,
                "--rows",
                targets,
                "-o",
                assigned,
                outputs=[assigned],
            ),
            dd,
            None,
            [
                Goal("<= 1.5x dd conv=fsync", AT_MOST_RATIO, 1.5, [dd]),
                Goal("< 150 MB", UNDER_MB, 150),
            ],
        ),
        Case(
            "assign --in-place (10 rows)",
            in_place,
            dd,
            None,
            [Goal("< 0.5x dd conv=fsync", AT_MOST_RATIO, 0.5, [dd])],
        ),
    ]
    info = machine_info(WORK, BENCH.parent)
    logs = WORK / "logs"
    info["rss_floor_mb"] = round(rss_floor(keras.env, logs), 1)
    warm(target)
    # One series at a time, its outputs removed after it, so that at most two copies of
    # the model are on disk beside it.
    for name, series in [*references, *[(c.name, c.command) for c in cases if c.command]]:
        for round_ in range(args.repeat):
            last = run_once(series, f"big-{name}", keras.env, logs)
            print(
                f"  [{round_ + 1}/{args.repeat}] {name:<28} {last.seconds:8.2f} s "
                f"{last.rss_mb:8.0f} MB",
                flush=True,
            )
        for path in [*series.outputs, *(t for _, t in series.prepare)]:
            remove(path)
    rows_out = table_rows(cases, references)
    goals = goal_lines(cases)
    notes = [
        f"{name}: {size / GB / s.seconds:.2f} GiB/s"
        for name, s in [(c.name, c.command) for c in cases[2:-1] if c.command] + references[1:]
        if s.ok and s.seconds
    ]
    print()
    print(render_text(rows_out, HEADERS))
    for line in goals + notes:
        print(line)
    report = {
        "machine": info,
        "embcli_side": embcli.record(),
        "rows": rows,
        "dim": args.dim,
        "bytes": size,
        "repeat": args.repeat,
        "references": [{"case": name, **s.record()} for name, s in references],
        "cases": [case.record() for case in cases],
    }
    if not args.no_results:
        body = "\n\n".join(
            [
                f"## --big: {rows} x {args.dim} float32 table ({size / GB:.3g} GiB) in a .keras "
                f"built with h5py, median of {args.repeat}",
                f"- Date: {info['date']}\n- Machine: {info['cpu']}, {info['cores']} cores, "
                f"{info['memory_gb']} GB RAM\n- embcli side ({embcli.origin}): "
                f"{embcli.versions_line()}\n- embcli commit: {info['commit']}\n"
                f"- Load average at start: {info['load_average']}",
                render_markdown(rows_out, HEADERS),
                "Goals (issue 16):\n\n" + "\n".join(f"- {line}" for line in goals),
                "Throughput (the table's size over the median time):\n\n"
                + "\n".join(f"- {note}" for note in notes),
                "No Keras comparison here: loading this model takes more than its size in RAM. "
                "`assign --in-place` writes 10 rows into a fresh copy each run; set beside the "
                "default run's figure for its 512 MB model, it shows the edit is flat in "
                "file size.",
            ]
        )
        write_results("big", body)
    failed = any(not c.command.ok for c in cases if c.command)
    return (1 if failed else 0), report


if __name__ == "__main__":
    build_big_model(Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), Path(sys.argv[4]))
