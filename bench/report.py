"""Goals, tables, bench/RESULTS.md sections and comparisons with an earlier run."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from measure import Series

BENCH = Path(__file__).resolve().parent
RESULTS = BENCH / "RESULTS.md"

RESULTS_HEADER = """\
# Benchmark results

Written by `python bench/run.py` (and `--big`); see bench/README.md for what each case does.
Times are medians of wall time, in seconds; memory is the median of each process's peak RSS.
"""

AT_MOST_RATIO = "at most ratio"  # embcli's time over the sum of `against`'s
AT_LEAST_SPEEDUP = "at least speedup"  # the sum of `against`'s time over embcli's
UNDER_SECONDS = "under seconds"
UNDER_MB = "under MB"
UNDER_MB_ABOVE = "under MB above"  # peak RSS over the first of `against`'s, in MB


@dataclass
class Goal:
    """One goal of issue 16, checked against this run's medians."""

    text: str
    kind: str
    limit: float
    against: list[Series] = field(default_factory=list)

    def evaluate(self, mine: Series) -> tuple[str, bool | None]:
        """The measured value as text, and whether the goal is met (None: cannot tell)."""
        if not mine.ok or not all(s.ok for s in self.against):
            return "error", None
        seconds = mine.seconds or 0.0
        rss = mine.rss_mb or 0.0
        total = sum(s.seconds or 0.0 for s in self.against)
        if self.kind == AT_MOST_RATIO:
            ratio = seconds / total
            return f"{ratio:.2f}x", ratio <= self.limit
        if self.kind == AT_LEAST_SPEEDUP:
            speedup = total / seconds
            return f"{speedup:.1f}x", speedup >= self.limit
        if self.kind == UNDER_SECONDS:
            return f"{seconds:.3f} s", seconds < self.limit
        if self.kind == UNDER_MB:
            return f"{rss:.0f} MB", rss < self.limit
        if self.kind == UNDER_MB_ABOVE:
            bound = (self.against[0].rss_mb or 0.0) + self.limit
            return f"{rss:.0f} MB of {bound:.0f}", rss < bound
        raise ValueError(self.kind)


# stats keeps a 4-byte hash a row; beyond that it holds one block, its temporaries and
# up to 8 blocks of duplicate-group rows (8 MiB blocks), which this allowance covers.
STATS_BYTES_PER_ROW = 4
STATS_ALLOWANCE_MB = 96


def stats_memory_goal(rows: int, floor: Series) -> Goal:
    """stats' memory bound: the import floor's peak, 4 bytes a row, and a fixed allowance."""
    return Goal(
        f"< import floor + {STATS_BYTES_PER_ROW} B/row + {STATS_ALLOWANCE_MB} MB",
        UNDER_MB_ABOVE,
        rows * STATS_BYTES_PER_ROW / 1024**2 + STATS_ALLOWANCE_MB,
        [floor],
    )


@dataclass
class Case:
    """One embcli command, with what it is compared with and the goals it must meet."""

    name: str
    command: Series | None
    baseline: Series | None = None
    keras: Series | None = None
    goals: list[Goal] = field(default_factory=list)
    missing: str | None = None  # why the command did not run

    def series(self) -> list[Series]:
        return [s for s in (self.command, self.baseline, self.keras) if s is not None]

    def verdicts(self) -> list[tuple[Goal, str, bool | None]]:
        if self.command is None:
            return []
        return [(goal, *goal.evaluate(self.command)) for goal in self.goals]

    def result(self) -> str:
        if self.command is None:
            return "not available"
        if not self.command.ok:
            return "error"
        outcomes = [passed for _, _, passed in self.verdicts()]
        if not outcomes:
            return "-"
        if any(passed is False for passed in outcomes):
            return "FAIL"
        return "PASS" if all(outcomes) else "error"

    def record(self) -> dict:
        record: dict = {"case": self.name, "result": self.result()}
        if self.missing:
            record["missing"] = self.missing
        for role, series in (("embcli", self.command), ("baseline", self.baseline)):
            if series is not None:
                record[role] = series.record()
        if self.keras is not None:
            record["keras"] = self.keras.record()
        record["goals"] = [
            {"goal": goal.text, "value": value, "pass": passed}
            for goal, value, passed in self.verdicts()
        ]
        return record


HEADERS = [
    "case",
    "embcli s",
    "min-max s",
    "MB",
    "vs",
    "vs s",
    "x vs",
    "Keras s",
    "Keras MB",
    "Keras/embcli",
    "result",
]


def seconds_text(value: float | None) -> str:
    return "error" if value is None else f"{value:.3f}" if value < 1 else f"{value:.2f}"


def mb_text(value: float | None) -> str:
    return "error" if value is None else f"{value:.0f}"


