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
           "ops/activity", "worker_ops/activity", "ops/commit", "writer_busy_%"],
    "W2": ["p50_ms", "p99_ms", "start_p50_ms", "sqlite_commit_ms", "p50/commit_floor",
           "write_commits/workflow", "writer_ms/workflow", "ops/workflow"],
    "W3": ["seconds", "activities/s", "commits/activity", "write_commits/activity",
           "writer_busy_%"],
    "W4": ["rss_growth_mb", "kb/waiter", "cached_workflows", "db_file_mb",
           "start_until_all_waiting_s", "release_all_s", "replays_on_release"],
    "W5": ["kill_to_complete_s", "kill_to_worker_ready_s", "kill_to_first_resumed_activity_s",
           "recovery_overhead_s", "activities_run_twice", "activities_completed_twice"],
}

# variant vs. the same workload's default variant, per round (the two ran back to back)
RATIOS: list[tuple[str, str, str]] = [
    ("W2", "sync=NORMAL", "p50_ms"),
    ("W4", "cache=100", "rss_growth_mb"),
    ("W4", "cache=100", "release_all_s"),
    ("W5", "fast", "kill_to_complete_s"),
]

QUICK_VARIANTS = {"W2": [""], "W4": [""], "W5": ["fast"]}


def _revision() -> str:
    """The checked-out commit, and whether src/ has uncommitted changes (read-only git)."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=HERE,
                              capture_output=True, text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "../src"], cwd=HERE,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{head or 'unknown'}{' + uncommitted changes in src/' if dirty else ''}"


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


CHILD_TIMEOUT = 180.0


def run_child(name: str, variant: str, quick: bool) -> dict[str, float] | None:
    """One run in a fresh process; None (with the reason on stderr) if it failed or hung."""
    args = [sys.executable, os.path.abspath(__file__), "--child", name, "--variant", variant]
    if quick:
        args.append("--quick")
    try:
        proc = subprocess.run(args, capture_output=True, text=True, timeout=CHILD_TIMEOUT)
    except subprocess.TimeoutExpired as exc:
        tail = (exc.stderr or b"")[-2000:]
        tail = tail.decode(errors="replace") if isinstance(tail, bytes) else tail
        print(f"  {_label(name, variant)} HUNG (killed after {CHILD_TIMEOUT:g}s):\n{tail}",
              file=sys.stderr)
        return None
    if proc.returncode != 0:
        print(f"  {_label(name, variant)} FAILED:\n{proc.stderr[-3000:]}", file=sys.stderr)
        return None
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------- profiling
def profile(names: list[str], out_dir: str, quick: bool, profiler: str) -> None:
    from _profile import with_py_spy, with_pyinstrument
    from _workloads import WORKLOADS

    os.makedirs(out_dir, exist_ok=True)
    for name in names:
        fn, _ = WORKLOADS[name]
        if profiler == "pyinstrument":
            text = with_pyinstrument(name, fn, out_dir, quick)
        else:
            text = with_py_spy(name, os.path.abspath(__file__), out_dir, quick,
                               gil=profiler == "py-spy-gil")
        print(f"== {name} ({profiler}); files in {out_dir}")
        print("\n".join(text.splitlines()[:60]))


# ---------------------------------------------------------------- the table
def print_table(results: dict[tuple[str, str], list[dict[str, float]]], all_metrics: bool,
                failures: dict[tuple[str, str], int], planned: int) -> None:
    rows = [("Workload", "Metric", "Median", "Spread (min-max)", "Runs", "Target")]
    for (name, variant), runs in results.items():
        failed = failures.get((name, variant), 0)
        if failed:
            rows.append((_label(name, variant), "FAILED or HUNG runs", str(failed), "-",
                         str(planned), "0 FAIL"))
        if not runs:
            continue
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
    for name, variant, key in RATIOS:
        base, other = results.get((name, "")), results.get((name, variant))
        if not base or not other:
            continue
        values = [o[key] / b[key] for b, o in zip(base, other, strict=False)
                  if b.get(key) and key in o]
        if values:
            spread = f"{_fmt(min(values))}-{_fmt(max(values))}" if len(values) > 1 else "-"
            rows.append((f"{_label(name, variant)} / {name}", f"{key} ratio", _fmt(median(values)),
                         spread, str(len(values)), ""))
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
                        help="runs per workload (default 5; 1 with --quick)")
    parser.add_argument("--only", default="",
                        help="comma-separated workloads, e.g. W1,W2 or W4:cache=100")
    parser.add_argument("--quick", action="store_true",
                        help="smoke mode: smaller workloads, one run, fewer variants")
    parser.add_argument("--json", metavar="PATH", help="also write every run's metrics here")
    parser.add_argument("--all-metrics", action="store_true", help="show every metric")
    parser.add_argument("--profile", metavar="W1,W2",
                        help="profile one run of these workloads instead of benchmarking")
    parser.add_argument("--profiler", default="pyinstrument",
                        choices=["pyinstrument", "py-spy", "py-spy-gil"],
                        help="pyinstrument: event-loop thread only; py-spy: every thread "
                        "(on-CPU samples); py-spy-gil: only samples holding the GIL")
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
                args.quick, args.profiler)
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
    runs = args.runs or (1 if args.quick else 5)

    print(f"Perdure benchmarks: {runs} run(s) each{' (quick)' if args.quick else ''}; "
          f"Python {platform.python_version()}, {os.cpu_count()} CPUs, "
          f"{platform.platform()}", file=sys.stderr)
    results: dict[tuple[str, str], list[dict[str, float]]] = {key: [] for key in selected}
    failures: dict[tuple[str, str], int] = {}
    started = time.perf_counter()
    for run in range(runs):  # interleave workloads so that machine noise spreads over all
        for name, variant in selected:
            t0 = time.perf_counter()
            metrics = run_child(name, variant, args.quick)
            if metrics is None:
                failures[(name, variant)] = failures.get((name, variant), 0) + 1
            else:
                results[(name, variant)].append(metrics)
            print(f"  run {run + 1}/{runs} {_label(name, variant)}: "
                  f"{time.perf_counter() - t0:.1f}s{'' if metrics else ' FAILED'}",
                  file=sys.stderr)
    print(f"total {time.perf_counter() - started:.0f}s", file=sys.stderr)
    command = "python benchmarks/run.py " + " ".join(sys.argv[1:])
    print(f"\n{command.strip()}   (perdure {_revision()})\n")
    print_table(results, args.all_metrics, failures, runs)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({f"{_label(n, v)}": r for (n, v), r in results.items()}, f, indent=1)


if __name__ == "__main__":
    main()
