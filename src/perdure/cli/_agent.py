"""``perdure agent follow ID``: an agent tree's progress in the terminal, live."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, TextIO

from perdure.agents import AgentHandle
from perdure.client import Client, WorkflowStatus

__all__ = ["add_agent_parser", "render", "run_agent_command"]


def add_agent_parser(commands: Any) -> None:
    """Add ``agent`` and its subcommands to the ``perdure`` command."""
    agent = commands.add_parser("agent", help="follow agents")
    subs = agent.add_subparsers(dest="agent_command", required=True)
    follow = subs.add_parser("follow", help="print an agent tree's progress as it happens")
    follow.add_argument("workflow_id", help="the lead agent's run id")
    follow.add_argument("--from-start", action="store_true",
                        help="from the beginning (default: from the current model call)")
    answer = subs.add_parser("answer", help="answer the agent's open question")
    answer.add_argument("workflow_id")
    answer.add_argument("text")
    answer.add_argument("--question-id", default="", help="(default: the oldest open one)")
    approve = subs.add_parser("approve", help="let a tool call that needs approval run")
    deny = subs.add_parser("deny", help="refuse a tool call that needs approval")
    for sub in (approve, deny):
        sub.add_argument("workflow_id")
        sub.add_argument("call_id")
    deny.add_argument("--reason", default="")
    for sub in (follow, answer, approve, deny):
        sub.add_argument("--database-url",
                         help="database URL (default: $PERDURE_DATABASE_URL)")


def _short(value: Any, limit: int = 120) -> str:
    text = value if isinstance(value, str) else json.dumps(value)
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


class _Renderer:
    """Tokens inline, one line per other event, each tagged with its agent."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.open_line: str | None = None  # the agent whose tokens are being printed

    def _line(self, text: str) -> None:
        if self.open_line is not None:
            self.out.write("\n")
            self.open_line = None
        self.out.write(text + "\n")

    def event(self, e: dict[str, Any]) -> None:
        agent, kind = e.get("agent", "?"), e.get("type")
        if kind == "token":
            if self.open_line != agent:
                if self.open_line is not None:
                    self.out.write("\n")
                self.out.write(f"[{agent}] ")
                self.open_line = agent
            self.out.write(str(e.get("text", "")))
        elif kind == "model_call" and e.get("retry"):
            self._line(f"[{agent}] (model call retried, attempt {e.get('attempt')}: its "
                       "answer starts again)")
        elif kind == "tool_call":
            self._line(f"[{agent}] -> {e.get('tool')}({_short(e.get('arguments', {}))})")
        elif kind == "tool_result":
            mark = "error" if e.get("is_error") else "ok"
            self._line(f"[{agent}] <- {e.get('tool')} {mark}: {_short(e.get('content', ''))}")
        elif kind == "question":
            self._line(f"[{agent}] ? {e.get('question')}  "
                       "(answer with: perdure agent answer ID TEXT)")
        elif kind == "approval_needed":
            self._line(f"[{agent}] ! {e.get('tool')} needs approval: perdure agent "
                       f"approve|deny ID {e.get('id')}")
        elif kind == "subagent_start":
            self._line(f"[{agent}] started sub-agent {e.get('subagent')}")
        elif kind == "subagent_end":
            self._line(f"[{agent}] sub-agent {e.get('subagent')} "
                       f"{'finished' if e.get('ok') else 'failed: ' + str(e.get('error'))}")
        elif kind == "done":
            usage = e.get("usage", {})
            self._line(f"[{agent}] done after {e.get('turns')} turns "
                       f"({usage.get('input_tokens', 0)} in / "
                       f"{usage.get('output_tokens', 0)} out tokens)")
        elif kind == "stopped":
            self._line(f"[{agent}] stopped: {e.get('reason')}")
        self.out.flush()


def render(events: list[dict[str, Any]], out: TextIO) -> None:
    """Render events as ``perdure agent follow`` does (for tests and tools)."""
    renderer = _Renderer(out)
    for event in events:
        renderer.event(event)


async def run_agent_command(args: argparse.Namespace, url: str) -> int:
    """Run a ``perdure agent`` subcommand."""
    client = await Client.connect(url, migrate=False)
    try:
        handle = AgentHandle(client.get_workflow_handle(args.workflow_id))
        if args.agent_command == "answer":
            await handle.answer(args.text, question_id=args.question_id)
            print(f"answered {args.workflow_id}")
            return 0
        if args.agent_command in ("approve", "deny"):
            if args.agent_command == "approve":
                await handle.approve(args.call_id)
            else:
                await handle.deny(args.call_id, args.reason)
            print(f"{args.agent_command}d call {args.call_id} of {args.workflow_id}")
            return 0
        renderer = _Renderer(sys.stdout)
        async for event in handle.stream(from_start=args.from_start):
            renderer.event(event)
        if renderer.open_line is not None:
            sys.stdout.write("\n")
        status = (await handle.workflow.describe()).status
        return 0 if status in (WorkflowStatus.COMPLETED, WorkflowStatus.CONTINUED_AS_NEW) else 1
    finally:
        await client.close()
