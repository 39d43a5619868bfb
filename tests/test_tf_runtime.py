"""TensorFlow is imported only when a TensorFlow artifact is opened, and its absence is an
install hint, not a traceback. None of these tests needs TensorFlow."""

import json
import os
import subprocess
import sys

import pytest
from conftest import FIXTURES

from embcli.cli import cli
from embcli.errors import MissingDependency
from embcli.formats import tensorflow as tf_format

MODULES = ["runtime", "paths", "proto", "graph", "variables", "tables", "reader", "writer"]


def modules_after(script):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    out = subprocess.run(
        [sys.executable, "-c", script + "print(json.dumps(sorted(sys.modules)))\n"],
        capture_output=True,
        text=True,
        check=True,
        env=env,
    )
    return set(json.loads(out.stdout))


def test_importing_the_package_imports_no_tensorflow():
    imports = "".join(f"import embcli.formats.tensorflow.{m}\n" for m in MODULES)
    loaded = modules_after(
        "import json, sys\nfrom embcli.formats.tensorflow import open_tensorflow, import_tensorflow\n"
        + imports
    )
    assert {f"embcli.formats.tensorflow.{m}" for m in MODULES} <= loaded
    assert not {m for m in loaded if m.split(".")[0] in ("tensorflow", "google", "keras")}


def test_opening_a_keras_file_does_not_import_tensorflow():
    loaded = modules_after(
        "import json, sys\n"
        "from click.testing import CliRunner\n"
        "from embcli.cli import cli\n"
        f"result = CliRunner().invoke(cli, ['layers', {str(FIXTURES / 'k3_functional.keras')!r}])\n"
        "assert result.exit_code == 0, result.output\n"
    )
    assert "tensorflow" not in loaded


def test_missing_tensorflow_gives_the_install_hint(runner, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorflow", None)
    with pytest.raises(MissingDependency, match=r"pip install 'embcli\[tensorflow\]'"):
        tf_format.import_tensorflow()
    for artifact in ("tfk_ckpt/ckpt", "tfk_savedmodel", "k3_export"):
        result = runner.invoke(cli, ["layers", str(FIXTURES / artifact)])
        assert result.exit_code == 1
        assert result.output == f"Error: {tf_format.INSTALL_HINT}\n"
