"""Celery's built-in tasks, registered in every app so stock clients can send them.

`celery.map`, `celery.starmap`, `celery.chunks`, `celery.accumulate`,
`celery.chord_unlock` (joins a chord by polling, for stock clients whose backend cannot
join natively) and `celery.backend_cleanup`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from celeriac import states

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from celeriac.app.base import Celeriac
    from celeriac.app.task import Task

__all__ = ["register_builtins"]

# Celery's default result_chord_retry_interval: seconds between two checks of a header.
CHORD_RETRY_INTERVAL = 1.0


def register_builtins(app: Celeriac) -> None:
    """Register Celery's built-in tasks on `app`."""

    @app.task(name="celery.map", typing=False)
    def xmap(task: Mapping[str, Any], it: Sequence[Any]) -> list[Any]:
        from celeriac.canvas import signature

        fun = signature(task, app=app).type
        return [fun(item) for item in it]

    @app.task(name="celery.starmap", typing=False)
    def xstarmap(task: Mapping[str, Any], it: Sequence[Sequence[Any]]) -> list[Any]:
        from celeriac.canvas import signature

        fun = signature(task, app=app).type
        return [fun(*item) for item in it]

    @app.task(name="celery.chunks", typing=False)
    def chunks(task: Mapping[str, Any], it: Sequence[Sequence[Any]], n: int) -> Any:
        from celeriac.canvas import chunks as make_chunks
        from celeriac.canvas import signature

        result = make_chunks(signature(task, app=app), it, n, app=app).apply_async()
        return result.as_tuple()

    @app.task(name="celery.accumulate", typing=False)
    def accumulate(*args: Any, index: int | None = None) -> Any:
        return args[index] if index is not None else args

    @app.task(name="celery.backend_cleanup", typing=False, ignore_result=True)
    def backend_cleanup() -> int:
        return app.backend.cleanup()

    @app.task(
        name="celery.chord_unlock", bind=True, typing=False, max_retries=None, ignore_result=True
    )
    def chord_unlock(
        self: Task[Any, Any],
        group_id: str,
        callback: Mapping[str, Any],
        interval: float | None = None,
        max_retries: int | None = None,
        result: Sequence[Any] | None = None,
        **kwargs: Any,
    ) -> None:
        """Join a chord sent by a stock client whose backend cannot join natively:
        check the header, retry in `interval` seconds until it is ready, then call the
        body with the results (or fail it with `ChordError`). Celeriac's own chords
        never send this task."""
        from celeriac.app.context import Context
        from celeriac.canvas import signature
        from celeriac.exceptions import ChordError
        from celeriac.protocol.errors import encode_exception
        from celeriac.result import GroupResult, result_from_tuple

        members = [result_from_tuple(r, app=app) for r in result or ()]
        group_result = GroupResult(group_id, members, app=app)
        if not group_result.ready():
            # Celery compat: a missing interval means result_chord_retry_interval (1 s).
            raise self.retry(
                countdown=CHORD_RETRY_INTERVAL if interval is None else interval,
                max_retries=max_retries,
            )
        body: Any = signature(callback, app=app)
        try:
            values = group_result.join(propagate=True, disable_sync_subtasks=False)
        except Exception as exc:
            error = ChordError(f"Dependency of {group_id} raised {exc!r}")
            body_id = body.id
            if body_id:
                app.backend.store(
                    app.backend.ready_meta(body_id, states.FAILURE, encode_exception(error))
                )
            # The body's errbacks, in Celery's two styles (see the worker's executor).
            for errback in body._failure_errbacks():
                handler = app.tasks.get(errback.name)
                if handler is not None and handler.new_style_errback:
                    errback(Context(id=body_id, task=body.name), error, None)
                else:
                    errback.apply_async((body_id,), parent_id=body_id)
            raise error from exc
        body.delay(values)
