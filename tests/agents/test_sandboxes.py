"""Sandboxes: a workspace whose files follow the agent run's history, restored on any
worker, with commands held to their limits, and sub-agents' changes merged back."""

from __future__ import annotations

import asyncio
import os
import shutil
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from perdure import RetryPolicy, Worker, WorkflowFailureError, workflow
from perdure.agents import (
    Agent,
    AgentWorker,
    LocalSandboxes,
    ModelRequest,
    SandboxLimits,
    SandboxState,
    ScriptedModel,
)
from perdure.agents._sandbox import SandboxToolResult, merge_manifests
from perdure.agents._tools import ACTIVITY_PREFIX
from perdure.testing import WorkflowEnvironment

call = ScriptedModel.call


def _tool_results(request: ModelRequest) -> list[str]:
    out = []
    for message in reversed(request.messages):
        if message.role != "tool":
            break
        out.append(message.content)
    return list(reversed(out))


# ---------------------------------------------------------------- merging (no database)
def test_a_merge_takes_the_sub_agents_changes_and_keeps_the_rest() -> None:
    base = {"README.md": ("r1", 0o644), "app.py": ("a1", 0o644), "old.txt": ("o1", 0o644)}
    ours = {**base, "README.md": ("r2", 0o644), "lead.txt": ("l1", 0o644)}
    theirs = {"README.md": ("r1", 0o644), "app.py": ("a2", 0o755), "new.py": ("n1", 0o644)}
    merged, conflicts = merge_manifests(base, ours, theirs)
    assert merged == {
        "README.md": ("r2", 0o644),  # only we changed it: ours
        "app.py": ("a2", 0o755),  # only they changed it (content and mode): theirs
        "new.py": ("n1", 0o644),  # they added it
        "lead.txt": ("l1", 0o644),  # we added it
        # old.txt: they deleted it
    }
    assert conflicts == []


def test_a_file_both_sides_changed_is_theirs_and_reported() -> None:
    base = {"app.py": ("a1", 0o644)}
    merged, conflicts = merge_manifests(base, {"app.py": ("a2", 0o644)},
                                        {"app.py": ("a3", 0o644)})
    assert merged == {"app.py": ("a3", 0o644)} and conflicts == ["app.py"]
    # the same change on both sides is no conflict
    merged, conflicts = merge_manifests(base, {"app.py": ("a3", 0o644)},
                                        {"app.py": ("a3", 0o644)})
    assert merged == {"app.py": ("a3", 0o644)} and conflicts == []


def test_a_folder_on_one_side_and_a_file_on_the_other_cannot_both_stay() -> None:
    base = {"a/x": ("x1", 0o644)}
    # we add a/y; they replace folder a with a file a: theirs wins, our a/y goes
    merged, conflicts = merge_manifests(base, {**base, "a/y": ("y1", 0o644)},
                                        {"a": ("f1", 0o644)})
    assert merged == {"a": ("f1", 0o644)} and conflicts == ["a/y"]
    # we replace folder a with a file; they add a/z: their file inside wins (our deletion
    # of a/x, which they did not touch, stays)
    merged, conflicts = merge_manifests(base, {"a": ("f2", 0o644)},
                                        {**base, "a/z": ("z1", 0o644)})
    assert merged == {"a/z": ("z1", 0o644)} and conflicts == ["a"]
    # a symlink counts as a file: nothing may sit under it
    merged, conflicts = merge_manifests({"d/y": ("y1", 0o644)}, {"d/y": ("y1", 0o644),
                                        "d/w": ("w1", 0o644)}, {"d": ("e", 0o120000)})
    assert merged == {"d": ("e", 0o120000)} and conflicts == ["d/w"]


# ---------------------------------------------------------------- on a real store
@pytest.fixture
def sandboxes(tmp_path: Path) -> LocalSandboxes:
    return LocalSandboxes(tmp_path / "sandboxes", limits=SandboxLimits(
        memory_mb=256, command_timeout=timedelta(seconds=20)))


