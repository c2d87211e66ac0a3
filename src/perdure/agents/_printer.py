"""Agent stream events, printed for a terminal."""

from __future__ import annotations

import json
from typing import Any, TextIO

__all__ = ["EventPrinter"]


def _short(value: Any, limit: int = 120) -> str:
    text = value if isinstance(value, str) else json.dumps(value)
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


class EventPrinter:
    """Prints an agent tree's stream events for a terminal: tokens inline, one line per
    other event, each tagged with its agent (what ``perdure agent follow`` shows)."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.open_line: str | None = None  # the agent whose tokens are being printed

    def _line(self, text: str) -> None:
        if self.open_line is not None:
            self.out.write("\n")
            self.open_line = None
        self.out.write(text + "\n")

    def event(self, e: dict[str, Any]) -> None:
        """Print one event."""
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
        elif kind == "sandbox_restored":
            self._line(f"[{agent}] sandbox restored from its checkpoint "
                       f"({e.get('files')} files): it was missing or ahead of history")
        elif kind == "stopped":
            self._line(f"[{agent}] stopped: {e.get('reason')}")
        self.out.flush()


    def finish(self) -> None:
        """End a line of tokens left open."""
        if self.open_line is not None:
            self.out.write("\n")
            self.open_line = None
            self.out.flush()
