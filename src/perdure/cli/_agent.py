"""``perdure agent follow | answer | approve | deny``: an agent tree's progress in the
terminal, live, and the human's side of its questions and approvals."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from perdure.agents import AgentHandle, EventPrinter
from perdure.agents._workflow import AGENT_WORKFLOW
from perdure.cli._exit import CommandError, ExitStatus
from perdure.client import Client, WorkflowHandle, WorkflowStatus

__all__ = ["add_agent_parser", "run_agent_command"]


def add_agent_parser(commands: Any) -> None:
    """Add ``agent`` and its subcommands to the ``perdure`` command."""
    agent = commands.add_parser("agent", help="follow agents")
    subs = agent.add_subparsers(dest="agent_command", required=True)
    follow = subs.add_parser("follow", help="print an agent tree's progress as it happens; "
                             "exit 1 unless the agent completes")
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


async def _agent(workflow: WorkflowHandle[Any], *, running: bool) -> AgentHandle:
    """The agent of this id; refused when it is another kind of workflow, or (``running``)
    when it has closed, so that a signal meant for an agent goes nowhere else."""
    description = await workflow.describe()
    if description.workflow_type != AGENT_WORKFLOW:
        raise CommandError(
            f"{workflow.workflow_id!r} is a {description.workflow_type!r} workflow, not an "
            "agent: agent commands take the id of an agent's run", ExitStatus.USAGE)
    if running and description.status != WorkflowStatus.RUNNING:
        raise CommandError(
            f"agent {workflow.workflow_id!r} is {description.status.value}: only a running "
            "agent takes answers and approvals", ExitStatus.FAILED)
    return AgentHandle(workflow)


async def run_agent_command(args: argparse.Namespace, url: str) -> int:
    """Run a ``perdure agent`` subcommand."""
    client = await Client.connect(url, migrate=False)
    try:
        handle = await _agent(client.get_workflow_handle(args.workflow_id),
                              running=args.agent_command != "follow")
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
        printer = EventPrinter(sys.stdout)
        async for event in handle.stream(from_start=args.from_start):
            printer.event(event)
        printer.finish()
        status = (await handle.workflow.describe()).status
        done = status in (WorkflowStatus.COMPLETED, WorkflowStatus.CONTINUED_AS_NEW)
        return ExitStatus.OK if done else ExitStatus.FAILED
    finally:
        await client.close()
