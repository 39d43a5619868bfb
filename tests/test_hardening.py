"""Untrusted model files: every command refuses the corpus of malformed and hostile inputs
(tests/corpus/make_corpus.py) cleanly, and reads the unusual-but-safe ones, while running
no code from them, reading nothing outside them and changing nothing.

The commands run in one subprocess (tests/corpus/driver.py) that records, per command,
Python's audit events, the files h5py was asked to open, and what the kernel saw opened
in the corpus folders (inotify), so that a file opened by the HDF5 library itself, such as
the target of an external link, is seen too.
"""

import importlib.util
import json
import os
import re
import site
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

import numpy as np
import pytest

from embcli.errors import EmbcliError, MalformedFile, UnsafeFile

CORPUS_DIR = Path(__file__).resolve().parent / "corpus"
DRIVER = CORPUS_DIR / "driver.py"
COMMAND_TIMEOUT = 60
DRIVER_TIMEOUT = 900
TEMP_PREFIX = ".embcli-tmp-"
CODE_EVENTS = {
    "exec",
    "marshal.loads",
    "marshal.load",
    "pickle.find_class",
    "os.system",
    "os.exec",
    "os.posix_spawn",
    "os.spawn",
    "os.fork",
    "os.forkpty",
    "subprocess.Popen",
    "socket.connect",
    "socket.getaddrinfo",
    "urllib.Request",
    "builtins.input",
}
NEVER_IMPORTED = ("tensorflow", "keras", "tf_keras", "torch", "jax")
REQUIRED_CASES = {
    "empty_file",
    "random_bytes",
    "truncated_archive_50",
    "truncated_h5_30",
    "no_weights_member",
    "config_not_json",
    "member_traversal",
    "member_duplicate_weights",
    "h5_external_link_archive",
    "h5_soft_link_weights",
    "h5_virtual_dataset_legacy",
    "h5_external_storage_archive",
    "h5_shape_bomb_chunked_archive",
    "h5_data_past_eof_weights",
    "wrong_rank_table_archive",
    "lambda_bytecode",
    "config_names_os_system",
    "config_deeply_nested",
    "config_huge",
    "shard_traversal",
    "shard_absolute",
    "zip_bomb",
    "vectors_pickle_npy",
    "vectors_ragged_csv",
    "vectors_nan_csv",
    "vectors_non_numeric_csv",
    "vectors_non_utf8_txt",
    "vectors_huge_header",
    "vectors_pickle_npz",
    "config_inflates_past_bound",
    "config_too_many_containers",
}
UNSAFE_CASES = re.compile(
    r"link|virtual|external_storage|shape_bomb|hard_link_twice|member_(traversal|absolute|"
    r"backslash|drive|duplicate|symlink)|zip_bomb|deflated_bomb|too_many|shard_(traversal|"
    r"absolute|backslash|symlink)|config_huge"
)


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, CORPUS_DIR / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


make_corpus = _load("make_corpus")


@pytest.fixture(scope="session")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    cases = make_corpus.build(root)
    return root, {case.name: case for case in cases}


def command_lines(root: Path, case) -> list[list[str]]:
    """Every command that applies to a case, as argument lists."""
    model = str(root / case.model)
    folder = root / "cases" / case.name
    if case.commands == "assign":
        vectors = str(root / case.vectors)
        return [
            ["assign", model, "--from", vectors, "--rows", "0", "-o", str(folder / "out.keras")],
            ["assign", model, "--from", vectors, "--rows", "0", "--in-place"],
        ]
    lines = [
        ["layers", model],
        ["layers", model, "--all", "--json"],
        ["rows", model, "0", "-1", "--json"],
        ["export", model, "-o", str(folder / "out.npy")],
        ["export", model, "-o", str(folder / "out.npz")],
        ["stats", model, "--json"],
        ["check", model],
        ["neighbors", model, "0", "-k", "2"],
        ["diff", model, model],
        [
            "assign",
            model,
            "--fill",
            "zeros",
            "--rows",
            "0",
            "-o",
            str(folder / f"out{case.output_suffix}"),
        ],
    ]
    if case.expect == "refuse":
        lines.append(["assign", model, "--fill", "zeros", "--rows", "0", "--in-place"])
    return lines


