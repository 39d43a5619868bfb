"""Long crash-safety run, by hand: kill `embcli assign` hundreds of times.

Usage:
    python bench/crash_loop.py          # 200 SIGKILLs in place, 50 on -o, 40 Ctrl-C/SIGTERM
    python bench/crash_loop.py --kills 1000 --rows 1000000 --seed 3

The loops and their checks are those of tests/test_crash.py: after every kill the model
is its old bytes or its new bytes (or, cut short mid-patch, is refused by reads and put
back by `embcli recover` from its journal); a killed `-o` run leaves no partial output;
leftovers are only `.embcli-tmp-*` / `.embcli-journal-*`, which the next write removes; an
interrupted run leaves nothing at all. Exits 1 if any check failed.
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=200, help="SIGKILLs during --in-place")
    parser.add_argument("--copy-kills", type=int, default=50, help="SIGKILLs during -o")
    parser.add_argument("--interrupts", type=int, default=40, help="SIGINT/SIGTERM, all modes")
    parser.add_argument("--rows", type=int, default=None, help="table rows (dim 32)")
    parser.add_argument("--seed", type=int, default=int(time.time()))
    args = parser.parse_args()

    crash = load_crash()
    rng = random.Random(args.seed)
    work = Path(tempfile.mkdtemp(prefix="embcli-crash-"))
    failed = False
    try:
        started = time.monotonic()
        big = crash.make_big_model(work / "model", rows=args.rows or crash.ROWS)
        size = big.pristine.stat().st_size / 1e6
        print(f"seed {args.seed}; model {size:.0f} MB; one edit takes {big.seconds:.2f} s")
        quarter = max(1, args.interrupts // 4)
        loops = [
            ("SIGKILL --in-place", crash.kill_in_place, args.kills, signal.SIGKILL),
            ("SIGKILL -o", crash.kill_copy, args.copy_kills, signal.SIGKILL),
            ("SIGINT --in-place", crash.kill_in_place, quarter, signal.SIGINT),
            ("SIGTERM --in-place", crash.kill_in_place, quarter, signal.SIGTERM),
            ("SIGINT -o", crash.kill_copy, quarter, signal.SIGINT),
            ("SIGTERM -o", crash.kill_copy, quarter, signal.SIGTERM),
        ]
        for number, (name, loop, count, signum) in enumerate(loops):
            report = loop(big, work / f"loop{number}", count, rng, signum)
            print(f"{name}: {count} runs; {report}")
            for problem in report.problems:
                print(f"  PROBLEM: {problem}")
            failed = failed or bool(report.problems)
        print(
            f"done in {time.monotonic() - started:.0f} s: "
            f"{'FAILED' if failed else 'every check held'}"
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
