"""Every relative link of the README and of docs/ leads to a file, and to a heading there."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def anchors(path: Path) -> set[str]:
    """GitHub's anchors for the file's headings: lower case, punctuation dropped."""
    text = re.sub(r"^```.*?^```$", "", path.read_text(), flags=re.M | re.S)
    found = set()
    for heading in re.findall(r"^#+ (.+)$", text, re.M):
        found.add(re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-"))
    return found


def links(path: Path) -> list[str]:
    text = re.sub(r"^```.*?^```$", "", path.read_text(), flags=re.M | re.S)
    return [
        target
        for target in re.findall(r"\]\(([^)\s]+)\)", text)
        if not re.match(r"[a-z]+:", target)
    ]


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_relative_links_lead_somewhere(document: Path) -> None:
    broken = []
    for target in links(document):
        file, _, anchor = target.partition("#")
        where = (document.parent / file).resolve() if file else document
        checked = anchor and where.suffix == ".md"
        if not where.exists() or (checked and anchor not in anchors(where)):
            broken.append(target)
    assert broken == []


def test_the_readme_s_contents_list_every_section() -> None:
    readme = (ROOT / "README.md").read_text()
    contents = readme.split("## Contents\n", 1)[1].split("\n## ", 1)[0]
    sections = [h for h in re.findall(r"^## (.+)$", readme, re.M) if h != "Contents"]
    listed = re.findall(r"^- \[(.+?)\]\(#", contents, re.M)
    assert listed == sections