@pytest.fixture(scope="session")
def driven(corpus, tmp_path_factory):
    """Run every command on every case in one audited subprocess; results by case."""
    root, cases = corpus
    work = tmp_path_factory.mktemp("driver")
    cwd = work / "cwd"
    cwd.mkdir()
    runs = []
    for case in cases.values():
        for number, args in enumerate(command_lines(root, case)):
            runs.append(
                {
                    "id": f"{case.name}:{number}",
                    "args": args,
                    "folder": str(root / "cases" / case.name),
                }
            )
    watch = [str(root / "outside"), str(root / "outside" / "assets")]
    for folder, dirs, _ in os.walk(root / "cases"):
        watch.extend(str(Path(folder) / d) for d in dirs if not (Path(folder) / d).is_symlink())
    spec = {
        "root": str(root),
        "watch": watch,
        "cwd": str(cwd),
        "timeout": COMMAND_TIMEOUT,
        "runs": runs,
        "warmup": [["layers", str(root / cases["control_archive"].model)]],
    }
    (work / "spec.json").write_text(json.dumps(spec))
    done = subprocess.run(
        [sys.executable, str(DRIVER), str(work / "spec.json"), str(work / "results.json")],
        capture_output=True,
        text=True,
        timeout=DRIVER_TIMEOUT,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
    )
    assert done.returncode == 0, f"the driver failed or hung:\n{done.stderr[-6000:]}"
    by_case: dict[str, list[dict]] = {}
    for result in json.loads((work / "results.json").read_text()):
        by_case.setdefault(result["id"].split(":")[0], []).append(result)
    return by_case


def _problems(found: list[str]) -> str:
    return f"{len(found)} problem(s):\n" + "\n".join(found[:40])


def _each(corpus, driven, expect=None):
    _, cases = corpus
    for name, results in driven.items():
        case = cases[name]
        if expect is None or case.expect == expect:
            for result in results:
                yield case, result


def _show(result) -> str:
    return f"{result['id']} `embcli {' '.join(Path(a).name for a in result['args'])}`"


def test_corpus_covers_the_issue(corpus):
    _, cases = corpus
    assert REQUIRED_CASES <= set(cases), REQUIRED_CASES - set(cases)
    assert len(cases) >= 100


def test_every_case_ran_every_command(corpus, driven):
    root, cases = corpus
    assert set(driven) == set(cases)
    for name, case in cases.items():
        assert len(driven[name]) == len(command_lines(root, case))


def test_refusals_are_one_error_line_with_the_right_exit_status(corpus, driven):
    found = []
    for _, result in _each(corpus, driven, "refuse"):
        expected_status = 2 if result["args"][0] == "diff" else 1
        stderr = result["stderr"]
        if result["escaped"]:
            found.append(f"{_show(result)}: an exception escaped:\n{result['escaped']}")
        elif result["exit_code"] != expected_status:
            found.append(f"{_show(result)}: exit {result['exit_code']}, stderr {stderr!r}")
        elif not stderr.startswith("Error: ") or stderr.count("\n") != 1:
            found.append(f"{_show(result)}: stderr is not one `Error:` line: {stderr!r}")
        elif "Traceback" in stderr + result["stdout"]:
            found.append(f"{_show(result)}: printed a traceback")
        elif result["stdout"].strip():
            found.append(f"{_show(result)}: printed {result['stdout'][:200]!r}")
    assert not found, _problems(found)


def test_refusals_name_the_reason(corpus, driven):
    """Each case is refused for what is wrong with it, not for something incidental."""
    found = []
    for case, result in _each(corpus, driven, "refuse"):
        if not re.search(case.reason, result["stderr"], re.IGNORECASE):
            found.append(
                f"{_show(result)}: {result['stderr'].strip()!r} does not match {case.reason!r}"
            )
        if "out of memory" in result["stderr"]:
            found.append(f"{_show(result)}: ran out of memory instead of refusing")
    assert not found, _problems(found)


