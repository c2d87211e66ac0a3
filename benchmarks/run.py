"""Perdure benchmarks: ``python benchmarks/run.py [--runs N] [--only W1,W2] [--quick]``.

Each run of each workload executes in a fresh Python process (clean memory,
no leftover threads), on a fresh SQLite file, or with ``--backend postgres`` a
fresh PostgreSQL schema and ``--workers inproc,1,2,4`` worker layouts. The table
shows the median over the runs and their spread (min-max); ratios are computed
within each run first, then summarised. See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import io
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

from _backend import PG_DSN, SQLITE, Bench, workers_label  # noqa: E402
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

# PostgreSQL (the issue's targets): W1 at the best worker count, W2's p50; the others as above
PG_TARGETS: dict[tuple[str, str], tuple[str, Any]] = {
    **{k: v for k, v in TARGETS.items() if k not in (("W1", "activities/s"), ("W2", "p50_ms"))},
    ("W1", "activities/s"): (">= 1,500 (best count)", lambda v: v >= 1500),
    ("W2", "p50_ms"): ("< 3 ms", lambda v: v < 3),
}
# targets judged on the best worker count's median: (workload, metric) -> higher is better
BEST_OF: dict[tuple[str, str], bool] = {("W1", "activities/s"): True, ("W2", "p50_ms"): False}

HEADLINE: dict[str, list[str]] = {
    "W1": ["activities/s", "workflows/s", "commits/activity", "write_commits/activity",
           "ops/activity", "worker_ops/activity", "ops/commit", "writer_busy_%"],
    "W2": ["p50_ms", "p99_ms", "start_p50_ms", "sqlite_commit_ms", "p50/commit_floor",
           "write_commits/workflow", "writer_ms/workflow", "ops/workflow"],
    "W3": ["seconds", "activities/s", "commits/activity", "write_commits/activity",
           "writer_busy_%", "worker.replays"],
    "W3c": ["seconds", "activities/s", "commits/activity", "write_commits/activity",
            "writer_busy_%", "worker.replays", "w3_seconds", "w3_replays",
            "seconds/w3_seconds", "seconds/w3_seconds_no_replays", "extra_ms/child",
            "extra_commits/child", "extra_write_commits/child", "extra_writer_ms/child",
            "extra_workflow_tasks/child", "extra_events/child"],
    "W4": ["rss_growth_mb", "kb/waiter", "cached_workflows", "db_file_mb",
           "start_until_all_waiting_s", "release_all_s", "replays_on_release"],
    "W5": ["kill_to_complete_s", "kill_to_worker_ready_s", "kill_to_first_resumed_activity_s",
           "recovery_overhead_s", "activities_run_twice", "activities_completed_twice"],
}

PG_HEADLINE: dict[str, list[str]] = {
    "W1": ["activities/s", "workflows/s", "commits/activity", "round_trips/activity",
           "statements/activity", "pg_xids/activity", "ops/activity", "ops/commit",
           "whole_run_commits/activity", "pg_xact_commit/whole_run_commits"],
    "W2": ["p50_ms", "p99_ms", "start_p50_ms", "pg_commit_ms", "commits/workflow",
           "round_trips/workflow", "statements/workflow", "pg_xids/workflow",
           "to_first_activation_ms", "between_activations_ms", "last_activation_to_result_ms",
           "pg_xact_commit/whole_run_commits"],
    "W3": ["seconds", "activities/s", "commits/activity", "round_trips/activity",
           "pg_xids/activity", "worker.replays", "pg_xact_commit/whole_run_commits"],
    "W3c": ["seconds", "activities/s", "commits/activity", "round_trips/activity",
            "pg_xids/activity", "worker.replays", "w3_seconds", "w3_replays",
            "seconds/w3_seconds", "seconds/w3_seconds_no_replays", "extra_ms/child",
            "extra_commits/child", "extra_round_trips/child", "extra_pg_xids/child",
            "extra_workflow_tasks/child", "extra_events/child",
            "pg_xact_commit/whole_run_commits"],
    "W4": ["rss_growth_mb", "kb/waiter", "cached_workflows", "db_file_mb",
           "start_until_all_waiting_s", "release_all_s", "replays_on_release"],
    "W5": HEADLINE["W5"],
}

# the scaling table (PostgreSQL): one row per metric, one column per worker layout
SCALING: dict[str, list[str]] = {
    "W1": ["activities/s", "commits/activity", "round_trips/activity", "pg_xids/activity"],
    "W2": ["p50_ms", "p99_ms", "commits/workflow", "round_trips/workflow", "pg_xids/workflow"],
    "W3": ["activities/s", "commits/activity", "round_trips/activity", "pg_xids/activity"],
    "W3c": ["activities/s", "seconds/w3_seconds", "extra_commits/child",
            "extra_pg_xids/child"],
    "W4": ["rss_growth_mb", "release_all_s"],
    "W5": ["kill_to_complete_s", "kill_to_first_resumed_activity_s", "activities_run_twice"],
}

# variant vs. the same workload's default variant, per round (the two ran back to back)
RATIOS: list[tuple[str, str, str]] = [
    ("W2", "sync=NORMAL", "p50_ms"),
    ("W4", "cache=100", "rss_growth_mb"),
    ("W4", "cache=100", "release_all_s"),
    ("W5", "fast", "kill_to_complete_s"),
]

QUICK_VARIANTS = {"W2": [""], "W4": [""], "W5": ["fast"]}
PG_WORKERS, PG_QUICK_WORKERS = "inproc,1,2,4", "inproc,2"

Key = tuple[str, str, int]  # workload, variant, worker subprocesses (0: in-process)


def _revision() -> str:
    """The checked-out commit, and whether src/ has uncommitted changes (read-only git);
    if so, a hash of that diff names the exact code."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=HERE,
                              capture_output=True, text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "../src"], cwd=HERE,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        diff = subprocess.run(["git", "diff", "HEAD", "--", "../src"], cwd=HERE,
                              capture_output=True, timeout=10).stdout if dirty else b""
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    if not dirty:
        return head or "unknown"
    return f"{head or 'unknown'} + uncommitted changes in src/ (diff {hashlib.sha1(diff).hexdigest()[:8]})"


