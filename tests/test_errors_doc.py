"""docs/errors.md and the docstring of ``perdure._errors`` show the same error tree, and
the tree names every error class there is."""

from __future__ import annotations

import re
from pathlib import Path

from perdure import _errors

DOC = Path(__file__).resolve().parents[1] / "docs" / "errors.md"


def _docstring_tree() -> list[str]:
    lines = (_errors.__doc__ or "").splitlines()
    start = lines.index("    PerdureError")
    tree = []
    for line in lines[start:]:
        if not line.strip():
            break
        tree.append(line[4:])
    return tree


def test_the_documented_tree_is_the_docstrings() -> None:
    text = DOC.read_text()
    block = re.search(r"```\n(PerdureError\n.*?)```", text, re.S)
    assert block is not None, "docs/errors.md has no tree block"
    assert block.group(1).splitlines() == _docstring_tree()


def test_the_tree_names_every_error_class() -> None:
    named = {re.sub(r"^[│├└─ ]*", "", line).split()[0] for line in _docstring_tree()}
    classes = {name for name in _errors.__all__
               if isinstance(getattr(_errors, name), type)
               and issubclass(getattr(_errors, name), _errors.PerdureError)}
    assert classes == named