def test_safe_oddities_are_read(corpus, driven):
    """The unmutated bases, a model with a Lambda layer, and configs naming `os.system`
    are read and edited like any model."""
    found = []
    for _, result in _each(corpus, driven, "accept"):
        if result["exit_code"] != 0 or result["escaped"]:
            found.append(
                f"{_show(result)}: exit {result['exit_code']}: "
                f"{result['stderr'][-300:]!r} {result['escaped'] or ''}"
            )
    assert not found, _problems(found)


@pytest.mark.parametrize(
    "name",
    [
        "lambda_bytecode",
        "config_names_os_system",
        "legacy_config_names_os_system",
        "control_archive",
    ],
)
def test_models_with_code_in_their_config_still_list_and_export(corpus, driven, name):
    root, _ = corpus
    layers_all, rows = driven[name][1], driven[name][2]
    assert layers_all["args"][:1] == ["layers"] and rows["args"][:1] == ["rows"]
    listed = json.loads(layers_all["stdout"])
    words = [t for t in listed if t["name"] == make_corpus.TABLE_NAME]
    assert words and words[0]["shape"] == [make_corpus.ROWS, make_corpus.DIM]
    exported = np.load(root / "cases" / name / "out.npy")
    np.testing.assert_array_equal(exported, make_corpus.table_values())
    shown = json.loads(rows["stdout"])
    assert [r["index"] for r in shown["rows"]] == [0, make_corpus.ROWS - 1]


def test_no_code_from_a_file_runs(corpus, driven):
    """No marker file appears; nothing is unpickled, unmarshalled, executed or spawned;
    nothing a config names is imported; no TensorFlow or Keras is imported."""
    root, cases = corpus
    found = []
    for case in cases.values():
        if case.marker and (root / case.marker).exists():
            found.append(f"{case.name}: the marker {case.marker} appeared")
    for case, result in _each(corpus, driven):
        for event, detail in result["events"]:
            if event in CODE_EVENTS:
                found.append(f"{_show(result)}: {event} {detail}")
            if event == "import":
                forbidden = (*NEVER_IMPORTED, *case.extra.get("forbidden_imports", []))
                if detail.split(".")[0] in forbidden or detail in ("os.system", "system"):
                    found.append(f"{_show(result)}: imported {detail}")
    assert not found, _problems(found)


def test_refused_commands_change_nothing_and_leave_nothing(corpus, driven):
    """A refused command leaves its folder exactly as it was: inputs byte for byte, no
    output, no temporary folder, nothing in the working directory."""
    found = []
    for _, result in _each(corpus, driven, "refuse"):
        if result["after"] != result["before"]:
            changed = {
                k
                for k in result["before"].keys() | result["after"].keys()
                if result["before"].get(k) != result["after"].get(k)
            }
            found.append(f"{_show(result)}: changed {sorted(changed)}")
        if result["cwd_after"]:
            found.append(f"{_show(result)}: wrote {result['cwd_after']} into the working folder")
    assert not found, _problems(found)


def test_accepted_commands_change_only_their_output(corpus, driven):
    found = []
    for _, result in _each(corpus, driven, "accept"):
        before, after = result["before"], result["after"]
        for key in before.keys() | after.keys():
            if before.get(key) == after.get(key):
                continue
            if key.split("/")[0].startswith("out") and key not in before:
                continue
            found.append(f"{_show(result)}: {key} changed")
        if any(TEMP_PREFIX in key for key in after):
            found.append(f"{_show(result)}: left a temporary folder")
    assert not found, _problems(found)


def _python_prefixes() -> list[str]:
    """Where Python, its packages and embcli's own code live."""
    import embcli

    prefixes = {
        sys.prefix,
        sys.base_prefix,
        sys.exec_prefix,
        sys.base_exec_prefix,
        *site.getsitepackages(),
        *sysconfig.get_paths().values(),
        str(Path(embcli.__file__).parent),
    }
    return sorted({os.path.realpath(p) for p in prefixes}, key=len)