def _short(rev: str) -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", rev], cwd=HERE, check=True,
                              capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return rev


def _pin_src(at: str | None) -> str | None:
    """Copy src/ now (the working tree's, or with ``at`` a commit's, via ``git archive``),
    so that every round imports the same Perdure even if someone edits src/ meanwhile
    (children get it first on PYTHONPATH). The copy's directory, or None."""
    src = os.path.normpath(os.path.join(HERE, "..", "src"))
    if not os.path.isdir(os.path.join(src, "perdure")):
        return None
    directory = tempfile.mkdtemp(prefix="perdure-bench-src-")
    if at:
        archive = subprocess.run(["git", "archive", "--format=tar", at, "src"],
                                 cwd=os.path.dirname(src), capture_output=True, check=True,
                                 timeout=60).stdout
        with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
            tar.extractall(directory, filter="data")
    else:
        shutil.copytree(src, os.path.join(directory, "src"),
                        ignore=shutil.ignore_patterns("__pycache__"))
    return directory


CHILD_ENV: dict[str, str] = {}
"""Extra environment of every child (PYTHONPATH of the pinned src/)."""


def _label(name: str, variant: str, bench: Bench | None = None) -> str:
    label = f"{name} ({variant})" if variant else name
    return f"{label} [{bench.label}]" if bench is not None and bench.label else label


def _load() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


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
def child(name: str, variant: str, quick: bool, bench: Bench) -> None:
    from _workloads import WORKLOADS

    fn, _ = WORKLOADS[name]
    metrics = asyncio.run(fn(quick, variant, bench))
    print(json.dumps(metrics), flush=True)


CHILD_TIMEOUT = 180.0


def run_child(name: str, variant: str, quick: bool,
              bench: Bench = SQLITE) -> dict[str, float] | None:
    """One run in a fresh process; None (with the reason on stderr) if it failed or hung.

    Whatever the run (or its worker subprocesses) wrote to stderr is shown: warnings and
    errors logged by Perdure are worth seeing even when the run succeeded.
    """
    args = [sys.executable, os.path.abspath(__file__), "--child", name, "--variant", variant]
    if quick:
        args.append("--quick")
    if bench.postgres:
        args += ["--backend", "postgres", "--workers", str(bench.workers),
                 "--pool-size", str(bench.pool_size), "--pg", bench.pg_dsn]
    label = _label(name, variant, bench)
    try:
        proc = subprocess.run(args, capture_output=True, text=True, timeout=CHILD_TIMEOUT,
                              env=dict(os.environ, **CHILD_ENV) if CHILD_ENV else None)
    except subprocess.TimeoutExpired as exc:
        tail = (exc.stderr or b"")[-2000:]
        tail = tail.decode(errors="replace") if isinstance(tail, bytes) else tail
        print(f"  {label} HUNG (killed after {CHILD_TIMEOUT:g}s):\n{tail}", file=sys.stderr)
        return None
    if proc.returncode != 0:
        print(f"  {label} FAILED:\n{proc.stderr[-3000:]}", file=sys.stderr)
        return None
    if proc.stderr.strip():
        print(f"  {label} stderr (the run succeeded):\n{proc.stderr[-3000:]}", file=sys.stderr)
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------- profiling
def profile(names: list[tuple[str, str]], out_dir: str, quick: bool, profiler: str) -> None:
    """One run of each (workload, variant) in this process (pyinstrument) or a child (py-spy)."""
    from _profile import with_py_spy, with_pyinstrument
    from _workloads import WORKLOADS

    os.makedirs(out_dir, exist_ok=True)
    for name, variant in names:
        fn, _ = WORKLOADS[name]
        if profiler == "pyinstrument":
            text = with_pyinstrument(name, fn, out_dir, quick, variant)
        else:
            text = with_py_spy(name, os.path.abspath(__file__), out_dir, quick,
                               gil=profiler == "py-spy-gil", variant=variant)
        print(f"== {_label(name, variant)} ({profiler}); files in {out_dir}")
        print("\n".join(text.splitlines()[:60]))


