"""Lessons as Markdown: the parser, its refusals with their lines, and references filled in
from the shipped results."""

from __future__ import annotations

from pathlib import Path

import pytest

from cifar_core.bundled import bundled_runs
from cifar_core.experiments import load_results, summaries_from_record
from cifar_core.formatting import format_percent
from cifar_core.lessons import (
    DEFAULT_LESSON,
    LESSONS_DIR,
    LESSONS_ENV,
    LessonError,
    MeasuredValues,
    Reference,
    lesson_folders,
    load_lessons,
    parse_lesson,
    read_lesson,
    references,
)

PAGES = {path.stem for path in (Path(__file__).resolve().parents[1] / "app_pages").glob("*.py")}

GOOD = """# A short lesson

What it is about.

## First look

Look at the matrix. The baseline scores {{model:baseline.test_acc}}.
Open: [The matrix](evaluate?run=baseline&split=test&section=mistakes)
Figure: model:baseline.confusion

```python
## not a step: inside a code block
```

Question: What is on the diagonal?
Answer: The right answers.
Still the answer: {{experiment:channel_order}}

## Second look
Question: Why?
It spans two lines.
Answer: {{preset:baseline.params}} parameters.
"""


def parse(text: str, name: str = "lesson.md") -> object:
    return parse_lesson(text, Path(name), PAGES)


def test_a_lesson_parses_into_steps_links_figures_questions_and_answers() -> None:
    lesson = parse(GOOD)
    assert lesson.id == "lesson" and lesson.title == "A short lesson"
    assert lesson.summary == "What it is about."
    first, second = lesson.steps
    assert (first.title, first.line, second.line) == ("First look", 5, 19)
    assert "## not a step" in first.body and "Open:" not in first.body
    link, = first.links
    assert (link.label, link.page, link.line) == ("The matrix", "evaluate", 8)
    assert link.query == {"run": "baseline", "split": "test", "section": "mistakes"}
    figure, = first.figures
    assert (figure.kind, figure.name, figure.what) == ("model", "baseline", "confusion")
    assert first.question == "What is on the diagonal?"
    assert first.answer == "The right answers.\nStill the answer: {{experiment:channel_order}}"
    assert second.question == "Why?\nIt spans two lines."
    assert not second.links and not second.figures


@pytest.mark.parametrize(("text", "line", "words"), [
    ("Intro\n## Step\nQuestion: q\nAnswer: a\n", 1, "must start with a '# Title'"),
    ("# T\n\n## Step\nQuestion: q\n", 3, "no 'Answer:'"),
    ("# T\n## Step\nAnswer: a\nQuestion: q\n", 3, "'Answer:' before"),
    ("# T\n## Step\nQuestion: q\nAnswer: a\nQuestion: again\n", 5, "second 'Question:'"),
    ("# T\n## Step\nOpen: the evaluate page\nQuestion: q\nAnswer: a\n", 3, "one Markdown link"),
    ("# T\n## Step\nOpen: [x](nowhere?run=a)\nQuestion: q\nAnswer: a\n", 3, "'nowhere' is not a page"),
    ("# T\n## Step\nOpen: [x](evaluate?run=a&run=b)\nQuestion: q\nAnswer: a\n", 3, "given twice"),
    ("# T\n## Step\nFigure: model:baseline.pie\nQuestion: q\nAnswer: a\n", 3, "Figure: line"),
    ("# T\n## Step\nFigure: experiment:nothing\nQuestion: q\nAnswer: a\n", 3, "no experiment 'nothing'"),
    ("# T\n## Step\n\nText {{model:baseline.colour}}\nQuestion: q\nAnswer: a\n", 4, "no field 'colour'"),
    ("# T\n## Step\nQuestion: q\nAnswer: {{weather:today}}\n", 4, "unknown reference kind"),
    ("# T\n## Step\nQuestion: q\nAnswer: {{experiment:nothing}}\n", 4, "no experiment 'nothing'"),
    ("# T\n## Step\nQuestion: q {{model:baseline.test_acc\nAnswer: a\n", 3, "without its closing"),
    ("# T\n## Step\nQuestion: q\nAnswer: {{ not a reference }}\n", 4, "is not a reference"),
    ("# T\n## Step\nQuestion: q\nAnswer: a\n```\ncode\n", 6, "not closed"),
    ("# T\n\nOnly a summary.\n", 1, "no steps"),
    ("# T\n## Step\nQuestion: q\nAnswer: a\n# Another title\n", 5, "only the first heading"),
])
def test_a_malformed_lesson_is_refused_with_its_line(text: str, line: int, words: str) -> None:
    with pytest.raises(LessonError) as caught:
        parse(text, "mine.md")
    assert caught.value.line == line, str(caught.value)
    assert words in caught.value.message
    assert str(caught.value).startswith(f"mine.md, line {line}: ")


