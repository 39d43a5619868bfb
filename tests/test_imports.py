"""What each command imports: start-up time is what users wait for on every call.

Each command runs in a fresh interpreter (the CLI's `cli(args, standalone_mode=False)`),
which then reports the names in `sys.modules`. Nothing here is timed: the tests pin which
heavy modules stay out, so that a new top-level import shows up as a failure, not as a
slower benchmark that nobody reruns.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "fixtures"

# Runs the CLI on argv and prints, on its last line of stdout, where embcli came from and
# every module imported by then.
RUNNER = """\
import json, sys
import embcli
from embcli.cli import cli
cli(sys.argv[1:], prog_name="embcli", standalone_mode=False)
print()
print(json.dumps({"embcli": embcli.__file__, "modules": sorted(sys.modules)}))
"""

HEAVY = ("ml_dtypes", "tensorflow", "keras", "tf_keras", "keras_hub", "jax", "torch", "scipy")
HEAVY += ("pandas",)

# (fixture, a float32 table in it): a Keras 3 archive, a legacy HDF5 model, a weights file.
FLOAT32_MODELS = [
    ("k3_functional.keras", "words"),
    ("tfk_full.h5", "word_emb"),
    ("k3.weights.h5", "words"),
]


def imported_by(args: list[str], cwd: Path) -> set[str]:
    """The modules in `sys.modules` after `embcli ARGS` ran, in a fresh interpreter."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    result = subprocess.run(
        [sys.executable, "-c", RUNNER, *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.splitlines()[-1])
    assert Path(report["embcli"]).resolve().is_relative_to(ROOT), report["embcli"]
    return set(report["modules"])


def loaded(modules: set[str], package: str) -> list[str]:
    return sorted(m for m in modules if m == package or m.startswith(package + "."))


def command_args(command: str, model: Path, table: str, scratch: Path) -> list[str]:
    if command == "layers":
        return ["layers", str(model)]
    if command == "rows":
        return ["rows", str(model), "-l", table, "0", "-1"]
    if command == "export":
        return ["export", str(model), "-l", table, "-o", str(scratch / "table.npy")]
    return ["stats", str(model), "-l", table, "--json"]


@pytest.mark.parametrize("command", ["layers", "rows", "export", "stats"])
@pytest.mark.parametrize(("fixture", "table"), FLOAT32_MODELS)
def test_float32_commands_import_no_heavy_module(command, fixture, table, tmp_path):
    modules = imported_by(command_args(command, FIXTURES / fixture, table, tmp_path), tmp_path)

    assert "numpy" in modules and "h5py" in modules  # the command really read the file
    for package in HEAVY:
        assert loaded(modules, package) == [], f"{command} {fixture} imported {package}"


def test_help_imports_neither_numpy_nor_h5py(tmp_path):
    modules = imported_by(["--help"], tmp_path)

    assert "click" in modules
    for package in ("numpy", "h5py", *HEAVY):
        assert loaded(modules, package) == [], f"--help imported {package}"


@pytest.mark.parametrize("command", ["rows", "export"])
def test_bfloat16_table_imports_ml_dtypes(command, tmp_path):
    args = command_args(command, FIXTURES / "k3_dtypes.keras", "emb_bf16", tmp_path)

    assert "ml_dtypes" in imported_by(args, tmp_path)


@pytest.mark.parametrize("command", ["rows", "export"])
def test_float16_table_beside_a_bfloat16_one_does_not_import_ml_dtypes(command, tmp_path):
    args = command_args(command, FIXTURES / "k3_dtypes.keras", "emb_f16", tmp_path)

    assert loaded(imported_by(args, tmp_path), "ml_dtypes") == []


def test_listing_a_bfloat16_table_does_not_import_ml_dtypes(tmp_path):
    modules = imported_by(["layers", str(FIXTURES / "k3_dtypes.keras")], tmp_path)

    assert loaded(modules, "ml_dtypes") == []


# What a read of a float32 table leaves to the commands and files that need it.
DEFERRED = ("hashlib", "secrets", "tempfile", "embcli.formats.h5rewrite")
TOKENIZER_MODULES = (
    "embcli.tokenizers",
    "embcli.tokenizer_assets",
    "embcli.tokenizer_vocab",
    "embcli.sentencepiece_model",
)


@pytest.mark.parametrize("command", ["layers", "rows", "export"])
@pytest.mark.parametrize(("fixture", "table"), FLOAT32_MODELS)
def test_reading_commands_defer_what_they_do_not_use(command, fixture, table, tmp_path):
    modules = imported_by(command_args(command, FIXTURES / fixture, table, tmp_path), tmp_path)

    for name in DEFERRED:
        assert loaded(modules, name) == [], f"{command} {fixture} imported {name}"
    commands = {m for m in modules if m.startswith("embcli.commands.")}
    assert commands <= {"embcli.commands.read", "embcli.commands.options"}, commands
    if fixture == "tfk_full.h5":  # a legacy file has no tokenizer to look for
        for name in TOKENIZER_MODULES:
            assert loaded(modules, name) == [], f"{command} {fixture} imported {name}"
