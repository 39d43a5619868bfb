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
