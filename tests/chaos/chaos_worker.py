"""A chaos-test worker in its own process: ``python chaos_worker.py DATABASE_URL TASK_QUEUE``.

Prints ``ready`` once it serves the queue; runs until SIGKILLed (the chaos) or SIGTERMed.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from chaos_workflows import ChaosSteps, chaos_step

from perdure import Client, Worker, WorkerOptions


async def main(url: str, task_queue: str) -> None:
    client = await Client.connect(url)
    # few activity slots, so that the run lasts long enough for many kills
    slots = int(os.environ.get("PERDURE_CHAOS_ACTIVITY_SLOTS", "100"))
    options = WorkerOptions(liveness_interval=0.25, dead_worker_timeout=1.5,
                            max_concurrent_activities=slots)
    worker = Worker(client, task_queue=task_queue, workflows=[ChaosSteps],
                    activities=[chaos_step], options=options)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    async with worker:
        print("ready", flush=True)
        await stop.wait()
    await client.close()


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s %(process)d %(name)s %(levelname)s %(message)s")
    asyncio.run(main(sys.argv[1], sys.argv[2]))
