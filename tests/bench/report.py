#!/usr/bin/env python3
"""Writes BENCHMARKS.md from the results tests/bench/run.sh collected.

usage: report.py RESULTS_DIR OUTPUT_FILE

Reads meta.txt, load.txt, pgbench.csv, idle-*.json, approval.json,
criterion.txt and, when present, log.md (part 3, the event log) from
RESULTS_DIR, and tests/bench/findings.md (hand-written: what was profiled
and fixed) from beside this script. Standard library only.
"""

import csv
import json
import os
import re
import statistics
import sys

TARGETS = ("direct", "pgbouncer", "airlock")


def read_meta(path):
    meta = {}
    with open(path) as f:
        for line in f:
            key, _, value = line.rstrip("\n").partition("=")
            meta[key] = value
    return meta


def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def fmt(value, digits=0):
    if value is None:
        return "n/a"
    return f"{value:,.{digits}f}"


def ratio(a, b):
    if a is None or b in (None, 0):
        return None
    return a / b


def pgbench_section(rows, meta):
    """Medians per (clients, protocol, target) over the rounds."""
    runs = {}
    for r in rows:
        key = (int(r["clients"]), r["protocol"], r["target"])
        runs.setdefault(key, []).append(r)
    clients = sorted({k[0] for k in runs})
    protocols = [p for p in ("simple", "extended", "prepared") if any(k[1] == p for k in runs)]

    def med(c, p, t, field):
        vals = []
        for r in runs.get((c, p, t), []):
            v = r.get(field) or ""
            vals.append(float(v) if v != "" else None)
        return median(vals)

    out = []
    out.append("| clients | protocol | TPS direct | TPS PgBouncer | TPS Airlock | Airlock/direct | Airlock/PgBouncer "
               "| latency direct (ms) | latency PgBouncer (ms) | latency Airlock (ms) |")
    out.append("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    summary = {}
    for c in clients:
        for p in protocols:
            tps = {t: med(c, p, t, "tps") for t in TARGETS}
            lat = {t: med(c, p, t, "latency_ms") for t in TARGETS}
            rd = ratio(tps["airlock"], tps["direct"])
            rb = ratio(tps["airlock"], tps["pgbouncer"])
            summary[(c, p)] = (rd, rb)
            out.append(
                f"| {c} | {p} | {fmt(tps['direct'])} | {fmt(tps['pgbouncer'])} | {fmt(tps['airlock'])} "
                f"| {fmt(rd, 2)}x | {fmt(rb, 2)}x | {fmt(lat['direct'], 3)} | {fmt(lat['pgbouncer'], 3)} "
                f"| {fmt(lat['airlock'], 3)} |"
            )
    one = []
    added = {}
    if 1 in clients:
        one.append("| protocol | median direct (us) | median PgBouncer (us) | median Airlock (us) "
                   "| added by Airlock (us) | added by PgBouncer (us) |")
        one.append("|---|---:|---:|---:|---:|---:|")
        for p in protocols:
            m = {t: med(1, p, t, "median_latency_us") for t in TARGETS}
            add = None if m["airlock"] is None or m["direct"] is None else m["airlock"] - m["direct"]
            addb = None if m["pgbouncer"] is None or m["direct"] is None else m["pgbouncer"] - m["direct"]
            added[p] = add
            one.append(f"| {p} | {fmt(m['direct'])} | {fmt(m['pgbouncer'])} | {fmt(m['airlock'])} "
                       f"| {fmt(add)} | {fmt(addb)} |")
    failed = sum(int(r["failed"] or 0) for r in rows)
    raw = ["| round | clients | protocol | target | TPS | latency (ms) | median (us) | failed |",
           "|---:|---:|---|---|---:|---:|---:|---:|"]
    for r in rows:
        raw.append(f"| {r['round']} | {r['clients']} | {r['protocol']} | {r['target']} | {fmt(float(r['tps']))} "
                   f"| {r['latency_ms']} | {r['median_latency_us'] or ''} | {r['failed']} |")
    return out, one, raw, summary, added, failed, clients, protocols


def parse_criterion(path):
    """(group/name, [low, estimate, high] in ns) from criterion's text output."""
    units = {"ps": 1e-3, "ns": 1.0, "µs": 1e3, "us": 1e3, "ms": 1e6, "s": 1e9}
    results = []
    name = None
    time_re = re.compile(r"time:\s+\[([\d.]+) (\S+) ([\d.]+) (\S+) ([\d.]+) (\S+)\]")
    with open(path) as f:
        for line in f:
            line = line.rstrip()
            head = re.match(r"^(\S+/\S+)", line)
            if head and not line.startswith(" "):
                name = head.group(1)
            m = time_re.search(line)
            if m and name:
                vals = [float(m.group(i)) * units[m.group(i + 1)] for i in (1, 3, 5)]
                results.append((name, vals))
                name = None
    return results


def ns_text(ns):
    if ns < 1000:
        return f"{ns:.0f} ns"
    return f"{ns / 1000:.2f} us"


def main():
    results, output = sys.argv[1], sys.argv[2]
    here = os.path.dirname(os.path.abspath(__file__))
    meta = read_meta(os.path.join(results, "meta.txt"))
    with open(os.path.join(results, "pgbench.csv")) as f:
        rows = list(csv.DictReader(f))
    table, one, raw, summary, added, failed, clients, protocols = pgbench_section(rows, meta)
    approval = None
    if os.path.exists(os.path.join(results, "approval.json")):
        with open(os.path.join(results, "approval.json")) as f:
            approval = json.load(f)
    unbounded = None
    if os.path.exists(os.path.join(results, "approval-unbounded.json")):
        with open(os.path.join(results, "approval-unbounded.json")) as f:
            unbounded = json.load(f)
    grants = None
    if os.path.exists(os.path.join(results, "grants.json")):
        with open(os.path.join(results, "grants.json")) as f:
            grants = json.load(f)
    idle = {}
    for t in ("airlock", "pgbouncer"):
        p = os.path.join(results, f"idle-{t}.json")
        if os.path.exists(p):
            with open(p) as f:
                idle[t] = json.load(f)
    crit_path = os.path.join(results, "criterion.txt")
    crit = parse_criterion(crit_path) if os.path.exists(crit_path) else []
    with open(os.path.join(results, "load.txt")) as f:
        load = [line.split() for line in f if line.strip()]
    log_md = os.path.join(results, "log.md")
    findings = os.path.join(here, "findings.md")

    mem_gib = int(meta.get("memory_kib", "0") or 0) / 1024 / 1024
    w = []
    w.append("# Airlock benchmarks")
    w.append("")
    w.append(f"Written by `{meta['command']}` on {meta['date']} in {int(meta['elapsed_s']) // 60} min "
             f"{int(meta['elapsed_s']) % 60} s (commit `{meta['commit']}`). Every figure below comes from "
             "that one run; regenerate the file with the same command.")
    w.append("")
    if meta.get("note"):
        w.append(f"**Note on this run.** {meta['note']}")
        w.append("")
    w.append("## Machine and versions")
    w.append("")
    w.append("| | |")
    w.append("|---|---|")
    w.append(f"| CPU | {meta['cpu']}, {meta['cores']} cores |")
    w.append(f"| memory | {mem_gib:.1f} GiB |")
    w.append(f"| kernel | Linux {meta['kernel']} |")
    w.append(f"| PostgreSQL | {meta['postgres']} ({meta['pgbench']}) |")
    w.append(f"| PgBouncer | {meta['pgbouncer']} (Debian package `pgbouncer`) |")
    w.append(f"| NATS | {meta['nats']} |")
    w.append(f"| Rust | {meta['rustc']} (release profile) |")
    w.append(f"| commit | `{meta['commit']}` |")
    w.append("")
    w.append("Load average (1, 5, 15 min) at each step; the machine is shared, so anything above the "
             "benchmark's own load came from other work running at the same time:")
    w.append("")
    w.append("| step | load |")
    w.append("|---|---|")
    for entry in load:
        w.append(f"| {entry[0]} | {' '.join(entry[-3:])} |")
    w.append("")

    # Targets.
    w.append("## Targets")
    w.append("")
    w.append("| target | measured | met |")
    w.append("|---|---|---|")

    def verdict(ok):
        return "n/a" if ok is None else ("yes" if ok else "**no**")

    if 8 in clients:
        for p in protocols:
            rd, rb = summary.get((8, p), (None, None))
            w.append(f"| 8 clients, {p}: Airlock >= 1.0x PgBouncer | {fmt(rb, 2)}x | "
                     f"{verdict(None if rb is None else rb >= 1.0)} |")
            w.append(f"| 8 clients, {p}: Airlock >= 0.6x direct | {fmt(rd, 2)}x | "
                     f"{verdict(None if rd is None else rd >= 0.6)} |")
    for p in protocols:
        a = added.get(p)
        w.append(f"| 1 client, {p}: <= 60 us added median latency | {fmt(a)} us | "
                 f"{verdict(None if a is None else a <= 60)} |")
    if approval:
        rel = approval["release"]["p99_ms"]
        w.append(f"| approval release p99 <= 10 ms | {rel:.2f} ms | {verdict(rel <= 10)} |")
    else:
        w.append("| approval release p99 <= 10 ms | not measured in this run | n/a |")
    if "airlock" in idle:
        per = idle["airlock"]["per_connection_kib"]
        w.append(f"| <= 64 KiB per idle connection | {per:.1f} KiB | {verdict(per <= 64)} |")
    log_json = os.path.join(results, "log.json")
    if os.path.exists(log_json):
        lj = json.load(open(log_json))
        fold = lj["fold_events_per_second"]
        n = int(lj["events"])
        w.append(f"| fold >= 200,000 events/s | {fold:,.0f} events/s | {verdict(fold >= 200000)} |")
        for label, key in (("without", "startup_without_snapshot_seconds"), ("with", "startup_with_snapshot_seconds")):
            t = lj[key]
            ok = t < 10 if n >= 1000000 else None
            w.append(f"| start-up with {n:,} events < 10 s ({label} a snapshot) | {t:.2f} s | {verdict(ok)} |")
    else:
        w.append("| fold >= 200,000 events/s | pending (part 3) | n/a |")
        w.append("| start-up with 1,000,000 events < 10 s | pending (part 3) | n/a |")
    w.append("")

    # Part 1.
    w.append("## 1. Proxy overhead: pgbench -S")
    w.append("")
    w.append(f"`pgbench -n -S` (the built-in select-only script: one `SELECT abalance FROM pgbench_accounts "
             f"WHERE aid = :aid` per transaction), scale {meta['scale']}, {meta['duration']} s per run, "
             f"threads = min(clients, cores), against three targets on loopback:")
    w.append("")
    w.append("* **direct**: PostgreSQL itself (SCRAM login);")
    w.append("* **PgBouncer**: session pooling, plain-text password to PgBouncer, SCRAM to PostgreSQL;")
    w.append("* **Airlock**: `airlock-proxy` with a policy allowing `SELECT` with `record: true` (every statement "
             "is parsed, judged, and recorded in NATS JetStream; a busy session's statements are recorded "
             "together, one `StatementsExecuted` event per `proxy.record_linger` of 20 ms), logging in with a "
             "token from `airlock-dev-idp` as the password, plain text on loopback "
             "(`proxy.allow_plaintext_loopback`), SCRAM to PostgreSQL; `airlock-control` attached.")
    w.append("")
    w.append(f"Runs are interleaved: in each of {meta['rounds']} rounds, every (clients, protocol) pair runs "
             "direct, PgBouncer, Airlock back to back, so drift in the machine's load hits all three alike. "
             "Figures are medians over the rounds; ratios are of the median TPS. Latency is pgbench's "
             "average per transaction.")
    w.append("")
    w.extend(table)
    w.append("")
    if one:
        w.append("At one client, the median of every transaction's latency (pgbench's per-transaction log), "
                 "median over the rounds:")
        w.append("")
        w.extend(one)
        w.append("")
    w.append(f"Failed transactions over all runs: {failed}.")
    w.append("")
    rec_path = os.path.join(results, "recorded.json")
    if os.path.exists(rec_path):
        with open(rec_path) as f:
            rec = json.load(f)
        w.append(f"Recorded exactly once: pgbench counted {rec['transactions']:,} transactions through Airlock "
                 f"over all runs, and the log holds {rec['recorded']:,} of its statements with "
                 f"{rec['distinct']:,} distinct record ids, in {rec['events']:,} events "
                 f"({rec['recorded'] / max(rec['events'], 1):.1f} statements per event); the run stops if "
                 "they differ (`tests/bench/recorded.py`).")
        w.append("")

    # Where the CPU goes.
    cpu_path = os.path.join(results, "cpu.csv")
    if os.path.exists(cpu_path):
        with open(cpu_path) as f:
            cpu_rows = list(csv.DictReader(f))
        hz = float(meta.get("hz") or 100)
        parts = ("proxy", "pgbouncer", "nats", "control", "postgres", "pgbench")
        per = {}
        for r in cpu_rows:
            tx = float(r["transactions"] or 0)
            if tx <= 0:
                continue
            key = (int(r["clients"]), r["protocol"], r["target"])
            per.setdefault(key, []).append({k: float(r[k] or 0) / hz * 1e6 / tx for k in parts})
        if per:
            w.append("Where the CPU goes: CPU time (user + system, from `/proc/<pid>/stat`; pgbench's from GNU "
                     "time) per transaction, in microseconds, median over the rounds. PostgreSQL's includes "
                     "its backends. On this machine everything shares the same cores, so a target's TPS is "
                     "roughly the cores' time divided by the total.")
            w.append("")
            w.append("| clients | protocol | target | airlock-proxy | PgBouncer | NATS | airlock-control "
                     "| PostgreSQL | pgbench | total |")
            w.append("|---:|---|---|---:|---:|---:|---:|---:|---:|---:|")
            for (c, p, t) in sorted(per, key=lambda k: (k[0], protocols.index(k[1]) if k[1] in protocols else 9,
                                                       TARGETS.index(k[2]))):
                vals = {k: median([d[k] for d in per[(c, p, t)]]) for k in parts}
                total = sum(vals.values())
                cells = [fmt(vals[k], 1) if vals[k] else "-" for k in parts]
                if t == "pgbouncer" and not vals["postgres"]:
                    # Older runs counted only exited backends; PgBouncer's pool outlives the run.
                    cells[parts.index("postgres")] = "n/a"
                    total = None
                w.append(f"| {c} | {p} | {t} | {' | '.join(cells)} | {fmt(total, 1)} |")
            w.append("")

    # Part 2.
    w.append("## 2. Approval round trip")
    w.append("")
    if approval:
        w.append(f"`tests/benches/approval.rs`: {approval['agents']} agent sessions through the proxy each send "
                 f"`DELETE`s the policy holds, one after another ({approval['statements']} in all, "
                 f"{approval['elapsed_s']} s); a reviewer approves each through `ReviewerService.Decide` "
                 "(gRPC) as soon as the agent's NOTICE names the request, and a second reviewer connection "
                 "watches `ReviewerService.Watch`.")
        w.append("")
        w.append("| latency | n | p50 (ms) | p90 (ms) | p99 (ms) | max (ms) |")
        w.append("|---|---:|---:|---:|---:|---:|")
        labels = {
            "release": "decision acknowledged (`Decide` returned) -> agent has its result (bounded execution included)",
            "visible": "`ApprovalRequested` stored in JetStream -> on a reviewer's `Watch` stream",
            "listed": "statement sent -> request on a reviewer's `Watch` stream with its estimate",
            "notice": "statement sent -> hold NOTICE at the agent",
            "total": "statement sent -> result at the agent (whole round trip, reviewer included)",
        }
        for key in ("release", "visible", "listed", "notice", "total"):
            if key not in approval:
                continue
            s = approval[key]
            w.append(f"| {labels[key]} | {s['n']} | {s['p50_ms']:.2f} | {s['p90_ms']:.2f} | {s['p99_ms']:.2f} "
                     f"| {s['max_ms']:.2f} |")
        if unbounded:
            s = unbounded["release"]
            w.append(f"| the same release, unbounded (no estimate, so no row bounds) | {s['n']} | {s['p50_ms']:.2f} "
                     f"| {s['p90_ms']:.2f} | {s['p99_ms']:.2f} | {s['max_ms']:.2f} |")
        w.append("")
        if "estimated" in approval:
            w.append(f"Requests that carried an impact estimate: {approval['estimated']} of {approval['statements']}. "
                     "Bounded execution's cost is the difference between the two release rows: the proxy's own "
                     "round trips to PostgreSQL around an approved single-row `DELETE` (count, `BEGIN`, count, "
                     "`COMMIT`).")
            w.append("")
        w.append(f"Results that reached the agent before `Decide` returned (counted as 0 ms): "
                 f"{approval['released_before_ack']} of {approval['statements']}. Requests never seen on "
                 f"`Watch`: {approval['not_seen_on_watch']}. Visibility is measured on `Watch`, the push path; "
                 "`ListRequests` reads the same projection, so a request is listed no later than it is "
                 "pushed.")
        w.append("")

    else:
        w.append("**Not measured in this run**: the run ended before this part (see the note at the top).")
        w.append("")

    w.append("## 2b. Grants")
    w.append("")
    if grants:
        w.append("`tests/benches/grants.rs`: a reviewer approves one held `DELETE` with a fingerprint scope; "
                 "one agent session then alternates a read the policy allows (`SELECT` of the same table and "
                 "shape) with a `DELETE` of the granted shape, each a grant use: judged, its `GrantUsed` "
                 "appended under optimistic concurrency on the grant's subject, then run bounded (the "
                 "proxy's own count, `BEGIN`, count, `COMMIT` around it).")
        w.append("")
        w.append("| at 1 client | n | p50 (ms) | p90 (ms) | p99 (ms) | max (ms) |")
        w.append("|---|---:|---:|---:|---:|---:|")
        for key, label in (("grant_use", "a `DELETE` run under a grant"), ("allowed_read", "a `SELECT` allowed by policy")):
            s_ = grants[key]
            w.append(f"| {label} | {s_['n']} | {s_['p50_ms']:.2f} | {s_['p90_ms']:.2f} | {s_['p99_ms']:.2f} | {s_['max_ms']:.2f} |")
        r = grants["race"]
        w.append("")
        w.append(f"Racing: {r['sessions']} sessions on {r['proxies']} proxies used one grant of {r['max_uses']} "
                 f"uses until it ran out: {r['ran']} ran (never more than `max_uses`), "
                 f"{r['uses_per_second']:.0f} uses per second over {r['seconds']:.2f} s.")
        w.append("")
    else:
        w.append("**Not measured in this run**.")
        w.append("")

    # Part 3.
    w.append("## 3. Event log: append throughput, fold rate, start-up")
    w.append("")
    if os.path.exists(log_md):
        with open(log_md) as f:
            w.append(f.read().rstrip())
    else:
        w.append("**Pending.** These measurements (events per second appended by many concurrent recorded "
                 "sessions; the control plane's fold rate over 1,000,000 events; start-up time with "
                 "1,000,000 events with and without a snapshot) belong to the control-plane snapshot work, "
                 "which is in progress. `run.sh` has a marked section for them; no figures are given "
                 "here until they are measured.")
    w.append("")

    # Part 4.
    w.append("## 4. Memory per idle connection")
    w.append("")
    if idle:
        n = next(iter(idle.values()))["connections"]
        w.append(f"`tests/benches/idle.rs` opens {n} connections, runs `SELECT 1` on each (so each session "
                 "is fully open: logged in, upstream connected, `SessionOpened` recorded), leaves them idle, "
                 "and reads the server's `VmRSS` from `/proc/<pid>/status` before (after 20 warm-up "
                 "logins) and 2 s after the last login. Measured before the throughput runs, on a fresh "
                 "process. PgBouncer is measured the same way for comparison.")
        w.append("")
        w.append("| server | connections | RSS before (KiB) | RSS idle (KiB) | growth per connection (KiB) "
                 "| RSS after closing (KiB) | logins/s |")
        w.append("|---|---:|---:|---:|---:|---:|---:|")
        for t, d in idle.items():
            name = "airlock-proxy" if t == "airlock" else "PgBouncer"
            rate = d["connections"] / d["connect_secs"] if d["connect_secs"] else None
            w.append(f"| {name} | {d['connections']} | {fmt(d['rss_before_kib'])} | {fmt(d['rss_idle_kib'])} "
                     f"| {d['per_connection_kib']:.1f} | {fmt(d['rss_after_close_kib'])} | {fmt(rate)} |")
        w.append("")
        w.append("Each Airlock session also holds one PostgreSQL connection (a backend process, not "
                 "counted above), as PgBouncer's session pooling does.")
    w.append("")

    # Part 5.
    w.append("## 5. Classification: the policy crate's criterion bench")
    w.append("")
    w.append(f"`cargo bench -p airlock-policy --bench verdict -- {meta['criterion']}`: the cost of one "
             "verdict over a mix of statements. `uncached` parses, classifies and judges every time; "
             "`cached` is a hit in the proxy's verdict cache; `stages` splits the uncached cost. "
             "Criterion's estimate with its confidence interval:")
    w.append("")
    if not crit:
        w.append("**Not measured in this run**: the run ended before this part (see the note at the top).")
        w.append("")
    w.append("| statement | uncached | cached |")
    w.append("|---|---:|---:|")
    by = {name: vals for name, vals in crit}
    names = [n.split("/", 1)[1] for n, _ in crit if n.startswith("uncached/")]
    for n in names:
        u = by.get(f"uncached/{n}")
        c = by.get(f"cached/{n}")
        cell = lambda v: "n/a" if v is None else f"{ns_text(v[1])} ({ns_text(v[0])} - {ns_text(v[2])})"
        w.append(f"| {n} | {cell(u)} | {cell(c)} |")
    stages = [(n, v) for n, v in crit if n.startswith("stages/")]
    if stages:
        w.append("")
        w.append("| stage | time |")
        w.append("|---|---:|")
        for n, v in stages:
            w.append(f"| {n.split('/', 1)[1]} | {ns_text(v[1])} |")
    if names:
        um = median([by[f"uncached/{n}"][1] for n in names if f"uncached/{n}" in by])
        cm = median([by[f"cached/{n}"][1] for n in names if f"cached/{n}" in by])
        w.append("")
        w.append(f"Median over the mix: uncached {ns_text(um)}, cached {ns_text(cm)}.")
    w.append("")

    if os.path.exists(findings):
        with open(findings) as f:
            w.append(f.read().rstrip())
        w.append("")

    w.append("## Reproduce")
    w.append("")
    w.append("```sh")
    w.append(meta["command"])
    w.append("```")
    w.append("")
    w.append("On a Debian machine with a Rust toolchain: it installs nats-server, PostgreSQL (with pgbench) "
             "and PgBouncer where missing, builds the release binaries, runs everything on loopback under "
             "`.airlock/bench/` (logs there too) and rewrites this file. `--quick` runs every part briefly "
             "(to try the script); `BENCH_DURATION`, `BENCH_ROUNDS`, `BENCH_CLIENTS`, `BENCH_PROTOCOLS` "
             "and the other knobs at the top of `tests/bench/run.sh` change the durations and sizes.")
    w.append("")
    w.append("<details><summary>Every pgbench run</summary>")
    w.append("")
    w.extend(raw)
    w.append("")
    w.append("</details>")
    w.append("")
    with open(output, "w") as f:
        f.write("\n".join(w))


if __name__ == "__main__":
    main()
