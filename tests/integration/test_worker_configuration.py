"""A worker refuses, when it is made, every configuration that could only fail once its
tasks run: each refusal is a ConfigurationError that names the culprit."""

from __future__ import annotations

import concurrent.futures
import dataclasses
import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import pytest

from perdure import ConfigurationError, Worker, WorkerOptions, activity, workflow
from perdure.testing import WorkflowEnvironment

if TYPE_CHECKING:
    from decimal import Decimal  # only for type checkers: unresolvable at run time

Q = "configuration"


class Opaque:
    """A class JSON cannot decode into (no dataclass, Struct or pydantic model)."""

    def __init__(self, handle: int) -> None:
        self.handle = handle


@dataclasses.dataclass
class Cat:
    name: str


@dataclasses.dataclass
class Dog:
    name: str


@activity.defn
def crunch(n: int) -> int:
    return n * n


@activity.defn(name="crunch")
async def another_crunch(n: int) -> int:
    return n


@activity.defn
async def takes_opaque(value: Opaque) -> None:
    return None


@activity.defn
async def returns_callable() -> Callable[[], int]:
    return lambda: 1


@activity.defn
async def takes_either(pet: Cat | Dog) -> str:
    return pet.name


@activity.defn
async def takes_unresolvable(amount: Decimal) -> None:
    return None


@activity.defn
async def takes_keyword_only(a: int, *, b: int) -> int:
    return a + b


@activity.defn
async def takes_optional_keyword(a: int, *, b: int = 1) -> int:
    return a + b


@workflow.defn
class Fine:
    @workflow.run
    async def run(self, cat: Cat) -> Dog:
        return Dog(cat.name)


@workflow.defn(name="Fine")
class AlsoNamedFine:
    @workflow.run
    async def run(self) -> None:
        return None


@workflow.defn
class OpaqueRun:
    @workflow.run
    async def run(self, value: Opaque) -> None:
        return None


@workflow.defn
class OpaqueSignal:
    @workflow.run
    async def run(self) -> None:
        return None

    @workflow.signal
    def poke(self, value: Opaque) -> None:
        pass


@workflow.defn
class OpaqueQuery:
    @workflow.run
    async def run(self) -> None:
        return None

    @workflow.query
    def state(self) -> Opaque:
        return Opaque(1)


@workflow.defn
class OpaqueUpdate:
    @workflow.run
    async def run(self) -> None:
        return None

    @workflow.update
    def change(self, pet: Cat | Dog) -> None:
        pass


# --------------------------------------------------------------------------- executors
async def test_a_process_pool_is_refused_with_what_to_do_instead(
    env: WorkflowEnvironment,
) -> None:
    pool = concurrent.futures.ProcessPoolExecutor(max_workers=1)
    try:
        with pytest.raises(ConfigurationError, match=r"ProcessPoolExecutor.*pickle.*"
                           r"ThreadPoolExecutor.*run_in_executor\(your_process_pool"):
            Worker(env.client, task_queue=Q, activities=[crunch], activity_executor=pool)
    finally:
        pool.shutdown()


async def test_only_thread_pools_run_activities(env: WorkflowEnvironment) -> None:
    class Inline(concurrent.futures.Executor):
        pass

    with pytest.raises(ConfigurationError, match="ThreadPoolExecutor, not a Inline"):
        Worker(env.client, task_queue=Q, activities=[crunch], activity_executor=Inline())
    with concurrent.futures.ThreadPoolExecutor(2) as threads:
        async with Worker(env.client, task_queue=Q, activities=[crunch],
                          activity_executor=threads):
            pass


# --------------------------------------------------------------------------- names
async def test_two_activities_under_one_name_are_refused(env: WorkflowEnvironment) -> None:
    with pytest.raises(ConfigurationError, match=r"two activities .* 'crunch'.*crunch.*"
                       r"another_crunch.*@activity\.defn\(name=\.\.\.\)"):
        Worker(env.client, task_queue=Q, activities=[crunch, another_crunch])
    # the same activity twice is harmless
    worker = Worker(env.client, task_queue=Q, activities=[crunch, crunch])
    assert list(worker.activities) == ["crunch"]


async def test_two_workflows_under_one_name_are_refused(env: WorkflowEnvironment) -> None:
    with pytest.raises(ConfigurationError, match=r"two workflows .* 'Fine'.*Fine.*"
                       r"AlsoNamedFine.*@workflow\.defn\(name=\.\.\.\)"):
        Worker(env.client, task_queue=Q, workflows=[Fine, AlsoNamedFine])
    assert list(Worker(env.client, task_queue=Q, workflows=[Fine, Fine]).workflows) == ["Fine"]