def test_a_file_that_is_not_utf8_is_refused_at_the_line_of_the_bad_byte(tmp_path: Path) -> None:
    path = tmp_path / "latin.md"
    path.write_bytes(b"# T\n## Step\nQuestion: caf\xe9?\nAnswer: a\n")
    with pytest.raises(LessonError, match=r"latin.md, line 3: not UTF-8"):
        read_lesson(path)


def test_a_teachers_folder_adds_lessons_and_a_bad_file_does_not_hide_the_others(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "mine.md").write_text(GOOD)
    (tmp_path / "broken.md").write_text("# T\n## Step\nQuestion: q\n")
    (tmp_path / "presentation.md").write_text(GOOD)  # the same name as the default lesson
    monkeypatch.setenv(LESSONS_ENV, str(tmp_path))
    assert lesson_folders() == [LESSONS_DIR, tmp_path]
    lessons, errors = load_lessons(pages=PAGES)
    assert [lesson.id for lesson in lessons] == [DEFAULT_LESSON, "mine"]
    assert lessons[0].path.parent == LESSONS_DIR
    assert sorted((e.path.name, e.line) for e in errors) == [("broken.md", 2), ("presentation.md", 1)]
    assert "already loaded" in next(e.message for e in errors if e.path.name == "presentation.md")


def test_the_default_lesson_follows_the_presentations_ten_slides() -> None:
    lessons, errors = load_lessons([LESSONS_DIR], pages=PAGES)
    assert not errors, [str(e) for e in errors]
    lesson = lessons[0]
    assert lesson.id == DEFAULT_LESSON and len(lesson.steps) == 10
    for step in lesson.steps:
        assert step.links, f"step '{step.title}' points to no view"
        assert references(step.answer), f"the answer of '{step.title}' quotes no measured result"


def test_references_are_filled_in_from_the_shipped_files() -> None:
    values = MeasuredValues()
    results = load_results()
    baseline = next(run for run in bundled_runs() if run.name == "baseline")
    assert values.fill("{{model:baseline.test_acc}}") == format_percent(baseline.metrics.test_acc)
    assert values.fill("{{experiment:activation}}") == results["activation"]["verdict"]
    arm = summaries_from_record(results["channel_order"])[0]
    assert values.fill("x {{experiment:channel_order.arm1.best_val_acc}} y") == \
        f"x {format_percent(arm.best_val_acc)} y"
    assert values.fill("{{preset:baseline.params}}") == "167,818"


def test_a_value_that_is_not_there_says_so_instead_of_failing(tmp_path: Path) -> None:
    values = MeasuredValues(results={}, runs=[])
    assert values.fill("{{model:baseline.test_acc}}") == "(not measured: model:baseline.test_acc)"
    assert values.value(Reference("experiment", "dropout", "verdict")) == \
        "(not measured: experiment:dropout.verdict)"


def test_the_confusion_figures_are_read_off_the_matrix() -> None:
    baseline = next(run for run in bundled_runs() if run.name == "baseline")
    matrix = baseline.test_confusion()
    values = MeasuredValues(runs=[baseline])
    wrong = int(matrix.sum() - matrix.trace())
    assert values.fill("{{model:baseline.errors}}") == f"{wrong:,} of {int(matrix.sum()):,}"
    off = matrix.copy()
    off[range(10), range(10)] = 0
    true, predicted = divmod(int(off.argmax()), 10)
    assert values.fill("{{model:baseline.top_confusion}}").startswith(
        f"{baseline.classes[true]} taken for {baseline.classes[predicted]} ({int(off[true, predicted]):,} of")
