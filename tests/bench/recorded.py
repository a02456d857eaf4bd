#!/usr/bin/env python3
"""Counts pgbench's statements in the log after the throughput runs.

Reads `airlock-control export` (JSON lines) on stdin and the bench's
cpu.csv (which holds the transactions each run processed) and writes a JSON
summary: the select-only statements recorded through Airlock, how many
distinct record ids they carry, and how many transactions pgbench counted
against Airlock. Every executed statement is in the log exactly once when
the three are equal.

    airlock-control export ... | recorded.py RESULTS_DIR
"""
import csv
import json
import os
import sys

PREFIX = "SELECT abalance FROM pgbench_accounts WHERE aid = "


def statements(line):
    """(record id, text) of each statement an exported event records."""
    event = line.get("event", {})
    one = event.get("statement_executed")
    if one is not None:
        yield event.get("id", ""), one.get("statement", {}).get("text", "")
    many = event.get("statements_executed")
    if many is not None:
        for s in many.get("statements", []):
            yield s.get("id", ""), s.get("statement", {}).get("statement", {}).get("text", "")


def main():
    results = sys.argv[1]
    ids = []
    events = 0
    for raw in sys.stdin:
        line = json.loads(raw)
        found = [i for i, text in statements(line) if text.startswith(PREFIX)]
        if found:
            events += 1
            ids.extend(found)
    with open(os.path.join(results, "cpu.csv")) as f:
        transactions = sum(int(r["transactions"] or 0) for r in csv.DictReader(f) if r["target"] == "airlock")
    summary = {
        "transactions": transactions,
        "recorded": len(ids),
        "distinct": len(set(ids)),
        "events": events,
    }
    with open(os.path.join(results, "recorded.json"), "w") as f:
        json.dump(summary, f)
    print(json.dumps(summary))
    return 0 if summary["recorded"] == summary["distinct"] == transactions else 1


if __name__ == "__main__":
    sys.exit(main())