async def test_a_lost_workspace_comes_back_at_the_state_history_records(
    real_env: WorkflowEnvironment, sandboxes: LocalSandboxes,
) -> None:
    seen: list[list[str]] = []

    def lose_the_machine(request: ModelRequest) -> Any:
        seen.append(_tool_results(request))
        # the sandbox's machine is gone: its directory with it
        shutil.rmtree(sandboxes.workspace("build-1"))
        return [call("run_command", command="python3 app/main.py && chmod +x run.sh "
                                            "&& ./run.sh")]

    def after_run(request: ModelRequest) -> Any:
        seen.append(_tool_results(request))
        return [call("read_file", path="out.txt"), call("list_files")]

    def finish(request: ModelRequest) -> str:
        seen.append(_tool_results(request))
        return "built"

    model = ScriptedModel([
        [call("write_file", path="app/main.py",
              content="open('out.txt', 'w').write('hello from app')\n"),
         call("write_file", path="run.sh", content="#!/bin/sh\necho run.sh ran\n")],
        lose_the_machine, after_run, finish,
    ])
    coder = Agent(name="coder", instructions="You build things.", model=model,
                  tools=sandboxes.tools())
    async with AgentWorker(real_env.client, agents=[coder]):
        handle = await real_env.client.start_agent(coder, "build it", id="build-1")
        assert await handle.result(timeout=60) == "built"
        run = await handle.run_result()
    assert seen[0] == ["wrote app/main.py (45 bytes)", "wrote run.sh (26 bytes)"]
    assert seen[1] == ["exit code 0\nrun.sh ran\n"]
    assert seen[2][0] == "hello from app"
    assert seen[2][1].splitlines() == ["app/main.py (45 bytes)", "out.txt (14 bytes)",
                                       "run.sh (26 bytes)"]
    assert run.sandbox is not None and run.sandbox.key == "build-1"
    workspace = sandboxes.workspace("build-1")
    assert (workspace / "out.txt").read_text() == "hello from app"
    assert (workspace / "run.sh").stat().st_mode & 0o100  # modes are kept


@workflow.defn
class SandboxRetry:
    """Runs one sandbox call twice from the same checkpoint, as a retry after a crash
    would (the first attempt's effect was never recorded), then reads the result."""

    @workflow.run
    async def run(self, key: str) -> list[str]:
        start = SandboxState(key=key, owner=workflow.info().workflow_id)
        options = {"start_to_close_timeout": timedelta(seconds=30),
                   "result_type": SandboxToolResult}
        command = {"command": "echo line >> log.txt"}
        first = await workflow.execute_activity(ACTIVITY_PREFIX + "run_command", command,
                                                start, **options)
        again = await workflow.execute_activity(ACTIVITY_PREFIX + "run_command", command,
                                                start, **options)
        after = SandboxState(key=key, checkpoint=again.checkpoint, owner=start.owner)
        read = await workflow.execute_activity(ACTIVITY_PREFIX + "read_file",
                                               {"path": "log.txt"}, after, **options)
        return [str(first.checkpoint == again.checkpoint), read.output]


async def test_an_attempt_starts_from_its_recorded_checkpoint_not_from_what_a_lost_one_did(
    real_env: WorkflowEnvironment, sandboxes: LocalSandboxes,
) -> None:
    async with Worker(real_env.client, task_queue="sb", workflows=[SandboxRetry],
                      activities=[t.activity for t in sandboxes.tools()]):
        result = await real_env.client.execute_workflow(
            SandboxRetry.run, "retry-1", id="retry-1", task_queue="sb")
    # the second run started from the empty workspace again: one line, same checkpoint
    assert result == ["True", "line\n"]


