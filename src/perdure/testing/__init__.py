"""Test your workflows: a real store in a temporary file, in-process workers, time skipping.

``WorkflowEnvironment.start_time_skipping()`` gives a client on a fresh SQLite
file whose clock jumps to the next due timer whenever every worker is idle
and someone awaits a workflow result: a workflow that waits seven days for a
signal that never comes times out in milliseconds of real time.
``assert_replays`` checks that committed histories still replay on the code.
``ActivityEnvironment`` runs one activity function, with no worker and no database.
"""

from perdure.testing._activity import ActivityEnvironment
from perdure.testing._environment import WorkflowEnvironment
from perdure.testing._replay import assert_replays

__all__ = ["ActivityEnvironment", "WorkflowEnvironment", "assert_replays"]
