"""Memo and search attributes: set at start, upserted by the workflow, filtered on."""

from __future__ import annotations

from typing import Any

import pytest

from perdure import InvalidArgumentError, PayloadEncodingError, WorkflowStatus, workflow
from perdure.testing import WorkflowEnvironment

from ._helpers import wait_until

TQ = "search"


@workflow.defn
class Build:
    """Moves through stages, publishing each as a search attribute, until released."""

    def __init__(self) -> None:
        self.release = False

    @workflow.run
    async def run(self, customer: str) -> dict[str, Any]:
        workflow.upsert_search_attributes({"stage": "planning", "customer": customer})
        await workflow.sleep(60)
        workflow.upsert_search_attributes({"stage": "building", "attempt": 2, "urgent": True})
        workflow.upsert_memo({"plan": {"steps": ["a", "b"]}, "note": None})
        await workflow.wait_condition(lambda: self.release)
        workflow.upsert_search_attributes({"urgent": None, "stage": "done"})
        info = workflow.info()
        return {"search": info.search_attributes, "memo": info.memo}

    @workflow.signal
    def go(self) -> None:
        self.release = True


@workflow.defn
class Continues:
    @workflow.run
    async def run(self, run_no: int) -> dict[str, Any]:
        if run_no == 1:
            workflow.upsert_search_attributes({"tenant": "acme"})
            workflow.continue_as_new(2)
        return workflow.info().search_attributes


@workflow.defn
class HasTaggedChild:
    @workflow.run
    async def run(self) -> str:
        result: str = await workflow.execute_child_workflow(
            TaggedChild.run, id="tagged-child", search_attributes={"role": "tool-runner"},
            memo={"purpose": "tests"})
        return result


@workflow.defn
class TaggedChild:
    @workflow.run
    async def run(self) -> str:
        info = workflow.info()
        return f"{info.search_attributes['role']} / {info.memo['purpose']}"


ALL = [Build, Continues, HasTaggedChild, TaggedChild]


async def test_attributes_set_at_start_upserted_and_filtered(env: WorkflowEnvironment) -> None:
    handle = await env.client.start_workflow(
        Build.run, "ada", id="build-1", task_queue=TQ, memo={"requested_by": "ada", "note": "x"},
        search_attributes={"team": "agents"},
    )
    other = await env.client.start_workflow(
        Build.run, "bob", id="build-2", task_queue=TQ, search_attributes={"team": "infra"},
    )
    description = await handle.describe()
    assert description.memo == {"requested_by": "ada", "note": "x"}
    assert description.search_attributes == {"team": "agents"}
    async with env.worker(task_queue=TQ, workflows=ALL):
        await wait_until(lambda: _stage_is(handle, "planning"), what="stage planning")
        assert (await handle.describe()).search_attributes["customer"] == "ada"
        await env.sleep(61)  # the workflow's durable timer: virtual time
        await wait_until(lambda: _stage_is(handle, "building"), what="stage building")
        await wait_until(lambda: _stage_is(other, "building"), what="other building")
        page = await env.client.list_workflows(search_attributes={"stage": "building"})
        assert {d.workflow_id for d in page} == {"build-1", "build-2"}
        page = await env.client.list_workflows(
            search_attributes={"stage": "building", "customer": "ada", "urgent": True,
                               "attempt": 2})
        assert [d.workflow_id for d in page] == ["build-1"]
        assert page[0].memo == {"requested_by": "ada", "plan": {"steps": ["a", "b"]}}
        assert not await env.client.list_workflows(search_attributes={"urgent": False})
        assert not await env.client.list_workflows(search_attributes={"attempt": 3})
        await handle.signal(Build.go)
        result = await handle.result(timeout=10)
        await other.signal(Build.go)
        await other.result(timeout=10)
    assert result["search"] == {"team": "agents", "stage": "done", "customer": "ada",
                                "attempt": 2}
    final = await handle.describe()
    assert final.search_attributes == result["search"]
    assert final.status == WorkflowStatus.COMPLETED
    done = await env.client.list_workflows(search_attributes={"stage": "done", "team": "infra"})
    assert [d.workflow_id for d in done] == ["build-2"]


async def _stage_is(handle, stage: str) -> bool:  # type: ignore[no-untyped-def]
    return bool((await handle.describe()).search_attributes.get("stage") == stage)


