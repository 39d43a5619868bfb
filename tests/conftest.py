import json
import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "fixtures"

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")


def load_manifest() -> dict:
    with open(FIXTURES / "manifest.json") as handle:
        return json.load(handle)


MANIFEST = load_manifest() if (FIXTURES / "manifest.json").exists() else {}
H5_KINDS = {"keras_archive", "keras_folder", "weights_h5", "sharded", "legacy_h5"}


def fixture_names(kinds=H5_KINDS) -> list[str]:
    return sorted(
        name
        for name, entry in MANIFEST.items()
        if entry.get("kind") in kinds and not entry.get("skipped")
    )


@pytest.fixture
def runner():
    from click.testing import CliRunner

    return CliRunner()


# Tests that ask Keras or TensorFlow (in-process or through an oracle subprocess) are
# marked so that `pytest -m "not keras and not tensorflow"` is a fast tier, and are
# skipped with a reason, never failed, where the oracle is not installed.
KERAS_SIGNS = ("keras_tables(", "keras_check(", "keras_lookup(", "import keras", "tf_keras")
TENSORFLOW_SIGNS = ("import tensorflow", "tf.train.", "tensorflow")


def _source(item) -> str:
    import inspect

    try:
        return inspect.getsource(item.function)
    except (OSError, TypeError, AttributeError):
        return ""


def pytest_collection_modifyitems(config, items):
    for item in items:
        source = _source(item)
        if any(sign in source for sign in KERAS_SIGNS):
            item.add_marker(pytest.mark.keras)
        if any(sign in source for sign in TENSORFLOW_SIGNS):
            item.add_marker(pytest.mark.tensorflow)


def _installed(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


@pytest.fixture(autouse=True)
def _skip_without_oracles(request):
    if request.node.get_closest_marker("keras") and not _installed("keras"):
        pytest.skip("Keras, the oracle, is not installed (pip install '.[test]')")
    if request.node.get_closest_marker("tensorflow") and not _installed("tensorflow"):
        pytest.skip("TensorFlow is not installed (pip install '.[test]')")


# Servers on loopback for the tests of models at URLs (see remote_servers).
@pytest.fixture
def http_server():
    from remote_servers import running_http_server

    yield from running_http_server()


@pytest.fixture(scope="module")
def s3_endpoint():
    from remote_servers import running_s3_server

    yield from running_s3_server()
