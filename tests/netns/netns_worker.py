"""A worker on one "host": ``python netns_worker.py DATABASE_URL QUEUE[,QUEUE...]``.

The test starts it with ``ip netns exec``, so that it reaches PostgreSQL only across
its namespace's virtual link. It prints ``ready <identity>`` once registered, and
on SIGTERM shuts down gracefully and prints ``stats <json>`` (the worker's counters,
the store's reconnects, and store threads still alive after closing) before exiting.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import sys
import threading

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from netns_workflows import Relay, hop

from perdure import Client, Worker, WorkerOptions


async def main(url: str, task_queues: str) -> None:
    client = await Client.connect(url)
    options = WorkerOptions(liveness_interval=0.25, dead_worker_timeout=1.5)
    worker = Worker(client, task_queue=task_queues.split(","), workflows=[Relay],
                    activities=[hop], options=options)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    async with worker:
        print(f"ready {worker.identity}", flush=True)
        await stop.wait()
    pool = getattr(client.store, "_pool", None)
    stats: dict[str, object] = dict(worker.stats, reconnects=getattr(pool, "reconnects", None))
    await client.close()
    # a store thread still there after close is stuck (say, on a connection that died)
    stats["lingering_threads"] = sorted(
        t.name for t in threading.enumerate() if t.name.startswith("perdure-postgres")
    )
    print(f"stats {json.dumps(stats)}", flush=True)


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    asyncio.run(main(sys.argv[1], sys.argv[2]))
