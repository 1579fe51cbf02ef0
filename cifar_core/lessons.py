"""Lessons as Markdown files: steps with links into the app, questions, and answers that
quote measured results by reference instead of by hand.

The format is described in ``lessons/README.md``. In short::

    # Lesson title
    An optional summary.

    ## A step's title
    What to look at (Markdown). {{model:baseline.test_acc}} is filled in from models/.
    Open: [The confusion matrix](evaluate?run=baseline&split=test)
    Figure: experiment:channel_order
    Question: What do you expect?
    Answer: {{experiment:channel_order}}

A reference is ``{{kind:name.field}}``: ``model`` reads a bundled model's run folder,
``experiment`` the shipped experiments (experiments/results.json), ``preset`` the
presets themselves (REFERENCE_FIELDS lists the fields). Nothing here imports Streamlit:
the Lesson page parses with ``load_lessons`` and fills in with ``MeasuredValues``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qsl

import numpy as np

from .bundled import bundled_runs
from .config import PRESETS
from .experiments import EXPERIMENTS, load_results, summaries_from_record
from .formatting import MISSING, format_percent, format_seconds
from .model import build_model, count_parameters
from .runs import Run

LESSONS_DIR = Path(__file__).resolve().parent.parent / "lessons"
LESSONS_ENV = "CIFAR_LESSONS_DIR"  # more folders of lessons, separated like PATH
DEFAULT_LESSON = "presentation"  # lessons/presentation.md, listed first
MAX_LESSON_BYTES = 256 * 1024

ARM_FIELDS = ("label", "best_val_acc", "test_acc", "final_gap", "epochs", "best_epoch")
REFERENCE_FIELDS: dict[str, tuple[str, ...]] = {
    "model": ("test_acc", "val_acc", "val_loss", "best_epoch", "epochs_run", "stopped_early", "train_time",
              "images_per_second", "params", "preset", "errors", "top_confusion", "worst_class",
              "best_class"),
    "experiment": ("verdict", "claim", "subset", *(f"arm{i}.{f}" for i in range(1, 10) for f in ARM_FIELDS)),
    "preset": ("params", "title", "epochs", "batch_size", "lr", "optimizer", "patience"),
}
FIGURES = {"experiment": ("curves",), "model": ("accuracy", "loss", "confusion")}

REFERENCE = re.compile(r"\{\{(.*?)\}\}")
REFERENCE_BODY = re.compile(r"^(?P<kind>[a-z]+):(?P<name>[A-Za-z0-9_-]+)(?:\.(?P<field>[a-z0-9_.]+))?$")
DIRECTIVE = re.compile(r"^(?P<word>open|figure|question|answer):\s*(?P<rest>.*)$", re.IGNORECASE)
LINK = re.compile(r"^\[(?P<label>[^\]]+)\]\((?P<target>[^)\s]+)\)$")
PAGE = re.compile(r"^[a-z][a-z0-9_-]*$")


class LessonError(ValueError):
    """A lesson file that cannot be used, with the line that says why."""

    def __init__(self, path: Path, line: int, message: str) -> None:
        super().__init__(f"{path.name}, line {line}: {message}")
        self.path, self.line, self.message = path, line, message


@dataclass(frozen=True)
class Reference:
    """``{{kind:name.field}}``; the field may be empty (an experiment's verdict)."""

    kind: str
    name: str
    field: str

    def __str__(self) -> str:
        return f"{self.kind}:{self.name}" + (f".{self.field}" if self.field else "")


@dataclass(frozen=True)
class Link:
    """A view of the app: its page (the URL path, e.g. ``evaluate``) and query parameters."""

    label: str
    page: str
    params: tuple[tuple[str, str], ...]
    line: int

    @property
    def query(self) -> dict[str, str]:
        return dict(self.params)


@dataclass(frozen=True)
class Figure:
    """A live figure drawn in the step: ``experiment:NAME`` (its arms' validation curves) or
    ``model:NAME.accuracy|loss|confusion`` (a bundled model's curves or test confusion matrix)."""

    kind: str
    name: str
    what: str
    line: int


@dataclass(frozen=True)
class Step:
    title: str
    body: str  # Markdown with references
    links: tuple[Link, ...]
    figures: tuple[Figure, ...]
    question: str
    answer: str
    line: int


@dataclass(frozen=True)
class Lesson:
    id: str  # the file name without .md: what ?lesson= names
    title: str
    summary: str
    steps: tuple[Step, ...]
    path: Path


# --- parsing ---------------------------------------------------------------------------------

def parse_reference(text: str, path: Path, line: int) -> Reference:
    """The reference inside ``{{...}}``, checked against the kinds, names and fields known here."""
    match = REFERENCE_BODY.match(text.strip())
    if not match:
        raise LessonError(path, line, f"'{{{{{text}}}}}' is not a reference; write {{{{kind:name.field}}}}, "
                                      f"kind one of {', '.join(REFERENCE_FIELDS)}")
    kind, name, field = match["kind"], match["name"], match["field"] or ""
    if kind not in REFERENCE_FIELDS:
        raise LessonError(path, line, f"unknown reference kind '{kind}' (use {', '.join(REFERENCE_FIELDS)})")
    if kind == "experiment":
        field = field or "verdict"
        if name not in EXPERIMENTS:
            raise LessonError(path, line, f"no experiment '{name}' (there are {', '.join(EXPERIMENTS)})")
    if kind == "preset" and name not in PRESETS:
        raise LessonError(path, line, f"no preset '{name}' (there are {', '.join(PRESETS)})")
    if field not in REFERENCE_FIELDS[kind]:
        known = [f for f in REFERENCE_FIELDS[kind] if not f.startswith("arm")]
        arms = ", armN." + "|".join(ARM_FIELDS) if kind == "experiment" else ""
        raise LessonError(path, line, f"'{kind}' has no field '{field}' (use {', '.join(known)}{arms})")
    return Reference(kind, name, field)


def references(text: str, path: Path = Path("text"), first_line: int = 1) -> list[Reference]:
    """Every reference in ``text``; LessonError (with its line) for a malformed one."""
    found = []
    for offset, line in enumerate(text.splitlines()):
        for match in REFERENCE.finditer(line):
            found.append(parse_reference(match[1], path, first_line + offset))
        if "{{" in REFERENCE.sub("", line):
            raise LessonError(path, first_line + offset, "'{{' without its closing '}}'")
    return found


def parse_link(text: str, path: Path, line: int, pages: Collection[str] | None) -> Link:
    match = LINK.match(text.strip())
    if not match:
        raise LessonError(path, line, "an Open: line takes one Markdown link, e.g. "
                                      "Open: [The confusion matrix](evaluate?run=baseline&split=test)")
    page, _, query = match["target"].lstrip("/").partition("?")
    if not PAGE.match(page) or (pages is not None and page not in pages):
        known = f" (pages: {', '.join(sorted(pages))})" if pages is not None else ""
        raise LessonError(path, line, f"'{page}' is not a page of the app{known}")
    try:
        params = tuple(parse_qsl(query, strict_parsing=True)) if query else ()
    except ValueError:
        raise LessonError(path, line, f"'{query}' is not a query string (name=value&name=value)") from None
    names = [name for name, _ in params]
    if len(set(names)) != len(names):
        raise LessonError(path, line, "a parameter is given twice in this link")
    return Link(match["label"], page, params, line)


def parse_figure(text: str, path: Path, line: int) -> Figure:
    kind, _, rest = text.strip().partition(":")
    name, _, what = rest.partition(".")
    what = what or FIGURES.get(kind, ("",))[0]
    if kind not in FIGURES or not name or what not in FIGURES[kind]:
        raise LessonError(path, line, "a Figure: line names experiment:NAME or "
                                      "model:NAME.accuracy, .loss or .confusion")
    if kind == "experiment" and name not in EXPERIMENTS:
        raise LessonError(path, line, f"no experiment '{name}' (there are {', '.join(EXPERIMENTS)})")
    return Figure(kind, name, what, line)


@dataclass
class _StepLines:
    """A step while it is read: its lines sorted into body, question and answer."""

    title: str
    line: int
    body: list[str]
    links: list[Link]
    figures: list[Figure]
    question: list[str] | None = None
    answer: list[str] | None = None

    def add(self, text: str) -> None:
        (self.answer if self.answer is not None else
         self.question if self.question is not None else self.body).append(text)

    def finish(self, path: Path) -> Step:
        if self.question is None:
            raise LessonError(path, self.line, f"step '{self.title}' has no 'Question:' line")
        if self.answer is None:
            raise LessonError(path, self.line, f"step '{self.title}' has no 'Answer:' line")
        question, answer = "\n".join(self.question).strip(), "\n".join(self.answer).strip()
        if not question or not answer:
            raise LessonError(path, self.line, f"step '{self.title}' has an empty question or answer")
        return Step(self.title, "\n".join(self.body).strip(), tuple(self.links), tuple(self.figures),
                    question, answer, self.line)


def parse_lesson(text: str, path: Path, pages: Collection[str] | None = None) -> Lesson:
    """A lesson from its Markdown; LessonError naming the file and line of the first problem.

    ``pages``, when given, are the app's page names that links may open.
    """
    references(text, path)  # every reference well formed, wherever it is
    title, summary, steps = None, [], []
    step: _StepLines | None = None
    fenced, number = False, 1
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.rstrip()
        if line.lstrip().startswith("```"):
            fenced = not fenced
        heading = None if fenced else re.match(r"^(#{1,2})\s+(.*\S)\s*$", line)
        directive = None if fenced or step is None else DIRECTIVE.match(line)
        if heading and len(heading[1]) == 1:
            if title is not None or step is not None:
                raise LessonError(path, number, "only the first heading may be a '# ' title; "
                                                "steps are '## ' headings")
            title = heading[2]
        elif heading:
            if title is None:
                raise LessonError(path, number, "the lesson must start with a '# Title' line")
            if step is not None:
                steps.append(step.finish(path))
            step = _StepLines(heading[2], number, [], [], [])
        elif directive:
            word, rest = directive["word"].lower(), directive["rest"]
            if word == "open":
                step.links.append(parse_link(rest, path, number, pages))
            elif word == "figure":
                step.figures.append(parse_figure(rest, path, number))
            elif word == "question":
                if step.question is not None or step.answer is not None:
                    raise LessonError(path, number, "a second 'Question:' in this step")
                step.question = [rest]
            else:
                if step.question is None:
                    raise LessonError(path, number, "'Answer:' before the step's 'Question:'")
                if step.answer is not None:
                    raise LessonError(path, number, "a second 'Answer:' in this step")
                step.answer = [rest]
        elif step is not None:
            step.add(line)
        elif line.strip():
            if title is None:
                raise LessonError(path, number, "the lesson must start with a '# Title' line")
            summary.append(line)
        elif title is not None:
            summary.append("")
    if fenced:
        raise LessonError(path, number, "a ``` code block is not closed")
    if step is None:
        raise LessonError(path, 1, "no steps: each step starts with a '## ' heading")
    steps.append(step.finish(path))
    return Lesson(path.stem, title, "\n".join(summary).strip(), tuple(steps), path)


def read_lesson(path: Path, pages: Collection[str] | None = None) -> Lesson:
    """One lesson file; LessonError when it is too large, not UTF-8 or malformed."""
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise LessonError(path, 1, f"cannot be read: {err.strerror or err}") from None
    if len(raw) > MAX_LESSON_BYTES:
        raise LessonError(path, 1, f"larger than {MAX_LESSON_BYTES // 1024} KB")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise LessonError(path, raw[:err.start].count(b"\n") + 1, "not UTF-8 text") from None
    return parse_lesson(text, path, pages)


def lesson_folders() -> list[Path]:
    """lessons/ of the project, then the folders named by CIFAR_LESSONS_DIR."""
    extra = os.environ.get(LESSONS_ENV, "")
    return [LESSONS_DIR, *(Path(p).expanduser() for p in extra.split(os.pathsep) if p.strip())]


def load_lessons(folders: Iterable[Path] | None = None,
                 pages: Collection[str] | None = None) -> tuple[list[Lesson], list[LessonError]]:
    """Every readable ``*.md`` lesson (README.md is the format's description, not a lesson),
    the default one first, and the files that were refused, each with its reason."""
    lessons: dict[str, Lesson] = {}
    errors: list[LessonError] = []
    for folder in lesson_folders() if folders is None else folders:
        for path in sorted(folder.glob("*.md")) if folder.is_dir() else []:
            if path.name.lower() == "readme.md":
                continue
            try:
                lesson = read_lesson(path, pages)
            except LessonError as err:
                errors.append(err)
                continue
            if lesson.id in lessons:
                errors.append(LessonError(path, 1, f"a lesson named '{lesson.id}' is already loaded "
                                                   f"from {lessons[lesson.id].path}; rename this file"))
                continue
            lessons[lesson.id] = lesson
    ordered = sorted(lessons.values(), key=lambda lesson: (lesson.id != DEFAULT_LESSON, lesson.id))
    return ordered, errors


# --- filling in measured values -------------------------------------------------------------

class MeasuredValues:
    """What references stand for: the shipped experiments, the bundled models, the presets.

    Read once when made; a value that is not there (a model being retrained, an experiment
    not yet run) reads as "(not measured: ...)" instead of failing the page.
    """

    def __init__(self, results: dict | None = None, runs: Iterable[Run] | None = None) -> None:
        self.results = load_results() if results is None else results
        self.runs = {run.name: run for run in (bundled_runs() if runs is None else runs)}

    def fill(self, text: str) -> str:
        """``text`` with every reference replaced by its value."""
        return REFERENCE.sub(lambda m: self.value(parse_reference(m[1], Path("text"), 0)), text)

    def value(self, ref: Reference) -> str:
        try:
            kinds = {"model": self._model, "experiment": self._experiment, "preset": self._preset}
            found = kinds[ref.kind](ref)
        except (KeyError, IndexError, TypeError, ValueError, StopIteration):
            found = None
        return f"(not measured: {ref})" if found is None or found == MISSING else found

    def _model(self, ref: Reference) -> str | None:
        run = self.runs[ref.name]
        metrics, field = run.metrics, ref.field
        simple: dict[str, Callable[[], str | None]] = {
            "test_acc": lambda: format_percent(metrics.test_acc),
            "val_acc": lambda: format_percent(metrics.val_acc),
            "val_loss": lambda: next(f"{r.val_loss:.2f}" for r in run.history
                                     if r.epoch == metrics.best_epoch),
            "best_epoch": lambda: str(metrics.best_epoch) if metrics.best_epoch else None,
            "epochs_run": lambda: str(metrics.epochs_run or len(run.history)),
            "stopped_early": lambda: None if metrics.stopped_early is None else
                                     ("yes" if metrics.stopped_early else "no"),
            "train_time": lambda: format_seconds(metrics.train_seconds),
            "images_per_second": lambda: f"{metrics.images_per_second:,.0f}",
            "params": lambda: f"{count_parameters(build_model(run.model_config)):,}",
            "preset": lambda: run.preset,
        }
        if field in simple:
            return simple[field]()
        return _confusion_value(run.test_confusion(), run.classes, field)

    def _experiment(self, ref: Reference) -> str | None:
        record = self.results[ref.name]
        if not ref.field.startswith("arm"):
            value = record[ref.field]
            return f"{value:,}" if isinstance(value, int) else str(value)
        arm, field = ref.field.split(".")
        summary = summaries_from_record(record)[int(arm[3:]) - 1]
        return {"label": lambda: summary.label,
                "best_val_acc": lambda: format_percent(summary.best_val_acc),
                "test_acc": lambda: format_percent(summary.test_acc),
                "final_gap": lambda: format_percent(summary.final_gap),
                "epochs": lambda: str(len(summary.history)),
                "best_epoch": lambda: str(summary.best_epoch) if summary.best_epoch else None}[field]()

    def _preset(self, ref: Reference) -> str | None:
        preset = PRESETS[ref.name]
        return {"params": lambda: f"{count_parameters(build_model(preset.model)):,}",
                "title": lambda: preset.title, "epochs": lambda: str(preset.train.epochs),
                "batch_size": lambda: str(preset.train.batch_size), "lr": lambda: f"{preset.train.lr:g}",
                "optimizer": lambda: preset.train.optimizer,
                "patience": lambda: str(preset.train.patience)}[ref.field]()


def _confusion_value(matrix: np.ndarray | None, classes: tuple[str, ...], field: str) -> str | None:
    """A figure read off the test confusion matrix (rows true, columns predicted)."""
    if matrix is None:
        return None
    per_class = matrix.sum(axis=1)
    recall = np.diag(matrix) / np.maximum(per_class, 1)
    if field == "errors":
        total = int(matrix.sum())
        return f"{total - int(np.trace(matrix)):,} of {total:,}"
    if field in ("worst_class", "best_class"):
        k = int(np.argmin(recall) if field == "worst_class" else np.argmax(recall))
        return f"{classes[k]} ({format_percent(recall[k])} recognised)"
    if field == "top_confusion":
        off = matrix * (1 - np.eye(len(matrix), dtype=matrix.dtype))
        true, predicted = np.unravel_index(int(np.argmax(off)), off.shape)
        return (f"{classes[true]} taken for {classes[predicted]} "
                f"({int(off[true, predicted]):,} of {int(per_class[true]):,} {classes[true]} images)")
    raise ValueError(field)