@workflow.defn
class SandboxTimeout:
    """A command whose first attempt changes the workspace, then times out (it dies
    before its checkpoint); the second attempt reports what it finds."""

    @workflow.run
    async def run(self, key: str, flag: str) -> str:
        here = workflow.info().workflow_id
        start = SandboxState(key=key, owner=here)
        first = await workflow.execute_activity(
            ACTIVITY_PREFIX + "write_file", {"path": "a.txt", "content": "recorded"}, start,
            start_to_close_timeout=timedelta(seconds=30), result_type=SandboxToolResult)
        after = SandboxState(key=key, checkpoint=first.checkpoint, owner=here)
        command = (f"if [ -f {flag} ]; then cat a.txt; ls; else touch {flag}; "
                   "echo zombie > a.txt; echo junk > junk.txt; sleep 20; fi")
        result = await workflow.execute_activity(
            ACTIVITY_PREFIX + "run_command", {"command": command}, after,
            start_to_close_timeout=timedelta(seconds=2), result_type=SandboxToolResult,
            retry_policy=RetryPolicy(initial_interval=timedelta(milliseconds=100)))
        return str(result.output)


async def test_an_attempt_that_died_mid_change_leaves_nothing_for_the_next(
    real_env: WorkflowEnvironment, sandboxes: LocalSandboxes, tmp_path: Path,
) -> None:
    async with Worker(real_env.client, task_queue="sb", workflows=[SandboxTimeout],
                      activities=[t.activity for t in sandboxes.tools()]):
        output = await real_env.client.execute_workflow(
            SandboxTimeout.run, "timeout-1", str(tmp_path / "attempted"),
            id="timeout-1", task_queue="sb")
    # the retry ran on the recorded files: the dead attempt's edits were rolled back
    assert output == "exit code 0\nrecordeda.txt\n"


async def test_a_command_out_of_memory_or_time_is_reported_and_the_agent_goes_on(
    real_env: WorkflowEnvironment, sandboxes: LocalSandboxes,
) -> None:
    seen: list[str] = []

    def report(request: ModelRequest) -> str:
        seen.extend(_tool_results(request))
        return "done"

    model = ScriptedModel([
        [call("run_command", command="python3 -c 'x = bytearray(1024 * 1024 * 1024)'"),
         call("run_command", command="sleep 30", timeout_seconds=1),
         call("run_command", command="exit 3"),
         call("write_file", path="../escape.txt", content="no")],
        report,
    ])
    tester = Agent(name="tester", instructions="You test limits.", model=model,
                   tools=sandboxes.tools())
    async with AgentWorker(real_env.client, agents=[tester]):
        handle = await real_env.client.start_agent(tester, "try", id="limits-1")
        assert await handle.result(timeout=60) == "done"
    memory, slow, failing, escape = seen
    assert memory.startswith("exit code 1 (it probably ran out of memory: the sandbox "
                             "allows 256 MB)") and "MemoryError" in memory
    assert slow == "timed out after 1 s: the command was killed"
    assert failing == "exit code 3"
    assert escape.startswith("error: '../escape.txt' is outside the sandbox")
    assert not (sandboxes.root / "escape.txt").exists()


