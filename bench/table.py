#!/usr/bin/env python3
"""Turns one bench/compare.sh results file (JSON lines) into the BENCHMARKS.md table.

Every figure comes from the same run; ratios compare servers measured minutes apart on the
same machine, which is what makes them meaningful on a shared, noisy host.
"""
import json
import os
import platform
import subprocess
import sys


def load(path):
    results = {}
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line:
                row = json.loads(line)
                results[(row["server"], row["label"])] = row["result"]
    return results


def get(results, server, label, *keys):
    value = results.get((server, label), {})
    for key in keys:
        if not isinstance(value, dict) or key not in value:
            return None
        value = value[key]
    return value


def fmt(value, digits=1):
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "**no**"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return f"{value:,}" if isinstance(value, int) else str(value)


def ratio(a, b, digits=2):
    if a is None or b is None or b == 0:
        return "—"
    r = a / b
    if 0 < r < 0.01:
        return f"{r:.1g}×"  # e.g. a server that fell seconds behind: not "0.00×"
    return f"{r:.{digits}f}×"


def machine():
    cpu = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem = ""
    try:
        with open("/proc/meminfo") as f:
            kib = int(f.readline().split()[1])
            mem = f", {kib / 1024 / 1024:.0f} GiB RAM"
    except (OSError, ValueError, IndexError):
        pass
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    except OSError:
        rev = "?"
    return f"{os.cpu_count()} × {cpu}{mem}, {platform.system()} {platform.release()}; tandem at {rev}"


def pinned(directory, package):
    """The version bench/DIRECTORY/package.json pins PACKAGE to."""
    try:
        with open(os.path.join("bench", directory, "package.json")) as f:
            return json.load(f)["dependencies"][package]
    except (OSError, KeyError, ValueError):
        return "?"


def sustained(r, server, label, key):
    """A saturate figure; "≥ x" when every step held (the ceiling is above the last step)."""
    value = get(r, server, label, key)
    steps = get(r, server, label, "steps") or []
    if value and steps and get(r, server, label, "sustained_rate") == steps[-1].get("rate"):
        return f"≥ {fmt(value, 0)}"
    return fmt(value, 0)


