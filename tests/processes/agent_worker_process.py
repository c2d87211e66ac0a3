"""An agent worker in its own process: ``python agent_worker_process.py DATABASE_URL``."""

from __future__ import annotations

import asyncio
import os
import signal
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from agent_scenario import lead

from perdure import Client, WorkerOptions
from perdure.agents import AgentWorker


async def main(url: str) -> None:
    client = await Client.connect(url)
    options = WorkerOptions(liveness_interval=0.25, dead_worker_timeout=1.5)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    async with AgentWorker(client, agents=[lead], task_queue="agents", options=options):
        print("ready", flush=True)
        await stop.wait()
    await client.close()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
