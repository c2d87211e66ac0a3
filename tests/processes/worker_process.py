"""A worker in its own process: ``python worker_process.py DATABASE_URL TASK_QUEUE``.

Runs until killed (the tests SIGKILL it) or until SIGTERM (graceful shutdown).
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from process_workflows import AwaitApproval, StepsParent, TwentySteps, step

from perdure import Client, Worker, WorkerOptions


async def main(url: str, task_queue: str) -> None:
    client = await Client.connect(url)
    options = WorkerOptions(liveness_interval=0.25, dead_worker_timeout=1.5)
    worker = Worker(client, task_queue=task_queue,
                    workflows=[TwentySteps, AwaitApproval, StepsParent], activities=[step],
                    options=options)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    async with worker:
        print("ready", flush=True)
        await stop.wait()
    await client.close()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2]))
