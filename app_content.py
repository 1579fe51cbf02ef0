"""The prose the pages show, kept as Markdown under content/ so that pages read as a
description of their UI.

A content file has a title, then one ``## key`` section per text. The lines of a paragraph
are joined into one (so files wrap for reading), except that each item of a list ("- ")
starts a line of its own; paragraphs stay apart. Texts are the same for every visitor: each
file is read once per process.
"""

from __future__ import annotations

import functools
from pathlib import Path

CONTENT_DIR = Path(__file__).resolve().parent / "content"


@functools.cache
def sections(name: str) -> dict[str, str]:
    """The texts of ``content/<name>.md`` by their section key."""
    texts: dict[str, list[str]] = {}
    lines: list[str] | None = None  # the section being read; None before the first
    for line in (CONTENT_DIR / f"{name}.md").read_text(encoding="utf-8").splitlines():
        if line.startswith("## "):
            lines = texts.setdefault(line[3:].strip(), [])
        elif lines is not None:
            lines.append(line.strip())
    return {key: _paragraphs(lines) for key, lines in texts.items()}


def _paragraphs(lines: list[str]) -> str:
    paragraphs, current = [], ""
    for line in [*lines, ""]:
        if not line:
            if current:
                paragraphs.append(current)
            current = ""
        elif line.startswith("- ") or not current:
            current += ("\n" if current else "") + line
        else:
            current += " " + line
    return "\n\n".join(paragraphs)
