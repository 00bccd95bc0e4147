"""The README and docs/ hold together: every relative link reaches a file (and its heading, for `#anchor`),
and the MemoryDB access strings in docs/security.md are the ones common/storage/acl.py grants. Split pages drift
apart silently; these fail the moment a page, a heading or a rule moves."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from common.storage import acl

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

FENCE = re.compile(r"^```.*?^```", re.M | re.S)
CODE_SPAN = re.compile(r"`[^`\n]*`")
# [text](target) and ![alt](target); the target ends at whitespace or ")" (an optional "title" follows).
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$", re.M)


def prose(text: str) -> str:
    """The text a reader sees as prose: fenced blocks and code spans hold examples, not links."""
    return CODE_SPAN.sub("", FENCE.sub("", text))


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped (not `-` or `_`), spaces to hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link in a heading anchors on its text
    text = text.replace("`", "").strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every anchor a page offers, with GitHub's -1, -2 suffixes for repeated headings."""
    seen: dict[str, int] = {}
    found = set()
    for heading in HEADING.findall(FENCE.sub("", path.read_text())):
        base = slug(heading)
        count = seen.get(base, 0)
        seen[base] = count + 1
        found.add(base if count == 0 else f"{base}-{count}")
    return found


def shown(path: Path) -> str:
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def dead_links(page: Path) -> list[str]:
    """The relative links of `page` that reach no file, or no heading of the file they name."""
    dead = []
    for target in LINK.findall(prose(page.read_text())):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto: ... are not checked here
            continue
        path_part, _, anchor = target.partition("#")
        file = (page.parent / path_part).resolve() if path_part else page
        if not file.exists():
            dead.append(f"{target}: no file {shown(file)}")
        elif anchor and file.suffix == ".md" and anchor not in anchors(file):
            dead.append(f"{target}: no heading with anchor #{anchor} in {shown(file)}")
    return dead


@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(ROOT)) for p in PAGES])
def test_every_relative_link_reaches_a_file_and_heading(page: Path) -> None:
    assert dead_links(page) == []


def test_the_readme_links_every_docs_page() -> None:
    """A page nobody links is a page no newcomer finds: the README's table names each one."""
    linked = {Path(target).name for target in LINK.findall(prose((ROOT / "README.md").read_text()))}
    assert {page.name for page in PAGES[1:]} <= linked


def test_the_link_check_catches_a_dead_file_and_a_dead_anchor(tmp_path: Path) -> None:
    (tmp_path / "there.md").write_text("# A page\n\n## Two words, `code` and more\n\n## Two words, `code` and more\n")
    page = tmp_path / "page.md"
    page.write_text(
        "[ok](there.md#two-words-code-and-more) [ok](there.md#two-words-code-and-more-1) [ok](#top)\n"
        "[gone](missing.md) [wrong](there.md#no-such-heading) [web](https://example.com/x.md)\n"
        "`[not a link](missing.md)`\n\n```\n[nor this](missing.md)\n```\n\n# Top\n"
    )
    assert [entry.split(":")[0] for entry in dead_links(page)] == ["missing.md", "there.md#no-such-heading"]


def test_the_memorydb_access_strings_are_the_acl_rules() -> None:
    """docs/security.md's `aws memorydb create-user` lines grant what `python -m common.storage.acl` prints."""
    text = (ROOT / "docs" / "security.md").read_text()
    documented = dict(re.findall(r"--user-name (\S+) .*?--access-string \"([^\"]+)\"", text, re.S))
    assert documented == {user: f"on {acl.rules(component)}" for component, user in acl.USERS.items()}