async def test_sub_agents_start_from_the_leads_files_and_their_changes_are_merged(
    real_env: WorkflowEnvironment, sandboxes: LocalSandboxes,
) -> None:
    seen: list[list[str]] = []

    def sub_model(name: str, path: str) -> ScriptedModel:
        def write(request: ModelRequest) -> Any:
            seen.append([name, *_tool_results(request)])
            return [call("write_file", path=path, content=f"by {name}\n"),
                    call("write_file", path="shared.txt", content=f"{name} was here\n")]

        return ScriptedModel([[call("read_file", path="README.md")], write,
                              f"{name} wrote {path}"])

    backend = Agent(name="backend", instructions="API.", model=sub_model("backend", "api.py"),
                    tools=sandboxes.tools())
    frontend = Agent(name="frontend", instructions="UI.",
                     model=sub_model("frontend", "ui.js"), tools=sandboxes.tools())

    def delegate(request: ModelRequest) -> Any:
        return [call("backend", task="write the API"), call("frontend", task="write the UI")]

    def check(request: ModelRequest) -> Any:
        seen.append(["lead", *_tool_results(request)])
        return [call("list_files"), call("read_file", path="shared.txt")]

    def finish(request: ModelRequest) -> str:
        seen.append(["lead", *_tool_results(request)])
        return "merged"

    lead = Agent(name="lead", instructions="Lead.", model=ScriptedModel([
        [call("write_file", path="README.md", content="Kanban\n")], delegate, check, finish,
    ]), tools=sandboxes.tools(), subagents=[backend, frontend])
    async with AgentWorker(real_env.client, agents=[lead]):
        handle = await real_env.client.start_agent(lead, "build", id="tree-1")
        assert await handle.result(timeout=60) == "merged"
    by_agent = {entry[0]: entry[1:] for entry in seen[:2]}
    assert by_agent["backend"] == ["Kanban\n"] and by_agent["frontend"] == ["Kanban\n"]
    delegated = seen[2][1:]
    assert delegated[0].startswith("backend wrote api.py\n\n(project files: 2 file(s) changed")
    # the second sub-agent to finish changed shared.txt too: its version is kept, and said
    assert any("both sides changed shared.txt" in text for text in delegated)
    listing, shared = seen[3][1:]
    assert listing.splitlines() == ["README.md (7 bytes)", "api.py (11 bytes)",
                                    "shared.txt (" + str(len(shared)) + " bytes)",
                                    "ui.js (12 bytes)"]
    assert shared in ("backend was here\n", "frontend was here\n")


async def test_cancelling_the_agent_kills_its_running_command(
    real_env: WorkflowEnvironment, sandboxes: LocalSandboxes,
) -> None:
    model = ScriptedModel([call("run_command", command="echo $$ > pid.txt; exec sleep 60"),
                           "never"])
    sleeper = Agent(name="sleeper", instructions="Sleep.", model=model,
                    tools=sandboxes.tools())
    pid_file = sandboxes.workspace("sleep-1") / "pid.txt"
    async with AgentWorker(real_env.client, agents=[sleeper]):
        handle = await real_env.client.start_agent(sleeper, "sleep", id="sleep-1")
        for _ in range(500):
            if pid_file.exists() and pid_file.read_text().strip():
                break
            await asyncio.sleep(0.02)
        pid = int(pid_file.read_text())
        os.kill(pid, 0)  # running
        await handle.cancel()
        with pytest.raises(WorkflowFailureError):
            await handle.result(timeout=30)
        for _ in range(500):
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            await asyncio.sleep(0.02)
        else:
            raise AssertionError(f"the command (pid {pid}) outlived its cancelled agent")


async def test_a_sub_agent_that_deletes_everything_deletes_it_for_its_parent_too(
    real_env: WorkflowEnvironment, sandboxes: LocalSandboxes,
) -> None:
    cleaner = Agent(name="cleaner", instructions="Clean.", model=ScriptedModel([
        call("run_command", command="rm -f *"), "cleaned"]), tools=sandboxes.tools())
    seen: list[str] = []

    def check(request: ModelRequest) -> Any:
        return [call("list_files")]

    def finish(request: ModelRequest) -> str:
        seen.extend(_tool_results(request))
        return "ok"

    lead = Agent(name="lead", instructions="Lead.", model=ScriptedModel([
        [call("write_file", path="a.txt", content="a"),
         call("write_file", path="b.txt", content="b")],
        call("cleaner", task="remove everything"), check, finish,
    ]), tools=sandboxes.tools(), subagents=[cleaner])
    async with AgentWorker(real_env.client, agents=[lead]):
        handle = await real_env.client.start_agent(lead, "build", id="clean-1")
        assert await handle.result(timeout=60) == "ok"
    assert seen == ["(no files)"]
