"""Query latency: does seeing the inbox (issue 11) make queries slow?

Run: ``python benchmarks/query_latency.py [--backend postgres] [--signals 300] [--rounds 30]``.

One workflow has taken ``--signals`` signals (about 3 history events each) and a worker
serving it runs in this process, with the run cached. Each round asks four queries, in
an interleaved order:

- ``name/settled``: by name (a worker answers), nothing pending: from the cached instance.
- ``name/after-signal``: by name, right after a signal returned: the signal waits in the
  inbox; the worker lets the workflow task that takes it run first, then answers from
  its cache (or, past 1 s, from a replay of history plus inbox).
- ``method/settled`` and ``method/after-signal``: given the method, the client answers by
  reading history and inbox at one instant and replaying them, with no worker.

Prints, per kind, the median latency and its spread (min-max) in ms, and its ratio to
``name/settled`` measured in the same round (median and spread of the per-round ratios).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from _util import median, temp_db  # noqa: E402
from perdure import Client, Worker, workflow  # noqa: E402

PG = os.environ.get("PERDURE_BENCH_PG", "postgresql://postgres@127.0.0.1:5432/test")


@workflow.defn
class Tally:
    def __init__(self) -> None:
        self.total = 0

    @workflow.run
    async def run(self) -> None:
        await workflow.wait_condition(lambda: False)

    @workflow.signal
    def add(self, amount: int) -> None:
        self.total += amount

    @workflow.query
    def value(self) -> int:
        return self.total


async def measure(url: str, signals: int, rounds: int) -> dict[str, list[float]]:
    client = await Client.connect(url)
    samples: dict[str, list[float]] = {k: [] for k in (
        "name/settled", "name/after-signal", "method/settled", "method/after-signal")}
    try:
        async with Worker(client, task_queue="bench", workflows=[Tally]):
            handle = await client.start_workflow(Tally.run, id="tally", task_queue="bench")
            for _ in range(signals):
                await handle.signal(Tally.add, 1)
            expected = signals
            while await handle.query("value") != expected:
                await asyncio.sleep(0.01)
            kinds = list(samples)
            for round_no in range(rounds):
                order = kinds[round_no % 4:] + kinds[:round_no % 4]
                for kind in order:
                    if kind.endswith("after-signal"):
                        await handle.signal(Tally.add, 1)
                        expected += 1
                    else:
                        while await handle.query("value") != expected:  # let it settle
                            await asyncio.sleep(0.005)
                    query = "value" if kind.startswith("name") else Tally.value
                    started = time.perf_counter()
                    answer = await handle.query(query)
                    samples[kind].append((time.perf_counter() - started) * 1000)
                    assert answer == expected, (kind, answer, expected)
            await handle.terminate()
    finally:
        await client.close()
    return samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=["sqlite", "postgres"], default="sqlite")
    parser.add_argument("--signals", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=30)
    args = parser.parse_args()
    if args.backend == "postgres":
        schema = f"bench_{uuid.uuid4().hex[:12]}"
        try:
            samples = asyncio.run(measure(f"{PG}?schema={schema}", args.signals, args.rounds))
        finally:
            import psycopg

            with psycopg.connect(PG, autocommit=True) as conn:
                conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    else:
        with temp_db("query") as (_, url):
            samples = asyncio.run(measure(url, args.signals, args.rounds))
    base = samples["name/settled"]
    print(f"query latency, {args.backend}, a run with {args.signals} signals "
          f"(~{3 * args.signals} events), {args.rounds} rounds")
    print(f"{'kind':<22}{'median ms':>11}{'  (min-max)':<18}{'ratio to name/settled':>24}")
    for kind, values in samples.items():
        ratios = [v / b for v, b in zip(values, base, strict=True)]
        print(f"{kind:<22}{median(values):>11.2f}  ({min(values):.2f}-{max(values):.2f})"
              f"{median(ratios):>14.2f} ({min(ratios):.2f}-{max(ratios):.2f})")


if __name__ == "__main__":
    main()
