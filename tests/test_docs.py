"""The README and docs/ as a reader meets them: short, linked without a dead end, about the project.

Every markdown link and image in README.md and docs/*.md whose target is a file of this repository
must name one that exists, and a `#fragment` must name a heading of the page it points to (as
GitHub forms a heading's anchor). Links to web addresses are not followed: tests never touch the
network.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit  # no training, no subprocess: the inner loop (pytest -m unit)

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
# [text](target) and ![alt](target), with an optional "title"; nested brackets in the text are rare
# enough in these pages that a reference-style link would be the only miss, and none is used.
LINK = re.compile(r"!?\[(?:[^\]\[]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
FENCE = re.compile(r"^(```|~~~).*?^\1", re.MULTILINE | re.DOTALL)


def prose(text: str) -> str:
    """The page without its fenced code blocks (a link-like text inside code is not a link)."""
    return FENCE.sub("", text)


def anchors(page: Path) -> set[str]:
    """GitHub's anchors for the page's headings: lower case, punctuation dropped, spaces to hyphens."""
    found: set[str] = set()
    for line in prose(page.read_text(encoding="utf-8")).splitlines():
        heading = re.match(r"#{1,6}\s+(.*?)\s*#*\s*$", line)
        if heading:
            text = re.sub(r"[`*_]|\[|\]\([^)]*\)", "", heading.group(1)).strip().lower()
            slug = re.sub(r"[^\w\- ]", "", text).replace(" ", "-")
            base, number = slug, 1
            while slug in found:  # repeated headings get -1, -2, ...
                slug, number = f"{base}-{number}", number + 1
            found.add(slug)
    return found


def links(page: Path) -> list[str]:
    return LINK.findall(prose(page.read_text(encoding="utf-8")))


def test_the_pages_exist_and_each_has_links():
    assert len(PAGES) >= 8, [page.name for page in PAGES]
    assert links(ROOT / "README.md"), "README.md links to nothing"


@pytest.mark.parametrize("page", PAGES, ids=lambda page: str(page.relative_to(ROOT)))
def test_every_relative_link_names_an_existing_file_and_heading(page: Path):
    broken = []
    for target in links(page):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
            continue
        path_part, _, fragment = target.partition("#")
        destination = (page.parent / path_part).resolve() if path_part else page
        if not destination.exists():
            broken.append(f"{target}: no such file")
        elif fragment and destination.suffix == ".md" and fragment not in anchors(destination):
            broken.append(f"{target}: no heading with the anchor #{fragment}")
    assert not broken, f"{page.relative_to(ROOT)}: " + "; ".join(broken)


def test_every_docs_page_is_reachable_from_the_readme():
    linked = {(ROOT / target.partition("#")[0]).resolve() for target in links(ROOT / "README.md")}
    unlinked = [page.name for page in PAGES[1:] if page.resolve() not in linked]
    assert not unlinked, f"docs pages the README does not link: {unlinked}"


def test_the_readme_reads_in_five_minutes():
    lines = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) <= 300, f"README.md has {len(lines)} lines; the rest belongs in docs/"


@pytest.mark.parametrize("page", PAGES, ids=lambda page: str(page.relative_to(ROOT)))
def test_the_pages_speak_of_the_project_only(page: Path):
    """No tracker entry numbers and no talk of borrowed machines: the reader has neither."""
    text = page.read_text(encoding="utf-8")
    assert not re.search(r"\bissues? #?\d+", text, re.IGNORECASE), page.name
    assert not re.search(r"\blent\b", text, re.IGNORECASE), page.name
