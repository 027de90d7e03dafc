"""The worker's logging set-up: the signals, `worker_hijack_root_logger`, `--logfile`,
and level names in any case."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import pytest

from celeriac import signals
from celeriac.utils.log import task_logger
from celeriac.worker.logs import configure_logging, parse_level

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from celeriac import Celeriac


@pytest.fixture(autouse=True)
def saved_logging() -> Iterator[None]:
    """Put the root and task loggers back as they were (the set-up changes them)."""
    root = logging.getLogger()
    saved = (
        list(root.handlers),
        root.level,
        list(task_logger.handlers),
        task_logger.level,
        task_logger.propagate,
    )
    yield
    for logger in (root, task_logger):
        for handler in list(logger.handlers):
            logger.removeHandler(handler)
            if handler not in saved[0] and handler not in saved[2]:
                handler.close()
    for handler in saved[0]:
        root.addHandler(handler)
    root.setLevel(saved[1])
    for handler in saved[2]:
        task_logger.addHandler(handler)
    task_logger.setLevel(saved[3])
    task_logger.propagate = saved[4]


@pytest.mark.parametrize(
    ("name", "level"),
    [("info", 20), ("INFO", 20), ("Warning", 30), ("warn", 30), ("debug", 10), ("40", 40)],
)
def test_levels_are_read_in_any_case(name: str, level: int) -> None:
    assert parse_level(name) == level


def test_an_unknown_level_lists_the_names() -> None:
    with pytest.raises(ValueError, match="unknown log level 'verbose': use DEBUG, INFO"):
        parse_level("verbose")


def test_hijacking_replaces_the_root_loggers_handlers(app: Celeriac) -> None:
    mine = logging.NullHandler()
    logging.getLogger().addHandler(mine)
    configure_logging(app, loglevel="info")
    root = logging.getLogger()
    assert mine not in root.handlers
    assert len(root.handlers) == 1
    assert root.level == logging.INFO


def test_without_hijacking_a_configured_root_logger_is_left_alone(app: Celeriac) -> None:
    app.conf.worker_hijack_root_logger = False
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    mine = logging.NullHandler()
    root.addHandler(mine)
    configure_logging(app, loglevel="error")
    assert root.handlers == [mine]
    assert root.level == logging.ERROR  # Celery compat: -l still sets the level


def test_a_setup_logging_receiver_takes_over(app: Celeriac) -> None:
    root = logging.getLogger()
    before = list(root.handlers)
    calls: list[dict[str, Any]] = []
    after: list[Any] = []

    def receiver(**kwargs: Any) -> None:
        calls.append(kwargs)

    def after_receiver(**kwargs: Any) -> None:
        after.append(kwargs)

    signals.setup_logging.connect(receiver)
    signals.after_setup_logger.connect(after_receiver)
    try:
        configure_logging(app, loglevel="info", logfile=None)
    finally:
        signals.setup_logging.disconnect(receiver)
        signals.after_setup_logger.disconnect(after_receiver)
    assert calls[0]["loglevel"] == logging.INFO
    assert calls[0]["logfile"] is None
    assert root.handlers == before
    assert after == []


def test_the_after_signals_get_the_configured_loggers(app: Celeriac, tmp_path: Path) -> None:
    seen: dict[str, Any] = {}

    def on_root(logger: logging.Logger, logfile: str, **kwargs: Any) -> None:
        seen["root"] = (logger, logfile)

    def on_task(logger: logging.Logger, **kwargs: Any) -> None:
        seen["task"] = logger

    signals.after_setup_logger.connect(on_root)
    signals.after_setup_task_logger.connect(on_task)
    logfile = str(tmp_path / "worker.log")
    try:
        configure_logging(app, loglevel="info", logfile=logfile)
    finally:
        signals.after_setup_logger.disconnect(on_root)
        signals.after_setup_task_logger.disconnect(on_task)
    assert seen["root"] == (logging.getLogger(), logfile)
    assert seen["task"] is task_logger
    assert task_logger.propagate is False
    logging.getLogger("celeriac.worker").warning("to the file")
    for handler in logging.getLogger().handlers:
        handler.flush()
    assert "to the file" in (tmp_path / "worker.log").read_text()
