"""The cases of the default benchmark: each embcli command, what it is compared with, and
the goals of issue 16 it is held to."""

from __future__ import annotations

import filecmp
import json
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from environment import Interpreter
from keras_ref import VERIFY_SCRIPT, keras_argv
from measure import Series, remove
from models import (
    LAYER,
    ensure_vectors,
    ensure_vocab_model,
    half_vocab,
    spread_rows,
)
from report import (
    AT_LEAST_SPEEDUP,
    AT_MOST_RATIO,
    UNDER_MB,
    UNDER_SECONDS,
    Case,
    Goal,
    stats_memory_goal,
)

ASSIGN_COUNT = 10
RESIZE_ADD = 1000
NEIGHBOR_ROW = 5
NEIGHBOR_K = 10
COPY_BLOCK = "8M"
IMPORT_FLOOR = "import numpy, h5py"


def embcli_argv(python: Interpreter, *args: object) -> list[str]:
    return [python.python, "-m", "embcli", *map(str, args)]


def durable_copy(source: Path, target: Path) -> list[str]:
    return ["dd", f"if={source}", f"of={target}", f"bs={COPY_BLOCK}", "conv=fsync", "status=none"]


def has_command(python: Interpreter, name: str) -> bool:
    """Whether `embcli NAME --help` exits 0."""
    found = subprocess.run(embcli_argv(python, name, "--help"), env=python.env, capture_output=True)
    return found.returncode == 0


@dataclass
class Plan:
    """The cases of one default run, the reference commands they share, and the checks of
    their outputs that Keras makes afterwards."""

    embcli: Interpreter
    keras: Interpreter
    work: Path
    rows: int
    dim: int
    cases: list[Case] = field(default_factory=list)
    references: list[tuple[str, Series]] = field(default_factory=list)
    checks: list[dict] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    warm: list[Path] = field(default_factory=list)
    verified: bool = True

    @property
    def out(self) -> Path:
        return self.work / "out"

    def reference(self, name: str, series: Series) -> Series:
        """The reference command `name`, created once and listed once."""
        for known, existing in self.references:
            if known == name:
                return existing
        self.references.append((name, series))
        return series

    def floor(self) -> Series:
        argv = [self.embcli.python, "-c", IMPORT_FLOOR]
        return self.reference("import floor", Series("import floor", argv, env=self.embcli.env))

    def copy(self, model: Path, suffix: str) -> Series:
        target = self.out / f"cp{suffix}"
        return self.reference(
            f"cp {suffix}", Series("cp", ["cp", str(model), str(target)], [target])
        )

    def durable(self, model: Path, suffix: str, tag: str = "") -> Series:
        target = self.out / f"dd{tag}{suffix}"
        series = Series("dd conv=fsync", durable_copy(model, target), [target])
        return self.reference(f"dd conv=fsync {tag}{suffix}", series)

    def run(self, *args: object, outputs: list[Path] | None = None) -> Series:
        return Series("embcli", embcli_argv(self.embcli, *args), outputs or [], env=self.embcli.env)

    def keras_way(self, case: str, *args: object, outputs: list[Path] | None = None) -> Series:
        argv = keras_argv(self.keras.python, case, *args)
        return Series("keras", argv, outputs or [], env=self.keras.env)

    def check(self, kind: str, name: str, original: Path, output: Path, **extra: object) -> None:
        """Have Keras check `output` after the runs (see keras_ref.VERIFY_SCRIPT)."""
        self.checks.append(
            {"kind": kind, "name": name, "original": str(original), "output": str(output)} | extra
        )

    def assigned_rows(self) -> tuple[list[int], str, Path]:
        """The rows `assign` writes, as a list and as `--rows` text, and their vectors."""
        targets = spread_rows(self.rows, ASSIGN_COUNT)
        vectors = ensure_vectors(self.work, ASSIGN_COUNT, self.dim, self.keras)
        return targets, ",".join(map(str, targets)), vectors


# One builder a case and model format: (plan, model, suffix) -> None.
Builder = Callable[[Plan, Path, str], None]


