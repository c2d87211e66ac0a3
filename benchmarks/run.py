"""Perdure benchmarks: ``python benchmarks/run.py [--runs N] [--only W1,W2] [--quick]``.

Each run of each workload executes in a fresh Python process (clean memory,
no leftover threads), on a fresh SQLite file. The table shows the median over
the runs and their spread (min-max); ratios are computed within each run
first, then summarised. See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import platform
import subprocess
import sys
import time
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

from _util import median  # noqa: E402

# (workload, metric) -> (target text, predicate on the median)
TARGETS: dict[tuple[str, str], tuple[str, Any]] = {
    ("W1", "activities/s"): (">= 2,000", lambda v: v >= 2000),
    ("W1", "commits/activity"): ("<= 1", lambda v: v <= 1),
    ("W1", "write_commits/activity"): ("<= 1", lambda v: v <= 1),
    ("W2", "p50_ms"): ("< 2 ms", lambda v: v < 2),
    ("W4", "rss_growth_mb"): ("< 30 MB", lambda v: v < 30),
    ("W5", "kill_to_complete_s"): ("< 5 s", lambda v: v < 5),
    ("W5", "activities_run_twice"): ("<= 1", lambda v: v <= 1),
}

HEADLINE: dict[str, list[str]] = {
    "W1": ["activities/s", "workflows/s", "commits/activity", "write_commits/activity",
           "ops/activity", "worker_ops/activity", "ops/commit"],
    "W2": ["p50_ms", "p99_ms", "sqlite_commit_ms", "p50/commit_floor", "write_commits/workflow",
           "ops/workflow"],
    "W3": ["seconds", "activities/s", "commits/activity", "write_commits/activity"],
    "W4": ["rss_growth_mb", "kb/waiter", "cached_workflows", "start_until_all_waiting_s",
           "release_all_s", "replays_on_release"],
    "W5": ["kill_to_complete_s", "kill_to_worker_ready_s", "kill_to_first_resumed_activity_s",
           "recovery_overhead_s", "activities_run_twice", "activities_completed_twice"],
}

QUICK_VARIANTS = {"W4": [""], "W5": ["fast"]}


def _label(name: str, variant: str) -> str:
    return f"{name} ({variant})" if variant else name


def _fmt(value: float) -> str:
    if math.isnan(value):
        return "n/a"
    magnitude = abs(value)
    if magnitude >= 1000:
        return f"{value:,.0f}"
    if magnitude >= 100:
        return f"{value:.0f}"
    if magnitude >= 10:
        return f"{value:.1f}"
    if magnitude >= 1 or value == 0:
        return f"{value:.2f}"
    return f"{value:.3f}"


# ---------------------------------------------------------------- child: one run
def child(name: str, variant: str, quick: bool) -> None:
    from _workloads import WORKLOADS

    fn, _ = WORKLOADS[name]
    metrics = asyncio.run(fn(quick, variant))
    print(json.dumps(metrics), flush=True)


def run_child(name: str, variant: str, quick: bool) -> dict[str, float]:
    args = [sys.executable, os.path.abspath(__file__), "--child", name, "--variant", variant]
    if quick:
        args.append("--quick")
    proc = subprocess.run(args, capture_output=True, text=True, timeout=900)
    if proc.returncode != 0:
        raise RuntimeError(f"{_label(name, variant)} failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------- profiling
def profile(names: list[str], out_dir: str, quick: bool) -> None:
    try:
        from pyinstrument import Profiler
    except ImportError:
        sys.exit("profiling needs pyinstrument: .venv/bin/pip install pyinstrument")
    from _workloads import WORKLOADS

    os.makedirs(out_dir, exist_ok=True)
    for name in names:
        fn, _ = WORKLOADS[name]
        profiler = Profiler(interval=0.0005, async_mode="disabled")
        profiler.start()
        metrics = asyncio.run(fn(quick, ""))
        profiler.stop()
        text = profiler.output_text(unicode=False, color=False, show_all=False)
        with open(os.path.join(out_dir, f"{name}.txt"), "w") as f:
            f.write(text)
        with open(os.path.join(out_dir, f"{name}.html"), "w") as f:
            f.write(profiler.output_html())
        print(f"{name}: {json.dumps(metrics)}")
        print(f"  profile written to {out_dir}/{name}.txt and .html")


# ---------------------------------------------------------------- the table
def print_table(results: dict[tuple[str, str], list[dict[str, float]]], all_metrics: bool) -> None:
    rows = [("Workload", "Metric", "Median", "Spread (min-max)", "Runs", "Target")]
    for (name, variant), runs in results.items():
        keys = list(runs[0]) if all_metrics else [
            k for k in HEADLINE.get(name, list(runs[0])) if k in runs[0]
        ]
        for key in keys:
            values = [r[key] for r in runs if key in r and not math.isnan(r[key])]
            if not values:
                continue
            med = median(values)
            spread = f"{_fmt(min(values))}-{_fmt(max(values))}" if len(values) > 1 else "-"
            target = ""
            if (name, key) in TARGETS:
                text, ok = TARGETS[(name, key)]
                target = f"{text} {'PASS' if ok(med) else 'FAIL'}"
            rows.append((_label(name, variant), key, _fmt(med), spread, str(len(values)), target))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for index, row in enumerate(rows):
        cells = [c.rjust(w) if 2 <= i <= 4 else c.ljust(w)
                 for i, (c, w) in enumerate(zip(row, widths, strict=True))]
        print("| " + " | ".join(cells) + " |")
        if index == 0:
            print("|" + "|".join("-" * (w + 2) for w in widths) + "|")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=None,
                        help="runs per workload (default 3; 1 with --quick)")
    parser.add_argument("--only", default="",
                        help="comma-separated workloads, e.g. W1,W2 or W4:cache=100")
    parser.add_argument("--quick", action="store_true",
                        help="smoke mode: smaller workloads, one run, fewer variants")
    parser.add_argument("--json", metavar="PATH", help="also write every run's metrics here")
    parser.add_argument("--all-metrics", action="store_true", help="show every metric")
    parser.add_argument("--profile", metavar="W1,W2",
                        help="run these workloads once in-process under pyinstrument instead")
    parser.add_argument("--profile-dir", default=os.path.join(
        os.environ.get("TMPDIR", "/tmp"), "perdure-profiles"))
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--variant", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:
        child(args.child, args.variant, args.quick)
        return
    from _workloads import WORKLOADS

    if args.profile:
        profile([n.strip().upper() for n in args.profile.split(",")], args.profile_dir,
                args.quick)
        return

    selected: list[tuple[str, str]] = []
    names = [n.strip() for n in args.only.split(",") if n.strip()] or list(WORKLOADS)
    for item in names:
        name, _, variant = item.partition(":")
        name = name.upper()
        if name not in WORKLOADS:
            parser.error(f"unknown workload {name!r}; choose from {', '.join(WORKLOADS)}")
        if variant or ":" in item:
            selected.append((name, variant))
        else:
            variants = QUICK_VARIANTS.get(name, WORKLOADS[name][1]) if args.quick else \
                WORKLOADS[name][1]
            selected.extend((name, v) for v in variants)
    runs = args.runs or (1 if args.quick else 3)

    print(f"Perdure benchmarks: {runs} run(s) each{' (quick)' if args.quick else ''}; "
          f"Python {platform.python_version()}, {os.cpu_count()} CPUs, "
          f"{platform.platform()}", file=sys.stderr)
    results: dict[tuple[str, str], list[dict[str, float]]] = {key: [] for key in selected}
    started = time.perf_counter()
    for run in range(runs):  # interleave workloads so that machine noise spreads over all
        for name, variant in selected:
            t0 = time.perf_counter()
            results[(name, variant)].append(run_child(name, variant, args.quick))
            print(f"  run {run + 1}/{runs} {_label(name, variant)}: "
                  f"{time.perf_counter() - t0:.1f}s", file=sys.stderr)
    print(f"total {time.perf_counter() - started:.0f}s", file=sys.stderr)
    command = "python benchmarks/run.py " + " ".join(sys.argv[1:])
    print(f"\n{command.strip()}\n")
    print_table(results, args.all_metrics)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({f"{_label(n, v)}": r for (n, v), r in results.items()}, f, indent=1)


if __name__ == "__main__":
    main()