# ---------------------------------------------------------------- the table
def _spread(values: list[float]) -> str:
    return f"{_fmt(min(values))}-{_fmt(max(values))}" if len(values) > 1 else "-"


def _values(runs: list[dict[str, float]], key: str) -> list[float]:
    return [r[key] for r in runs if key in r and not math.isnan(r[key])]


def _best(results: dict[Key, list[dict[str, float]]], name: str, key: str,
          higher: bool) -> tuple[int, float] | None:
    """The worker layout with the best median (worker subprocesses preferred over in-process,
    which only stands in when no subprocess layout was measured)."""
    found = [(w, median(_values(runs, key))) for (n, v, w), runs in results.items()
             if n == name and not v and _values(runs, key)]
    pool = [f for f in found if f[0] > 0] or found
    if not pool:
        return None
    return (max if higher else min)(pool, key=lambda f: f[1])


def _print_rows(rows: list[tuple[str, ...]], right_from: int = 2, right_to: int = 4) -> None:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for index, row in enumerate(rows):
        cells = [c.rjust(w) if right_from <= i <= right_to else c.ljust(w)
                 for i, (c, w) in enumerate(zip(row, widths, strict=True))]
        print("| " + " | ".join(cells) + " |")
        if index == 0:
            print("|" + "|".join("-" * (w + 2) for w in widths) + "|")


def print_table(results: dict[Key, list[dict[str, float]]], all_metrics: bool,
                failures: dict[Key, int], planned: int, backend: str = "sqlite") -> None:
    postgres = backend == "postgres"
    targets = PG_TARGETS if postgres else TARGETS
    headline = PG_HEADLINE if postgres else HEADLINE
    best = {k: _best(results, k[0], k[1], higher) for k, higher in BEST_OF.items()} \
        if postgres else {}
    rows = [("Workload", "Metric", "Median", "Spread (min-max)", "Runs", "Target")]
    for (name, variant, workers), runs in results.items():
        bench = Bench(backend, workers)
        label = _label(name, variant, bench)
        failed = failures.get((name, variant, workers), 0)
        if failed:
            rows.append((label, "FAILED or HUNG runs", str(failed), "-", str(planned), "0 FAIL"))
        if not runs:
            continue
        # every run's keys, in order of appearance (some runs leave some metrics out)
        seen = list(dict.fromkeys(k for r in runs for k in r))
        keys = seen if all_metrics else [k for k in headline.get(name, seen) if k in seen]
        for key in keys:
            values = _values(runs, key)
            if not values:
                continue
            med = median(values)
            target = ""
            if (name, key) in targets:
                text, ok = targets[(name, key)]
                target = f"{text} {'PASS' if ok(med) else 'FAIL'}"
                chosen = best.get((name, key))
                if chosen is not None and not variant and chosen[0] == workers:
                    target += " (best)"
            rows.append((label, key, _fmt(med), _spread(values), str(len(values)), target))
    for name, variant, key in RATIOS:
        for (n, v, workers), other in results.items():
            base = results.get((name, "", workers))
            if n != name or v != variant or not base or not other:
                continue
            values = [o[key] / b[key] for b, o in zip(base, other, strict=False)
                      if b.get(key) and key in o]
            if values:
                label = _label(name, variant, Bench(backend, workers))
                rows.append((f"{label} / {name}", f"{key} ratio", _fmt(median(values)),
                             _spread(values), str(len(values)), ""))
    _print_rows(rows)
    if postgres:
        print_scaling(results, targets, best)


