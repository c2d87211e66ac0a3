"""Test your workflows: a real store in a temporary file, in-process workers, time skipping.

``WorkflowEnvironment.start_time_skipping()`` gives a client on a fresh SQLite
file (or the database you name) whose clock skips, as Temporal's test server does:

- while someone awaits a workflow result, it jumps to the next due time (timer,
  retry back-off, delayed task, activity timeout) whenever every worker is idle:
  a workflow that waits seven days for a signal that never comes times out in
  milliseconds of real time;
- ``await env.sleep(duration)`` moves it from due time to due time up to
  ``now + duration``, letting what each time sets off run to the end, and returns
  once the state at the new time is reached (a query right after sees it);
- ``await env.get_current_time()`` reads it.

Only one of the two steps time at once. While a step runs, the clock stands still,
so that each activation sees the exact time it was woken for; work that takes real
time (an activity that waits) lets it run again. ``start_local()`` runs on the real
clock (``supports_time_skipping`` is False; ``sleep`` really sleeps).
``assert_replays`` checks that committed histories still replay on the code.
``ActivityEnvironment`` runs one activity function, with no worker and no database.
"""

from perdure.testing._activity import ActivityEnvironment
from perdure.testing._environment import WorkflowEnvironment
from perdure.testing._replay import assert_replays

__all__ = ["ActivityEnvironment", "WorkflowEnvironment", "assert_replays"]
