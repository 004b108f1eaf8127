"""Render the chaos suite's results (bench/results/chaos/*.json, written by tests/chaos)
as the Markdown table in docs/reliability.md: `python -m bench.chaos_report`."""

from __future__ import annotations

import json
import sys
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results" / "chaos"
ORDER = (
    "disconnects",
    "dropped_ranges",
    "duplicates_reordering",
    "malformed_frames",
    "engine_kill_9",
    "kafka_broker_restart",
)
COLUMNS = (
    ("scenario", "scenario"),
    ("passed", "passed"),
    ("trades_emitted", "trades emitted"),
    ("disconnects", "disconnects"),
    ("gaps", "gaps"),
    ("trades_backfilled", "trades backfilled"),
    ("frames_quarantined", "frames quarantined"),
    ("kills_survived", "kills survived"),
    ("lost", "lost"),
    ("duplicated", "duplicated"),
    ("candles_checked", "candles checked"),
    ("seconds", "seconds"),
    ("injected", "injected by the simulator"),
)


def _cell(value: object) -> str:
    if isinstance(value, dict):
        return ", ".join(f"{k} {v}" for k, v in value.items() if v) or "-"
    return str(value)


def markdown(results: list[dict]) -> str:
    lines = [
        "| " + " | ".join(title for _, title in COLUMNS) + " |",
        "|" + "---|" * len(COLUMNS),
    ]
    for r in results:
        cells = [_cell(r.get(key, "")) for key, _ in COLUMNS]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> int:
    found = {p.stem: json.loads(p.read_text()) for p in sorted(RESULTS.glob("*.json"))}
    if not found:
        print(f"no results in {RESULTS}; run pytest tests/chaos first", file=sys.stderr)
        return 1
    # Each scenario, then its runs on other exchanges (`<scenario>_<exchange>`).
    ordered = []
    for base in ORDER:
        ordered += [r for n, r in found.items() if n == base or n.startswith(f"{base}_")]
    ordered += [r for r in found.values() if r not in ordered]
    print(markdown(ordered))
    return 0


if __name__ == "__main__":
    sys.exit(main())
