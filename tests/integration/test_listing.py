"""list_workflows: filters on status, type and time ranges, and keyed pagination."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from perdure import InvalidArgumentError, WorkflowStatus, workflow
from perdure.testing import WorkflowEnvironment

TQ = "listing"


@workflow.defn
class Quick:
    @workflow.run
    async def run(self, value: int) -> int:
        return value


@workflow.defn
class Waiting:
    @workflow.run
    async def run(self) -> None:
        await workflow.wait_condition(lambda: False)


async def test_pages_cover_every_run_once_newest_first(env: WorkflowEnvironment) -> None:
    for index in range(7):
        await env.client.start_workflow(Waiting.run, id=f"w{index}", task_queue=TQ)
    seen: list[str] = []
    token = None
    pages = 0
    while True:
        page = await env.client.list_workflows(limit=3, page_token=token)
        pages += 1
        seen += [d.workflow_id for d in page]
        token = page.next_page_token
        if token is None:
            break
        # a run started between pages does not shift the pages (keyed, not offset)
        await env.client.start_workflow(Waiting.run, id=f"late{pages}", task_queue=TQ)
    assert pages == 3
    assert sorted(seen) == [f"w{i}" for i in range(7)]
    every = [d.workflow_id async for d in env.client.iter_workflows(limit=2)]
    assert len(every) == len(set(every)) == 9
    starts = [d.start_time for d in await env.client.list_workflows(limit=100)]
    assert starts == sorted(starts, reverse=True)


async def test_filters_on_status_type_and_time(env: WorkflowEnvironment) -> None:
    async with env.worker(task_queue=TQ, workflows=[Quick, Waiting]):
        await env.client.execute_workflow(Quick.run, 1, id="early", task_queue=TQ)
        await env.sleep(3600)
        middle = env.clock.now()
        await env.client.execute_workflow(Quick.run, 2, id="late", task_queue=TQ)
        await env.client.start_workflow(Waiting.run, id="open", task_queue=TQ)

        async def ids(**filters: object) -> list[str]:
            return sorted(d.workflow_id for d in await env.client.list_workflows(**filters))

        assert await ids(status=WorkflowStatus.COMPLETED) == ["early", "late"]
        assert await ids(status="running") == ["open"]
        assert await ids(workflow_type="Waiting") == ["open"]
        assert await ids(started_before=middle) == ["early"]
        assert await ids(started_after=middle) == ["late", "open"]
        assert await ids(started_after=datetime.fromtimestamp(middle, UTC),
                         workflow_type="Quick") == ["late"]
        assert await ids(closed_before=middle) == ["early"]
        assert await ids(closed_after=middle) == ["late"]  # a running run has not closed


async def test_bad_listing_arguments_are_named(env: WorkflowEnvironment) -> None:
    with pytest.raises(InvalidArgumentError, match="page_token"):
        await env.client.list_workflows(page_token="not-a-token")
    with pytest.raises(InvalidArgumentError, match="time zone"):
        await env.client.list_workflows(started_after=datetime(2026, 1, 1))
    with pytest.raises(InvalidArgumentError, match="limit"):
        await env.client.list_workflows(limit=0)
