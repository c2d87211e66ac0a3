"""An accepted update survives the SIGKILL of the worker running its handler."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from perdure import Client
from perdure.history import UpdateAccepted, UpdateCompleted

from .update_workflows import Ledger

WORKER = Path(__file__).with_name("update_worker_process.py")
pytestmark = pytest.mark.slow


def _start(url: str, executions: Path) -> subprocess.Popen[str]:
    env = dict(os.environ, PERDURE_TEST_EXECUTIONS=str(executions))
    proc = subprocess.Popen([sys.executable, str(WORKER), url, "ledger"],
                            stdout=subprocess.PIPE, text=True, env=env)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line.strip() == "ready", f"worker did not start: {line!r}"
    return proc


async def test_update_accepted_then_worker_killed_completes_elsewhere(
    database_url: str, tmp_path: Path
) -> None:
    executions = tmp_path / "executions.log"
    procs = [_start(database_url, executions)]
    client = await Client.connect(database_url)
    try:
        handle = await client.start_workflow(Ledger.run, id="ledger", task_queue="ledger")
        update = asyncio.ensure_future(handle.execute_update(Ledger.post, 7, update_id="p-1"))
        # accepted (durable in history) and its handler's activity running on the worker
        while True:
            events = (await handle.fetch_history()).events
            if any(isinstance(e, UpdateAccepted) for e in events) and executions.exists():
                break
            assert not update.done(), update
            await asyncio.sleep(0.02)
        procs[0].send_signal(signal.SIGKILL)
        procs[0].wait(timeout=10)
        assert not update.done()
        procs.append(_start(database_url, executions))
        assert await asyncio.wait_for(update, 60) == 7
        # asking again with the same id gives the same answer without running it again
        assert await handle.execute_update(Ledger.post, 7, update_id="p-1") == 7
        await handle.signal(Ledger.close)
        assert await handle.result(timeout=30) == 7
        events = (await handle.fetch_history()).events
        assert sum(isinstance(e, UpdateAccepted) for e in events) == 1
        assert sum(isinstance(e, UpdateCompleted) for e in events) == 1
        # the handler's activity: attempt 1 died with the worker, a later one finished
        lines = executions.read_text().splitlines()
        assert len(lines) == 2, lines
    finally:
        await client.close()
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)
