"""docs/coming-from-temporal.md's claim: Temporal's sample and its Perdure port differ only
in their imports and their ``Client.connect`` line; and the port runs."""

from __future__ import annotations

import difflib
import importlib.util
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "coming-from-temporal.md"
PORT = ROOT / "examples" / "temporal_port" / "hello_activity.py"


def _block(text: str, name: str) -> str:
    match = re.search(rf"<!-- {name}-begin -->\n```python\n(.*?)```\n<!-- {name}-end -->",
                      text, re.S)
    assert match is not None, f"no {name} block in {DOC.name}"
    return match.group(1)


def _without_docstring(source: str) -> list[str]:
    body = re.sub(r'^""".*?"""\n+', "", source, count=1, flags=re.S)
    return body.splitlines()


def test_the_port_differs_only_in_imports_and_connect() -> None:
    doc = DOC.read_text()
    temporal = _block(doc, "temporal").splitlines()
    port = _without_docstring(PORT.read_text())
    changed = [line for line in difflib.unified_diff(temporal, port, lineterm="", n=0)
               if line[:1] in "+-" and not line.startswith(("+++", "---"))]
    removed = sorted(line[1:].strip() for line in changed if line.startswith("-"))
    added = sorted(line[1:].strip() for line in changed if line.startswith("+"))
    assert removed == sorted([
        "from temporalio import activity, workflow",
        "from temporalio.client import Client",
        "from temporalio.worker import Worker",
        'client = await Client.connect("localhost:7233")',
    ])
    assert added == sorted([
        "from perdure import activity, workflow",
        "from perdure.client import Client",
        "from perdure.worker import Worker",
        'client = await Client.connect("sqlite:///hello_activity.db")',
    ])
    # the doc's short version of the port shows exactly those lines
    shown = [line.strip() for line in _block(doc, "perdure").splitlines()
             if line.strip() and line.strip() != "..."]
    assert sorted(shown) == added


async def test_the_port_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                             capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    spec = importlib.util.spec_from_file_location("hello_activity_port", PORT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    await module.main()
    assert "Result: Hello, World!" in capsys.readouterr().out
    assert (tmp_path / "hello_activity.db").exists()
