"""Lesson: a walk through the app for a class, one step per URL (``/lesson?step=3``).

Each step says what to look at, links to the view that shows it, asks the class a question
and keeps the answer behind a click. Answers quote measured results by reference
(cifar_core.lessons), filled in here from the shipped files. ``?present=1`` is the
presenter view: no sidebar, large type, Previous and Next.
"""

from __future__ import annotations

from pathlib import Path

import streamlit as st
from streamlit.delta_generator import DeltaGenerator

import app_views
from app_figures import arms_curves_figure, confusion_figure, training_curves_figure
from cifar_core.experiments import RESULTS_FILE, summaries_from_record
from cifar_core.lessons import Figure, Lesson, Link, MeasuredValues, Step, load_lessons
from cifar_core.runs import MODELS_DIR

PAGES = {path.stem for path in Path(__file__).parent.glob("*.py")}  # what links may open
FIGURE_HEIGHT = 430  # beside the text, within a 1280 x 720 projector's screen


@st.cache_resource(max_entries=4, show_spinner=False)
def _measured(version: tuple) -> MeasuredValues:
    return MeasuredValues()


def measured() -> MeasuredValues:
    """The shipped results, read again whenever a results file or a bundled model changes
    (a model retrained in place must never show its old figures)."""
    files = [RESULTS_FILE, *sorted(MODELS_DIR.glob("*/metrics.json")),
             *sorted(MODELS_DIR.glob("*/history.csv"))]
    return _measured(tuple((str(f), f.stat().st_mtime_ns) for f in files if f.exists()))


def link_params(link: Link, lesson: Lesson, number: int) -> dict[str, str]:
    """The link's view; in the presenter view also the way back to this step."""
    if not app_views.presenting():
        return link.query
    return {**link.query, app_views.PRESENT: "1", "lesson": lesson.id, "step": str(number)}


def draw_figure(figure: Figure, values: MeasuredValues) -> None:
    key = f"lesson.figure.{figure.kind}.{figure.name}.{figure.what}"
    if figure.kind == "experiment":
        record = values.results.get(figure.name)
        if not record:
            st.caption(f"The experiment '{figure.name}' has no shipped results yet.")
            return
        st.caption(f"{record['title']} (validation accuracy per epoch)")
        st.plotly_chart(arms_curves_figure([(s.label, s.history) for s in summaries_from_record(record)]),
                        key=key, height=FIGURE_HEIGHT - 60)
        return
    run = values.runs.get(figure.name)
    if run is None:
        st.caption(f"No bundled model '{figure.name}' on this server.")
    elif figure.what == "confusion" and (matrix := run.test_confusion()) is not None:
        st.plotly_chart(confusion_figure(matrix, run.classes, title=f"Model '{run.name}', test set"),
                        key=key, height=FIGURE_HEIGHT)
    elif figure.what in ("accuracy", "loss") and run.history:
        st.plotly_chart(training_curves_figure(run.history, figure.what, run.metrics.best_epoch or None),
                        key=key, height=FIGURE_HEIGHT - 60)
    else:
        st.caption(f"Model '{run.name}' has no {figure.what} figures yet.")


def draw_step(lesson: Lesson, step: Step, number: int, values: MeasuredValues) -> None:
    """The step's text, links and question; its figures beside them on a projector (the
    whole width is the page's there), else under them."""
    st.header(f"{number}. {step.title}", anchor=False)
    beside = step.figures and app_views.presenting()
    text, figures = st.columns([3, 2], gap="large") if beside else (st.container(), st.container())
    with text:
        st.markdown(values.fill(step.body))
        for link in step.links:
            st.page_link(f"app_pages/{link.page}.py", label=link.label, icon=":material/open_in_new:",
                         query_params=link_params(link, lesson, number))
        with st.container(border=True, key="lesson.question"):
            st.markdown(f"**:material/help: Question for the class.** {values.fill(step.question)}")
            with st.expander("Answer", icon=":material/visibility:"):
                st.markdown(values.fill(step.answer))
    for figure in step.figures:
        with figures:
            draw_figure(figure, values)


def go(delta: int, last: int) -> None:
    """Previous / Next: a click moves the step; the URL follows when the page has run."""
    st.session_state["lesson.step"] = min(max(st.session_state.get("lesson.step", 1) + delta, 1), last)


def draw_navigation(lesson: Lesson, back: DeltaGenerator, chooser: DeltaGenerator,
                    forward: DeltaGenerator) -> int:
    """Previous, the step chooser, Next; returns the step to show (1-based)."""
    last = len(lesson.steps)
    st.session_state.setdefault("lesson.step", 1)
    number = chooser.selectbox("Step", range(1, last + 1), key="lesson.step",
                               format_func=lambda n: f"{n} of {last}: {lesson.steps[n - 1].title}")
    back.button("Previous", icon=":material/arrow_back:", key="lesson.previous", width="stretch",
                on_click=go, args=(-1, last), disabled=number <= 1)
    forward.button("Next", icon=":material/arrow_forward:", key="lesson.next", width="stretch",
                   on_click=go, args=(1, last), disabled=number >= last, type="primary")
    return number


def draw_mode_switch(lesson: Lesson, number: int) -> None:
    here = {"lesson": lesson.id, "step": str(number)}
    if app_views.presenting():
        st.page_link("app_pages/lesson.py", label="Leave the presenter view",
                     icon=":material/close_fullscreen:", query_params=here)
    else:
        st.page_link("app_pages/lesson.py", label="Presenter view (for a projector)",
                     icon=":material/slideshow:", query_params={**here, app_views.PRESENT: "1"})


# --- the page ----------------------------------------------------------------------------

lessons, errors = load_lessons(pages=PAGES)
by_id = {lesson.id: lesson for lesson in lessons}


def chosen_lesson() -> Lesson | None:
    return by_id.get(st.session_state.get("lesson.id"), lessons[0] if lessons else None)


def step_options() -> dict[str, int]:
    lesson = chosen_lesson()
    return {str(n): n for n in range(1, len(lesson.steps) + 1)} if lesson else {}


for err in errors:  # a line each on the projector, in full for whoever fixes the file
    message = f"Lesson file **{err.path}** was not loaded: line {err.line}: {err.message}"
    if app_views.presenting():
        st.caption(message)
    else:
        st.warning(message, icon=":material/error:")
if not lessons:
    st.title("Lesson")
    st.info("No lessons found: put a Markdown lesson in the lessons/ folder (lessons/README.md "
            "describes the format).")
    st.stop()
# Rows made before the URL seeds the widgets, which are drawn into them afterwards.
presenting = app_views.presenting()
heading, choice = (None, None) if presenting else st.columns([3, 2], vertical_alignment="bottom")
back, chooser, forward, link = st.columns([2, 7, 2, 3], vertical_alignment="bottom")
app_views.sync("lesson", link_in=link, lesson=app_views.choice("lesson.id", by_id),
               step=app_views.Param("lesson.step", step_options))
lesson = chosen_lesson()
if heading is not None:
    heading.title("Lesson", anchor=False)
    if len(lessons) > 1:
        choice.selectbox("Lesson", list(by_id), key="lesson.id", format_func=lambda i: by_id[i].title)
    else:
        choice.markdown(f"**{lesson.title}**")
if st.session_state.get("lesson.step", 1) > len(lesson.steps):
    st.session_state["lesson.step"] = 1  # another lesson, with fewer steps
number = draw_navigation(lesson, back, chooser, forward)
if number == 1 and lesson.summary:
    st.caption(lesson.summary)
draw_step(lesson, lesson.steps[number - 1], number, measured())
draw_mode_switch(lesson, number)
