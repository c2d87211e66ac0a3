"""A worker in its own process, for W5 (crash recovery): prints "ready", serves until SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import signal

from _defs import Recovery, slow_step
from perdure import Client, Worker, WorkerOptions


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("url")
    parser.add_argument("task_queue")
    parser.add_argument("--dead-worker-timeout", type=float, default=None)
    parser.add_argument("--liveness-interval", type=float, default=None)
    args = parser.parse_args()
    overrides = {}
    if args.dead_worker_timeout is not None:
        overrides["dead_worker_timeout"] = args.dead_worker_timeout
    if args.liveness_interval is not None:
        overrides["liveness_interval"] = args.liveness_interval
    client = await Client.connect(args.url)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    async with Worker(client, task_queue=args.task_queue, workflows=[Recovery],
                      activities=[slow_step], options=WorkerOptions(**overrides)):
        print("ready", flush=True)
        await stop.wait()
    await client.close()


if __name__ == "__main__":
    asyncio.run(main())
