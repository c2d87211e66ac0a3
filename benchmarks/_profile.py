"""Profiling helpers for ``run.py --profile``: pyinstrument (event-loop thread) or py-spy (all threads)."""

from __future__ import annotations

import asyncio
import collections
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Awaitable, Callable

Workload = Callable[[bool, str], Awaitable[dict[str, float]]]


def _stem(name: str, variant: str) -> str:
    """The output files' name: the workload, and its variant if any (file-name safe)."""
    return f"{name}-{re.sub(r'[^A-Za-z0-9_.-]', '_', variant)}" if variant else name


def with_pyinstrument(name: str, fn: Workload, out_dir: str, quick: bool,
                      variant: str = "") -> str:
    """Profile one run in this process; only the event-loop thread is sampled."""
    try:
        from pyinstrument import Profiler
    except ImportError:
        sys.exit("profiling needs pyinstrument: .venv/bin/pip install pyinstrument")
    profiler = Profiler(interval=0.0005)
    profiler.start()
    asyncio.run(fn(quick, variant))  # SQLite, in-process worker (the default Bench)
    profiler.stop()
    text = profiler.output_text(unicode=False, color=False)
    stem = _stem(name, variant)
    with open(os.path.join(out_dir, f"{stem}.pyinstrument.txt"), "w") as f:
        f.write(text)
    with open(os.path.join(out_dir, f"{stem}.pyinstrument.html"), "w") as f:
        f.write(profiler.output_html())
    return text


def with_py_spy(name: str, run_py: str, out_dir: str, quick: bool, gil: bool,
                variant: str = "") -> str:
    """Sample every thread of a child run with py-spy; summarise self and inclusive time."""
    exe = shutil.which("py-spy") or os.path.join(os.path.dirname(sys.executable), "py-spy")
    if not os.path.exists(exe):
        sys.exit("profiling with py-spy needs it: .venv/bin/pip install py-spy")
    raw = os.path.join(out_dir, f"{_stem(name, variant)}{'.gil' if gil else ''}.pyspy.raw")
    cmd = [exe, "record", "-r", "1000", "-f", "raw", "--threads", "-o", raw]
    if gil:
        cmd.append("--gil")
    cmd += ["--", sys.executable, run_py, "--child", name, "--variant", variant]
    if quick:
        cmd.append("--quick")
    subprocess.run(cmd, check=True, capture_output=True)
    text = summarize_collapsed(raw)
    with open(raw[: -len(".raw")] + ".txt", "w") as f:
        f.write(text)
    return text


def _norm(frame: str) -> str:
    return re.sub(r":\d+\)", ")", frame)


def summarize_collapsed(path: str, top: int = 30) -> str:
    """Self and inclusive time per function, by thread (event loop / sqlite writer /
    its WAL checkpointer).

    py-spy counts a thread blocked in ``queue.get`` or ``Condition.wait`` as active, so the
    writer's ``take_batch`` and the checkpointer's ``Condition.wait`` are mostly idle time.

    Samples taken while importing, or outside the event loop, are left out.
    """
    samples: list[tuple[str, list[str], int]] = []
    kinds: dict[str, str] = {}
    with open(path) as f:
        for line in f:
            stack, _, count = line.rstrip().rpartition(" ")
            frames = stack.split(";")
            tid = frames[0]
            # WriterThread (formerly _WriterThread): _run is the writer, the other its checkpointer
            if any("WriterThread._run" in fr for fr in frames):
                kinds[tid] = "writer"
            elif any("WriterThread._checkpoint_loop" in fr for fr in frames):
                kinds[tid] = "ckpt"
            elif any("run_forever" in fr for fr in frames):
                kinds.setdefault(tid, "loop")
            samples.append((tid, frames[1:], int(count)))
    per_thread: collections.Counter[str] = collections.Counter()
    own: collections.Counter[tuple[str, str]] = collections.Counter()
    inclusive: collections.Counter[tuple[str, str]] = collections.Counter()
    total = 0
    for tid, frames, count in samples:
        if not frames or any("_find_and_load" in fr for fr in frames):
            continue
        kind = kinds.get(tid, "other")
        if kind == "loop" and not any("run_forever" in fr for fr in frames):
            continue
        per_thread[kind] += count
        total += count
        own[(kind, _norm(frames[-1]))] += count
        for frame in {_norm(fr) for fr in frames}:
            inclusive[(kind, frame)] += count
    lines = [f"{path}: {total} samples; by thread: {dict(per_thread)}", "", "self time:"]
    lines += [f"{100 * n / total:5.1f}%  {k:6s} {fn}" for (k, fn), n in own.most_common(top)]
    lines += ["", "inclusive time (asyncio/threading plumbing left out):"]
    plumbing = ("threading.py", "runners.py", "base_events.py", "run.py", "events.py", "_util.py")
    shown = [(key, n) for key, n in inclusive.most_common() if not any(
        p in key[1] for p in plumbing)][:top]
    lines += [f"{100 * n / total:5.1f}%  {k:6s} {fn}" for (k, fn), n in shown]
    return "\n".join(lines) + "\n"
