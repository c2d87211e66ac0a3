"""An update sent to a workflow: wait for it to reach a stage, then for its result."""

from __future__ import annotations

import asyncio
import enum
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import msgspec

from perdure._arguments import check_enum
from perdure._errors import UpdateFailedError, UpdateRejectedError, WorkflowNotFoundError
from perdure._failure import exception_from_failure
from perdure._retry import RetryPolicy
from perdure.client._types import IdConflictPolicy, IdReusePolicy, seconds
from perdure.history import Failure

if TYPE_CHECKING:
    from perdure.client._client import Client
    from perdure.client._handle import WorkflowHandle

__all__ = ["WithStartWorkflowOperation", "WorkflowUpdateHandle", "WorkflowUpdateStage"]

T = TypeVar("T")
_failure_decoder = msgspec.json.Decoder(Failure)
_ENDED = ("completed", "rejected", "failed")


class WorkflowUpdateStage(enum.IntEnum):
    """How far an update must have gone before ``start_update`` returns (Temporal's)."""

    ADMITTED = 1
    """Durably requested: it waits in the run's inbox (it may still be rejected)."""
    ACCEPTED = 2
    """The validator let it through: it is recorded in history and will complete,
    across worker crashes. A rejection raises :class:`UpdateRejectedError` here."""
    COMPLETED = 3
    """The handler returned (or raised)."""


class WorkflowUpdateHandle(Generic[T]):
    """An update of a workflow, by its id: ``await handle.result()`` for its value."""

    def __init__(self, client: Client, workflow_id: str, update_id: str, *,
                 name: str = "", workflow_run_id: str | None = None,
                 result_type: Any = None) -> None:
        self.client = client
        self.workflow_id = workflow_id
        self.id = update_id
        self.name = name
        self.workflow_run_id = workflow_run_id
        self._result_type = result_type

    async def result(self, *, timeout: timedelta | float | None = None) -> T:
        """The handler's return value, waiting for it if need be. Raises
        :class:`UpdateRejectedError` if the validator refused the update and
        :class:`UpdateFailedError` if the handler raised or the run closed first."""
        deadline = None
        wait = seconds(timeout, "timeout", zero=True)
        if wait is not None:
            deadline = asyncio.get_running_loop().time() + wait
        state, result, failure = await self.wait_for_stage(WorkflowUpdateStage.COMPLETED,
                                                           deadline=deadline)
        self._raise_if_failed(state, failure)
        value: T = self.client.converter.decode(result or b"null", self._result_type,
                                                what=f"result of update {self.name or self.id!r}")
        return value

    async def wait_for_stage(
        self, stage: WorkflowUpdateStage, *, deadline: float | None = None,
    ) -> tuple[str, bytes | None, bytes | None]:
        """Wait until the update has reached ``stage`` (or ended); its (state, result,
        failure) row. A rejection at any stage past ``ADMITTED`` raises."""
        store = self.client.store
        notifier = store.notifier
        backoff = notifier.first_poll
        loop = asyncio.get_running_loop()
        while True:
            row = await store.get_update(self.workflow_id, self.id)
            if row is None:
                raise WorkflowNotFoundError(
                    f"workflow {self.workflow_id!r} has no update {self.id!r}")
            state, _, failure = row
            if state == "rejected" and stage > WorkflowUpdateStage.ADMITTED:
                self._raise_if_failed(state, failure)
            if stage == WorkflowUpdateStage.ADMITTED or state in _ENDED or (
                    stage == WorkflowUpdateStage.ACCEPTED and state == "accepted"):
                return row
            wait = backoff
            if deadline is not None:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    raise TimeoutError(
                        f"update {self.name or self.id!r} ({self.id}) of workflow "
                        f"{self.workflow_id!r} did not reach {stage.name.lower()} within the "
                        f"timeout; it is {'accepted and still running' if state == 'accepted' else 'waiting for a worker'}"
                        "; call result() (or execute_update with the same id) to keep waiting")
                wait = min(wait, remaining)
            await notifier.wait(["update"], timeout=wait)
            backoff = min(backoff * 2, notifier.poll_interval)

    def _raise_if_failed(self, state: str, failure: bytes | None) -> None:
        if state not in ("rejected", "failed") and not (state == "completed" and failure):
            return
        cause = exception_from_failure(_failure_decoder.decode(failure or b"{}"))
        error = UpdateRejectedError if state == "rejected" else UpdateFailedError
        raise error(
            f"update {self.name or self.id!r} ({self.id}) of workflow {self.workflow_id!r} "
            f"{'was rejected' if state == 'rejected' else 'failed'}: {cause}",
            update_id=self.id, cause=cause,
        )


class WithStartWorkflowOperation:
    """The start half of update-with-start (Temporal's name): the workflow to start if
    ``id`` is not running, with ``start_workflow``'s options. ``id_conflict_policy`` is
    required: ``USE_EXISTING`` (update the running run) or ``FAIL``."""

    def __init__(
        self, workflow: Any, *args: Any, id: str, task_queue: str,
        id_conflict_policy: IdConflictPolicy, id_reuse_policy: IdReusePolicy =
        IdReusePolicy.ALLOW_DUPLICATE, execution_timeout: timedelta | float | None = None,
        run_timeout: timedelta | float | None = None, retry_policy: RetryPolicy | None = None,
        memo: dict[str, Any] | None = None, search_attributes: dict[str, Any] | None = None,
        result_type: Any = None,
    ) -> None:
        self.workflow = workflow
        self.args = args
        self.id = id
        self.task_queue = task_queue
        self.id_conflict_policy = check_enum(IdConflictPolicy, id_conflict_policy,
                                             "id_conflict_policy")
        self.id_reuse_policy = check_enum(IdReusePolicy, id_reuse_policy, "id_reuse_policy")
        self.execution_timeout = execution_timeout
        self.run_timeout = run_timeout
        self.retry_policy = retry_policy
        self.memo = memo
        self.search_attributes = search_attributes
        self.result_type = result_type
        self._handle: asyncio.Future[WorkflowHandle[Any]] | None = None

    def _future(self) -> asyncio.Future[WorkflowHandle[Any]]:
        if self._handle is None:
            self._handle = asyncio.get_running_loop().create_future()
        return self._handle

    def _set(self, handle: WorkflowHandle[Any]) -> None:
        future = self._future()
        if not future.done():
            future.set_result(handle)

    def _fail(self, exc: BaseException) -> None:
        future = self._future()
        if not future.done():
            future.set_exception(exc)
            future.exception()  # retrieved here: whoever awaits it still gets it

    async def workflow_handle(self) -> WorkflowHandle[Any]:
        """The started (or found) workflow's handle, once the update-with-start ran."""
        return await self._future()
