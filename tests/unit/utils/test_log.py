"""`celeriac.utils.log.get_task_logger`: records carry the running task's id and name."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import pytest

from celeriac.utils.log import TaskFormatter, get_task_logger, task_logger

if TYPE_CHECKING:
    from celeriac import Celeriac


def test_a_task_logger_hangs_under_the_task_logger() -> None:
    logger = get_task_logger("proj.tasks")
    assert logger.parent is task_logger
    assert task_logger.name == "celeriac.task"


def test_the_task_loggers_own_name_is_reserved() -> None:
    with pytest.raises(RuntimeError, match="reserved"):
        get_task_logger("celeriac.task")


def test_records_made_in_a_task_carry_its_id_and_name(
    app: Celeriac, caplog: pytest.LogCaptureFixture
) -> None:
    logger = get_task_logger("proj.tasks.records")

    @app.task(name="proj.hello")
    def hello() -> None:
        logger.warning("hello from the task")

    with caplog.at_level(logging.WARNING, logger="proj.tasks.records"):
        result = hello.apply(task_id="the-task-id")
    assert result.successful()
    record = next(r for r in caplog.records if r.getMessage() == "hello from the task")
    assert (getattr(record, "task_id", None), getattr(record, "task_name", None)) == (
        "the-task-id",
        "proj.hello",
    )


def test_records_made_outside_a_task_read_question_marks(
    caplog: pytest.LogCaptureFixture,
) -> None:
    logger = get_task_logger("proj.tasks.outside")
    with caplog.at_level(logging.WARNING, logger="proj.tasks.outside"):
        logger.warning("outside")
    record = caplog.records[-1]
    assert (getattr(record, "task_id", None), getattr(record, "task_name", None)) == (
        "???",
        "???",
    )


def test_the_task_formatter_prints_name_and_id(app: Celeriac) -> None:
    formatter = TaskFormatter("%(task_name)s[%(task_id)s]: %(message)s")
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "plain", None, None)
    assert formatter.format(record) == "???[???]: plain"
