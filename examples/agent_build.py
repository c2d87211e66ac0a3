"""Perdure's agent demo: "build me a Kanban app", by a lead agent and two sub-agents,
surviving the SIGKILL of its worker and a human who answers while no worker runs.

Run it with ``./scripts/demo.sh`` (or ``python examples/agent_build.py``). Offline, with
no keys: the models are scripted (``ScriptedModel``). Swap in
``OpenAIChatModel("gpt-4o-mini")`` (or any OpenAI-compatible server: vLLM, Ollama) and the
same code runs against a real model. It:

1. starts a worker process on an embedded SQLite file, and the lead agent;
2. follows the agent tree's stream live: tool calls, sub-agents, questions, tokens;
3. answers the lead's question while no worker runs at all;
4. SIGKILLs the worker while a sub-agent's command runs in its sandbox, and wipes every
   sandbox directory, as an OOM killer taking the machine down would;
5. starts a fresh worker, which replays the histories, restores each sandbox from its
   last recorded checkpoint and finishes the build.

Every model call and tool run is an activity: none that finished runs again. The agents'
files live in sandboxes (``LocalSandboxes``) whose checkpoints are in the database.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import tempfile

from perdure import Client, WorkerOptions
from perdure.agents import (
    Agent,
    AgentHandle,
    AgentWorker,
    EventPrinter,
    LocalSandboxes,
    ModelRequest,
    ScriptedModel,
    ask_human,
)

DB_PATH = os.path.abspath(os.environ.get("PERDURE_DEMO_DB", "perdure-agent-demo.db"))
URL = f"sqlite:///{DB_PATH}"
SANDBOXES = LocalSandboxes(os.environ.get("PERDURE_DEMO_SANDBOXES") or os.path.join(
    tempfile.gettempdir(), "perdure-kanban-sandboxes"))
"""Each agent run's project workspace: a directory here, its checkpoints in the database."""
TOOLS = SANDBOXES.tools()  # write_file, read_file, list_files, run_command
call = ScriptedModel.call


# ---------------------------------------------------------------- agents (scripted models)
def _results(request: ModelRequest) -> list[str]:
    out = []
    for message in reversed(request.messages):
        if message.role != "tool":
            break
        out.append(message.content)
    return out


MODELS_PY = '''"""The Kanban data model."""
from dataclasses import dataclass, field


@dataclass
class Card:
    title: str
    column: str = "todo"


@dataclass
class Board:
    name: str
    cards: list[Card] = field(default_factory=list)

    def move(self, title: str, column: str) -> None:
        for card in self.cards:
            if card.title == title:
                card.column = column
'''

API_PY = '''"""A tiny JSON API over the board (the database is chosen by the human)."""
from models import Board, Card

BOARD = Board("Team")


def add_card(title: str) -> dict[str, str]:
    BOARD.cards.append(Card(title))
    return {"title": title, "column": "todo"}
'''

backend = Agent(
    name="backend", instructions="You write the Python backend.",
    description="Writes the backend (data model and API).", tools=TOOLS,
    model=ScriptedModel([
        [call("write_file", path="backend/models.py", content=MODELS_PY),
         call("write_file", path="backend/api.py", content=API_PY)],
        call("run_command", command="sleep 1 && cd backend && python3 -c 'import api' "
                                    "&& echo backend imports cleanly"),
        "Backend ready: models.py (Board, Card) and api.py (add_card).",
    ]),
)
frontend = Agent(
    name="frontend", instructions="You write the web frontend.",
    description="Writes the web frontend (the board page).", tools=TOOLS,
    model=ScriptedModel([
        [call("write_file", path="web/board.html",
              content="<main id='board'><section>To do</section><section>Doing</section>"
                      "<section>Done</section></main>\n"),
         call("write_file", path="web/board.js",
              content="// drag cards between columns\nexport function move(card, column) "
                      "{ column.append(card); }\n")],
        "Frontend ready: board.html with three columns, board.js for drag and drop.",
    ]),
)
CHECKS = ("(cd backend && python3 -c 'import api, models') && test -f web/board.html "
          "&& echo all checks pass")

