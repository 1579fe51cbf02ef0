"""The Lesson page and views as URLs, driven through the app's entrypoint with AppTest:
every step of the default lesson, every view it links to, and links that ask for too much."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from PIL import Image
from streamlit.testing.v1 import AppTest

from cifar_core.lessons import LESSONS_DIR, LESSONS_ENV, MeasuredValues, Step, load_lessons

APP = str(Path(__file__).resolve().parents[1] / "streamlit_app.py")
PAGES = {path.stem for path in (Path(__file__).resolve().parents[1] / "app_pages").glob("*.py")}
LESSON = load_lessons([LESSONS_DIR], pages=PAGES)[0][0]
LINKS = sorted({(link.page, link.params) for step in LESSON.steps for link in step.links})


def open_view(page: str, query: dict[str, str], at: AppTest | None = None) -> AppTest:
    """``/page?query`` as a fresh browser opens it (or ``at``'s session following a link)."""
    at = at or AppTest.from_file(APP, default_timeout=120)
    for name in list(at.query_params):
        del at.query_params[name]
    at.query_params.update(query)
    at.switch_page(f"app_pages/{page}.py")
    at.run()
    assert not at.exception, [e.message for e in at.exception]
    return at


def notes(at: AppTest) -> list[str]:
    return [c.value for c in at.caption if "link_off" in c.value]


def texts(at: AppTest) -> str:
    return "\n".join(m.value for m in at.markdown)


def test_every_step_of_the_default_lesson_opens_from_its_url() -> None:
    at = None
    for number, step in enumerate(LESSON.steps, start=1):
        at = open_view("lesson", {"step": str(number)}, at)  # a link followed in one session
        check_step(at, number, step)


def check_step(at: AppTest, number: int, step: Step) -> None:
    assert [h.value for h in at.header] == [f"{number}. {step.title}"]
    shown = texts(at)
    answer = MeasuredValues().fill(step.answer)
    assert answer in shown and "{{" not in shown and "not measured" not in shown
    links = at.get("page_link")
    # The default page (Dataset) is served at the root: its links carry no page name.
    assert [(link.proto.page or "dataset", link.proto.label) for link in links][:len(step.links)] == \
        [(link.page, link.label) for link in step.links]
    assert dict(at.query_params) == {"step": str(number)}
    assert not notes(at)


def test_previous_and_next_move_the_step_and_the_url() -> None:
    at = open_view("lesson", {"step": "2"})
    at.button(key="lesson.next").click().run()
    assert at.header[0].value.startswith("3. ") and at.query_params["step"] == "3"
    at.button(key="lesson.previous").click().run()
    at.button(key="lesson.previous").click().run()
    assert at.header[0].value.startswith("1. ") and at.query_params["step"] == "1"
    assert at.button(key="lesson.previous").disabled


def test_the_presenter_view_keeps_its_flag_and_carries_the_step_into_its_links() -> None:
    at = open_view("lesson", {"step": "9", "present": "1"})
    assert not at.title  # the step's own heading is the largest text on the projector
    links = {link.proto.label: link.proto for link in at.get("page_link")}
    matrix = links["The baseline's confusion matrix, test set, mistakes open"]
    assert "present=1" in matrix.query_string and "step=9" in matrix.query_string
    assert "Leave the presenter view" in links
    at.button(key="lesson.next").click().run()
    assert at.query_params["present"] == "1" and at.query_params["step"] == "10"


def test_a_step_opens_in_a_fresh_session_too() -> None:
    check_step(open_view("lesson", {"step": "9"}), 9, LESSON.steps[8])


def test_a_stale_link_falls_back_with_a_note() -> None:
    at = open_view("lesson", {"step": "42", "colour": "blue"})
    assert at.header[0].value.startswith("1. ")
    assert any("step=42" in note for note in notes(at)) and any("colour" in note for note in notes(at))
    assert dict(at.query_params) == {"step": "1"}


def test_a_teachers_lesson_appears_and_a_broken_one_is_named_with_its_line(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "my-class.md").write_text(
        "# Cats and dogs\n\n## Where the baseline fails\nLook at the matrix.\n"
        "Open: [Mistakes](evaluate?run=baseline&section=mistakes&true=cat&predicted=dog)\n"
        "Question: Which is harder?\nAnswer: {{model:baseline.worst_class}}\n")
    (tmp_path / "broken.md").write_text("# Broken\n## Step\nQuestion: q\nAnswer: {{model:baseline.smell}}\n")
    monkeypatch.setenv(LESSONS_ENV, str(tmp_path))
    at = open_view("lesson", {"lesson": "my-class"})
    assert at.header[0].value == "1. Where the baseline fails"
    warning, = at.warning
    assert "broken.md" in warning.value and "line 4" in warning.value and "smell" in warning.value
    assert at.selectbox(key="lesson.id").value == "my-class"
    assert at.selectbox(key="lesson.id").format_func("my-class") == "Cats and dogs"


@pytest.mark.slow
@pytest.mark.parametrize(("page", "params"), LINKS, ids=[f"{p}?{'&'.join('='.join(kv) for kv in q)}"
                                                         for p, q in LINKS])
def test_every_view_the_lesson_links_to_opens_from_its_url(cifar_env: Path, page: str,
                                                           params: tuple[tuple[str, str], ...]) -> None:
    at = open_view(page, dict(params))
    assert not notes(at), notes(at)
    # The view written back to the URL is the one the link named.
    assert {k: at.query_params[k] for k, _ in params} == dict(params)


@pytest.mark.slow
def test_views_follow_their_url_within_a_session_too(cifar_env: Path) -> None:
    at = open_view("evaluate", {"run": "baseline", "split": "test", "section": "per-class"})
    assert at.session_state["evaluate.section"] == "Per class"
    at = open_view("dataset", {"section": "classes"}, at)
    assert at.session_state["dataset.section"] == "Classes"
    # Back to the same view: the page's widgets were forgotten on leaving it, so the link seeds them again.
    at = open_view("evaluate", {"run": "baseline", "split": "test", "section": "per-class"}, at)
    assert at.session_state["evaluate.section"] == "Per class"
    assert at.session_state["evaluate.split"] == "test"
    at = open_view("model", {"preset": "fast"}, at)
    assert at.session_state["model.preset"] == "fast" and at.session_state["model.epochs"] == 12


def test_a_preset_opens_from_its_url_and_an_unknown_one_is_noted() -> None:
    at = open_view("model", {"preset": "fast"})
    assert at.session_state["model.preset"] == "fast" and at.session_state["model.epochs"] == 12
    assert at.query_params["preset"] == "fast" and not notes(at)
    at = open_view("model", {"preset": "huge", "tab": "x"}, at)
    assert any("preset=huge" in n for n in notes(at)) and any("tab" in n for n in notes(at))
    assert dict(at.query_params) == {"preset": "fast"}  # this session's choice stands


@pytest.mark.slow
def test_an_unknown_run_or_section_is_noted_and_the_page_still_draws(cifar_env: Path) -> None:
    at = open_view("evaluate", {"run": "no-such-run", "section": "nothing"})
    assert any("run=no-such-run" in n for n in notes(at)) and any("section=nothing" in n for n in notes(at))
    assert at.query_params["run"] != "no-such-run"


def jpeg(colour: tuple[int, int, int], size: tuple[int, int] = (640, 480)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, colour).save(out, format="JPEG")
    return out.getvalue()


def test_a_camera_photo_is_classified_and_a_bad_one_refused_like_an_upload() -> None:
    at = open_view("predict", {"run": "baseline", "mode": "camera"})
    camera = at.camera_input(key="predict.camera")
    camera.set_value(("image.jpg", jpeg((200, 30, 30)), "image/jpeg")).run()
    assert not at.exception and not at.error
    assert any(m.value.startswith("#### Prediction: ") for m in at.markdown)
    # Not a picture at all, though the browser called it one: the same checks as an upload.
    at.camera_input(key="predict.camera").set_value(("image.jpg", b"\xff\xd8 not a jpeg", "image/jpeg")).run()
    assert not at.exception
    assert len(at.error) == 1 and "image.jpg" in at.error[0].value
