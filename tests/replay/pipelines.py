"""A workflow and variants of its code, one per kind of change, for the replay check.

Every variant is registered under the same type name, "Pipeline", as a deploy would.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from perdure import activity, workflow


@activity.defn
async def fetch(source: str) -> str:
    return f"data from {source}"


@activity.defn
async def summarize(text: str) -> str:
    return f"summary of {text}"


@activity.defn(name="summarize-v2")
async def summarize_renamed(text: str) -> str:
    return f"summary of {text}"


@activity.defn
async def store(text: str) -> str:
    return f"stored {text}"


@activity.defn
async def audit(text: str) -> str:
    return text


@workflow.defn
class Review:
    @workflow.run
    async def run(self, text: str) -> str:
        return f"reviewed {text}"


T = timedelta(seconds=10)


@workflow.defn(name="Pipeline")
class Original:
    @workflow.run
    async def run(self, source: str) -> str:
        data = await workflow.execute_activity(fetch, source, start_to_close_timeout=T)
        text = await workflow.execute_activity(summarize, data, start_to_close_timeout=T)
        await workflow.sleep(5)
        reviewed = await workflow.execute_child_workflow(Review.run, text)
        return str(await workflow.execute_activity(store, reviewed, start_to_close_timeout=T))


# ---------------------------------------------------------------- incompatible changes


@workflow.defn(name="Pipeline")
class ActivityAdded:
    @workflow.run
    async def run(self, source: str) -> str:
        data = await workflow.execute_activity(fetch, source, start_to_close_timeout=T)
        await workflow.execute_activity(audit, data, start_to_close_timeout=T)
        text = await workflow.execute_activity(summarize, data, start_to_close_timeout=T)
        await workflow.sleep(5)
        reviewed = await workflow.execute_child_workflow(Review.run, text)
        return str(await workflow.execute_activity(store, reviewed, start_to_close_timeout=T))


@workflow.defn(name="Pipeline")
class ActivityRemoved:
    @workflow.run
    async def run(self, source: str) -> str:
        data = await workflow.execute_activity(fetch, source, start_to_close_timeout=T)
        await workflow.sleep(5)
        reviewed = await workflow.execute_child_workflow(Review.run, data)
        return str(await workflow.execute_activity(store, reviewed, start_to_close_timeout=T))


@workflow.defn(name="Pipeline")
class ActivitiesReordered:
    @workflow.run
    async def run(self, source: str) -> str:
        text = await workflow.execute_activity(summarize, source, start_to_close_timeout=T)
        data = await workflow.execute_activity(fetch, text, start_to_close_timeout=T)
        await workflow.sleep(5)
        reviewed = await workflow.execute_child_workflow(Review.run, data)
        return str(await workflow.execute_activity(store, reviewed, start_to_close_timeout=T))


@workflow.defn(name="Pipeline")
class ActivityRenamed:
    @workflow.run
    async def run(self, source: str) -> str:
        data = await workflow.execute_activity(fetch, source, start_to_close_timeout=T)
        text = await workflow.execute_activity(summarize_renamed, data,
                                               start_to_close_timeout=T)
        await workflow.sleep(5)
        reviewed = await workflow.execute_child_workflow(Review.run, text)
        return str(await workflow.execute_activity(store, reviewed, start_to_close_timeout=T))


@workflow.defn(name="Pipeline")
class ArgumentsChanged:
    @workflow.run
    async def run(self, source: str) -> str:
        data = await workflow.execute_activity(fetch, [source, "mirror"],
                                               start_to_close_timeout=T)
        text = await workflow.execute_activity(summarize, data, start_to_close_timeout=T)
        await workflow.sleep(5)
        reviewed = await workflow.execute_child_workflow(Review.run, text)
        return str(await workflow.execute_activity(store, reviewed, start_to_close_timeout=T))


@workflow.defn(name="Pipeline")
class TimerAdded:
    @workflow.run
    async def run(self, source: str) -> str:
        data = await workflow.execute_activity(fetch, source, start_to_close_timeout=T)
        await workflow.sleep(1)
        text = await workflow.execute_activity(summarize, data, start_to_close_timeout=T)
        await workflow.sleep(5)
        reviewed = await workflow.execute_child_workflow(Review.run, text)
        return str(await workflow.execute_activity(store, reviewed, start_to_close_timeout=T))


@workflow.defn(name="Pipeline")
class ChildSwappedForActivity:
    @workflow.run
    async def run(self, source: str) -> str:
        data = await workflow.execute_activity(fetch, source, start_to_close_timeout=T)
        text = await workflow.execute_activity(summarize, data, start_to_close_timeout=T)
        await workflow.sleep(5)
        reviewed = await workflow.execute_activity(audit, text, start_to_close_timeout=T)
        return str(await workflow.execute_activity(store, reviewed, start_to_close_timeout=T))


# ---------------------------------------------------------------- compatible changes


@workflow.defn(name="Pipeline")
class LoggingAdded:
    @workflow.run
    async def run(self, source: str) -> str:
        workflow.logger.info("fetching %s", source)
        data = await workflow.execute_activity(fetch, source, start_to_close_timeout=T)
        text = await workflow.execute_activity(summarize, data, start_to_close_timeout=T)
        workflow.logger.info("summarized: %s", text)
        await workflow.sleep(5)
        reviewed = await workflow.execute_child_workflow(Review.run, text)
        return str(await workflow.execute_activity(store, reviewed, start_to_close_timeout=T))


@workflow.defn(name="Pipeline")
class QueryAdded(Original):
    @workflow.query
    def stage(self) -> str:
        return "somewhere"


@workflow.defn(name="Pipeline")
class PromptReworded:
    @workflow.run
    async def run(self, source: str) -> str:
        data = await workflow.execute_activity(fetch, source.upper(), start_to_close_timeout=T)
        text = await workflow.execute_activity(summarize, data, start_to_close_timeout=T)
        await workflow.sleep(5)
        reviewed = await workflow.execute_child_workflow(Review.run, text)
        return str(await workflow.execute_activity(store, reviewed, start_to_close_timeout=T))


@workflow.defn(name="Pipeline")
class BranchBehindPatch:
    @workflow.run
    async def run(self, source: str) -> str:
        data = await workflow.execute_activity(fetch, source, start_to_close_timeout=T)
        if workflow.patched("audit-data"):
            await workflow.execute_activity(audit, data, start_to_close_timeout=T)
        text = await workflow.execute_activity(summarize, data, start_to_close_timeout=T)
        await workflow.sleep(5)
        reviewed = await workflow.execute_child_workflow(Review.run, text)
        return str(await workflow.execute_activity(store, reviewed, start_to_close_timeout=T))


ACTIVITIES: list[Any] = [fetch, summarize, summarize_renamed, store, audit]
