"""Prose kept as Markdown under content/: sections by key, paragraphs joined, lists kept."""

from __future__ import annotations

from pathlib import Path

import pytest

import app_content


def test_a_content_file_reads_as_its_sections(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "page.md").write_text(
        "# The page\n\nA note for whoever edits the file.\n\n"
        "## first\n\nOne paragraph wrapped\nover two lines.\n\nA second **one**.\n\n"
        "## second\n\nWhat works:\n- one thing\n- another,\n  wrapped\n\nThe end.\n")
    monkeypatch.setattr(app_content, "CONTENT_DIR", tmp_path)
    app_content.sections.cache_clear()
    try:
        assert app_content.sections("page") == {
            "first": "One paragraph wrapped over two lines.\n\nA second **one**.",
            "second": "What works:\n- one thing\n- another, wrapped\n\nThe end."}
    finally:
        app_content.sections.cache_clear()


def test_every_content_file_has_sections_with_text() -> None:
    names = [path.stem for path in app_content.CONTENT_DIR.glob("*.md")]
    assert {"model", "model-settings", "dataset", "augmentations"} <= set(names)
    for name in names:
        texts = app_content.sections(name)
        assert texts and all(texts.values()), name
