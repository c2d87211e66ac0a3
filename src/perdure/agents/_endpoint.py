"""What the HTTP models share: the exchange with the server (whole or streamed, with
transport failures as typed errors), the error types, and naming the endpoint in errors
without leaking a key."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

from perdure import ApplicationError
from perdure.agents._messages import ModelResponse

if TYPE_CHECKING:
    import httpx

__all__ = ["AUTH_ERROR", "CONTEXT_OVERFLOW", "RATE_LIMITED", "REQUEST_ERROR",
           "REQUEST_TOO_LARGE", "SERVER_ERROR", "ModelEndpoint", "clip"]

# the error types of every HTTP model: the default model retry policy knows them
RATE_LIMITED = "ModelRateLimited"
SERVER_ERROR = "ModelServerError"
REQUEST_ERROR = "ModelRequestError"
CONTEXT_OVERFLOW = "ModelContextOverflow"
REQUEST_TOO_LARGE = "ModelRequestTooLarge"
AUTH_ERROR = "ModelAuthError"


class ModelEndpoint:
    """A model reached at ``base_url`` with an optional key (mixed into the models)."""

    model: str
    base_url: str
    timeout: float
    stream: bool
    _api_key: str | None

    # what each model supplies
    def _whole(self, text: str, token_sink: Callable[[str], None] | None) -> ModelResponse:
        """A complete (not streamed) answer's body, parsed."""
        raise NotImplementedError

    async def _read_stream(self, response: httpx.Response,
                           token_sink: Callable[[str], None] | None) -> ModelResponse:
        """A streamed answer, read to its end."""
        raise NotImplementedError

    def _status_error(self, response: httpx.Response, text: str) -> ApplicationError:
        """The typed error for an HTTP error status."""
        raise NotImplementedError

    async def _exchange(self, httpx: Any, url: str, body: dict[str, Any],
                        headers: dict[str, str],
                        token_sink: Callable[[str], None] | None) -> ModelResponse:
        """POST ``body`` to ``url`` and read the answer (streamed when ``stream``; a
        server that answers a stream request with JSON is read whole); a connection
        that fails is a retryable server error, a URL that cannot work is not."""
        try:
            async with httpx.AsyncClient(timeout=httpx.Timeout(self.timeout)) as client:
                if not self.stream:
                    response = await client.post(url, json=body, headers=headers)
                    if response.status_code >= 400:
                        raise self._status_error(response, response.text)
                    return self._whole(response.text, token_sink)
                async with client.stream("POST", url, json=body, headers=headers) as response:
                    if response.status_code >= 400:
                        await response.aread()
                        raise self._status_error(response, response.text)
                    if "json" in response.headers.get("content-type", ""):
                        # a server (or proxy) that does not stream answers all at once
                        await response.aread()
                        return self._whole(response.text, token_sink)
                    return await self._read_stream(response, token_sink)
        except (httpx.UnsupportedProtocol, httpx.InvalidURL) as exc:
            raise ApplicationError(
                f"{self._who()}: the base URL cannot be used ({self._redact(str(exc))})",
                type=REQUEST_ERROR, non_retryable=True) from None
        except httpx.TimeoutException as exc:
            raise ApplicationError(
                f"{self._who()} did not answer within {self.timeout:g}s "
                f"({type(exc).__name__})", type=SERVER_ERROR) from None
        except httpx.HTTPError as exc:  # connection refused or lost, bad response framing
            raise ApplicationError(
                f"the connection to {self._who()} failed ({type(exc).__name__}: "
                f"{self._redact(str(exc)) or 'no detail'})", type=SERVER_ERROR) from None

    def _who(self) -> str:
        return f"model {self.model!r} at {self._where()}"

    def _where(self) -> str:
        """The base URL without credentials or query (they may hold a key)."""
        try:
            parts = urlsplit(self.base_url)
            host = parts.hostname or ""
            if parts.port is not None:
                host = f"{host}:{parts.port}"
            return urlunsplit((parts.scheme, host, parts.path, "", ""))
        except ValueError:
            return "(an unparseable base URL)"

    def _redact(self, text: str) -> str:
        if self._api_key:
            text = text.replace(self._api_key, "***")
        return text


def clip(text: str, limit: int = 500) -> str:
    """``text``, cut to ``limit`` characters."""
    return text if len(text) <= limit else text[:limit] + "..."