def print_scaling(results: dict[Key, list[dict[str, float]]],
                  targets: dict[tuple[str, str], tuple[str, Any]],
                  best: dict[tuple[str, str], tuple[int, float] | None]) -> None:
    """Medians (spread) per worker layout side by side: how each metric scales with workers."""
    layouts = sorted({w for (_n, _v, w) in results})
    header = ("Workload", "Metric", *(f"{workers_label(w)}" for w in layouts), "Target")
    rows: list[tuple[str, ...]] = [header]
    pairs = list(dict.fromkeys((n, v) for (n, v, _w) in results))
    for name, variant in pairs:
        for key in SCALING.get(name, []):
            cells = []
            for w in layouts:
                values = _values(results.get((name, variant, w), []), key)
                cells.append(f"{_fmt(median(values))} ({_spread(values)})" if values else "")
            if not any(cells):
                continue
            target = ""
            if (name, key) in targets and not variant:
                text, ok = targets[(name, key)]
                chosen = best.get((name, key))
                if chosen is not None:
                    target = (f"{text}: {_fmt(chosen[1])} at {workers_label(chosen[0])} "
                              f"{'PASS' if ok(chosen[1]) else 'FAIL'}")
            rows.append((_label(name, variant), key, *cells, target))
    print("\nScaling (median (min-max) per worker layout; inproc = worker in the client's "
          "process):\n")
    _print_rows(rows, 2, 1 + len(layouts))


def _parse_workers(text: str) -> list[int]:
    out = []
    for item in text.split(","):
        item = item.strip().lower()
        if not item:
            continue
        out.append(0 if item in ("inproc", "0") else int(item))
    return out


