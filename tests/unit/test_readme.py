"""The README and docs/ say what the code does: every setting documented, every link
resolving."""

from __future__ import annotations

import re
from pathlib import Path

from orderstream.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
OPERATIONS = ROOT / "docs" / "operations.md"


def _anchor(heading: str) -> str:
    """GitHub's anchor of a heading: lowercase, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def _documented(section: str) -> set[str]:
    """Settings a configuration table names: ``ORDERSTREAM_NAME`` whole, or shortened
    after the row's first one (`_BURST`, `..._TIMEOUT_S`: the same first word)."""
    fields = {name.upper() for name in Settings.model_fields}
    named: set[str] = set()
    for row in section.splitlines():
        whole = re.findall(r"ORDERSTREAM_([A-Z0-9_]+)", row)
        named |= set(whole)
        for suffix in re.findall(r"`(?:\.\.\.)?_([A-Z0-9_]+)`", row):
            first = whole[0].split("_")[0] if whole else ""
            named |= {f for f in fields if f.endswith("_" + suffix) and f.startswith(first)}
    return named


def test_every_setting_is_in_the_configuration_table_and_nothing_else_is() -> None:
    section = OPERATIONS.read_text().split("## Configuration", 1)[1].split("\n## ", 1)[0]
    fields = {name.upper() for name in Settings.model_fields}
    documented = _documented(section)
    assert fields - documented == set(), "settings missing from the README's table"
    assert documented - fields == set(), "the README's table names settings that do not exist"


def test_the_readme_is_short_and_starts_with_its_two_commands() -> None:
    lines = README.read_text().splitlines()
    assert len(lines) <= 260, "the README is read in five minutes: the rest goes to docs/"
    assert lines[2].strip().startswith("make run")
    assert lines[3].strip().startswith("make test")


def test_every_relative_link_and_anchor_resolves() -> None:
    broken = []
    for page in [README, *sorted((ROOT / "docs").glob("*.md"))]:
        text = page.read_text()
        anchors = {_anchor(h) for h in re.findall(r"^#+ (.+)$", text, flags=re.MULTILINE)}
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"[a-z]+://|mailto:", target):
                continue
            path, _, anchor = target.partition("#")
            linked = (page.parent / path) if path else page
            if not linked.exists():
                broken.append(f"{page.name}: {target} (no such file)")
                continue
            if anchor and linked.suffix == ".md":
                linked_text = linked.read_text()
                headings = re.findall(r"^#+ (.+)$", linked_text, flags=re.MULTILINE)
                if anchor not in ({_anchor(h) for h in headings} if path else anchors):
                    broken.append(f"{page.name}: {target} (no such heading)")
    assert broken == []
