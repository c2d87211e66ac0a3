"""What a sandbox checkpoint costs: a ``write_file`` sandbox call (write, scan, hash what
changed, store the new file and manifest) against a plain no-op activity, measured in the
same process, round by round; and a restore of the whole workspace.

Run: ``python benchmarks/sandbox_checkpoint.py [--rounds N] [--files 10,1000]``.

* **call**: a workflow makes 20 calls in sequence, each changing one file of a workspace
  of ``--files`` files (2 KB each), on SQLite with an in-process worker; the time per call,
  from the workflow's start to its result, divided by 20. Beside it, the same workflow
  with a no-op activity instead (``plain``): the ratio ``call/plain`` is the checkpoint's
  share of an activity round trip.
* **restore**: the workspace's directory is deleted, then one ``read_file`` call: the
  time of that call (loading every file from the payload store and writing it out).

Each round measures every variant; the table shows the median and the spread (min-max)
over the rounds.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import tempfile
import time
from datetime import timedelta
from pathlib import Path

from perdure import Client, Worker, activity, workflow
from perdure.agents import LocalSandboxes, SandboxState
from perdure.agents._sandbox import SandboxToolResult
from perdure.agents._tools import ACTIVITY_PREFIX

QUEUE = "sandbox-bench"
CALLS = 20
OPTIONS = {"start_to_close_timeout": timedelta(seconds=60), "result_type": SandboxToolResult}


@activity.defn
async def noop(arguments: dict[str, str], state: SandboxState) -> SandboxToolResult:
    return SandboxToolResult(output="ok")


@workflow.defn
class Populate:
    @workflow.run
    async def run(self, files: int) -> SandboxState:
        here = workflow.info().workflow_id
        script = (f"import os\nfor i in range({files}):\n"
                  "    os.makedirs(f'src/d{i % 20}', exist_ok=True)\n"
                  "    open(f'src/d{i % 20}/f{i}.txt', 'w').write(str(i) * (2048 // len(str(i))))\n")
        state = SandboxState(key=here, owner=here)
        await workflow.execute_activity(ACTIVITY_PREFIX + "write_file",
                                        {"path": "make.py", "content": script}, state, **OPTIONS)
        result = await workflow.execute_activity(
            ACTIVITY_PREFIX + "write_file", {"path": "make.py", "content": script + "\n"},
            state, **OPTIONS)
        state = SandboxState(key=here, checkpoint=result.checkpoint, owner=here)
        result = await workflow.execute_activity(
            ACTIVITY_PREFIX + "run_command", {"command": "python3 make.py"}, state, **OPTIONS)
        return SandboxState(key=here, checkpoint=result.checkpoint, owner=here)


@workflow.defn
class Edit:
    @workflow.run
    async def run(self, start: SandboxState, plain: bool) -> SandboxState:
        state = start
        for i in range(CALLS):
            name = "noop" if plain else ACTIVITY_PREFIX + "write_file"
            result = await workflow.execute_activity(
                name, {"path": "notes.txt", "content": f"edit {i}\n" * 50}, state, **OPTIONS)
            if result.changed:
                # stored under the workflow that ran the tool
                state = SandboxState(key=state.key, checkpoint=result.checkpoint,
                                     owner=workflow.info().workflow_id)
        return state


@workflow.defn
class Read:
    @workflow.run
    async def run(self, state: SandboxState) -> str:
        result = await workflow.execute_activity(ACTIVITY_PREFIX + "read_file",
                                                 {"path": "make.py"}, state, **OPTIONS)
        return str(result.output)


async def one_round(files: int, root: Path) -> dict[str, float]:
    url = f"sqlite:///{root / 'bench.db'}"
    sandboxes = LocalSandboxes(root / "sandboxes")
    client = await Client.connect(url)
    out: dict[str, float] = {}
    try:
        async with Worker(client, task_queue=QUEUE, workflows=[Populate, Edit, Read],
                          activities=[noop, *(t.activity for t in sandboxes.tools())]):
            state = await client.execute_workflow(Populate.run, files, id="ws",
                                                  task_queue=QUEUE)
            edit_state = SandboxState(key="ws", checkpoint=state.checkpoint, owner="ws")
            for plain in (True, False):
                started = time.perf_counter()
                await client.execute_workflow(Edit.run, edit_state, plain,
                                              id=f"edit-{plain}", task_queue=QUEUE)
                out["plain" if plain else "call"] = (time.perf_counter() - started) / CALLS
            shutil.rmtree(sandboxes.workspace("ws"))
            started = time.perf_counter()
            await client.execute_workflow(Read.run, edit_state, id="read", task_queue=QUEUE)
            out["restore"] = time.perf_counter() - started
    finally:
        await client.close()
    out["call/plain"] = out["call"] / out["plain"]
    return out


def _row(name: str, values: list[float], unit: str, scale: float) -> str:
    scaled = [v * scale for v in values]
    return (f"| {name} | {statistics.median(scaled):.2f} {unit} | "
            f"{min(scaled):.2f}-{max(scaled):.2f} |")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--files", default="10,1000")
    args = parser.parse_args()
    print("| workspace | variant | median | spread |\n|---|---|---|---|")
    for files in (int(f) for f in args.files.split(",")):
        rounds: list[dict[str, float]] = []
        for _ in range(args.rounds):
            with tempfile.TemporaryDirectory() as tmp:
                rounds.append(await one_round(files, Path(tmp)))
        for key, unit, scale in (("plain", "ms/call", 1e3), ("call", "ms/call", 1e3),
                                 ("call/plain", "x", 1.0), ("restore", "ms", 1e3)):
            print(f"| {files} files " + _row(key, [r[key] for r in rounds], unit, scale))


if __name__ == "__main__":
    asyncio.run(main())
