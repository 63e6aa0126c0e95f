"""Collect the ```python blocks of the documentation pages.

A block preceded (blank lines allowed) by an HTML comment ``<!-- no-run: reason -->``
is shown on the page but not executed; the reason must say why it cannot run here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

DOCS = Path(__file__).resolve().parents[2] / "docs"
FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})[ \t]*(?P<info>[^\n`]*)$")
NO_RUN = re.compile(r"^\s*<!--\s*no-run:\s*(?P<reason>.*?)\s*-->\s*$")
PYTHON_INFOS = {"python", "py", "python3"}


@dataclass(frozen=True)
class Block:
    """One fenced code block: where it starts, its language, its code, and why it is skipped (or None)."""

    page: str
    line: int
    language: str
    code: str
    no_run: str | None


def parse_blocks(text: str, page: str) -> list[Block]:
    """Every fenced block of one Markdown text, in page order (``line`` is 1-based, the opening fence)."""
    lines = text.splitlines()
    blocks: list[Block] = []
    i = 0
    last_text = ""  # the last non-blank line outside a block, for the no-run marker
    while i < len(lines):
        match = FENCE.match(lines[i])
        if match is None:
            if lines[i].strip():
                last_text = lines[i]
            i += 1
            continue
        fence, indent = match["fence"], len(match["indent"])
        language = match["info"].strip().split(" ")[0].lstrip("{.").rstrip("}").lower()
        start = i
        body: list[str] = []
        i += 1
        while i < len(lines) and not lines[i].strip().startswith(fence):
            body.append(lines[i][indent:] if lines[i][:indent].strip() == "" else lines[i])
            i += 1
        if i >= len(lines):
            raise ValueError(f"{page}:{start + 1}: unclosed code fence")
        marker = NO_RUN.match(last_text)
        blocks.append(Block(page, start + 1, language, "\n".join(body) + "\n", marker["reason"] if marker else None))
        last_text = ""
        i += 1
    return blocks


def python_blocks(page: Path) -> list[Block]:
    """The ```python blocks of one page (path relative to ``docs/`` in ``Block.page``)."""
    name = page.relative_to(DOCS).as_posix()
    return [b for b in parse_blocks(page.read_text(encoding="utf-8"), name) if b.language in PYTHON_INFOS]


def pages_with_python() -> dict[str, list[Block]]:
    """Every docs page that has at least one ```python block, by path relative to ``docs/``."""
    found = {}
    for page in sorted(DOCS.rglob("*.md")):
        blocks = python_blocks(page)
        if blocks:
            found[page.relative_to(DOCS).as_posix()] = blocks
    return found
