#!/usr/bin/env python3
"""The issue-15 targets from a bench/targets.sh run: each round's figures, the median over
rounds, and whether the target is met (median of the per-round ratios: each round's two
servers ran back to back, so a ratio compares like with like on a noisy machine).

    python3 bench/targets.py bench/results/targets-<stamp>.jsonl
"""
import json
import re
import statistics
import sys


def load(path):
    """{(server, load, round): result} from the JSON lines `run` appended."""
    found = {}
    with open(path) as f:
        for line in f:
            row = json.loads(line)
            load, _, rnd = row["label"].rpartition("-")
            found[(row["server"], load, int(rnd))] = row["result"]
    return found


def figure(results, server, load, rnd, key):
    result = results.get((server, load, rnd))
    if not result or result.get("failed"):
        return None
    return result.get(key)


def fmt(value, digits=2):
    if value is None:
        return "failed"
    if isinstance(value, float) and value >= 1000:
        return f"{value:,.0f}"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def row(name, values, target="", digits=2):
    present = [v for v in values if v is not None]
    median = statistics.median(present) if present else None
    cells = " | ".join(fmt(v, digits) for v in values)
    return f"| {name} | {cells} | **{fmt(median, digits)}** | {target} |", median


def main(path):
    results = load(path)
    rounds = sorted({rnd for (_, _, rnd) in results})
    get = lambda server, load, key: [figure(results, server, load, r, key) for r in rounds]
    ratio = lambda a, b: [x / y if x is not None and y else None for x, y in zip(a, b)]
    head = " | ".join(f"round {r}" for r in rounds)
    out = [f"| figure | {head} | median | target |", "|---" * (len(rounds) + 3) + "|"]
    placed = re.search(r"-loadgen-cpu(\d+)", path)
    if placed:
        # bench/lib.sh's LOADGEN_CPU: not how the issue measures, so say so above the table.
        out.insert(0, f"Load generator alone on CPU {placed.group(1)}, servers on the others "
                      "(LOADGEN_CPU); the issue's targets are measured without it.\n")
    verdicts = []

    tandem_p99 = get("tandem", "fanout", "p99_ms")
    bare_p99 = get("bare", "fanout", "p99_ms")
    out.append(row("fan-out 50/s p99, Tandem (ms)", tandem_p99)[0])
    out.append(row("fan-out 50/s p99, bare relay (ms)", bare_p99)[0])
    line, fan = row("Tandem / relay", ratio(tandem_p99, bare_p99), "≤ 1.10×")
    out.append(line)
    # Where the delivery sweep starts and its middle: the server's own delay shows in the
    # first readers, the cost per recipient in how far the middle trails them.
    for key, name in (("p1_ms", "p1"), ("p50_ms", "p50")):
        for server, label in (("tandem", "Tandem"), ("bare", "bare relay")):
            values = get(server, "fanout", key)
            if any(v is not None for v in values):
                out.append(row(f"fan-out 50/s {name}, {label} (ms)", values, "")[0])
    missing = sum(v or 0 for s in ("tandem", "bare") for v in get(s, "fanout", "readers_missing"))
    verdicts.append(("fan-out p99 ≤ 1.10× the relay, nobody missing",
                     fan is not None and fan <= 1.10 and missing == 0))

    tandem_sat = get("tandem", "saturate-100", "sustained_delivered_per_sec")
    hocus_sat = get("hocuspocus", "saturate-100", "sustained_delivered_per_sec")
    out.append(row("saturate p99 ≤ 100 ms, Tandem delivered/s", tandem_sat, digits=0)[0])
    out.append(row("saturate p99 ≤ 100 ms, Hocuspocus delivered/s", hocus_sat, digits=0)[0])
    line, sat = row("Tandem / Hocuspocus", ratio(tandem_sat, hocus_sat), "≥ 2×")
    out.append(line)
    verdicts.append(("saturation ≥ 2× Hocuspocus", sat is not None and sat >= 2.0))

    line, marginal = row("idle room, KiB per additional room", get("tandem", "rooms", "kib_per_room"), "≤ 8")
    out.append(line)
    line, whole = row("idle room, KiB per room from the fresh process",
                      get("tandem", "rooms", "kib_per_room_from_start"), "≤ 8")
    out.append(line)
    out.append(row("the same, anonymous memory only (RssAnon: without the code pages the "
                   "first room faults in)",
                   get("tandem", "rooms", "anon_kib_per_room_from_start"), "")[0])
    verdicts.append(("idle room ≤ 8 KiB (one more room)", marginal is not None and marginal <= 8))
    verdicts.append(("idle room ≤ 8 KiB (from the fresh process)", whole is not None and whole <= 8))

    out.append("")
    out.append(f"Readers missing an update in any fan-out run: {missing}.")
    out.append("")
    for name, met in verdicts:
        out.append(f"- {name}: {'met' if met else 'not met'}")
    print("\n".join(out))


if __name__ == "__main__":
    main(sys.argv[1])
