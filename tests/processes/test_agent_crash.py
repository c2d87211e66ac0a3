"""An agent tree survives SIGKILL of its worker at three points, with no model call
completed twice: during a model call, during a tool call, while waiting for the human."""

from __future__ import annotations

import asyncio
import collections
import os
import signal
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from perdure import Client
from perdure.agents import AgentHandle

from .agent_scenario import lead

WORKER = Path(__file__).with_name("agent_worker_process.py")
pytestmark = pytest.mark.slow


class Workers:
    def __init__(self, url: str, log: Path) -> None:
        self.url, self.log = url, log
        self.procs: list[subprocess.Popen[str]] = []

    def start(self) -> subprocess.Popen[str]:
        env = dict(os.environ, PERDURE_TEST_EXECUTIONS=str(self.log))
        proc = subprocess.Popen([sys.executable, str(WORKER), self.url],
                                stdout=subprocess.PIPE, text=True, env=env)
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready"
        self.procs.append(proc)
        return proc

    def kill(self, proc: subprocess.Popen[str]) -> None:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)

    def stop_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)

    def lines(self) -> list[str]:
        return self.log.read_text().splitlines() if self.log.exists() else []


async def _until(check: Callable[[], Awaitable[bool]], what: str, timeout: float = 60) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        if await check():
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


async def _drive(handle: AgentHandle) -> None:
    """The human's part: answer the question and approve the deploy when asked."""
    answered = approved = False
    while not (answered and approved):
        pending = await handle.pending()
        if pending["questions"] and not answered:
            await handle.answer("PostgreSQL")
            answered = True
        if pending["approvals"] and not approved:
            await handle.approve(pending["approvals"][0]["id"])
            approved = True
        await asyncio.sleep(0.02)


async def _run(url: str, log: Path, workflow_id: str, *, kill: bool) -> tuple[str, Workers]:
    workers = Workers(url, log)
    client = await Client.connect(url)
    try:
        first = workers.start()
        handle = await client.start_agent(lead, "build the product", id=workflow_id)
        if not kill:
            await _drive(handle)
            return str(await handle.result(timeout=60)), workers

        # 1. during the lead's first model call (it takes 1.5 s)
        await _until(lambda: _has(workers, "model-start crash-lead 0"), "lead's first call")
        workers.kill(first)
        assert not _has_now(workers, "model-end crash-lead 0")
        second = workers.start()
        # 2. during a tool call (the lead's slow tool, 1.5 s)
        await _until(lambda: _has(workers, f"tool-start schema {second.pid}"), "a tool call")
        workers.kill(second)
        third = workers.start()
        # 3. while waiting for the human
        await _until(lambda: _question(handle), "the question to the human")
        workers.kill(third)
        await handle.answer("PostgreSQL")  # no worker runs: the answer is durable anyway
        workers.start()
        await _until(lambda: _approval(handle), "the approval request")
        approval = (await handle.pending())["approvals"][0]["id"]
        await handle.approve(approval)
        return str(await handle.result(timeout=60)), workers
    finally:
        await client.close()


async def _recorded_model_calls(url: str, root: str) -> dict[str, int]:
    """(agent turn) -> the attempt recorded as completed, over the agent tree's runs."""
    import msgspec

    from perdure.agents._workflow import MODEL_CALL, ModelCall
    from perdure.history import ActivityCompleted, ActivityScheduled

    client = await Client.connect(url)
    try:
        ids = [root] + [c.workflow_id
                        for c in await client.list_workflows(parent_workflow_id=root)]
        out: dict[str, int] = {}
        for workflow_id in ids:
            calls: dict[int, str] = {}
            for event in (await client.get_workflow_handle(workflow_id)
                          .fetch_history()).events:
                if isinstance(event, ActivityScheduled) and event.activity_type == MODEL_CALL:
                    call = msgspec.json.decode(bytes(event.input), type=list[ModelCall])[0]
                    calls[event.seq] = f"{call.agent} {call.turn}"
                elif isinstance(event, ActivityCompleted) and event.seq in calls:
                    out[calls[event.seq]] = event.attempt
        return out
    finally:
        await client.close()


async def _has(workers: Workers, text: str) -> bool:
    return _has_now(workers, text)


def _has_now(workers: Workers, text: str) -> bool:
    return any(line.startswith(text) for line in workers.lines())


async def _question(handle: AgentHandle) -> bool:
    return bool((await handle.pending())["questions"])


async def _approval(handle: AgentHandle) -> bool:
    return bool((await handle.pending())["approvals"])


async def test_agent_tree_survives_three_kills(database_url: str, tmp_path: Path) -> None:
    calm_log, crash_log = tmp_path / "calm.log", tmp_path / "crash.log"
    calm, calm_workers = await _run(database_url, calm_log, "calm-build", kill=False)
    calm_workers.stop_all()
    crashed, workers = await _run(database_url, crash_log, "crash-build", kill=True)
    try:
        assert crashed == calm
        assert crashed.startswith("FINAL deployed to staging (PostgreSQL)")
        # no model call recorded as completed was made again: for each call, the attempt
        # its history recorded is the last one that reached the model. (An attempt that
        # answered but whose worker died before recording it is not complete: at least once.)
        recorded = await _recorded_model_calls(database_url, "crash-build")
        answered: dict[str, list[int]] = collections.defaultdict(list)
        for line in workers.lines():
            if line.startswith("model-end"):
                _, agent, turn, _pid, attempt = line.split()
                answered[f"{agent} {turn}"].append(int(attempt))
        assert set(answered) == set(recorded), (answered, recorded)
        for key, attempt in recorded.items():
            assert [a for a in answered[key] if a >= attempt] == [attempt], (key, answered)
        ends = collections.Counter({key: len(v) for key, v in answered.items()})
        calm_ends = collections.Counter(
            " ".join(line.split()[1:3]) for line in calm_workers.lines()
            if line.startswith("model-end"))
        assert set(calm_ends) == set(ends) and all(n == 1 for n in calm_ends.values())
        starts = collections.Counter(
            " ".join(line.split()[1:3]) for line in workers.lines()
            if line.startswith("model-start"))
        assert starts["crash-lead 0"] == 2  # killed mid-call, then made again
        deploys = [line for line in workers.lines() if line.startswith("deploy")]
        assert len(deploys) == 1
        print(f"\nagent crash test: {len(workers.procs)} worker processes, {len(recorded)} "
              f"model calls recorded, {sum(ends.values())} answers at the model, "
              f"{sum(starts.values())} calls started")
    finally:
        workers.stop_all()
