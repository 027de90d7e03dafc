"""Every docs code block marked runnable (`<!-- runnable -->`, tests/docs_blocks.py) runs
and prints what its page says; a failure names the page and line."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from tests.docs_blocks import DOCS, BlockFailed, blocks, pages_with_blocks, run_page

if TYPE_CHECKING:
    from pathlib import Path

PAGES = pages_with_blocks()

# The pages whose examples must stay runnable (a marker removed by mistake fails here).
REQUIRED = {"index.md", "getting-started.md", "tasks.md", "canvas.md", "results.md"}


@pytest.mark.parametrize("page", PAGES, ids=[str(page.relative_to(DOCS)) for page in PAGES])
def test_runnable_blocks_of_the_page_run(
    page: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for variable in (
        "CELERIAC_BROKER_URL",
        "CELERIAC_RESULT_BACKEND",
        "CELERY_BROKER_URL",
        "CELERY_RESULT_BACKEND",
    ):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.chdir(tmp_path)
    try:
        run_page(page, tmp_path)
    except BlockFailed as exc:
        pytest.fail(str(exc), pytrace=False)


def test_the_main_pages_have_runnable_blocks() -> None:
    marked = {str(page.relative_to(DOCS)) for page in PAGES}
    assert marked >= REQUIRED, f"no runnable block left on {sorted(REQUIRED - marked)}"


def test_a_failing_block_is_reported_with_its_page_and_line(tmp_path: Path) -> None:
    page = tmp_path / "broken-example.md"
    body = "# Broken\n\n<!-- runnable -->\n```python\nx = 1\nraise ValueError(x)\n```\n"
    page.write_text(body)
    (block,) = blocks(page)
    assert block.line == 5
    with pytest.raises(BlockFailed, match=r"broken-example\.md:5: the block raised"):
        run_page(page, tmp_path)


def test_a_transcript_that_prints_something_else_fails(tmp_path: Path) -> None:
    page = tmp_path / "wrong-transcript.md"
    page.write_text("<!-- runnable -->\n```python\n>>> 1 + 1\n3\n```\n")
    with pytest.raises(BlockFailed, match=r"wrong-transcript\.md:3: the transcript"):
        run_page(page, tmp_path)


def test_a_marker_before_a_shell_block_is_refused(tmp_path: Path) -> None:
    page = tmp_path / "shell-marker.md"
    page.write_text("<!-- runnable -->\n```sh\necho hi\n```\n")
    with pytest.raises(ValueError, match=r"shell-marker\.md:1: a runnable marker must"):
        blocks(page)
