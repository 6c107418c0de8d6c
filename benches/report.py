#!/usr/bin/env python3
"""Turns criterion runs of `benches/throughput.rs` into a markdown table: the
median time per operation of each subject, and each larder figure's ratio to
quick_cache and moka (peer time / larder time: above 1.0 means larder is faster).

The machine is shared and noisy, so run the bench several times under named
baselines and pass their names; ratios are computed within each run (same
minutes, same noise) and the median ratio across runs is reported.

    for r in 1 2 3; do cargo bench --bench throughput -- --save-baseline run$r; done
    python3 benches/report.py run1 run2 run3

`--root DIR` reads criterion's output from DIR (default `target/criterion`;
with `CARGO_TARGET_DIR` set, `$CARGO_TARGET_DIR/criterion`). `larder_peek`
(a lookup that records no read) is not compared with the peers' `get`.
"""
import json
import pathlib
import statistics
import sys

import os

args = sys.argv[1:]
default_root = pathlib.Path(os.environ.get("CARGO_TARGET_DIR", "target")) / "criterion"
root = default_root
if args[:1] == ["--root"]:
    if len(args) < 2:
        sys.exit("--root needs a directory")
    root = pathlib.Path(args[1])
    args = args[2:]
if not root.is_dir():
    sys.exit(f"no criterion output in {root}")
baselines = args or ["new"]
# (group, threads) -> subject -> [median per run]
times = {}
runs = []
for baseline in baselines:
    run = {}
    for est in sorted(root.glob(f"**/{baseline}/estimates.json")):
        parts = est.relative_to(root).parts[:-2]
        group, name = parts[0], parts[1]
        threads = parts[2] if len(parts) > 2 else "1"
        median = json.loads(est.read_text())["median"]["point_estimate"]
        run.setdefault((group, threads), {})[name] = median
        times.setdefault((group, threads), {}).setdefault(name, []).append(median)
    runs.append(run)


def ratio(key, name, peer):
    r = [run[key][peer] / run[key][name] for run in runs
         if key in run and name in run[key] and peer in run[key]]
    return f"{statistics.median(r):.2f}×" if r else ""


print(f"Medians over {len(baselines)} run(s): {', '.join(baselines)}\n")
print("| workload | threads | subject | ns/op | vs quick_cache | vs moka |")
print("|---|---:|---|---:|---:|---:|")
for key, subjects in sorted(times.items()):
    for name, medians in sorted(subjects.items()):
        # `larder_peek` records no read: not the same work as a peer's `get`.
        ours = name.startswith("larder") and name != "larder_peek"
        q = ratio(key, name, "quick_cache") if ours else ""
        m = ratio(key, name, "moka") if ours else ""
        print(f"| {key[0]} | {key[1]} | {name} | {statistics.median(medians):.1f} | {q} | {m} |")
