"""Activities defined as methods of a class that holds state (a client, a pool, a
counter), registered bound to an instance, and callable instances."""

from __future__ import annotations

import asyncio
import dataclasses
import threading
from typing import Any

import pytest

from perdure import ConfigurationError, RetryPolicy, Worker, activity, workflow
from perdure.testing import WorkflowEnvironment

Q = "activity-classes"


@dataclasses.dataclass
class Deposit:
    account: str
    amount: int


@dataclasses.dataclass
class Receipt:
    account: str
    balance: int


class FakeBank:
    """Stands for the client an activity class would hold (an HTTP client, a pool)."""

    def __init__(self) -> None:
        self.balances: dict[str, int] = {}
        self.threads: list[str] = []


class Accounts:
    """Activities as methods: state lives on the instance the worker was given."""

    def __init__(self, bank: FakeBank) -> None:
        self.bank = bank
        self.calls = 0

    @activity.defn
    async def deposit(self, deposit: Deposit) -> Receipt:
        # a Deposit, not a dict: the hints skip ``self``
        assert isinstance(deposit, Deposit), deposit
        self.calls += 1
        balance = self.bank.balances.get(deposit.account, 0) + deposit.amount
        self.bank.balances[deposit.account] = balance
        return Receipt(deposit.account, balance)

    @activity.defn(name="audit_account")
    def audit(self, account: str) -> int:
        """A plain ``def`` method: runs in the worker's thread pool."""
        self.calls += 1
        self.bank.threads.append(threading.current_thread().name)
        return self.bank.balances.get(account, 0)


class Greeter:
    """A callable instance as an activity (named after its class)."""

    def __init__(self, greeting: str) -> None:
        self.greeting = greeting

    @activity.defn
    async def __call__(self, name: str) -> str:
        return f"{self.greeting}, {name} ({activity.info().activity_type})"


@workflow.defn
class Banking:
    @workflow.run
    async def run(self, account: str) -> list[Any]:
        opts: dict[str, Any] = {"start_to_close_timeout": 10,
                                "retry_policy": RetryPolicy(maximum_attempts=1)}
        first = await workflow.execute_activity_method(Accounts.deposit,
                                                       Deposit(account, 5), **opts)
        handle = workflow.start_activity_method(Accounts.deposit, Deposit(account, 7), **opts)
        second = await handle
        # plain execute_activity with the method works too (the name and hints are read
        # from it); so does the name
        audited = await workflow.execute_activity(Accounts.audit, account, **opts)
        by_name = await workflow.execute_activity("audit_account", account, **opts)
        return [type(first).__name__, first.balance, type(second).__name__, second.balance,
                audited, by_name]


@workflow.defn
class Greeting:
    @workflow.run
    async def run(self, name: str) -> list[str]:
        return [
            await workflow.execute_activity(Greeter, name, start_to_close_timeout=10),
            await workflow.execute_activity("Greeter", name.upper(), start_to_close_timeout=10),
        ]


async def test_bound_methods_run_on_their_instance(env: WorkflowEnvironment) -> None:
    bank = FakeBank()
    accounts = Accounts(bank)
    async with env.worker(task_queue=Q, workflows=[Banking],
                          activities=[accounts.deposit, accounts.audit]):
        handle = await env.client.start_workflow(Banking.run, "acct-1", id="bank",
                                                 task_queue=Q)
        result = await asyncio.wait_for(handle.result(), 30)
    assert result == ["Receipt", 5, "Receipt", 12, 12, 12]
    assert accounts.calls == 4
    assert bank.balances == {"acct-1": 12}
    assert len(bank.threads) == 2
    assert all(name != threading.current_thread().name for name in bank.threads)


async def test_a_callable_instance_is_an_activity(env: WorkflowEnvironment) -> None:
    async with env.worker(task_queue=Q, workflows=[Greeting], activities=[Greeter("Hello")]):
        result = await asyncio.wait_for(
            env.client.execute_workflow(Greeting.run, "Ada", id="greet", task_queue=Q), 30)
    assert result == ["Hello, Ada (Greeter)", "Hello, ADA (Greeter)"]


async def test_a_method_registered_without_its_instance_is_refused(
    env: WorkflowEnvironment,
) -> None:
    with pytest.raises(ConfigurationError, match=r"Accounts\.deposit.*Accounts\(\.\.\.\)\.deposit"):
        Worker(env.client, task_queue=Q, activities=[Accounts.deposit])
    with pytest.raises(ConfigurationError, match=r"Greeter\(\.\.\.\)"):
        Worker(env.client, task_queue=Q, activities=[Greeter])


def test_method_definitions_leave_self_out_of_the_hints() -> None:
    from perdure.activity._definition import get_activity_definition

    definition = get_activity_definition(Accounts.deposit)
    assert definition is not None
    assert definition.is_method
    assert definition.parameter_hints == [Deposit]
    bound = get_activity_definition(Accounts(FakeBank()).deposit)
    assert bound is definition
    greeter = get_activity_definition(Greeter("hi"))
    assert greeter is not None and greeter.name == "Greeter"


class Leaky:
    @activity.defn
    async def send(self, sink: FakeBank) -> None:
        """``FakeBank`` is no type JSON decodes into."""


async def test_a_methods_annotations_are_checked_without_self(env: WorkflowEnvironment) -> None:
    with pytest.raises(ConfigurationError, match=r"activity 'send' .*parameter 'sink'.*FakeBank"):
        Worker(env.client, task_queue=Q, activities=[Leaky().send])
