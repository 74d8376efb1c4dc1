"""Summarize benchmarks/overload.sh's files: one table row per load (Markdown)."""
from __future__ import annotations

import json
import sys

prefix = sys.argv[1]
runs = []
for part in ("closed", "open", "after"):
    runs += json.load(open(f"{prefix}-{part}.json"))["runs"]
samples = [line.split() for line in open(f"{prefix}-samples.txt") if len(line.split()) == 2]
peak_rows = max(r["rows_per_s"] for r in runs if r["mode"] == "closed" and r["concurrency"] > 1)
served = next(r for r in runs if r["mode"] == "closed" and r["concurrency"] == 8)
cpu_served_s = served["server_cpu_s_per_request"]  # c=8: every request served
print("| load | OK rows/s | vs peak | OK / refused | OK p50 / p99 ms | refused p50 / max ms | client send lag p50 / p99 ms "
      "| client CPU s (per s) | server CPU ms per refused |")
print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
for r in runs:
    load = f"c={r['concurrency']}" if r["mode"] == "closed" else f"open {r['rate']:.0f}/s"
    refused = r["requests"] - r["ok"]
    per_refused = ""
    if refused and r["server_cpu_s_per_request"] is not None and cpu_served_s:
        total = r["server_cpu_s_per_request"] * r["total_requests"]
        ok_share = r["ok"] / max(1, r["requests"]) * r["total_requests"]
        per_refused = f"{max(0.0, total - ok_share * cpu_served_s) / (r['total_requests'] - ok_share) * 1e3:.2f}"
    lat, failed, lag = r["latency_ms"], r["failed_latency_ms"], r["send_lag_ms"]
    seconds = r["elapsed_s"] + 1
    print(f"| {load} | {r['rows_per_s']:,.0f} | {r['rows_per_s'] / peak_rows:.2f} | {r['ok']:,} / {refused:,} "
          f"{dict(r['errors']) if refused else ''} | {lat['p50']:.0f} / {lat['p99']:.0f} | "
          + (f"{failed['p50']:.1f} / {failed['max']:.0f}" if refused else "") + " | "
          f"{lag['p50']:.1f} / {lag['p99']:.1f} | {r['client_cpu_s']:.1f} ({r['client_cpu_s'] / seconds:.2f}) | {per_refused} |")
for key, count in sorted({k: v for r in runs for k, v in r.get("error_details", {}).items()}.items()):
    print(f"  refusal: {count} x {key}")
print(f"served request: server CPU {cpu_served_s * 1e3:.2f} ms (c=8); peak {peak_rows:,.0f} rows/s; "
      f"RSS peak {max(int(s[0]) for s in samples) // 1024} MiB, end {int(samples[-1][0]) // 1024} MiB; "
      f"batch queue max {max(float(s[1]) for s in samples):.0f}")