async def test_continue_as_new_carries_attributes(env: WorkflowEnvironment) -> None:
    async with env.worker(task_queue=TQ, workflows=ALL):
        handle = await env.client.start_workflow(Continues.run, 1, id="carry", task_queue=TQ,
                                                 memo={"kept": True},
                                                 search_attributes={"team": "x"})
        assert await handle.result(timeout=10) == {"team": "x", "tenant": "acme"}
    latest = await env.client.get_workflow_handle("carry").describe()
    assert latest.memo == {"kept": True}
    page = await env.client.list_workflows(search_attributes={"tenant": "acme"})
    assert sorted(d.status for d in page) == sorted(
        [WorkflowStatus.COMPLETED, WorkflowStatus.CONTINUED_AS_NEW])


async def test_child_attributes(env: WorkflowEnvironment) -> None:
    async with env.worker(task_queue=TQ, workflows=ALL):
        assert await env.client.execute_workflow(HasTaggedChild.run, id="tagger",
                                                 task_queue=TQ) == "tool-runner / tests"
    page = await env.client.list_workflows(search_attributes={"role": "tool-runner"})
    assert [d.workflow_id for d in page] == ["tagged-child"]
    assert page[0].parent_workflow_id == "tagger"


@pytest.mark.parametrize("attributes, message", [
    ({"nested": {"a": 1}}, "values must be str, int, float, bool or a list of str"),
    ({"bad key!": 1}, "is not allowed"),
    ({"list": [1, 2]}, "values must be"),
    ({"nan": float("nan")}, "values must be"),
])
async def test_bad_search_attributes_are_refused(
    env: WorkflowEnvironment, attributes: dict[str, Any], message: str,
) -> None:
    with pytest.raises(InvalidArgumentError, match=message):
        await env.client.start_workflow(Build.run, "x", id="bad", task_queue=TQ,
                                        search_attributes=attributes)
    with pytest.raises(InvalidArgumentError, match=message):
        await env.client.list_workflows(search_attributes=attributes)
    assert not await env.client.list_workflows()  # nothing was started


async def test_bad_memo_is_refused(env: WorkflowEnvironment) -> None:
    # a memo is a payload: what cannot be encoded is refused as an argument would be
    with pytest.raises(PayloadEncodingError, match="cannot serialize the memo"):
        await env.client.start_workflow(Build.run, "x", id="bad-memo", task_queue=TQ,
                                        memo={"when": object()})


@workflow.defn
class Tagged:
    @workflow.run
    async def run(self) -> list[str]:
        workflow.upsert_search_attributes({"tools": ["git", "npm", "pytest"]})
        return list(workflow.info().search_attributes["tools"])


async def test_keyword_lists_match_any_of_their_values(env: WorkflowEnvironment) -> None:
    """A list of strings (Temporal's keyword list): a filter on one value matches each run
    whose list holds it; a list filter needs every item."""
    first = await env.client.start_workflow(
        Build.run, "ada", id="tags-1", task_queue=TQ,
        search_attributes={"labels": ["agent", "urgent"], "team": "agents"})
    await env.client.start_workflow(
        Build.run, "bob", id="tags-2", task_queue=TQ, search_attributes={"labels": ["agent"]})
    await env.client.start_workflow(
        Build.run, "cy", id="tags-3", task_queue=TQ, search_attributes={"labels": "agent"})
    assert (await first.describe()).search_attributes["labels"] == ["agent", "urgent"]
    matching = await env.client.list_workflows(search_attributes={"labels": "agent"})
    assert {d.workflow_id for d in matching} == {"tags-1", "tags-2", "tags-3"}
    urgent = await env.client.list_workflows(search_attributes={"labels": "urgent"})
    assert [d.workflow_id for d in urgent] == ["tags-1"]
    both = await env.client.list_workflows(search_attributes={"labels": ["urgent", "agent"]})
    assert [d.workflow_id for d in both] == ["tags-1"]
    assert not await env.client.list_workflows(search_attributes={"labels": "infra"})
    async with env.worker(task_queue=TQ, workflows=[Tagged]):
        handle = await env.client.start_workflow(Tagged.run, id="tags-4", task_queue=TQ)
        assert await handle.result(timeout=10) == ["git", "npm", "pytest"]
    npm = await env.client.list_workflows(search_attributes={"tools": "npm"})
    assert [d.workflow_id for d in npm] == ["tags-4"]
    with pytest.raises(InvalidArgumentError, match="list of str"):
        await env.client.start_workflow(Build.run, "x", id="tags-5", task_queue=TQ,
                                        search_attributes={"labels": ["a", 1]})