def _applicable(name: str, variant: str, bench: Bench) -> bool:
    if bench.postgres and name == "W5" and bench.workers == 0:
        return False  # W5 kills a worker process: it needs worker subprocesses
    return not (bench.postgres and "sync=" in variant)  # SQLite's synchronous option


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=None,
                        help="runs per workload (default 5; 1 with --quick)")
    parser.add_argument("--only", default="",
                        help="comma-separated workloads, e.g. W1,W2 or W4:cache=100")
    parser.add_argument("--quick", action="store_true",
                        help="smoke mode: smaller workloads, one run, fewer variants")
    parser.add_argument("--backend", default="sqlite", choices=["sqlite", "postgres"],
                        help="sqlite (default): a fresh file per run, worker in the client's "
                        "process; postgres: a fresh schema per run, see --workers")
    parser.add_argument("--workers", default=None,
                        help=f"postgres: worker layouts, comma-separated: inproc (the worker "
                        f"in the client's process) or N worker subprocesses (default "
                        f"{PG_WORKERS}; {PG_QUICK_WORKERS} with --quick)")
    parser.add_argument("--pool-size", type=int, default=2,
                        help="postgres: pool_size of every process's store (default 2)")
    parser.add_argument("--pg", default=PG_DSN,
                        help=f"postgres: the database (default {PG_DSN}, or $PERDURE_BENCH_PG)")
    parser.add_argument("--no-pin-src", action="store_true",
                        help="import src/ as it is at each run, instead of a copy taken at the "
                        "start (the default keeps every round on the same code)")
    parser.add_argument("--src-at", metavar="REV", nargs="?", const="HEAD", default=None,
                        help="measure src/ as committed at REV (default HEAD; git archive), "
                        "not the working tree with its uncommitted changes")
    parser.add_argument("--json", metavar="PATH", help="also write every run's metrics here")
    parser.add_argument("--all-metrics", action="store_true", help="show every metric")
    parser.add_argument("--profile", metavar="W1,W2",
                        help="profile one run of these workloads (NAME or NAME:variant) "
                        "instead of benchmarking")
    parser.add_argument("--profiler", default="pyinstrument",
                        choices=["pyinstrument", "py-spy", "py-spy-gil"],
                        help="pyinstrument: event-loop thread only; py-spy: every thread "
                        "(on-CPU samples); py-spy-gil: only samples holding the GIL")
    parser.add_argument("--profile-dir", default=os.path.join(
        os.environ.get("TMPDIR", "/tmp"), "perdure-profiles"))
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--variant", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()

    postgres = args.backend == "postgres"
    if args.workers is not None and not postgres:
        parser.error("--workers needs --backend postgres (SQLite runs the worker in-process)")
    if args.child:
        workers = int(args.workers or 0)
        child(args.child, args.variant, args.quick,
              Bench(args.backend, workers, args.pool_size, args.pg))
        return
    from _workloads import PG_VARIANTS, WORKLOADS

    canonical = {n.upper(): n for n in WORKLOADS}  # W3c, w3c and W3C all name W3c

    def workload(item: str) -> tuple[str, str, bool]:
        """(name, variant, whether a variant was given) of ``NAME[:variant]``."""
        name, colon, variant = item.strip().partition(":")
        if name.upper() not in canonical:
            parser.error(f"unknown workload {name!r}; choose from {', '.join(WORKLOADS)}")
        return canonical[name.upper()], variant, bool(colon)

    if args.profile:
        if postgres:
            parser.error("--profile runs on SQLite only")
        profile([workload(n)[:2] for n in args.profile.split(",") if n.strip()],
                args.profile_dir, args.quick, args.profiler)
        return

    layouts = _parse_workers(args.workers or (PG_QUICK_WORKERS if args.quick else PG_WORKERS)) \
        if postgres else [0]
    defaults = PG_VARIANTS if postgres else {n: v for n, (_f, v) in WORKLOADS.items()}
    selected: list[tuple[str, str]] = []
    names = [n.strip() for n in args.only.split(",") if n.strip()] or list(WORKLOADS)
    for item in names:
        name, variant, explicit = workload(item)
        if explicit:
            selected.append((name, variant))
        else:
            variants = QUICK_VARIANTS.get(name, defaults[name]) if args.quick else defaults[name]
            selected.extend((name, v) for v in variants)
    runs = args.runs or (1 if args.quick else 5)
    plan: list[Key] = []
    skipped: list[str] = []
    for name, variant in selected:
        for workers in layouts:
            bench = Bench(args.backend, workers, args.pool_size, args.pg)
            if _applicable(name, variant, bench):
                plan.append((name, variant, workers))
            else:
                skipped.append(_label(name, variant, bench))

    print(f"Perdure benchmarks: {runs} run(s) each{' (quick)' if args.quick else ''}, "
          f"backend {args.backend}"
          f"{' (workers ' + ','.join(map(workers_label, layouts)) + ')' if postgres else ''}; "
          f"Python {platform.python_version()}, {os.cpu_count()} CPUs, "
          f"{platform.platform()}; load average {_load()}", file=sys.stderr)
    if skipped:
        print(f"  not applicable, skipped: {', '.join(skipped)}", file=sys.stderr)
    results: dict[Key, list[dict[str, float]]] = {key: [] for key in plan}
    failures: dict[Key, int] = {}
    started = time.perf_counter()
    load_start = _load()
    if args.src_at and args.no_pin_src:
        parser.error("--src-at pins src/: it cannot go with --no-pin-src")
    revision_start = _revision()
    pinned = None if args.no_pin_src else _pin_src(args.src_at)
    if args.src_at:
        revision_start = f"{_short(args.src_at)} (committed src/ only)"
    if pinned is not None:
        src = os.path.join(pinned, "src")
        CHILD_ENV["PYTHONPATH"] = os.pathsep.join(
            p for p in (src, os.environ.get("PYTHONPATH", "")) if p)
    for run in range(runs):  # interleave workloads so that machine noise spreads over all
        for name, variant, workers in plan:
            bench = Bench(args.backend, workers, args.pool_size, args.pg)
            t0 = time.perf_counter()
            metrics = run_child(name, variant, args.quick, bench)
            if metrics is None:
                failures[(name, variant, workers)] = failures.get((name, variant, workers),
                                                                  0) + 1
            else:
                results[(name, variant, workers)].append(metrics)
            print(f"  run {run + 1}/{runs} {_label(name, variant, bench)}: "
                  f"{time.perf_counter() - t0:.1f}s{'' if metrics else ' FAILED'} "
                  f"(load {_load()})", file=sys.stderr)
    print(f"total {time.perf_counter() - started:.0f}s", file=sys.stderr)
    if pinned is not None:
        shutil.rmtree(pinned, ignore_errors=True)
    command = "python benchmarks/run.py " + " ".join(sys.argv[1:])
    revision = revision_start
    if pinned is not None:
        revision += ", src/ copied at the start"
    elif _revision() != revision_start:  # src/ changed during the runs: the rounds differ
        revision = f"{revision_start} at the start, {_revision()} at the end"
    print(f"\n{command.strip()}   (perdure {revision}; load average at start {load_start}, "
          f"at end {_load()})\n")
    if skipped:
        print(f"Not applicable, not run: {', '.join(skipped)}\n")
    print_table(results, args.all_metrics, failures, runs, args.backend)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({_label(n, v, Bench(args.backend, w)): r
                       for (n, v, w), r in results.items()}, f, indent=1)


if __name__ == "__main__":
    main()
