"""Long crash-safety run, by hand: kill `embcli assign` hundreds of times.

Usage:
    python bench/crash_loop.py          # 200 SIGKILLs in place, 50 on -o, 40 Ctrl-C/SIGTERM,
                                        # 20 step kills per artifact kind, 20 writer pairs
    python bench/crash_loop.py --kills 1000 --rows 1000000 --seed 3
    python bench/crash_loop.py --kills 0 --copy-kills 0 --interrupts 0 --no-tensorflow

The loops and their checks are those of tests/test_crash.py: after every kill the model
is its old bytes or its new bytes (or, cut short mid-patch, is refused by reads and put
back by `embcli recover` from its journal); a killed `-o` run leaves no partial output;
leftovers are only `.embcli-tmp-*` / `.embcli-journal-*`, which the next write removes; an
interrupted run leaves nothing at all. Folders, sharded weights, legacy HDF5, `.weights.h5`,
TensorFlow checkpoints and SavedModels are killed at random named steps of their writes
(each kill counted inside its step), and pairs of in-place writers are started together on
one `.keras`. Exits 1 if any check failed.
"""

from __future__ import annotations

import argparse
import importlib.util
import random
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def load_crash():
    sys.path.insert(0, str(ROOT / "tests"))
    spec = importlib.util.spec_from_file_location("test_crash", ROOT / "tests" / "test_crash.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def show(name: str, count: int, report) -> None:
    print(f"{name}: {count} runs; {report}", flush=True)
    for problem in report.problems:
        print(f"  PROBLEM: {problem}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=200, help="SIGKILLs during --in-place")
    parser.add_argument("--copy-kills", type=int, default=50, help="SIGKILLs during -o")
    parser.add_argument("--interrupts", type=int, default=40, help="SIGINT/SIGTERM, all modes")
    parser.add_argument("--rows", type=int, default=None, help="table rows (dim 32)")
    parser.add_argument("--step-kills", type=int, default=20, help="kills per artifact kind")
    parser.add_argument("--writer-rounds", type=int, default=20, help="pairs of writers")
    parser.add_argument("--no-tensorflow", action="store_true", help="skip checkpoints")
    parser.add_argument("--seed", type=int, default=int(time.time()))
    args = parser.parse_args()

    crash = load_crash()
    rng = random.Random(args.seed)
    work = Path(tempfile.mkdtemp(prefix="embcli-crash-"))
    failed = False
    try:
        started = time.monotonic()
        print(f"seed {args.seed}")
        quarter = args.interrupts // 4
        loops = [
            ("SIGKILL --in-place", crash.kill_in_place, args.kills, signal.SIGKILL),
            ("SIGKILL -o", crash.kill_copy, args.copy_kills, signal.SIGKILL),
            ("SIGINT --in-place", crash.kill_in_place, quarter, signal.SIGINT),
            ("SIGTERM --in-place", crash.kill_in_place, quarter, signal.SIGTERM),
            ("SIGINT -o", crash.kill_copy, quarter, signal.SIGINT),
            ("SIGTERM -o", crash.kill_copy, quarter, signal.SIGTERM),
        ]
        reports = []
        if any(count for _, _, count, _ in loops):
            big = crash.make_big_model(work / "model", rows=args.rows or crash.ROWS)
            size = big.pristine.stat().st_size / 1e6
            print(f"model {size:.0f} MB; one edit takes {big.seconds:.2f} s")
            for number, (name, loop, count, signum) in enumerate(loops):
                if count:
                    reports.append(
                        (name, count, loop(big, work / f"loop{number}", count, rng, signum))
                    )
                    show(*reports[-1])
        for kind, artifact in crash.ARTIFACTS.items():
            if args.step_kills and not (args.no_tensorflow and kind in crash.TENSORFLOW_ARTIFACTS):
                report = crash.kill_at_steps(
                    artifact, work / kind.replace(" ", "_"), args.step_kills, rng
                )
                reports.append((f"step kills, {kind}", args.step_kills, report))
                show(*reports[-1])
        if args.writer_rounds:
            report = crash.two_writers(work / "writers", args.writer_rounds, rng)
            reports.append(("two writers at once", args.writer_rounds, report))
            show(*reports[-1])
        failed = any(report.problems for _, _, report in reports)
        print(
            f"done in {time.monotonic() - started:.0f} s: "
            f"{'FAILED' if failed else 'every check held'}"
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
