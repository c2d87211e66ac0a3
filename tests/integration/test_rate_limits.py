"""Shared limits held in the database: calls at once, tokens per minute, crashed holders."""

from __future__ import annotations

import asyncio

from perdure import Client
from perdure.agents import Agent, AgentWorker, ModelLimits, ModelRequest, ScriptedModel
from perdure.testing import WorkflowEnvironment


async def test_concurrency_and_tokens_per_minute(env: WorkflowEnvironment) -> None:
    store = env.client.store

    async def take(holder: str, *, tokens: int = 0, lease: float = 60) -> float | None:
        return await store.acquire_permit("model:x", holder, concurrency=2, per_minute=100,
                                          tokens=tokens, lease=lease)

    assert await take("a", tokens=40) is None
    assert await take("b", tokens=40) is None
    assert await take("a", tokens=40) is None  # the same holder asking again: still one
    assert await take("c") == 0.1  # two held: wait for one to end
    await store.release_permit("model:x", "a", 50)
    wait = await take("c", tokens=40)  # 50 + 40 used this minute, 40 more would pass 100
    assert wait is not None and 55 < wait <= 60
    assert await take("c", tokens=10) is None  # 100 fits exactly
    await store.release_permit("model:x", "b", 0)
    await store.release_permit("model:x", "c", 0)
    await env.sleep(61)  # a minute later the window is empty
    assert await take("d", tokens=100) is None
    # a holder that crashed keeps its share only until its lease ends
    assert await take("e", lease=5) is None
    assert await take("f") == 0.1
    await env.sleep(6)
    assert await take("f") is None


async def test_model_concurrency_holds_across_workers(
    real_env: WorkflowEnvironment, database_url: str,
) -> None:
    running = 0
    peak = 0

    async def slow(request: ModelRequest) -> str:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        try:
            await asyncio.sleep(0.15)
        finally:
            running -= 1
        return "ok"

    model = ScriptedModel(slow, name="shared-model")
    agent = Agent(name="limited", instructions="answer", model=model,
                  model_limits=ModelLimits(concurrency=2))
    other = await Client.connect(database_url)  # a second worker's own connection
    try:
        async with AgentWorker(real_env.client, agents=[agent]), \
                AgentWorker(other, agents=[agent]):
            handles = [await real_env.client.start_agent(agent, "go", id=f"limited-{i}")
                       for i in range(6)]
            results = await asyncio.gather(*(h.result(timeout=30) for h in handles))
    finally:
        await other.close()
    assert results == ["ok"] * 6
    assert peak == 2, peak  # never more than two at once, and the limit was used