SYSTEM_PREFIXES = (
    "/proc/",
    "/dev/",
    "/sys/",
    "/usr/lib/",
    "/usr/share/zoneinfo/",
    "/etc/localtime",
    "/etc/ld.so",
)


def _allowed(root: Path, case) -> set[str]:
    allowed = {os.path.realpath(root / f) for f in case.files}
    allowed.add(os.path.realpath(root / "cases" / case.name))
    if case.vectors:
        allowed.add(os.path.realpath(root / case.vectors))
    return allowed


def _is_output(path: str, root: Path, case) -> bool:
    folder = os.path.realpath(root / "cases" / case.name)
    relative = os.path.relpath(path, folder)
    return not relative.startswith("..") and (
        relative.startswith("out") or relative.startswith(TEMP_PREFIX)
    )


def test_nothing_outside_the_model_is_read(corpus, driven):
    """Python-level opens, h5py opens and kernel-level opens in the corpus stay within the
    model's own files, its output and embcli's temporary folder; nothing in `outside/`
    (link targets, VDS sources, external raw data, shards named by absolute path) and
    nothing like /etc/passwd is ever opened."""
    root, _ = corpus
    root_real = os.path.realpath(root)
    prefixes = _python_prefixes()
    temp = os.path.realpath(tempfile.gettempdir())
    found = []
    for case, result in _each(corpus, driven):
        allowed = _allowed(root, case)
        for path in result["inotify"]:
            real = os.path.realpath(path) if not os.path.islink(path) else path
            if real not in allowed and not _is_output(real, root, case):
                found.append(f"{_show(result)}: the kernel saw {path} opened")
        for path, mode in result["opened"]:
            absolute = os.path.abspath(path)
            real = os.path.realpath(absolute)
            if real.startswith(root_real + os.sep) or real == root_real:
                if real not in allowed and not _is_output(real, root, case):
                    found.append(f"{_show(result)}: opened {path} ({mode})")
            elif real == temp or real.startswith(SYSTEM_PREFIXES):
                continue
            elif not any(real == p or real.startswith(p + os.sep) for p in prefixes):
                found.append(f"{_show(result)}: opened {path} ({mode})")
            elif "w" in mode or "a" in mode:
                found.append(f"{_show(result)}: opened {path} for writing ({mode})")
    assert not found, _problems(found)


def test_deletions_and_renames_stay_in_temporary_folders(corpus, driven):
    root, _ = corpus
    found = []
    for case, result in _each(corpus, driven):
        for event, detail in result["events"]:
            if event not in ("os.remove", "os.rmdir", "shutil.rmtree", "os.rename"):
                continue
            if TEMP_PREFIX not in detail and not (event == "os.rename" and case.expect == "accept"):
                found.append(f"{_show(result)}: {event} {detail}")
    assert not found, _problems(found)


def test_library_refuses_with_the_right_exception_class(corpus):
    """The same refusals through the library, for code that uses embcli without the CLI:
    hostile content is UnsafeFile, damaged content MalformedFile or another EmbcliError."""
    from embcli.model import list_tables, open_model

    root, cases = corpus
    found = []
    for case in cases.values():
        if case.expect != "refuse" or case.commands != "read":
            continue
        try:
            with open_model(root / case.model) as model:
                list_tables(model, all_weights=True)
        except EmbcliError as exc:
            if UNSAFE_CASES.search(case.name) and not isinstance(exc, UnsafeFile):
                found.append(f"{case.name}: {type(exc).__name__}: {exc}")
            if case.name.startswith("truncated") and not isinstance(exc, MalformedFile):
                found.append(f"{case.name}: {type(exc).__name__}: {exc}")
        else:
            found.append(f"{case.name}: opened without error")
    assert not found, _problems(found)


