#!/usr/bin/env python3
"""Summarises a bench/ab.sh run: for each load and figure, every round's value for the
"before" and the "after" binary, the medians and after/before.

    python3 bench/ab.py bench/results/ab-<time>.jsonl
"""
import json
import statistics
import sys
from collections import defaultdict


def steps_cores(r):
    """Mean server cores over the steps a saturate ladder held."""
    held = [s["server_cores"] for s in r["steps"] if s["rate"] <= r["sustained_rate"]]
    return statistics.mean(held) if held else None


# load → [(figure, how to read it from a result)]
FIGURES = {
    "fanout-50": [("p1 ms (first readers)", lambda r: r.get("p1_ms")),
                  ("p50 ms", lambda r: r["p50_ms"]), ("p99 ms", lambda r: r["p99_ms"]),
                  ("readers missing", lambda r: r["readers_missing"])],
    "fanout-200": [("p50 ms", lambda r: r["p50_ms"]), ("p99 ms", lambda r: r["p99_ms"]),
                   ("frames/s", lambda r: r["frames_per_sec"]),
                   ("readers missing", lambda r: r["readers_missing"])],
    "saturate": [("held updates/s (p99 ≤ 100 ms)", lambda r: r["sustained_rate"]),
                 ("server cores, mean over held steps", steps_cores)],
    "trace": [("seconds", lambda r: r["through_server_secs"]),
              ("server CPU s", lambda r: r["server_cpu_secs"]),
              ("observers hold endContent", lambda r: r["observers_match_end_content"])],
    "activation": [("activation + sync ms", lambda r: r["activation_and_sync_ms"]),
                   ("content matches", lambda r: r["content_matches"])],
    "stream-fanout": [("publish→receive p50 ms", lambda r: r["publish_to_receive"]["p50_ms"]),
                      ("publish→receive p99 ms", lambda r: r["publish_to_receive"]["p99_ms"]),
                      ("publish→ack p50 ms", lambda r: r["publish_to_ack"]["p50_ms"]),
                      ("every delivery arrived", lambda r: r["every_delivery_arrived"])],
    "stream-throughput": [("acked/s", lambda r: r["acked_per_sec"])],
}


def fmt(v):
    if isinstance(v, bool):
        return "yes" if v else "no"
    if v is None:
        return "–"
    if isinstance(v, (int, float)) and abs(v) >= 1000:
        return f"{v:,.0f}"
    return f"{v:.2f}" if isinstance(v, float) else str(v)


def main(path):
    runs = defaultdict(lambda: defaultdict(list))  # load → which → [result]
    for line in open(path):
        row = json.loads(line)
        load = row["label"].rsplit("-", 1)[0]
        runs[load][row["server"]].append(row["result"])
    print("| load | figure | before (each round) | after (each round) | after / before (medians) |")
    print("|---|---|---|---|---|")
    for load, figures in FIGURES.items():
        if load not in runs:
            continue
        for name, read in figures:
            cells, medians = [], []
            for which in ("before", "after"):
                values = []
                for r in runs[load][which]:
                    try:
                        values.append(None if r.get("failed") else read(r))
                    except (KeyError, TypeError):
                        values.append(None)
                cells.append(" / ".join(fmt(v) for v in values) or "–")
                numbers = [v for v in values if isinstance(v, (int, float))
                           and not isinstance(v, bool)]
                medians.append(statistics.median(numbers) if numbers else None)
            before, after = medians
            ratio = f"{after / before:.2f}×" if before and after is not None else ""
            print(f"| {load} | {name} | {cells[0]} | {cells[1]} | {ratio} |")


if __name__ == "__main__":
    main(sys.argv[1])