def spread_text(series: Series) -> str:
    if not series.ok:
        return "-"
    return f"{seconds_text(series.min_seconds)}-{seconds_text(series.max_seconds)}"


def ratio(numerator: Series | None, denominator: Series | None, digits: int = 2) -> str:
    if numerator is None or denominator is None:
        return "-"
    if not (numerator.ok and denominator.ok):
        return "error"
    return f"{(numerator.seconds or 0) / (denominator.seconds or 1):.{digits}f}x"


def table_rows(cases: list[Case], references: list[tuple[str, Series]]) -> list[list[str]]:
    """One row per reference command (import floor, cp, dd), then one per embcli case."""
    rows = []
    for name, series in references:
        rows.append(
            [name, seconds_text(series.seconds), spread_text(series), mb_text(series.rss_mb)]
            + ["-"] * 6
            + ["reference"]
        )
    for case in cases:
        mine = case.command
        if mine is None:
            rows.append([case.name] + ["-"] * 9 + ["not available"])
            continue
        base, keras = case.baseline, case.keras
        rows.append(
            [
                case.name,
                seconds_text(mine.seconds),
                spread_text(mine),
                mb_text(mine.rss_mb),
                base.label if base else "-",
                seconds_text(base.seconds) if base else "-",
                ratio(mine, base),
                seconds_text(keras.seconds) if keras else "-",
                mb_text(keras.rss_mb) if keras else "-",
                ratio(keras, mine, 1),
                case.result(),
            ]
        )
    return rows


def goal_lines(cases: list[Case]) -> list[str]:
    """`case: goal (value) PASS; ...` for every case with goals."""
    lines = []
    for case in cases:
        if case.command is None:
            lines.append(f"{case.name}: not available ({case.missing})")
            continue
        parts = []
        for goal, value, passed in case.verdicts():
            verdict = {True: "PASS", False: "FAIL", None: "error"}[passed]
            parts.append(f"{goal.text} ({value}) {verdict}")
        if parts:
            lines.append(f"{case.name}: " + "; ".join(parts))
    return lines


def render_text(rows: list[list[str]], headers: list[str]) -> str:
    widths = [max(len(str(r[i])) for r in [headers, *rows]) for i in range(len(headers))]
    lines = [
        "  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
        for r in [headers, ["-" * w for w in widths], *rows]
    ]
    return "\n".join(lines)


def render_markdown(rows: list[list[str]], headers: list[str]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def write_results(section: str, body: str) -> None:
    """Replace one section (`default`, `by-token` or `big`) of bench/RESULTS.md, keeping
    the others."""
    begin, end = f"<!-- {section}:begin -->", f"<!-- {section}:end -->"
    body = "\n\n".join(part.strip() for part in body.split("\n\n") if part.strip())
    block = f"{begin}\n{body.strip()}\n{end}"
    text = RESULTS.read_text() if RESULTS.exists() else RESULTS_HEADER
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        text = head + block + rest.split(end, 1)[1]
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    RESULTS.write_text(text)


def _medians(report: dict) -> dict[tuple[str, str], tuple[float | None, float | None]]:
    """(case, role) -> (median seconds, median MB) of a report written with --json."""
    found = {}
    for reference in report.get("references", []):
        found[(reference["case"], "reference")] = (
            reference.get("median_seconds"),
            reference.get("median_rss_mb"),
        )
    for case in report.get("cases", []):
        for role in ("embcli", "keras"):
            if role in case:
                series = case[role]
                found[(case["case"], role)] = (
                    series.get("median_seconds"),
                    series.get("median_rss_mb"),
                )
    return found


def compare_text(report: dict, old_path: Path) -> str:
    """This run's medians over those of the run saved at `old_path` (below 1: faster now)."""
    try:
        old = json.loads(old_path.read_text())
    except (OSError, ValueError) as exc:
        return f"--compare {old_path}: cannot read it ({exc})"
    now, then = _medians(report), _medians(old)
    rows = []
    for key, (seconds, rss) in now.items():
        if key not in then:
            continue
        old_seconds, old_rss = then[key]
        time_ratio = f"{seconds / old_seconds:.2f}x" if seconds and old_seconds else "-"
        rss_ratio = f"{rss / old_rss:.2f}x" if rss and old_rss else "-"
        rows.append(
            [key[0], key[1], seconds_text(old_seconds), seconds_text(seconds), time_ratio]
            + [mb_text(old_rss), mb_text(rss), rss_ratio]
        )
    if not rows:
        return f"--compare {old_path}: no case in common with this run"
    headers = ["case", "side", "old s", "new s", "new/old", "old MB", "new MB", "new/old MB"]
    return f"Compared with {old_path} (new/old below 1 is faster or smaller now):\n" + (
        render_text(rows, headers)
    )
