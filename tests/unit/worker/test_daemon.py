"""`celeriac.worker.daemon`: `--umask` parsing and the bad `--uid`/`--gid` values."""

from __future__ import annotations

import pytest

from celeriac.exceptions import ImproperlyConfigured
from celeriac.worker.daemon import drop_privileges, parse_umask


@pytest.mark.parametrize(
    ("text", "mask"), [("022", 0o22), ("0o27", 0o27), ("0", 0), ("18", 18), ("0777", 0o777)]
)
def test_umask_is_octal_with_a_leading_zero_else_decimal(text: str, mask: int) -> None:
    assert parse_umask(text) == mask


@pytest.mark.parametrize("text", ["rw", "0999", "01000"])
def test_a_bad_umask_is_refused(text: str) -> None:
    with pytest.raises(ImproperlyConfigured, match="--umask"):
        parse_umask(text)


def test_an_unknown_user_is_refused_by_name() -> None:
    with pytest.raises(ImproperlyConfigured, match="--uid 'no-such-user-x': no such user"):
        drop_privileges(uid="no-such-user-x", gid=None)


def test_an_unknown_group_is_refused_by_name() -> None:
    with pytest.raises(ImproperlyConfigured, match="--gid 'no-such-group-x': no such group"):
        drop_privileges(uid=None, gid="no-such-group-x")
