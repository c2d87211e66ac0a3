"""``workflow.patched`` / ``deprecate_patch``: the three steps of changing in-flight code."""

from __future__ import annotations

from typing import Any

import pytest

from perdure import activity, workflow
from perdure._errors import NondeterminismError
from perdure.history import MarkerRecorded

from ._harness import Run, completed


@activity.defn
async def old_step(x: str) -> str:
    return x


@activity.defn
async def new_step(x: str) -> str:
    return x


@activity.defn
async def last_step(x: str) -> str:
    return x


@workflow.defn(name="Flow")
class FlowV1:
    @workflow.run
    async def run(self) -> list[Any]:
        a = await workflow.execute_activity(old_step, "a")
        b = await workflow.execute_activity(last_step, "b")
        return [a, b]


@workflow.defn(name="Flow")
class FlowV2:
    """Step one: the new path behind ``patched``."""

    @workflow.run
    async def run(self) -> list[Any]:
        if workflow.patched("use-new-step"):
            a = await workflow.execute_activity(new_step, "a")
        else:
            a = await workflow.execute_activity(old_step, "a")
        b = await workflow.execute_activity(last_step, "b")
        # asked again: the same answer, no second marker
        return [a, b, workflow.patched("use-new-step")]


@workflow.defn(name="Flow")
class FlowV3:
    """Step two: no run is on the old path any more."""

    @workflow.run
    async def run(self) -> list[Any]:
        workflow.deprecate_patch("use-new-step")
        a = await workflow.execute_activity(new_step, "a")
        b = await workflow.execute_activity(last_step, "b")
        return [a, b, True]


@workflow.defn(name="Flow")
class FlowV4:
    """Step three: the patch is gone from the code."""

    @workflow.run
    async def run(self) -> list[Any]:
        a = await workflow.execute_activity(new_step, "a")
        b = await workflow.execute_activity(last_step, "b")
        return [a, b, True]


def _run(cls: type) -> Run:
    run = Run(cls)
    run.start()
    run.activate(completed(1, "A"))
    run.activate(completed(2, "B"))
    return run


def test_new_run_takes_new_path_and_records_one_marker() -> None:
    run = _run(FlowV2)
    assert run.result == ["A", "B", True]
    markers = [e for e in run.history if isinstance(e, MarkerRecorded)]
    assert [(m.name, bytes(m.value)) for m in markers] == [("patch", b'"use-new-step"')]
    scheduled = [getattr(e, "activity_type", None) for e in run.history]
    assert "new_step" in scheduled and "old_step" not in scheduled
    run.replay(FlowV2)  # its own history replays


def test_old_history_replays_on_patched_code_taking_the_old_path() -> None:
    v1 = _run(FlowV1)
    instance = v1.replay(FlowV2)
    assert instance.completed
    # and a v1 run caught mid-way continues on the old path under v2
    partial = Run(FlowV1)
    partial.start()
    resumed = partial.replay(FlowV2)
    commands = resumed.activate([completed(1, "A")], partial.now)
    assert [getattr(c, "activity_type", None) for c in commands] == ["last_step"]


def test_deprecated_patch_replays_histories_with_and_without_marker() -> None:
    with_marker = _run(FlowV2)
    assert with_marker.replay(FlowV3).completed
    assert _run(FlowV3).replay(FlowV3).completed  # new runs under v3 record no marker
    assert not [e for e in _run(FlowV3).history if isinstance(e, MarkerRecorded)]


def test_removing_the_patch_before_its_runs_are_gone_is_caught() -> None:
    with_marker = _run(FlowV2)
    with pytest.raises(NondeterminismError, match="MarkerRecorded\\(patch 'use-new-step'\\)"):
        with_marker.replay(FlowV4)


def test_v1_history_fails_on_code_without_the_old_path() -> None:
    with pytest.raises(NondeterminismError, match="activity_type='old_step'"):
        _run(FlowV1).replay(FlowV4)


def test_patch_marker_position_in_activation_does_not_matter() -> None:
    @workflow.defn(name="Flow")
    class AskedLater:
        @workflow.run
        async def run(self) -> list[Any]:
            first = workflow.start_activity(new_step, "a")  # scheduled before asking
            workflow.patched("use-new-step")
            a = await first
            b = await workflow.execute_activity(last_step, "b")
            return [a, b, True]

    assert _run(FlowV2).replay(AskedLater).completed