@pytest.mark.parametrize(
    "name",
    [
        "empty_file",
        "member_traversal",
        "h5_external_link_weights",
        "vectors_pickle_npy",
        "lambda_bytecode",
    ],
)
def test_the_installed_command_behaves_the_same(corpus, name, tmp_path):
    """A real `python -m embcli` process, not the test runner: same status, no traceback."""
    root, cases = corpus
    case = cases[name]
    args = command_lines(root, case)[-1 if case.commands == "assign" else 0]
    done = subprocess.run(
        [sys.executable, "-m", "embcli", *args],
        capture_output=True,
        text=True,
        timeout=COMMAND_TIMEOUT,
        cwd=tmp_path,
    )
    if case.expect == "refuse":
        assert done.returncode == 1
        assert done.stderr.startswith("Error: ") and "Traceback" not in done.stderr
        assert re.search(case.reason, done.stderr, re.IGNORECASE)
    else:
        assert done.returncode == 0, done.stderr
    assert not list(tmp_path.iterdir())


def test_the_pickle_payload_is_live(tmp_path):
    """The pickled vectors in the corpus really run code when unpickled, so refusing them
    (and the marker never appearing) proves something."""
    marker = tmp_path / "UNPICKLED"
    array = np.empty((1, 2), dtype=object)
    array[0, 0] = make_corpus.OpenOnUnpickle(str(marker))
    np.save(tmp_path / "v.npy", array, allow_pickle=True)
    np.load(tmp_path / "v.npy", allow_pickle=True)
    assert marker.exists()


def test_the_lambda_payload_is_live(tmp_path):
    """The corpus's Lambda bytecode, loaded the way Keras's `func_load` does, writes its
    marker when called."""
    import base64
    import marshal
    import types

    marker = tmp_path / "LAMBDA_RAN"
    code = marshal.loads(base64.decodebytes(make_corpus.lambda_code(marker).encode()))
    function = types.FunctionType(code, {"__builtins__": __builtins__})
    assert function(3) == 3
    assert marker.exists()


KERAS_ORACLE = r"""
import json, sys
import numpy as np
import keras
control, lam, marker = sys.argv[1:4]
model = keras.saving.load_model(control)
table = model.get_layer("words").get_weights()[0]
refused = False
try:
    keras.saving.load_model(lam)
except Exception:
    refused = True
before = __import__("os").path.exists(marker)
keras.saving.load_model(lam, safe_mode=False)
after = __import__("os").path.exists(marker)
print(json.dumps({"table": table.tolist(), "refused": refused, "before": before, "after": after}))
"""


@pytest.mark.keras
def test_keras_reads_the_corpus_bases_and_runs_the_lambda(tmp_path):
    """Keras is the oracle: it loads the hand-built base archive with the table the corpus
    wrote, and it runs the corpus's Lambda when told to load it unsafely, which embcli
    never does."""
    pytest.importorskip("keras")
    marker = tmp_path / "LAMBDA_RAN"
    weights = tmp_path / "w.h5"
    make_corpus.write_h5(weights, "weights", None, tmp_path)
    control = tmp_path / "control.keras"
    make_corpus.write_zip(
        control, make_corpus.keras_members(make_corpus.functional_config(), weights.read_bytes())
    )
    lam = tmp_path / "lambda.keras"
    config = make_corpus.functional_config(make_corpus.lambda_layer(marker))
    make_corpus.write_zip(lam, make_corpus.keras_members(config, weights.read_bytes()))
    done = subprocess.run(
        [sys.executable, "-c", KERAS_ORACLE, str(control), str(lam), str(marker)],
        capture_output=True,
        text=True,
        timeout=300,
        env={
            **os.environ,
            "TF_CPP_MIN_LOG_LEVEL": "3",
            "KERAS_BACKEND": os.environ.get("KERAS_BACKEND", "tensorflow"),
        },
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    np.testing.assert_array_equal(np.array(report["table"], np.float32), make_corpus.table_values())
    assert report["refused"] and not report["before"] and report["after"]


def test_a_file_planted_beside_a_model_cannot_make_a_read_write(corpus, tmp_path):
    """An untrusted download can hold more than the model: a file named like embcli's undo
    journal must not make a read-only command write into the folder."""
    import hashlib

    root, cases = corpus
    model = tmp_path / "model.keras"
    model.write_bytes((root / cases["control_archive"].model).read_bytes())
    before = hashlib.sha256(model.read_bytes()).hexdigest()
    blob = b"PLANTED"
    header = {
        "file": model.name,
        "size": 0,
        "entries": [[0, len(blob)]],
        "sha256": hashlib.sha256(blob).hexdigest(),
    }
    planted = tmp_path / ".embcli-journal-999999999-model.keras"
    planted.write_bytes(b"EMBCLI-JOURNAL-1\n" + json.dumps(header).encode() + b"\n" + blob)
    for command in ("layers", "recover"):
        done = subprocess.run(
            [sys.executable, "-m", "embcli", command, str(model)],
            capture_output=True,
            text=True,
            timeout=COMMAND_TIMEOUT,
        )
        assert done.returncode == 0, done.stderr
        assert hashlib.sha256(model.read_bytes()).hexdigest() == before, done.stderr


def test_the_global_heap_payload_hangs_plain_h5py(corpus):
    """Reading the corpus's zeroed global heap object with h5py alone never returns, so
    embcli's check of global heaps (which refuses it at once) is what keeps it in time."""
    root, cases = corpus
    model = root / cases["h5_global_heap_loop_legacy"].model
    script = f"import h5py; h5py.File({str(model)!r}, 'r').attrs['model_config']"
    with pytest.raises(subprocess.TimeoutExpired):
        subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=3)