def main(path):
    r = load(path)
    servers = ["tandem", "reference", "hocuspocus", "bare"]
    out = []
    out.append("# Benchmarks\n")
    out.append(f"Latest run of `bench/compare.sh` (`{os.path.basename(path)}`), on {machine()}.")
    out.append("Servers: **tandem** (durable: every update flushed to sled before broadcast), "
               f"**reference** (`@y/websocket-server` {pinned('reference', '@y/websocket-server')} on Node, "
               "in memory, no persistence), "
               f"**hocuspocus** (`@hocuspocus/server` {pinned('hocuspocus', '@hocuspocus/server')} on Node, "
               "in memory, no persistence extension: `bench/hocuspocus/server.mjs`), "
               "**bare** (`examples/broadcast_baseline.rs`: tokio relay, no CRDT, no storage — the "
               "machine's fan-out ceiling). The load generator runs on the same 2 cores.\n")

    for label, rate in [("fanout", 50), ("fanout-200", 200)]:
        if not any((s, label) in r for s in servers):
            continue
        out.append(f"## Fan-out: 1 writer → readers, {rate} updates/s, open loop\n")
        out.append("| server | readers | delivered/s | p50 ms | p95 ms | p99 ms | max ms | readers missing an update |")
        out.append("|---|---|---|---|---|---|---|---|")
        for s in servers:
            f = r.get((s, label), {})
            out.append(f"| {s} | {fmt(f.get('readers'))} | {fmt(f.get('delivered_per_sec'), 0)} | {fmt(f.get('p50_ms'))} | "
                       f"{fmt(f.get('p95_ms'))} | {fmt(f.get('p99_ms'))} | {fmt(f.get('max_ms'))} | {fmt(f.get('readers_missing'))} |")
        tp99 = get(r, "tandem", label, "p99_ms")
        rp99 = get(r, "reference", label, "p99_ms")
        hp99 = get(r, "hocuspocus", label, "p99_ms")
        bp99 = get(r, "bare", label, "p99_ms")
        if label == "fanout":
            out.append(f"\nTandem p99 / reference p99: **{ratio(tp99, rp99)}** (target ≤ 0.33×); "
                       f"Tandem p99 / Hocuspocus p99: **{ratio(tp99, hp99)}**; "
                       f"bare relay p99 / reference p99: {ratio(bp99, rp99)}; "
                       f"Tandem p99 / bare relay p99: {ratio(tp99, bp99)}. The bare relay is the "
                       "ceiling of this machine with the load generator on the same cores: when the "
                       "reference server keeps up with this load, no server can reach ⅓ of its p99.\n")
        else:
            out.append(f"\nTandem p99 / reference p99: **{ratio(tp99, rp99)}**; Tandem p99 / Hocuspocus p99: "
                       f"**{ratio(tp99, hp99)}** (reported, no target: four times the target's rate, "
                       "where the reference server starts to fall behind).\n")

    out.append("## Saturate: rate raised until p99 passes the bound or an update is missed\n")
    out.append("1 writer → readers, from 50 updates/s, each step 1.5× the last; each bound is a run "
               "of its own on a fresh server.\n")
    out.append("| server | p99 ≤ 100 ms: updates/s | delivered/s | p99 ≤ 500 ms: updates/s | delivered/s |")
    out.append("|---|---|---|---|---|")
    for s in servers:
        out.append(f"| {s} | {sustained(r, s, 'saturate-100', 'sustained_rate')} | "
                   f"{sustained(r, s, 'saturate-100', 'sustained_delivered_per_sec')} | "
                   f"{sustained(r, s, 'saturate', 'sustained_rate')} | "
                   f"{sustained(r, s, 'saturate', 'sustained_delivered_per_sec')} |")

    def sat(server, label):
        return get(r, server, label, "sustained_delivered_per_sec")

    out.append(f"\nAt 500 ms: Tandem / reference: **{ratio(sat('tandem', 'saturate'), sat('reference', 'saturate'))}** "
               f"(target ≥ 3×); Tandem / Hocuspocus: **{ratio(sat('tandem', 'saturate'), sat('hocuspocus', 'saturate'))}**; "
               f"Tandem / bare: **{ratio(sat('tandem', 'saturate'), sat('bare', 'saturate'))}** (target ≥ 0.5×). "
               f"At 100 ms: Tandem / reference: {ratio(sat('tandem', 'saturate-100'), sat('reference', 'saturate-100'))}; "
               f"Tandem / Hocuspocus: {ratio(sat('tandem', 'saturate-100'), sat('hocuspocus', 'saturate-100'))}; "
               f"Tandem / bare: {ratio(sat('tandem', 'saturate-100'), sat('bare', 'saturate-100'))}. "
               "Steps raise the rate 1.5×, so a figure is a lower bound within 1.5×; “≥” marks a "
               "run whose every step held (16 steps: 21,894 updates/s at most). "
               "Updates count as delivered when their content reaches a reader: under load Tandem "
               "merges the updates that queue up into one (one transaction, one frame per reader), "
               "and so does Hocuspocus (the updates of one event-loop turn, `flushDelay` 0); the "
               "reference server and the bare relay send one frame per update.\n")

    out.append("### Each step at p99 ≤ 100 ms\n")
    out.append("Frames counted at the readers (data frames carrying updates); updates per frame is "
               "how much the server merged; server cores is the server's CPU time over the step's "
               "wall time (readers connecting included).\n")
    out.append("| server | updates/s | delivered/s | frames/s | updates per frame | p99 ms | server cores | held |")
    out.append("|---|---|---|---|---|---|---|---|")
    for s in servers:
        steps = get(r, s, "saturate-100", "steps") or []
        for i, step in enumerate(steps):
            held = step.get("p99_ms", 1e9) <= 100 and step.get("readers_missing", 1) == 0
            out.append(f"| {s if i == 0 else ''} | {fmt(step.get('rate'), 0)} | {fmt(step.get('delivered_per_sec'), 0)} | "
                       f"{fmt(step.get('frames_per_sec'), 0)} | {fmt(step.get('updates_per_frame'), 2)} | "
                       f"{fmt(step.get('p99_ms'))} | {fmt(step.get('server_cores'), 2)} | {'yes' if held else '**no**'} |")
    out.append("")

    out.append("## Memory\n")
    out.append("| server | KiB per idle room (2 sessions, 100-character text), one more room | the same, counted from the fresh process | idle connections opened | KiB per idle connection |")
    out.append("|---|---|---|---|---|")
    for s in ["tandem", "reference", "hocuspocus"]:
        out.append(f"| {s} | {fmt(get(r, s, 'rooms', 'kib_per_room'))} | "
                   f"{fmt(get(r, s, 'rooms', 'kib_per_room_from_start'))} | {fmt(get(r, s, 'conns', 'open'))} | "
                   f"{fmt(get(r, s, 'conns', 'kib_per_connection'))} |")
    out.append("\nRooms: 100 warm-up rooms, then 1,000 measured rooms, opened one after the other, two "
               "synced sessions each (they answer pings, as browsers do), one of which writes a "
               "100-character text that the other receives; RSS read 2 s after the last room opened. "
               "\"One more room\" is the RSS growth over the 1,000 measured rooms; \"from the fresh "
               "process\" divides the growth since the server started by all 1,100 rooms, so it also "
               "carries what a process pays once for its first rooms (code pages, thread stacks, "
               "allocator arenas). Targets: ≤ 8 KiB per idle room; ≤ 16 KiB per connection at 20,000. "
               "Tandem's WebSocket sessions leave actix-http's HTTP/1 dispatcher after the handshake "
               "and run on the bare socket with buffers that exist only while bytes are pending; a "
               "session is a plain task (not an actor) over its socket and the mailbox its room "
               "sends to; rooms keep awareness in a table of their own (not yrs's `Awareness`, which "
               "holds a document's worth of observers); a document unused for 5 s plus 1 s per "
               "32 KiB stored (at most `--doc-freeze-secs`, 30 s) is held as its encoded state, so "
               "the rooms opened in the last seconds before RSS is read are still live. What "
               "remains per session is its task and socket registration; per room its actor and "
               "mailbox, its member list, its document and sled's records of it (~1.6 KiB).\n")

    out.append("## Editing trace (automerge-paper, 259,778 edits) writer → 2 observers\n")
    out.append("| server | seconds | server CPU s | raw yrs apply s (same run) | CPU / raw | both observers hold endContent |")
    out.append("|---|---|---|---|---|---|")
    for s in ["tandem", "reference", "hocuspocus"]:
        secs = get(r, s, "trace", "through_server_secs")
        cpu = get(r, s, "trace", "server_cpu_secs")
        floor = get(r, s, "trace", "floor_secs")
        out.append(f"| {s} | {fmt(secs, 2)} | {fmt(cpu, 2)} | {fmt(floor, 2)} | {ratio(cpu, floor, 1)} | "
                   f"{fmt(get(r, s, 'trace', 'observers_match_end_content'))} |")
    out.append(f"\nTandem time / reference time: **{ratio(get(r, 'tandem', 'trace', 'through_server_secs'), get(r, 'reference', 'trace', 'through_server_secs'))}** "
               f"(target ≤ 1×); Tandem time / Hocuspocus time: **{ratio(get(r, 'tandem', 'trace', 'through_server_secs'), get(r, 'hocuspocus', 'trace', 'through_server_secs'))}**; "
               "CPU / raw target ≤ 1.5×.\n")

    out.append("## Activation (Tandem)\n")
    out.append(f"A room written with {fmt(get(r, 'tandem', 'activation', 'updates'))} updates, evicted (which compacts "
               f"it into a snapshot), then joined: **{fmt(get(r, 'tandem', 'activation', 'activation_and_sync_ms'))} ms** "
               "from connect to holding the whole document (target ≤ 50 ms); content matches: "
               f"{fmt(get(r, 'tandem', 'activation', 'content_matches'))}.\n")
    out.append("## Churn (Tandem)\n")
    out.append("| cycles (connect → sync → edit → close) | rooms | RSS baseline KiB | after cycles KiB | after every room evicted KiB |")
    out.append("|---|---|---|---|---|")
    out.append(f"| {fmt(get(r, 'tandem', 'churn', 'cycles'))} | {fmt(get(r, 'tandem', 'churn', 'rooms'))} | "
               f"{fmt(get(r, 'tandem', 'churn', 'rss_baseline_kib'))} | {fmt(get(r, 'tandem', 'churn', 'rss_after_cycles_kib'))} | "
               f"{fmt(get(r, 'tandem', 'churn', 'rss_after_eviction_kib'))} |")
    out.append("\nWithout edits RSS is flat (2,000 → 100,000 cycles: 12.1 → 12.3 MiB): no leak per "
               "session or room. With edits it follows the data written (heaptrack: held by sled, "
               "nothing by Tandem's sessions, rooms or registry), and not by sled's page cache: "
               "100,000 edit cycles give the same RSS with `--sled-cache-bytes` at 8 MiB, 64 MiB or 1 GiB.\n")
    out.append("## Chat stream: 1 publisher → subscribers (Tandem only)\n")
    out.append("| transport | subscribers | publish→receive p50 ms | p99 ms | publish→ack p50 ms | p99 ms |")
    out.append("|---|---|---|---|---|---|")
    for label in ["stream-ws", "stream-sse"]:
        out.append(f"| {label[7:]} | {fmt(get(r, 'tandem', label, 'subscribers'))} | "
                   f"{fmt(get(r, 'tandem', label, 'publish_to_receive', 'p50_ms'), 2)} | "
                   f"{fmt(get(r, 'tandem', label, 'publish_to_receive', 'p99_ms'), 2)} | "
                   f"{fmt(get(r, 'tandem', label, 'publish_to_ack', 'p50_ms'), 2)} | "
                   f"{fmt(get(r, 'tandem', label, 'publish_to_ack', 'p99_ms'), 2)} |")
    out.append("")
    # The sled vs PostgreSQL section (from bench/stores.sh) and the sections after it
    # (written by hand: A/B runs, the cluster, the page) are carried over as they are.
    try:
        with open("BENCHMARKS.md") as f:
            current = f.read()
        if "<!-- stores:begin -->" in current:
            out.append("<!-- stores:begin -->" + current.split("<!-- stores:begin -->", 1)[1].rstrip("\n"))
    except FileNotFoundError:
        pass
    print("\n".join(out))


if __name__ == "__main__":
    main(sys.argv[1])
