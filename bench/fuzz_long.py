"""Long fuzzing run of embcli's readers, by hand: many more mutated fixtures than the tests.

Usage:
    python bench/fuzz_long.py                      # 20,000 examples over every fixture
    python bench/fuzz_long.py --examples 200000 --seed 7 --bases k3_functional.keras

Each batch of examples runs in its own worker process, so that a crash (a segfault in the
HDF5 library, say) or a hang costs one batch, not the run: the worker writes each example
to disk before trying it, and the parent keeps the example that killed or hung a worker.
Mutations and the exercise are those of tests/test_fuzz.py. Any exception other than an
EmbcliError is a failure. Reproducers go to bench/out/fuzz/ (failures/, crashes/, hangs/).
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "fixtures"
OUT = ROOT / "bench" / "out" / "fuzz"
BATCH_TIMEOUT = 600
EXAMPLE_WATCHDOG = 30


def load_fuzz():
    spec = importlib.util.spec_from_file_location("test_fuzz", ROOT / "tests" / "test_fuzz.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def default_bases() -> list[str]:
    names = [
        p.name
        for p in sorted(FIXTURES.iterdir())
        if p.is_file() and (p.suffix in (".keras", ".h5"))
    ]
    return [n for n in names if "_0000" not in n]


def worker(base: str, seed: int, count: int, current: Path) -> None:
    """Run `count` examples of one base; print one JSON line of outcomes."""
    fuzz = load_fuzz()
    data = (FIXTURES / base).read_bytes()
    inside = fuzz.structure_positions(data)
    rng = random.Random(seed)
    scratch = Path(tempfile.mkdtemp(prefix="embcli-fuzz-"))
    outcomes: Counter = Counter()
    failures = []
    try:
        for _ in range(count):
            mutated = fuzz.mutate(data, fuzz.random_mutations(len(data), inside, rng))
            current.write_bytes(mutated)
            try:
                outcomes[fuzz.run_example(mutated, base, scratch, EXAMPLE_WATCHDOG)] += 1
            except Exception as exc:  # noqa: BLE001 - any non-embcli exception is the finding
                outcomes["FAILURE " + type(exc).__name__] += 1
                failures.append({"data": mutated.hex(), "traceback": traceback.format_exc()})
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    print(json.dumps({"outcomes": outcomes, "failures": failures}))


def save(kind: str, base: str, data: bytes, note: str) -> Path:
    digest = hashlib.sha256(data).hexdigest()[:16]
    folder = OUT / kind
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{base}.{digest}.bin"
    path.write_bytes(data)
    path.with_suffix(".txt").write_text(note)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--examples", type=int, default=20_000)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--seed", type=int, default=int(time.time()))
    parser.add_argument("--bases", default=None, help="comma-separated fixture names")
    parser.add_argument(
        "--worker", nargs=4, metavar=("BASE", "SEED", "COUNT", "CURRENT"), help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    if args.worker:
        base, seed, count, current = args.worker
        worker(base, int(seed), int(count), Path(current))
        return

    bases = args.bases.split(",") if args.bases else default_bases()
    rng = random.Random(args.seed)
    totals: Counter = Counter()
    found = {"failures": 0, "crashes": 0, "hangs": 0}
    started = time.monotonic()
    done = 0
    current = Path(tempfile.mkdtemp(prefix="embcli-fuzz-current-")) / "example.bin"
    print(f"seed {args.seed}, {len(bases)} bases, {args.examples} examples")
    while done < args.examples:
        base = rng.choice(bases)
        count = min(args.batch, args.examples - done)
        seed = rng.randrange(1 << 32)
        command = [sys.executable, __file__, "--worker", base, str(seed), str(count), str(current)]
        try:
            result = subprocess.run(
                command,
                capture_output=True,
                text=True,
                timeout=BATCH_TIMEOUT,
                env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
            )
        except subprocess.TimeoutExpired:
            found["hangs"] += 1
            path = save("hangs", base, current.read_bytes(), f"seed {seed}: batch timed out")
            print(f"HANG in {base} (batch seed {seed}): {path}")
            done += count
            continue
        if result.returncode != 0:
            kind = "hangs" if "Timeout (" in result.stderr else "crashes"
            found[kind] += 1
            note = f"seed {seed}: exit {result.returncode}\n{result.stderr[-4000:]}"
            path = save(kind, base, current.read_bytes(), note)
            print(f"{kind.upper()} in {base} (exit {result.returncode}, seed {seed}): {path}")
            done += count
            continue
        report = json.loads(result.stdout.strip().splitlines()[-1])
        totals.update(report["outcomes"])
        for failure in report["failures"]:
            found["failures"] += 1
            path = save("failures", base, bytes.fromhex(failure["data"]), failure["traceback"])
            print(f"FAILURE in {base}: {failure['traceback'].strip().splitlines()[-1]} {path}")
        done += count
        rate = done / (time.monotonic() - started)
        print(f"{done}/{args.examples} examples, {rate:.0f}/s, {dict(found)}", flush=True)
    shutil.rmtree(current.parent, ignore_errors=True)
    print(json.dumps({"seed": args.seed, "examples": done, "outcomes": totals, **found}, indent=1))
    sys.exit(1 if any(found.values()) else 0)


if __name__ == "__main__":
    main()
