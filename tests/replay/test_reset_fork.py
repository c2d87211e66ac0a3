"""Reset and fork (time travel for agents), and the diff of two runs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from perdure import InvalidArgumentError, WorkflowStatus, activity, workflow
from perdure.history import (
    ActivityCompleted,
    HistoryEvent,
    SignalReceived,
    WorkflowReset,
)
from perdure.replay import diff_histories
from perdure.testing import WorkflowEnvironment

TQ = "time-travel"
ROOT = Path(__file__).resolve().parents[2]
RAN: list[str] = []


@activity.defn
async def make_plan(goal: str) -> str:
    RAN.append("make_plan")
    return f"plan for {goal}"


@activity.defn
async def write_code(plan: str) -> str:
    RAN.append("write_code")
    return f"code from {plan}"


@activity.defn
async def write_code_carefully(plan: str) -> str:
    RAN.append("write_code_carefully")
    return f"careful code from {plan}"


@activity.defn
async def run_tests(code: str) -> str:
    RAN.append("run_tests")
    return f"tests pass for {code}"


@activity.defn
async def ask_model(question: str) -> str:
    RAN.append("ask_model")
    return "yes"


@activity.defn
async def deploy(what: str) -> str:
    RAN.append("deploy")
    return f"deployed {what}"


@activity.defn
async def roll_back(what: str) -> str:
    RAN.append("roll_back")
    return f"rolled back {what}"


@workflow.defn(name="Builder")
class BuilderV1:
    @workflow.run
    async def run(self, goal: str) -> str:
        plan = await workflow.execute_activity(make_plan, goal, start_to_close_timeout=10)
        code = await workflow.execute_activity(write_code, plan, start_to_close_timeout=10)
        return str(await workflow.execute_activity(run_tests, code, start_to_close_timeout=10))


@workflow.defn(name="Builder")
class BuilderV2:
    @workflow.run
    async def run(self, goal: str) -> str:
        plan = await workflow.execute_activity(make_plan, goal, start_to_close_timeout=10)
        code = await workflow.execute_activity(write_code_carefully, plan,
                                               start_to_close_timeout=10)
        return str(await workflow.execute_activity(run_tests, code, start_to_close_timeout=10))


@workflow.defn
class Decider:
    @workflow.run
    async def run(self, change: str) -> str:
        answer = await workflow.execute_activity(ask_model, f"ship {change}?",
                                                 start_to_close_timeout=10)
        if answer == "yes":
            return str(await workflow.execute_activity(deploy, change, start_to_close_timeout=10))
        return str(await workflow.execute_activity(roll_back, change, start_to_close_timeout=10))


@workflow.defn
class Conversation:
    def __init__(self) -> None:
        self.messages: list[str] = []

    @workflow.run
    async def run(self) -> list[str]:
        await workflow.execute_activity(make_plan, "chat", start_to_close_timeout=10)
        await workflow.wait_condition(lambda: len(self.messages) >= 2)
        await workflow.sleep(3600)
        return self.messages

    @workflow.signal
    def say(self, text: str) -> None:
        self.messages.append(text)


@workflow.defn
class Helper:
    def __init__(self) -> None:
        self.done = False

    @workflow.run
    async def run(self) -> str:
        await workflow.wait_condition(lambda: self.done)
        return "helped"

    @workflow.signal
    def finish(self) -> None:
        self.done = True


@workflow.defn
class WithHelper:
    @workflow.run
    async def run(self) -> str:
        helped = await workflow.execute_child_workflow(Helper.run, id="the-helper")
        return f"parent got {helped}"


ACTIVITIES = [make_plan, write_code, write_code_carefully, run_tests, ask_model, deploy,
              roll_back]


def _number_of(events: list[HistoryEvent], activity_seq: int) -> int:
    return next(i for i, e in enumerate(events, 1)
                if isinstance(e, ActivityCompleted) and e.seq == activity_seq)


async def test_reset_reruns_later_steps_on_new_code(env: WorkflowEnvironment) -> None:
    RAN.clear()
    async with env.worker(task_queue=TQ, workflows=[BuilderV1], activities=ACTIVITIES):
        old = await env.client.start_workflow(BuilderV1.run, "kanban", id="build",
                                              task_queue=TQ)
        assert await old.result(timeout=10) == "tests pass for code from plan for kanban"
    events = (await old.fetch_history()).events
    after_plan = _number_of(events, 1)
    RAN.clear()
    async with env.worker(task_queue=TQ, workflows=[BuilderV2], activities=ACTIVITIES):
        new = await old.reset(to_event=after_plan, reason="better prompt for the coder")
        assert new.run_id != old.run_id
        expected = "tests pass for careful code from plan for kanban"
        assert await new.result(timeout=10) == expected
        # the old handle follows the chain to the new run
        assert await old.result(timeout=10) == expected
    assert RAN == ["write_code_carefully", "run_tests"]  # the plan was not made again
    kept = (await old.fetch_history()).events
    assert kept[:len(events)] == events  # the original history is kept
    assert isinstance(kept[-1], WorkflowReset)
    assert kept[-1].to_event == after_plan and kept[-1].new_run_id == new.run_id
    assert kept[-1].reason == "better prompt for the coder"
    # it had completed: it stays completed, its history says it was reset
    assert (await old.describe()).status == WorkflowStatus.COMPLETED
    latest = await env.client.get_workflow_handle("build").describe()
    assert latest.run_id == new.run_id and latest.status == WorkflowStatus.COMPLETED
    fresh = (await new.fetch_history()).events
    assert fresh[:after_plan] == events[:after_plan]


async def test_fork_with_edited_result_takes_other_branch(env: WorkflowEnvironment) -> None:
    RAN.clear()
    async with env.worker(task_queue=TQ, workflows=[Decider], activities=ACTIVITIES):
        original = await env.client.start_workflow(Decider.run, "v2", id="decide",
                                                   task_queue=TQ)
        assert await original.result(timeout=10) == "deployed v2"
        answer_event = _number_of((await original.fetch_history()).events, 1)
        before = (await original.fetch_history()).events
        fork = await original.fork("decide-what-if", edit_results={answer_event: "no"})
        assert await fork.result(timeout=10) == "rolled back v2"
    assert RAN == ["ask_model", "deploy", "roll_back"]  # the model was not asked again
    # the original is untouched
    assert (await original.fetch_history()).events == before
    assert (await original.describe()).status == WorkflowStatus.COMPLETED
    diff = diff_histories(await original.fetch_history(), await fork.fetch_history())
    assert diff.first_difference == answer_event
    text = diff.describe()
    assert f"they agree up to event {answer_event - 1}" in text
    assert '"result":"yes"' in text and '"result":"no"' in text


async def test_reset_delivers_later_signals_again_unless_dropped(
    env: WorkflowEnvironment,
) -> None:
    async with env.worker(task_queue=TQ, workflows=[Conversation], activities=ACTIVITIES):
        chat = await env.client.start_workflow(Conversation.run, id="chat", task_queue=TQ)
        await chat.signal(Conversation.say, "hello")
        await chat.signal(Conversation.say, "again")
        for _ in range(500):  # both signals handled, the timer started
            if (await chat.describe()).pending_timers:
                break
            await env.sleep(0)
        events = (await chat.fetch_history()).events
        first_step = _number_of(events, 1)
        assert any(isinstance(e, SignalReceived) for e in events[first_step:])
        replayed = await chat.reset(to_event=first_step)
        assert (await chat.describe()).status == WorkflowStatus.RESET  # it was running
        assert await replayed.result(timeout=10) == ["hello", "again"]

        dropped = await replayed.reset(to_event=first_step, reapply_signals=False)
        for _ in range(50):
            await env.sleep(0)
        assert (await dropped.describe()).status == WorkflowStatus.RUNNING
        await dropped.signal(Conversation.say, "new")
        await dropped.signal(Conversation.say, "start")
        assert await dropped.result(timeout=10) == ["new", "start"]


async def test_reset_takes_running_children_along_and_fork_refuses_them(
    env: WorkflowEnvironment,
) -> None:
    async with env.worker(task_queue=TQ, workflows=[WithHelper, Helper]):
        parent = await env.client.start_workflow(WithHelper.run, id="with-helper",
                                                 task_queue=TQ)
        helper = env.client.get_workflow_handle("the-helper")
        for _ in range(500):
            if (await parent.describe()).history_length >= 5:  # child started
                break
            await env.sleep(0)
        with pytest.raises(InvalidArgumentError, match="still running, and a fork cannot"):
            await parent.fork("with-helper-fork", to_last_workflow_task=True)
        new_parent = await parent.reset(to_last_workflow_task=True)
        # the child was not terminated by the old run's close: it belongs to the new run
        assert (await helper.describe()).status == WorkflowStatus.RUNNING
        assert (await helper.describe()).parent_run_id == new_parent.run_id
        await helper.signal(Helper.finish)
        assert await new_parent.result(timeout=10) == "parent got helped"


async def test_reset_cannot_edit_or_cut_outside_history(env: WorkflowEnvironment) -> None:
    async with env.worker(task_queue=TQ, workflows=[Decider], activities=ACTIVITIES):
        run = await env.client.start_workflow(Decider.run, "x", id="bounds", task_queue=TQ)
        await run.result(timeout=10)
        with pytest.raises(InvalidArgumentError, match="not in this history"):
            await run.reset(to_event=999)
        with pytest.raises(InvalidArgumentError, match="only the result of an"):
            await run.fork("bounds-2", edit_results={1: "x"})
        with pytest.raises(InvalidArgumentError, match="another workflow id"):
            await run.fork("bounds")


async def test_cli_fork_diff_and_reset(env: WorkflowEnvironment, database_url: str) -> None:
    async with env.worker(task_queue=TQ, workflows=[Decider], activities=ACTIVITIES):
        original = await env.client.start_workflow(Decider.run, "v3", id="cli-decide",
                                                   task_queue=TQ)
        await original.result(timeout=10)
        answer_event = _number_of((await original.fetch_history()).events, 1)
        forked = _cli(database_url, "workflow", "fork", "cli-decide", "cli-what-if",
                      "--edit-result", f'{answer_event}="no"')
        assert forked.returncode == 0, forked.stderr
        assert "forked cli-decide into cli-what-if" in forked.stdout
        fork = env.client.get_workflow_handle("cli-what-if")
        assert await fork.result(timeout=10) == "rolled back v3"
        diff = _cli(database_url, "workflow", "diff", "cli-decide", "cli-what-if")
        assert diff.returncode == 1, diff.stderr  # they differ
        assert f"they agree up to event {answer_event - 1}" in diff.stdout
        reset = _cli(database_url, "workflow", "reset", "cli-decide",
                     "--to-last-workflow-task", "--reason", "try again")
        assert reset.returncode == 0, reset.stderr
        assert await original.result(timeout=10) == "deployed v3"
        bad = _cli(database_url, "workflow", "fork", "cli-decide", "x", "--edit-result", "zz")
        assert bad.returncode == 2 and "write it as N=JSON" in bad.stderr


def _cli(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "perdure.cli", *args, "--database-url", url],
                          capture_output=True, text=True, cwd=ROOT, env=env, timeout=60)


async def test_reset_keeps_signals_waiting_in_the_inbox(env: WorkflowEnvironment) -> None:
    async with env.worker(task_queue=TQ, workflows=[Conversation], activities=ACTIVITIES):
        chat = await env.client.start_workflow(Conversation.run, id="inboxed", task_queue=TQ)
        for _ in range(500):  # waiting for messages
            if (await chat.describe()).history_length >= 5:
                break
            await env.sleep(0)
    # acknowledged, not yet handled by any workflow task
    await chat.signal(Conversation.say, "first")
    await chat.signal(Conversation.say, "second")
    assert (await chat.describe()).pending_events == 2
    new = await chat.reset(to_last_workflow_task=True)
    async with env.worker(task_queue=TQ, workflows=[Conversation], activities=ACTIVITIES):
        assert await new.result(timeout=10) == ["first", "second"]
