"""Results as the caller sees them: `AsyncResult`, `GroupResult`, `EagerResult`.

Reading never runs stored code: a stored failure is rebuilt by
`protocol.errors.decode_exception`, which only uses exception classes already loaded in
this process. `get()` blocks on the backend's notification (pub/sub on Redis, a data
version check on SQLite, a condition in memory), never a busy loop.
"""

from celeriac.result.joins import allow_join_result as allow_join_result
from celeriac.result.joins import denied_join_result as denied_join_result
from celeriac.result.sets import GroupResult as GroupResult
from celeriac.result.sets import ResultSet as ResultSet
from celeriac.result.sets import result_from_tuple as result_from_tuple
from celeriac.result.single import AsyncResult as AsyncResult
from celeriac.result.single import EagerResult as EagerResult

__all__ = [
    "AsyncResult",
    "EagerResult",
    "GroupResult",
    "ResultSet",
    "allow_join_result",
    "denied_join_result",
    "result_from_tuple",
]
