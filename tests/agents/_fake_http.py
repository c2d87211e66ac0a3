"""A fake HTTP model server for the model tests: real HTTP/1.1 on 127.0.0.1, no internet."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
from collections.abc import Callable
from typing import Any


def openai_sse(event: Any) -> str:
    """An OpenAI-style server-sent event: ``data: {...}``."""
    return f"data: {json.dumps(event)}\n\n"


def anthropic_sse(event: Any) -> str:
    """An Anthropic-style server-sent event, named by its ``type``."""
    return f"event: {event['type']}\ndata: {json.dumps(event)}\n\n"


@dataclasses.dataclass
class Reply:
    """What the fake server answers: JSON (``body``), or server-sent ``events``."""

    status: int = 200
    body: Any = None
    events: list[Any] | None = None
    headers: dict[str, str] = dataclasses.field(default_factory=dict)
    delay: float = 0.0


@dataclasses.dataclass
class Seen:
    path: str
    headers: dict[str, str]
    body: dict[str, Any]
    at: float


class FakeHTTPServer:
    """A minimal HTTP/1.1 model server on 127.0.0.1 (asyncio streams).

    ``handler(body, n)`` gets each request's JSON and its 0-based number and returns a
    :class:`Reply`. ``clock`` stamps each request (the environment's clock in agent tests).
    """

    def __init__(self, handler: Callable[[dict[str, Any], int], Reply],
                 clock: Callable[[], float] | None = None, *, base_path: str = "",
                 sse: Callable[[Any], str] = openai_sse) -> None:
        self.handler = handler
        self.base_path = base_path
        self.sse = sse
        self.clock = clock or (lambda: asyncio.get_running_loop().time())
        self.requests: list[Seen] = []
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.base_url = ""

    @property
    def bodies(self) -> list[dict[str, Any]]:
        return [r.body for r in self.requests]

    async def __aenter__(self) -> FakeHTTPServer:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        self.base_url = f"http://127.0.0.1:{port}{self.base_path}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(BaseException):
                await task
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)  # type: ignore[arg-type]
        try:
            await self._one(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self._tasks.discard(task)  # type: ignore[arg-type]
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _one(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        request_line = (await reader.readline()).decode()
        if not request_line:
            return
        _method, path, _version = request_line.split(" ", 2)
        headers: dict[str, str] = {}
        while True:
            line = (await reader.readline()).decode().rstrip("\r\n")
            if not line:
                break
            key, _, value = line.partition(":")
            headers[key.strip().lower()] = value.strip()
        raw = await reader.readexactly(int(headers.get("content-length", "0")))
        body = json.loads(raw) if raw else {}
        number = len(self.requests)
        self.requests.append(Seen(path, headers, body, self.clock()))
        reply = self.handler(body, number)
        if reply.delay:
            await asyncio.sleep(reply.delay)
        head = [f"HTTP/1.1 {reply.status} X", "Connection: close"]
        head += [f"{k}: {v}" for k, v in reply.headers.items()]
        if reply.events is None:
            payload = (reply.body if isinstance(reply.body, str)
                       else json.dumps(reply.body)).encode()
            head += ["Content-Type: application/json", f"Content-Length: {len(payload)}"]
            writer.write(("\r\n".join(head) + "\r\n\r\n").encode() + payload)
            await writer.drain()
            return
        head += ["Content-Type: text/event-stream; charset=utf-8", "Transfer-Encoding: chunked"]
        writer.write(("\r\n".join(head) + "\r\n\r\n").encode())
        await writer.drain()
        for event in reply.events:
            data = event if isinstance(event, str) else self.sse(event)
            piece = data.encode()
            writer.write(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
            await writer.drain()
            await asyncio.sleep(0.001)  # separate reads on the client
        writer.write(b"0\r\n\r\n")
        await writer.drain()
