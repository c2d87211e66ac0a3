"""What the HTTP models share: naming the endpoint in errors without leaking a key."""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

__all__ = ["ModelEndpoint", "clip"]


class ModelEndpoint:
    """A model reached at ``base_url`` with an optional key (mixed into the models)."""

    model: str
    base_url: str
    _api_key: str | None

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
