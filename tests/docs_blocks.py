"""The code blocks of the docs pages marked runnable, and how one page's blocks are run.

A block is marked by an HTML comment on the line before its fence (invisible on GitHub
and on the docs site):

    <!-- runnable -->                       run it
    <!-- runnable: file tasks.py -->        save it as tasks.py (importable) instead
    <!-- runnable: file tasks.py, worker --> save it, import it, and run a worker on its `app`
                                            for the rest of the page

The blocks of one page run in order in one namespace, as a reader's session would, in a
directory of their own (so an app without a broker URL gets its own `celeriac.db`). A
block whose first line starts with `>>>` is a session transcript: doctest runs it and
compares what each line prints. Only ```python fences can be marked; a marker anywhere
else is an error, so a marked block is never skipped silently.
"""

from __future__ import annotations

import contextlib
import doctest
import importlib
import io
import re
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["DOCS", "ROOT", "Block", "BlockFailed", "pages_with_blocks", "run_page"]

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"

MARKER = re.compile(r"^<!--\s*runnable(?::\s*(?P<options>[^>]*?))?\s*-->\s*$")
FENCE = re.compile(r"^```(?P<info>[^`]*)$")


@dataclass(frozen=True)
class Block:
    """One marked block: where it is, its code, and what to do with it."""

    page: Path
    line: int  # of the block's first code line, 1-based
    code: str
    file: str | None = None
    worker: bool = False

    @property
    def where(self) -> str:
        return f"{_shown(self.page)}:{self.line}"


def _shown(page: Path) -> str:
    """The page as a reader names it: relative to the repository when inside it."""
    return str(page.relative_to(ROOT)) if page.is_relative_to(ROOT) else str(page)


class BlockFailed(AssertionError):
    """A marked block raised, or printed something else than its transcript says."""


def _options(raw: str | None, where: str) -> tuple[str | None, bool]:
    file: str | None = None
    worker = False
    for option in filter(None, (part.strip() for part in (raw or "").split(","))):
        if option == "worker":
            worker = True
        elif option.startswith("file "):
            file = option.removeprefix("file ").strip()
        else:
            raise ValueError(f"{where}: unknown runnable option {option!r}")
    if worker and file is None:
        raise ValueError(f"{where}: 'worker' needs 'file NAME' (the module with the app)")
    return file, worker


def blocks(page: Path) -> list[Block]:
    """The marked blocks of `page`, in order."""
    lines = page.read_text().splitlines()
    found: list[Block] = []
    for index, text in enumerate(lines):
        match = MARKER.match(text.strip())
        if not match:
            continue
        where = f"{_shown(page)}:{index + 1}"
        fence = FENCE.match(lines[index + 1]) if index + 1 < len(lines) else None
        if fence is None or fence["info"].strip() != "python":
            raise ValueError(f"{where}: a runnable marker must stand right before a ```python")
        end = next((j for j in range(index + 2, len(lines)) if lines[j].startswith("```")), None)
        if end is None:
            raise ValueError(f"{where}: the marked block is never closed")
        file, worker = _options(match["options"], where)
        code = "\n".join(lines[index + 2 : end]) + "\n"
        found.append(Block(page, index + 3, code, file, worker))
    return found


def pages_with_blocks() -> list[Path]:
    """Every docs page with at least one marked block."""
    return [page for page in sorted(DOCS.rglob("*.md")) if blocks(page)]


def _run_transcript(block: Block, namespace: dict[str, Any]) -> None:
    parser = doctest.DocTestParser()
    test = parser.get_doctest(
        block.code, namespace, block.where, str(block.page), lineno=block.line - 1
    )
    runner = doctest.DocTestRunner(
        optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE, verbose=False
    )
    report = io.StringIO()
    runner.run(test, out=report.write, clear_globs=False)
    namespace.update(test.globs)
    if runner.failures:
        raise BlockFailed(f"{block.where}: the transcript does not match\n{report.getvalue()}")


def _run_code(block: Block, namespace: dict[str, Any]) -> None:
    # Padded so that a traceback names the page's own line numbers.
    source = "\n" * (block.line - 1) + block.code
    try:
        exec(compile(source, str(block.page), "exec"), namespace)
    except Exception as exc:
        raise BlockFailed(
            f"{block.where}: the block raised\n{''.join(traceback.format_exception(exc))}"
        ) from exc


def run_page(page: Path, directory: Path) -> None:
    """Run the marked blocks of `page` in `directory` (the current directory and on
    `sys.path` meanwhile); raise `BlockFailed` naming the page and line of a failure."""
    from celeriac import Celeriac
    from celeriac.testing import start_worker

    written: list[str] = []
    namespace: dict[str, Any] = {"__name__": "__main__"}
    sys.path.insert(0, str(directory))
    try:
        with contextlib.ExitStack() as stack:
            for block in blocks(page):
                if block.file is not None:
                    (directory / block.file).write_text(block.code)
                    written.append(Path(block.file).stem)
                    if block.worker:
                        module = importlib.import_module(Path(block.file).stem)
                        stack.enter_context(start_worker(module.app))
                elif block.code.lstrip().startswith(">>>"):
                    _run_transcript(block, namespace)
                else:
                    _run_code(block, namespace)
    finally:
        sys.path.remove(str(directory))
        apps = [value for value in namespace.values() if isinstance(value, Celeriac)]
        for name in written:
            if name in sys.modules:
                contents = vars(sys.modules.pop(name))
                apps.extend(value for value in contents.values() if isinstance(value, Celeriac))
        for app in apps:
            app.close()  # its connections and SQLite files, before the directory goes