def test_keras_metadata_is_parsed_as_data(tmp_path):
    """A SavedModel's `keras_metadata.pb` is read as plain protobuf and JSON: the Lambda's
    bytecode is never run, `os.system` and a made-up module are only names, and neither
    TensorFlow nor the named module is imported."""
    marker = tmp_path / "LAMBDA_RAN"
    path = tmp_path / "keras_metadata.pb"
    path.write_bytes(make_corpus.hostile_keras_metadata(marker))
    script = (
        "import json, sys; from pathlib import Path\n"
        "from embcli.formats.tensorflow import read_keras_metadata\n"
        f"layers = read_keras_metadata(Path({str(path)!r}))\n"
        "print(json.dumps({'classes': {n: l.class_name for n, l in layers.items()},"
        " 'modules': sorted(sys.modules)}))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=COMMAND_TIMEOUT
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["classes"] == {"1": "Embedding", "2": "Lambda", "3": "system"}
    assert not marker.exists()
    assert not {"tensorflow", "keras", make_corpus.EVIL_MODULE} & set(report["modules"])


def test_the_keras_lambda_fixture_lists_and_exports(tmp_path):
    """fixtures/k3_lambda.keras, written by Keras with a real Lambda layer, is read like
    any model: its table is listed and exported with the values Keras computed."""
    from click.testing import CliRunner

    from embcli.cli import cli

    fixtures = Path(__file__).resolve().parent.parent / "fixtures"
    model = fixtures / "k3_lambda.keras"
    if not model.exists():
        pytest.skip("fixtures/k3_lambda.keras is missing")
    runner = CliRunner()
    listed = runner.invoke(cli, ["layers", str(model), "--json"])
    assert listed.exit_code == 0, listed.output
    assert [(t["name"], t["shape"]) for t in json.loads(listed.stdout)] == [("words", [50, 8])]
    exported = runner.invoke(cli, ["export", str(model), "-o", str(tmp_path / "words.npy")])
    assert exported.exit_code == 0, exported.output
    expected = np.load(fixtures / "expected" / "k3_lambda_keras.npz")["words"]
    np.testing.assert_array_equal(np.load(tmp_path / "words.npy"), expected)


def test_the_damaged_vlen_type_payload_crashes_plain_h5py(corpus):
    """h5py alone crashes the whole process reading the corpus's damaged string type;
    embcli checks an attribute's type before it reads one, and refuses it."""
    root, cases = corpus
    model = root / cases["h5_vlen_type_damaged_legacy"].model
    script = f"import h5py; h5py.File({str(model)!r}, 'r').attrs['model_config']"
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=30)
    assert done.returncode < 0, done.stderr
