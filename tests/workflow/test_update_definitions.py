"""How ``@workflow.update`` handlers and validators are collected from a class."""

from __future__ import annotations

from perdure import workflow


def test_overridden_update_handler_keeps_inherited_validator() -> None:
    from perdure.workflow._definition import get_workflow_definition

    @workflow.defn(name="Base")
    class Base:
        @workflow.run
        async def run(self) -> None:
            return None

        @workflow.update
        def rename(self, name: str) -> str:
            return name

        @workflow.update_validator(rename)
        def check_rename(self, name: str) -> None:
            if not name:
                raise ValueError("empty")

    @workflow.defn(name="Derived")
    class Derived(Base):
        @workflow.update
        def rename(self, name: str) -> str:
            return name.upper()

    definition = get_workflow_definition(Derived)
    assert definition is not None
    handler = definition.updates["rename"]
    assert handler.validator is not None and handler.validator.__name__ == "check_rename"
