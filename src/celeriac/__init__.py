"""celeriac: a distributed task queue with Celery's API and wire protocol.

```python
from celeriac import Celeriac

app = Celeriac("tasks")          # embedded SQLite broker and results: no server needed

@app.task
def add(x: int, y: int) -> int:
    return x + y

add.delay(2, 2).get(timeout=10)  # 4, once `celeriac -A tasks worker` runs
```
"""

# First of all: `celeriac worker -P gevent` patches before anything imports socket.
from celeriac._patching import patch_for_command_line as _patch_for_command_line

_patch_for_command_line()

from celeriac._proxy import TaskProxy as _TaskProxy
from celeriac._version import __version__ as __version__
from celeriac.app.base import Celeriac as Celeriac
from celeriac.app.base import current_app as current_app
from celeriac.app.context import current_task as _current_task_function
from celeriac.app.shared import shared_task as shared_task
from celeriac.app.task import AsyncTask as AsyncTask
from celeriac.app.task import Task as Task
from celeriac.canvas import Signature as Signature
from celeriac.canvas import chain as chain
from celeriac.canvas import chord as chord
from celeriac.canvas import chunks as chunks
from celeriac.canvas import group as group
from celeriac.canvas import maybe_signature as maybe_signature
from celeriac.canvas import signature as signature
from celeriac.canvas import xmap as xmap
from celeriac.canvas import xstarmap as xstarmap
from celeriac.result import AsyncResult as AsyncResult
from celeriac.result import EagerResult as EagerResult
from celeriac.result import GroupResult as GroupResult
from celeriac.result import ResultSet as ResultSet

# Celery compat: `from celery import Celery` becomes `from celeriac import Celery`.
Celery = Celeriac

#: Celery's `current_task` proxy: the running task (falsy outside one).
current_task = _TaskProxy(_current_task_function)

__all__ = [
    "AsyncResult",
    "AsyncTask",
    "Celeriac",
    "Celery",
    "EagerResult",
    "GroupResult",
    "ResultSet",
    "Signature",
    "Task",
    "__version__",
    "chain",
    "chord",
    "chunks",
    "current_app",
    "current_task",
    "group",
    "maybe_signature",
    "shared_task",
    "signature",
    "xmap",
    "xstarmap",
]
