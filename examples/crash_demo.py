"""Perdure's durable demo: an agent-style build survives its worker being SIGKILLed.

Run it with ``./scripts/demo.sh`` (or ``python examples/crash_demo.py``). It:

1. starts a worker in a separate process, on an embedded SQLite file;
2. starts a ``BuildApp`` workflow: plan, write six files, run tests, wait for a human;
3. SIGKILLs the worker halfway through, as an OOM killer would;
4. sends the human's answer while no worker is running at all;
5. starts a fresh worker, which replays the history and finishes the build.

Nothing is lost and no finished step runs again.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from datetime import timedelta

from perdure import Client, RetryPolicy, Worker, WorkerOptions, activity, workflow
from perdure.history import ActivityCompleted

DB_PATH = os.path.abspath(os.environ.get("PERDURE_DEMO_DB", "perdure-demo.db"))
URL = f"sqlite:///{DB_PATH}"
QUEUE = "demo-agents"
FILES = ["models.py", "api.py", "board.tsx", "card.tsx", "styles.css", "README.md"]


@activity.defn
async def plan_app(prompt: str) -> list[str]:
    """Stands in for an LLM call that plans the work."""
    await asyncio.sleep(0.3)
    print(f"    [worker {os.getpid()}] planned {prompt!r}: {len(FILES)} files", flush=True)
    return FILES


@activity.defn
async def write_file(name: str) -> str:
    """Stands in for a tool call in a sandbox; the idempotency key makes a rerun safe."""
    await asyncio.sleep(0.4)
    print(f"    [worker {os.getpid()}] wrote {name} (attempt {activity.info().attempt})",
          flush=True)
    return name


@activity.defn
def run_tests(files: list[str]) -> str:
    """A plain (thread-pool) activity."""
    time.sleep(0.3)
    print(f"    [worker {os.getpid()}] ran tests on {len(files)} files: all green", flush=True)
    return f"{len(files)} files, tests passing"


@workflow.defn
class BuildApp:
    """Plan, write files, test, then wait (durably, as a row) for a human's go-ahead."""

    def __init__(self) -> None:
        self.answer: str | None = None
        self.stage = "starting"

    @workflow.run
    async def run(self, prompt: str) -> str:
        policy = RetryPolicy(maximum_attempts=5)
        self.stage = "planning"
        files = await workflow.execute_activity(
            plan_app, prompt, start_to_close_timeout=timedelta(minutes=2), retry_policy=policy
        )
        written = []
        for name in files:
            self.stage = f"writing {name}"
            written.append(await workflow.execute_activity(
                write_file, name, start_to_close_timeout=timedelta(minutes=2),
                retry_policy=policy,
            ))
        self.stage = "testing"
        report = await workflow.execute_activity(
            run_tests, written, start_to_close_timeout=timedelta(minutes=5)
        )
        self.stage = "waiting for a human"
        await workflow.wait_condition(lambda: self.answer is not None, timeout=timedelta(days=7))
        self.stage = "done"
        return f"{prompt}: {report}; deploy target chosen by a human: {self.answer}"

    @workflow.signal
    def answer(self, text: str) -> None:
        self.answer = text

    @workflow.query
    def status(self) -> str:
        return self.stage


async def run_worker() -> None:
    client = await Client.connect(URL)
    worker = Worker(client, task_queue=QUEUE, workflows=[BuildApp],
                    activities=[plan_app, write_file, run_tests],
                    options=WorkerOptions(liveness_interval=0.25, dead_worker_timeout=1.5))
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    async with worker:
        print(f"    [worker {os.getpid()}] started", flush=True)
        await stop.wait()


def spawn_worker() -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, os.path.abspath(__file__), "--worker"])


async def completed_steps(handle: object) -> int:
    history = await handle.fetch_history()  # type: ignore[attr-defined]
    return sum(isinstance(e, ActivityCompleted) for e in history.events)


def remove_old_database() -> None:
    for suffix in ("", "-wal", "-shm"):
        if os.path.exists(DB_PATH + suffix):
            os.remove(DB_PATH + suffix)


async def main() -> None:
    remove_old_database()
    client = await Client.connect(URL)
    print(f"Perdure durable demo (database: {DB_PATH})\n")
    print("1. starting worker A in its own process")
    worker_a = spawn_worker()
    handle = await client.start_workflow(BuildApp.run, "a kanban app", id="build-42",
                                         task_queue=QUEUE)
    print("2. started workflow build-42")
    while await completed_steps(handle) < 4:
        await asyncio.sleep(0.05)
    worker_a.send_signal(signal.SIGKILL)
    worker_a.wait()
    done = await completed_steps(handle)
    print(f"3. SIGKILLed worker A after {done} completed steps "
          f"(stage: {await handle.query(BuildApp.status)!r}; answered from history, "
          "no worker running)")
    print("4. starting worker B; it replays the history and carries on")
    worker_b = spawn_worker()
    while await handle.query(BuildApp.status) != "waiting for a human":
        await asyncio.sleep(0.1)
    worker_b.send_signal(signal.SIGTERM)
    worker_b.wait()
    print("5. the workflow waits for a human: it is a row in the database, "
          "no process holds it; worker B stopped")
    await handle.signal(BuildApp.answer, "fly.io")
    print("6. sent the human's answer with no worker running (durable once signal() returns)")
    worker_c = spawn_worker()
    print("7. started worker C")
    result = await handle.result(timeout=120)
    worker_c.send_signal(signal.SIGTERM)
    worker_c.wait()
    history = await handle.fetch_history()
    completions = [e.seq for e in history.events if isinstance(e, ActivityCompleted)]
    print(f"\nresult: {result}")
    print(f"history: {len(history.events)} events, {len(completions)} activity completions, "
          f"each recorded once: {len(completions) == len(set(completions))}")
    await client.close()


if __name__ == "__main__":
    if "--worker" in sys.argv:
        asyncio.run(run_worker())
    else:
        asyncio.run(main())
