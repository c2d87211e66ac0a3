"""A worker in its own process, for the liveness tests:
``python liveness_worker_process.py DATABASE_URL TASK_QUEUE STATS_FILE``.

Serves the workflows of ``liveness_workflows`` (determinism guard off: ``BlockTheLoop``
blocks the event loop in workflow code on purpose) with a short dead-worker timeout (and
``$PERDURE_TEST_LOOP_STALL_TIMEOUT`` as its loop stall timeout), and writes
its ``Worker.stats`` as JSON to STATS_FILE every 50 ms. Prints ``ready`` once it
serves; runs until SIGTERM (or SIGKILL).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from liveness_workflows import (
    BlockTheLoop,
    OneBlockingActivity,
    WaitForGo,
    block_loop,
    wait_for_go,
)

from perdure import Client, Worker, WorkerOptions

OPTIONS = WorkerOptions(
    liveness_interval=0.2, dead_worker_timeout=1.0, determinism_guard="off",
    loop_stall_timeout=float(os.environ.get("PERDURE_TEST_LOOP_STALL_TIMEOUT", "60")))


def write_stats(worker: Worker, path: str) -> None:
    with open(path + ".tmp", "w") as f:
        json.dump(worker.stats, f)
    os.replace(path + ".tmp", path)


async def main(url: str, task_queue: str, stats: str) -> None:
    client = await Client.connect(url)
    worker = Worker(client, task_queue=task_queue,
                    workflows=[WaitForGo, BlockTheLoop, OneBlockingActivity],
                    activities=[wait_for_go, block_loop], options=OPTIONS)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    async with worker:
        print(worker.identity, flush=True)
        while not stop.is_set():
            write_stats(worker, stats)
            try:
                await asyncio.wait_for(stop.wait(), 0.05)
            except TimeoutError:
                pass
    write_stats(worker, stats)
    await client.close()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3]))
