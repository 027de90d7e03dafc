"""Links in the README and the docs resolve: the README's are absolute (it is the package
index page too, where a relative link breaks), and every link into this repository, relative
or by its GitHub address, names a file that exists (and a heading that exists, for an
anchor into a Markdown file)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent.parent

# `[text](target)` and `[text](target "title")`, not images' alt text.
LINK = re.compile(r"\[[^\]]*\]\((?P<target>[^)\s]+)(?:\s+\"[^\"]*\")?\)")
FENCE = re.compile(r"^\s*```")


def repository_url() -> str:
    """`project.urls.Source` of pyproject.toml (tomllib is 3.11+; this runs on 3.10)."""
    match = re.search(r'^Source = "(?P<url>[^"]+)"$', (ROOT / "pyproject.toml").read_text(), re.M)
    assert match, "pyproject.toml names no Source URL under [project.urls]"
    return match["url"].rstrip("/")


# A link to a file of this repository by address: <repo>/blob/main/PATH or /tree/main/PATH.
IN_REPOSITORY = re.compile(re.escape(repository_url()) + r"/(?:blob|tree)/main/(?P<path>[^#?]*)")


def links(page: Path) -> list[tuple[int, str]]:
    """(line, target) of every link outside code blocks."""
    found: list[tuple[int, str]] = []
    in_code = False
    for number, line in enumerate(page.read_text().splitlines(), start=1):
        if FENCE.match(line):
            in_code = not in_code
            continue
        if in_code:
            continue
        text = re.sub(r"`[^`]*`", "", line)  # inline code is not a link
        found.extend((number, match["target"]) for match in LINK.finditer(text))
    return found


def slug(heading: str) -> str:
    """A heading's anchor as GitHub and the docs site (toc) make it."""
    text = re.sub(r"`|\*|_(?=\w)|(?<=\w)_", "", heading.strip().lower())
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", text)
    text = re.sub(r"[^\w\- ]", "", text)
    return re.sub(r"\s", "-", text)


def anchors(page: Path) -> set[str]:
    found: set[str] = set()
    in_code = False
    for line in page.read_text().splitlines():
        if FENCE.match(line):
            in_code = not in_code
        elif not in_code and line.startswith("#"):
            found.add(slug(line.lstrip("#")))
    return found


def pages() -> list[Path]:
    return [ROOT / "README.md", ROOT / "CHANGELOG.md", *sorted((ROOT / "docs").rglob("*.md"))]


def check_target(page: Path, number: int, target: str) -> str | None:
    """What is wrong with the link, or None."""
    where = f"{page.relative_to(ROOT)}:{number}: {target}"
    in_repository = IN_REPOSITORY.match(target)
    if in_repository:
        path = ROOT / in_repository["path"]
    elif re.match(r"^[a-z][a-z0-9+.-]*:", target):
        return None  # another site: not checked here (no network in unit tests)
    elif target.startswith("#"):
        path = page
    else:
        path = (page.parent / target.split("#", 1)[0]).resolve()
    if not path.exists():
        shown = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path
        return f"{where}: no such file {shown}"
    if "#" in target and path.suffix == ".md":
        anchor = target.split("#", 1)[1]
        if anchor not in anchors(path):
            return f"{where}: no heading #{anchor} in {path.relative_to(ROOT)}"
    return None


def test_every_readme_link_is_absolute() -> None:
    readme = ROOT / "README.md"
    relative = [
        f"README.md:{number}: {target}"
        for number, target in links(readme)
        if not re.match(r"^https?://", target)
    ]
    assert not relative, "relative links break on the package index page:\n" + "\n".join(relative)


def test_the_readme_links_the_docs_by_the_repository_address() -> None:
    targets = [target for _, target in links(ROOT / "README.md")]
    assert any(IN_REPOSITORY.match(target) for target in targets)


@pytest.mark.parametrize("page", pages(), ids=lambda page: str(page.relative_to(ROOT)))
def test_every_link_into_the_repository_resolves(page: Path) -> None:
    problems = [
        problem
        for number, target in links(page)
        if (problem := check_target(page, number, target)) is not None
    ]
    assert not problems, "\n".join(problems)


def test_a_link_to_a_missing_file_is_reported() -> None:
    page = ROOT / "docs" / "index.md"
    assert check_target(page, 1, "nowhere.md") is not None
    assert check_target(page, 1, f"{repository_url()}/blob/main/docs/nowhere.md") is not None
    assert check_target(page, 1, "getting-started.md#no-such-heading") is not None
    assert check_target(page, 1, "getting-started.md#install") is None