async def test_what_is_not_an_activity_is_refused(env: WorkflowEnvironment) -> None:
    with pytest.raises(ConfigurationError, match=r"item 2 is 'crunch' \(a str\).*not callable"):
        Worker(env.client, task_queue=Q, activities=[crunch, "crunch"])  # type: ignore[list-item]
    with pytest.raises(ConfigurationError, match=r"print.*@activity\.defn"):
        Worker(env.client, task_queue=Q, activities=[print])
    with pytest.raises(ConfigurationError, match=r"crunch.*@workflow\.defn"):
        Worker(env.client, task_queue=Q, workflows=[crunch])  # type: ignore[list-item]
    with pytest.raises(ConfigurationError, match="task queues are non-empty strings"):
        Worker(env.client, task_queue="", activities=[crunch])


# --------------------------------------------------------------------------- annotations
@pytest.mark.parametrize(("registration", "expected"), [
    ({"activities": [takes_opaque]},
     r"activity 'takes_opaque' \(.*takes_opaque\): parameter 'value' is annotated Opaque.*"
     r"Opaque is not a type JSON decodes into"),
    ({"activities": [returns_callable]},
     r"activity 'returns_callable' .* return annotation .*Callable"),
    ({"activities": [takes_either]},
     r"activity 'takes_either' .* parameter 'pet' .*Cat \| .*Dog.*unions"),
    ({"activities": [takes_unresolvable]},
     r"activity 'takes_unresolvable' .*annotations cannot be resolved \(NameError.*Decimal"
     r".*TYPE_CHECKING"),
    ({"activities": [takes_keyword_only]},
     r"activity 'takes_keyword_only' .* parameter 'b' is keyword-only and required"),
    ({"workflows": [OpaqueRun]},
     r"workflow 'OpaqueRun' \(.*OpaqueRun\), its run method: parameter 'value' .*Opaque"),
    ({"workflows": [OpaqueSignal]},
     r"workflow 'OpaqueSignal' .*, signal 'poke': parameter 'value' .*Opaque"),
    ({"workflows": [OpaqueQuery]},
     r"workflow 'OpaqueQuery' .*, query 'state': its return annotation Opaque"),
    ({"workflows": [OpaqueUpdate]},
     r"workflow 'OpaqueUpdate' .*, update 'change': parameter 'pet'"),
], ids=["activity-param", "activity-return", "union", "unresolvable", "keyword-only",
        "workflow-run", "signal", "query", "update"])
async def test_annotations_the_converter_cannot_decode_are_refused(
    env: WorkflowEnvironment, registration: dict[str, Any], expected: str,
) -> None:
    with pytest.raises(ConfigurationError, match=expected):
        Worker(env.client, task_queue=Q, **registration)


async def test_decodable_annotations_are_accepted(env: WorkflowEnvironment) -> None:
    worker = Worker(env.client, task_queue=Q, workflows=[Fine],
                    activities=[crunch, takes_optional_keyword])
    assert set(worker.activities) == {"crunch", "takes_optional_keyword"}


# --------------------------------------------------------------------------- options
@pytest.mark.parametrize(("options", "expected"), [
    ({"max_concurrent_activities": 0}, r"max_concurrent_activities must be a whole number >= 1"),
    ({"max_concurrent_workflow_tasks": -3}, r"max_concurrent_workflow_tasks must be .* >= 1"),
    ({"max_concurrent_activities": 2.5}, r"max_concurrent_activities must be a whole number"),
    ({"max_concurrent_activities": True}, r"max_concurrent_activities must be a whole number"),
    ({"max_cached_workflows": -1}, r"max_cached_workflows must be a whole number >= 0"),
    ({"history_warning_events": 0}, r"history_warning_events must be"),
    ({"workflow_task_lease": 0}, r"workflow_task_lease must be a finite number of seconds > 0"),
    ({"liveness_interval": math.nan}, r"liveness_interval must be a finite number"),
    ({"dead_worker_timeout": math.inf}, r"dead_worker_timeout must be a finite number"),
    ({"graceful_shutdown_timeout": -1}, r"graceful_shutdown_timeout must be .* >= 0"),
    ({"max_poll_interval": "1"}, r"max_poll_interval must be a finite number"),
    ({"max_heartbeat_interval": 0.0}, r"max_heartbeat_interval must be .* > 0"),
    ({"sticky_timeout": -0.5}, r"sticky_timeout must be .* >= 0"),
    ({"liveness_interval": 3.0}, r"dead_worker_timeout \(2.0s\) must be longer than "
                                 r"liveness_interval \(3.0s\)"),
    ({"eager_activities": "yes"}, r"eager_activities must be True or False"),
    ({"determinism_guard": "loud"}, r"determinism_guard must be one of raise, warn, off"),
])
def test_worker_options_refuse_values_that_cannot_work(
    options: dict[str, Any], expected: str,
) -> None:
    with pytest.raises(ConfigurationError, match=expected):
        WorkerOptions(**options)


def test_worker_options_accept_the_edges_that_mean_something() -> None:
    WorkerOptions(max_cached_workflows=0, sticky_timeout=0, graceful_shutdown_timeout=0,
                  max_concurrent_activities=1, liveness_interval=0.1, dead_worker_timeout=0.3)