def add_layers(plan: Plan, model: Path, suffix: str) -> None:
    floor, keras = plan.floor(), plan.keras_way("layers", model)
    speedup = 25 if suffix == ".keras" else 20
    goals = [
        Goal("<= 1.5x import floor", AT_MOST_RATIO, 1.5, [floor]),
        Goal(f">= {speedup}x Keras", AT_LEAST_SPEEDUP, speedup, [keras]),
        Goal("< 100 MB", UNDER_MB, 100),
    ]
    plan.cases.append(Case(f"layers {suffix}", plan.run("layers", model), floor, keras, goals))


def add_rows(plan: Plan, model: Path, suffix: str) -> None:
    sample = [0, 5, plan.rows // 2]
    mine = plan.run("rows", model, *sample, -1)
    keras = plan.keras_way("rows", model, *sample, plan.rows - 1)
    floor = plan.floor()
    goals = [Goal("<= 1.5x import floor", AT_MOST_RATIO, 1.5, [floor])]
    plan.cases.append(Case(f"rows {suffix}", mine, floor, keras, goals))


def add_export(plan: Plan, model: Path, suffix: str) -> None:
    floor, copy = plan.floor(), plan.copy(model, suffix)
    mine_out = plan.out / f"embcli-export{suffix}.npy"
    theirs_out = plan.out / f"keras-export{suffix}.npy"
    mine = plan.run("export", model, "-l", LAYER, "-o", mine_out, outputs=[mine_out])
    keras = plan.keras_way("export", model, theirs_out, outputs=[theirs_out])
    goals = [
        Goal(">= 10x Keras", AT_LEAST_SPEEDUP, 10, [keras]),
        Goal("<= 2x (cp + import floor)", AT_MOST_RATIO, 2, [copy, floor]),
        Goal("< 150 MB", UNDER_MB, 150),
    ]
    plan.cases.append(Case(f"export .npy {suffix}", mine, copy, keras, goals))
    plan.check("export", f"export .npy {suffix}", model, mine_out)


def add_stats(plan: Plan, model: Path, suffix: str) -> None:
    floor = plan.floor()
    mine = plan.run("stats", model, "--json")
    goals = [stats_memory_goal(plan.rows, floor)]
    plan.cases.append(Case(f"stats {suffix}", mine, floor, plan.keras_way("stats", model), goals))


def add_neighbors(plan: Plan, model: Path, suffix: str) -> None:
    mine = plan.run("neighbors", model, NEIGHBOR_ROW, "-k", NEIGHBOR_K, "--json")
    keras = plan.keras_way("neighbors", model, NEIGHBOR_ROW, NEIGHBOR_K)
    plan.cases.append(Case(f"neighbors {suffix}", mine, plan.floor(), keras))


def add_assign(plan: Plan, model: Path, suffix: str) -> None:
    targets, target_text, vectors = plan.assigned_rows()
    dd = plan.durable(model, suffix)
    mine_out = plan.out / f"embcli-assign{suffix}"
    theirs_out = plan.out / f"keras-assign{suffix}"
    rows_args = ("-l", LAYER, "--from", vectors, "--rows", target_text)
    mine = plan.run("assign", model, *rows_args, "-o", mine_out, outputs=[mine_out])
    keras = plan.keras_way("assign", model, theirs_out, vectors, target_text, outputs=[theirs_out])
    goals = [
        Goal("<= 1.5x dd conv=fsync", AT_MOST_RATIO, 1.5, [dd]),
        Goal("< 150 MB", UNDER_MB, 150),
    ]
    name = f"assign -o {suffix}"
    plan.cases.append(Case(name, mine, dd, keras, goals))
    plan.check("assign", name, model, mine_out, rows=targets, vectors=str(vectors))


def add_in_place(plan: Plan, model: Path, suffix: str) -> None:
    """`assign --in-place` of the same rows, on a fresh copy of the model each run."""
    targets, target_text, vectors = plan.assigned_rows()
    dd = plan.durable(model, suffix)
    scratch = plan.out / f"in-place{suffix}"
    mine = plan.run(
        "assign", scratch, "-l", LAYER, "--from", vectors, "--rows", target_text, "--in-place"
    )
    mine.prepare = [(model, scratch)]
    goals = [Goal("< 0.5x dd conv=fsync", AT_MOST_RATIO, 0.5, [dd])]
    name = f"assign --in-place {suffix}"
    plan.cases.append(Case(name, mine, dd, None, goals))
    plan.check("assign", name, model, scratch, rows=targets, vectors=str(vectors))


def resize_goals(dd: Series) -> list[Goal]:
    return [Goal("<= 2x dd conv=fsync", AT_MOST_RATIO, 2, [dd]), Goal("< 300 MB", UNDER_MB, 300)]


def add_resize(plan: Plan, model: Path, suffix: str) -> None:
    dd = plan.durable(model, suffix)
    mine_out = plan.out / f"embcli-resize{suffix}"
    mine = plan.run(
        "resize", model, "-l", LAYER, "--add", RESIZE_ADD, "-o", mine_out, outputs=[mine_out]
    )
    name = f"resize --add {RESIZE_ADD} {suffix}"
    plan.cases.append(Case(name, mine, dd, None, resize_goals(dd)))
    plan.check("resize", name, model, mine_out, add=RESIZE_ADD)


def add_remap(plan: Plan) -> None:
    """`remap` keeping every other row, on a `.keras` whose StringLookup knows the tokens."""
    model, tokens = ensure_vocab_model(plan.work, plan.rows, plan.dim, plan.keras)
    if has_command(plan.embcli, "vocab"):
        listed = plan.work / "vocab-model.embcli-vocab.txt"
        remove(listed)
        argv = embcli_argv(plan.embcli, "vocab", model, "-l", LAYER, "-o", listed)
        if subprocess.run(argv, env=plan.embcli.env, capture_output=True).returncode == 0:
            if not filecmp.cmp(listed, tokens, shallow=False):
                plan.notes.append(
                    "`embcli vocab -o` lists the remap model's tokens unlike the file Keras's "
                    "vocabulary was written from; NEW_VOCAB keeps every other line of embcli's."
                )
                tokens = listed
    half = half_vocab(tokens)
    plan.warm += [model, half]
    dd = plan.durable(model, ".keras", tag="vocab-model")
    mine_out = plan.out / "embcli-remap.keras"
    mine = plan.run("remap", model, "-l", LAYER, "--to", half, "-o", mine_out, outputs=[mine_out])
    name = "remap half .keras"
    plan.cases.append(Case(name, mine, dd, None, resize_goals(dd)))
    plan.check("remap", name, model, mine_out, keep_every=2)


def add_help(plan: Plan) -> None:
    keras = Series("import keras", [plan.keras.python, "-c", "import keras"], env=plan.keras.env)
    goals = [Goal("< 0.15 s", UNDER_SECONDS, 0.15)]
    plan.cases.append(Case("--help", plan.run("--help"), plan.floor(), keras, goals))


PER_FORMAT: dict[str, Builder] = {
    "layers": add_layers,
    "rows": add_rows,
    "export": add_export,
    "stats": add_stats,
    "neighbors": add_neighbors,
    "assign": add_assign,
    "in-place": add_in_place,
    "resize": add_resize,
}
ONCE: dict[str, Callable[[Plan], None]] = {"help": add_help, "remap": add_remap}
ALL_CASES = tuple(["help", *PER_FORMAT, "remap"])
NEWER_COMMANDS = ("stats", "neighbors", "resize", "remap")


def build_plan(plan: Plan, selected: list[str], models: dict[str, Path]) -> None:
    """Add the `selected` cases, on every model of `models` (suffix -> path) where they
    run per format; a command this embcli lacks becomes a case marked not available."""
    for name in selected:
        if name in NEWER_COMMANDS and not has_command(plan.embcli, name):
            missing = f"`embcli {name} --help` does not exit 0"
            plan.cases.append(Case(name, None, missing=missing))
        elif name in ONCE:
            ONCE[name](plan)
        else:
            for suffix, model in models.items():
                plan.warm.append(model)
                PER_FORMAT[name](plan, model, suffix)


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