lead = Agent(
    name="lead", instructions="You lead a small team that builds web apps.",
    tools=[ask_human, *TOOLS], subagents=[backend, frontend], max_turns=20,
    model=ScriptedModel([
        call("ask_human", id="db", question="Which database should the board use?"),
        lambda r: [call("backend", task=f"Build the backend. Database: {_results(r)[0]}."),
                   call("frontend", task="Build a board page with three columns.")],
        lambda r: [call("write_file", path="README.md",
                        content="# Kanban\n\n" + "\n".join(f"- {x}" for x in _results(r))),
                   call("run_command", command=CHECKS)],
        lambda r: "The Kanban app is built: backend (models, API), frontend (board page), "
                  f"README. Tests: {next(x for x in _results(r) if 'check' in x).splitlines()[-1]}.",
    ]),
)


# ---------------------------------------------------------------- processes
async def run_worker() -> None:
    client = await Client.connect(URL)
    options = WorkerOptions(liveness_interval=0.25, dead_worker_timeout=1.0)
    async with AgentWorker(client, agents=[lead], options=options):
        print(f"  [worker {os.getpid()}] serving agents", flush=True)
        await asyncio.Event().wait()


def spawn_worker() -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, os.path.abspath(__file__), "--worker"])


async def follow(handle: AgentHandle) -> None:
    """Print the tree's progress as it happens (what `perdure agent follow` shows)."""
    printer = EventPrinter(sys.stdout)
    async for event in handle.stream(from_start=True):
        printer.event(event)
    printer.finish()


def _fresh_start() -> None:
    for path in (DB_PATH, DB_PATH + "-wal", DB_PATH + "-shm"):
        if os.path.exists(path):
            os.remove(path)
    shutil.rmtree(SANDBOXES.root, ignore_errors=True)


def _written(path: str) -> bool:
    """Whether some agent's workspace holds ``path`` yet."""
    root = SANDBOXES.root
    return root.is_dir() and any((d / path).exists() for d in root.iterdir())


def _files(workspace: str) -> list[str]:
    top = SANDBOXES.workspace(workspace)
    return sorted(os.path.relpath(os.path.join(r, f), top)
                  for r, _, fs in os.walk(top) for f in fs)


async def main() -> None:
    _fresh_start()
    client = await Client.connect(URL)
    worker = spawn_worker()
    handle = await client.start_agent(lead, "Build me a project management tool with "
                                      "Kanban boards", id="build-kanban")
    print("\n== the lead agent starts; following its stream\n", flush=True)
    follower = asyncio.ensure_future(follow(handle))

    # the lead asks the human first: answer while the worker is killed
    while not (await handle.pending())["questions"]:
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.3)
    print("\n== SIGKILL the worker while the agent waits for the human", flush=True)
    worker.send_signal(signal.SIGKILL)
    worker.wait()
    print("== no worker runs; the human answers anyway (durable at once)", flush=True)
    await handle.answer("SQLite")
    worker = spawn_worker()

    # the backend's command runs: kill the worker mid-command, and lose every sandbox
    while not _written("backend/api.py"):
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.3)
    print("\n== SIGKILL the worker while the backend's command runs, and wipe every "
          "sandbox (the machine is gone)", flush=True)
    worker.send_signal(signal.SIGKILL)
    worker.wait()
    shutil.rmtree(SANDBOXES.root, ignore_errors=True)
    print("== start a fresh worker: it replays the histories, restores the sandboxes from "
          "their checkpoints and carries on\n", flush=True)
    worker = spawn_worker()

    run = await handle.run_result(timeout=120)
    await asyncio.wait_for(follower, 10)
    worker.terminate()
    worker.wait()
    print("\n== result:", run.output)
    print(f"== {run.turns} turns of the lead; {run.usage.model_calls} model calls in the "
          f"tree, {run.usage.input_tokens} input / {run.usage.output_tokens} output tokens")
    print(f"== the lead's workspace ({SANDBOXES.workspace('build-kanban')}): "
          f"{', '.join(_files('build-kanban'))}")
    children = await client.list_workflows(parent_workflow_id="build-kanban")
    print("== sub-agents:", ", ".join(f"{c.memo.get('agent')} ({c.status.value})"
                                      for c in children))
    await client.close()


if __name__ == "__main__":
    if "--worker" in sys.argv:
        asyncio.run(run_worker())
    else:
        asyncio.run(main())
