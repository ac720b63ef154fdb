"""Compare benchmark runs (variants) side by side from their results.json files.

    python -m bench.compare bench/report/results.json bench_out/int8/results.json

Prints a Markdown table of the headline figures, one column per run, so a variant's gain is read
against a baseline measured the same way. Runs taken at different times or on a busy machine differ
for that reason too: each column says when it ran and how much CPU other processes took.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

ROWS = (
    ("server images/s", "server_images_per_s", "{:.1f}"),
    ("best concurrency", "server_best_concurrency", "{}"),
    ("p50 ms at concurrency 1", "server_p50_ms_at_concurrency_1", "{:.1f}"),
    ("server / seed's way b1", "server_over_seed_batch1", "{:.2f}×"),
    ("server / seed's way b16", "server_over_seed_batch16", "{:.2f}×"),
    ("server / model alone", "server_over_model_alone", "{:.2f}×"),
    ("errors", "server_errors", "{}"),
)


def _cell(value, form: str) -> str:
    return "–" if value is None else form.format(value)


def comparison(runs: dict[str, dict]) -> str:
    """A Markdown table: headline figures per workload, one column per run."""
    names = list(runs)
    lines = ["| | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]

    def row(label: str, values: list[str]) -> None:
        lines.append(f"| {label} | " + " | ".join(values) + " |")

    row("date", [r["machine"]["date_utc"] for r in runs.values()])
    row("other processes, CPUs", [str(max((u["other_cpus"] for u in r.get("cpu_use", {}).values()), default="?"))
                                  for r in runs.values()])
    row("model alone, images/s", [_cell(r["headline"].get("model_alone_images_per_s"), "{:.1f}") for r in runs.values()])
    workloads = sorted({w for r in runs.values() for w in r["server"]["sweeps"]}, key=["small", "phone"].index)
    for workload in workloads:
        for label, key, form in ROWS:
            row(f"{workload}: {label}", [_cell(r["headline"].get(workload, {}).get(key), form) for r in runs.values()])
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    paths = [Path(p) for p in (sys.argv[1:] if argv is None else argv)]
    if not paths:
        print("usage: python -m bench.compare RESULTS.json [RESULTS.json ...]", file=sys.stderr)
        return 2
    runs = {}
    for path in paths:
        results = json.loads(path.read_text())
        name = results.get("label") or str(path.parent)
        runs[name if name not in runs else f"{name} ({path})"] = results
    print(comparison(runs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
