"""The default lesson in a real browser: every step's URL and every view it links to, each
opened in a fresh browser context (a new visitor) against one `streamlit run` server.

    .venv/bin/python -m pytest tests/test_browser_lesson.py -q -s
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlencode, urlparse

import pytest
from browser_util import CHROMIUM, LAUNCH_ARGS, REPO, TIMEOUT_MS, missing_reason, streamlit_server

from cifar_core.experiments import EXPERIMENTS
from cifar_core.lessons import LESSONS_DIR, load_lessons

try:
    from playwright.sync_api import sync_playwright
except ImportError:  # the browser fixture skips, saying why
    sync_playwright = None

pytestmark = pytest.mark.browser

LESSON = load_lessons([LESSONS_DIR], pages={p.stem for p in (REPO / "app_pages").glob("*.py")})[0][0]
HEADINGS = {"dataset": "Dataset", "model": "Model", "evaluate": "Evaluate", "predict": "Predict",
            "experiments": "Experiments"}
# What only that view shows, by page and its section (or mode).
CONTENT = {
    ("dataset", "images"): ".st-key-dataset-grid img",
    ("dataset", "classes"): ".st-key-dataset-class_counts .main-svg",
    ("dataset", "augmentation"): ".st-key-dataset-aug_kind",
    ("dataset", "channel-order-mistake"): '[data-testid="stCode"]',
    ("evaluate", "mistakes"): ".st-key-evaluate-true",
    ("evaluate", "per-class"): ".st-key-evaluate-per_class_bars .main-svg",
    ("evaluate", "through-training"): '.st-key-evaluate-epoch_accuracy, [data-testid="stAlertContentInfo"]',
    ("evaluate", None): ".st-key-evaluate-confusion .main-svg",
    ("predict", "camera"): '[data-testid="stCameraInput"]',
    ("predict", "test"): ".st-key-predict-n",
    ("model", None): '[data-testid="stDataFrame"]',
    ("experiments", None): '[class*="st-key-experiments-curves-shipped-"] .main-svg',
}
QUIET = "() => document.querySelector('[data-testid=\"stApp\"]')?.dataset.testScriptState === 'notRunning'"
SHOTS = REPO / "artifacts" / "screenshots" / "lesson"


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


@pytest.fixture(scope="module")
def server(cifar_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    tmp = tmp_path_factory.mktemp("lesson-browser")
    with streamlit_server(cifar_root, tmp / "runs", tmp / "server.log",
                          extra_env={"CIFAR_AUTO_DOWNLOAD": "0"}) as url:
        yield url


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    if reason := missing_reason():
        pytest.skip(reason)
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=LAUNCH_ARGS)
        yield chromium
        chromium.close()


def fresh_page(browser: object, url: str) -> object:
    """A new visitor: its own browser context, so its own Streamlit session."""
    page = browser.new_context(viewport={"width": 1280, "height": 720}).new_page()
    page.set_default_timeout(TIMEOUT_MS)
    page.goto(url)
    return page


def check_choice(page: object, view: str, name: str, value: str) -> None:
    """The widget that ``name`` sets shows ``value``."""
    if name in ("section", "tab"):
        selected = page.locator('[data-testid="stMain"] [role="tab"][aria-selected="true"]')
        selected.first.wait_for()
        assert any(value in slug(text) for text in selected.all_inner_texts()), (name, value)
        return
    box = page.locator(f".st-key-{view}-{'name' if name == 'experiment' else name}").first
    if name in ("split", "mode"):
        checked = box.locator("label:has(input:checked)").inner_text().lower()
        assert value[:3] in checked, (name, value, checked)
        return
    # A select box shows its choice in an attribute of its button, not as text.
    expected = {"run": value, "preset": f"{value}:"}.get(name) or EXPERIMENTS[value].title
    box.locator("button").first.wait_for()
    assert expected in box.evaluate("e => e.innerHTML"), (name, value)


def test_every_step_and_every_view_of_the_default_lesson_opens_from_its_url(browser: object,
                                                                             server: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    for number, step in enumerate(LESSON.steps, start=1):
        page = fresh_page(browser, f"{server}/lesson?step={number}&present=1")
        page.get_by_role("heading", name=f"{number}. {step.title}").wait_for()
        assert page.locator('[data-testid="stSidebar"]').count() == 0, "the presenter view has no sidebar"
        page.context.close()

    links = {(link.page, link.params) for step in LESSON.steps for link in step.links}
    for view, params in sorted(links):
        query = dict(params)
        page = fresh_page(browser, f"{server}/{view}?{urlencode(query)}")
        page.get_by_role("heading", name=HEADINGS[view], exact=True).wait_for()
        content = CONTENT.get((view, query.get("section", query.get("mode"))), CONTENT.get((view, None)))
        page.locator(content).first.wait_for()
        page.wait_for_function(QUIET)
        for name, value in query.items():
            check_choice(page, view, name, value)
        assert not page.locator(':text("link_off")').count()
        assert not page.locator('[data-testid="stException"]').count(), (view, query)
        # The URL still names this view once the page has written it back.
        page.wait_for_function(
            "q => Object.entries(q).every(([k, v]) => new URLSearchParams(location.search).get(k) === v)",
            arg=query)
        assert {k: v[0] for k, v in parse_qs(urlparse(page.url).query).items() if k in query} == query
        page.screenshot(path=str(SHOTS / f"{view}-{slug(urlencode(query))}.png"))
        page.context.close()


def test_a_link_in_the_presenter_view_leads_there_and_back(browser: object, server: str) -> None:
    page = fresh_page(browser, f"{server}/lesson?step=9&present=1")
    page.get_by_role("link", name="The baseline's scores per class").click()
    page.locator(".st-key-evaluate-per_class_bars .main-svg").first.wait_for()
    assert page.locator('[data-testid="stSidebar"]').count() == 0
    page.get_by_role("button", name="Link to this view").click()
    link = page.locator('[data-testid="stCode"]').first
    link.wait_for()
    assert re.search(r"/evaluate\?.*section=per-class", link.inner_text()), link.inner_text()
    page.keyboard.press("Escape")
    page.get_by_role("link", name="Back to the lesson").click()
    page.get_by_role("heading", name="9. The results and the mistakes").wait_for()
    page.get_by_role("button", name="Next").click()
    page.get_by_role("heading", name="10. Your own photos").wait_for()
    page.wait_for_function("() => new URLSearchParams(location.search).get('step') === '10'")
    page.context.close()
