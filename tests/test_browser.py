"""End to end in a real browser: headless Chromium against `streamlit run streamlit_app.py`.

    .venv/bin/python -m pytest tests/test_browser.py -q -s      (-s prints the timings)

The server reads the tiny synthetic dataset of conftest.py and writes its runs to a
temporary folder. Full-page screenshots of every page go to artifacts/screenshots/.

The README's screenshots come from the same tour on the real CIFAR-10 (a 2,000-image,
2-epoch run), saved as small viewport-sized PNGs in docs/screenshots/:

    CIFAR_SCREENSHOTS_REAL=1 CIFAR10_DIR=/tmp/cifar10 \\
        .venv/bin/python -m pytest tests/test_browser.py -k main_path -q -s

(without CIFAR10_DIR the real data is built from ../shared/datasets, as for the
realdata tests). CIFAR_SCREENSHOTS_SUBSET and CIFAR_SCREENSHOTS_EPOCHS train a larger
run for pictures of a better network; two epochs on 2,000 images reach only 15-20%.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from browser_util import (
    CHROMIUM,
    LAUNCH_ARGS,
    PAGES,
    REPO,
    VIEWPORT,
    AppPage,
    missing_reason,
    png_bytes,
    shrink_png,
    streamlit_server,
)
from conftest import CLASSES

try:
    from playwright.sync_api import expect, sync_playwright
except ImportError:  # the browser fixture skips every test, saying why
    expect = sync_playwright = None

pytestmark = pytest.mark.browser

REAL = os.environ.get("CIFAR_SCREENSHOTS_REAL") == "1"
ARTIFACTS = REPO / "artifacts" / "screenshots"
DOCS = REPO / "docs" / "screenshots"
DOCS_BUDGET = 1_500_000  # bytes, all committed screenshots together


@dataclass(frozen=True)
class Tour:
    subset: int
    epochs: int
    shots: Path
    docs: bool  # viewport-sized, palette PNGs for the README instead of full-page artifacts
    finish_timeout: float


def report(title: str, timings: dict[str, float]) -> None:
    print(f"\n{title}: " + ", ".join(f"{name} {seconds:.2f}s" for name, seconds in timings.items()))


# --- fixtures ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    reason = missing_reason()
    if reason:
        print(f"\n{reason}")
        pytest.skip(reason)

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=LAUNCH_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def data_dir(request: pytest.FixtureRequest) -> Path:
    if REAL:
        given = os.environ.get("CIFAR10_DIR")
        return Path(given) if given else request.getfixturevalue("real_cifar_root")
    return request.getfixturevalue("cifar_root")


@pytest.fixture(scope="module")
def app_url(browser: object, data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    runs = tmp_path_factory.mktemp("browser-runs")
    for old in ARTIFACTS.glob("failed-*.png"):
        old.unlink()
    started = time.perf_counter()
    with streamlit_server(data_dir, runs, ARTIFACTS.parent / "streamlit.log") as url:
        print(f"\nstreamlit healthy after {time.perf_counter() - started:.1f}s at {url}")
        yield url


def new_app(browser: object, url: str, name: str) -> AppPage:
    context = browser.new_context(viewport=VIEWPORT)  # type: ignore[attr-defined]
    return AppPage(context.new_page(), url, name)


def close(app: AppPage, failed_shot: str | None) -> None:
    if failed_shot:
        try:
            app.page.screenshot(path=str(ARTIFACTS / f"failed-{failed_shot}.png"), full_page=True)
        except Exception as err:  # the page may be gone; the test's own error matters more
            print(f"no failure screenshot: {err}")
    app.page.context.close()


# --- what the tour needs ------------------------------------------------------------------------

def upload_picture(data_dir: Path, class_name: str = "ship") -> tuple[str, bytes]:
    """A PNG made from a test image of ``class_name``, enlarged to 128x128 like a small photo."""
    from PIL import Image

    from cifar_core.data import META_FILE, TEST_BATCH, locate, parse_batch, parse_meta, to_images

    folder = locate(data_dir)
    if folder is None or not folder.is_dir():
        return "drawn.png", png_bytes(Image.new("RGB", (128, 128), (40, 90, 200)))
    rows, labels = parse_batch((folder / TEST_BATCH).read_bytes(), TEST_BATCH)
    classes = parse_meta((folder / META_FILE).read_bytes(), META_FILE)
    index = int((labels == classes.index(class_name)).nonzero()[0][0])
    image = Image.fromarray(to_images(rows[index:index + 1])[0])
    return f"{class_name}.png", png_bytes(image.resize((128, 128), Image.Resampling.BICUBIC))


def set_number(app: AppPage, name: str | re.Pattern, value: int) -> None:
    field = app.page.get_by_role("spinbutton", name=name)
    field.fill(str(value))
    field.press("Enter")
    app.wait_quiet()
    assert field.input_value() == str(value)


def shoot(app: AppPage, tour: Tour, name: str, scroll_to: object | None = None) -> None:
    path = tour.shots / f"{name}.png"
    if tour.docs:
        if scroll_to is not None:
            app.scroll_to(scroll_to)
        app.screenshot(path, full_page=False)
        print(f"  {path.relative_to(REPO)}: {shrink_png(path) / 1000:.0f} kB")
    else:
        app.screenshot(path, full_page=True)


def wait_for_progress_after(app: AppPage, before: tuple[int, int], timeout: float = 60.0) -> bool:
    """True once the live counter passes ``before``; False if the run ended first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        position = app.position()
        if position is not None and position > before:
            return True
        if finished_box(app).count():
            return False
        time.sleep(0.2)
    raise AssertionError(f"{app.name}: the live view stayed at or before {before} for {timeout:.0f}s "
                         f"(now {app.progress_texts()})")


def switch_off(app: AppPage, label: str) -> None:
    """Turn a toggle off by clicking its label, as a user does.

    A click that lands while an earlier rerun is still drawing can be undone by that rerun
    (Streamlit redraws the widget with the value the script saw), so it is checked and,
    at most twice, repeated.
    """
    switch = app.page.get_by_role("switch", name=label)
    for _ in range(3):
        if not switch.is_checked():
            break
        app.page.locator('[data-testid="stCheckbox"]', has_text=label).locator("label").first.click()
        app.wait_quiet()
        try:
            expect(switch).not_to_be_checked(timeout=3000)
        except AssertionError:
            continue
    expect(switch).not_to_be_checked()


def settings_line(app: AppPage) -> str:
    """The Train page's one-line summary of the session's configuration."""
    return app.page.locator("p", has_text=" parameters · ").first.inner_text()


def finished_box(app: AppPage):
    return app.page.locator('[data-testid="stAlertContentSuccess"]', has_text=re.compile("finished|stopped"))


# --- the main path ------------------------------------------------------------------------------

def test_main_path(browser: object, app_url: str, data_dir: Path) -> None:
    """Train a tiny run while moving between pages, then read its confusion matrix and a prediction."""
    if REAL:
        tour = Tour(subset=int(os.environ.get("CIFAR_SCREENSHOTS_SUBSET", 2000)),
                    epochs=int(os.environ.get("CIFAR_SCREENSHOTS_EPOCHS", 2)),
                    shots=DOCS, docs=True, finish_timeout=1800)
    else:
        tour = Tour(subset=400, epochs=12, shots=ARTIFACTS, docs=False, finish_timeout=180)
    app = new_app(browser, app_url, "main")
    failed: str | None = "main-path"
    try:
        run_tour(app, tour, data_dir)
        failed = None
    finally:
        close(app, failed)
    if tour.docs:
        sizes = {path.name: path.stat().st_size for path in sorted(DOCS.glob("*.png"))}
        print(f"docs/screenshots: {sum(sizes.values()) / 1000:.0f} kB in {len(sizes)} files")
        assert sum(sizes.values()) < DOCS_BUDGET, sizes


def run_tour(app: AppPage, tour: Tour, data_dir: Path) -> None:
    page = app.page
    idle: dict[str, float] = {"first load (Dataset)": app.open()}
    app.assert_clean()
    shoot(app, tour, "dataset")  # it opens on the images, one row per class
    if not tour.docs:
        page.get_by_role("tab", name="Classes").click()
        page.locator(".st-key-dataset-class_counts .main-svg").first.wait_for()
        shoot(app, tour, "dataset-classes")

    idle["Model"] = app.goto("Model")
    app.assert_clean()
    assert app.metric("Total params") == "167,818"
    shoot(app, tour, "model")
    idle["Dataset"] = app.goto("Dataset")
    idle["Train"] = app.goto("Train")
    app.assert_clean()
    report("render, idle (first visits)", idle)

    # Start a run and time the first signs of life.
    set_number(app, re.compile(r"^Training images"), tour.subset)
    set_number(app, "Epochs", tour.epochs)
    start = time.perf_counter()
    page.locator(".st-key-train-start button").first.click()
    live = page.locator('[data-testid="stProgress"]', has_text=re.compile(r"preparing|epoch \d+/"))
    live.first.wait_for()
    first_view = time.perf_counter() - start
    app.batch_counter().wait_for()
    first_batch = time.perf_counter() - start
    print(f"\nStart clicked -> live view {first_view:.2f}s, first batch counter {first_batch:.2f}s "
          f"({app.progress_texts()[0]})")
    assert page.locator(".st-key-train-start button").first.is_disabled()
    app.assert_clean()
    while (app.position() or (0, 0)) < (1, 3) and not finished_box(app).count():
        time.sleep(0.2)  # a few batches in: the speed and ETA figures are filled in
    shoot(app, tour, "train-live")

    # Leave while it trains, come back: the run went on, and the live view still moves.
    before = app.position()
    assert before is not None, app.progress_texts()
    training = {name: app.goto(name) for name in ("Dataset", "Model", "Train")}
    report("render while training", training)
    back = app.position()
    print(f"counter before leaving {before}, after coming back {back}")
    if back is None:
        assert finished_box(app).count(), "neither progress nor a result after coming back"
        print("the run finished while we were away")
    else:
        assert back > before, (before, back)
        moved = wait_for_progress_after(app, back)
        print(f"live view after return: {'moving' if moved else 'finished meanwhile'} ({app.position()})")
    app.assert_clean()

    box = finished_box(app)
    box.wait_for(timeout=tour.finish_timeout * 1000)
    assert "finished after" in box.inner_text(), box.inner_text()
    run_name = Path(re.search(r"Run folder: (\S+)", box.inner_text()).group(1)).name
    train_acc = {label: app.metric(label) for label in ("Val accuracy", "Test accuracy")}
    print(f"run {run_name} finished: {train_acc}")
    page.locator(".st-key-train-curve-loss .main-svg").first.wait_for()
    app.assert_clean()
    shoot(app, tour, "train", scroll_to=page.get_by_role("heading", name="This run"))

    # Evaluate: this run is chosen, with its accuracy and confusion matrix.
    after: dict[str, float] = {"Evaluate": app.goto("Evaluate")}
    app.assert_clean()
    assert run_name in app.widget_text("evaluate.run")
    accuracy = app.metric("Test accuracy")
    assert re.fullmatch(r"\d{1,3}\.\d%", accuracy), accuracy
    assert page.locator(".st-key-evaluate-confusion .main-svg").first.is_visible()
    print(f"Evaluate: test accuracy {accuracy} ({app.metric('Correct')} correct)")
    shoot(app, tour, "evaluate", scroll_to=page.locator('[data-testid="stMetric"]'))

    # Predict: upload a picture, read the answer.
    after["Predict"] = app.goto("Predict")
    app.assert_clean()
    assert run_name in app.widget_text("predict.run")
    name, raw = upload_picture(data_dir)
    start = time.perf_counter()
    page.locator('.st-key-predict-files input[type="file"]').set_input_files(
        files=[{"name": name, "mimeType": "image/png", "buffer": raw}])
    answer = page.get_by_text(re.compile(r"^Prediction: \w+ \(\d+%\)$"))
    answer.wait_for()
    text = answer.inner_text()
    print(f"Predict: {name} -> {text} ({time.perf_counter() - start:.2f}s after the upload)")
    assert re.match(r"Prediction: (\w+)", text).group(1) in CLASSES
    page.locator('.st-key-predict-top_k-0 .main-svg').first.wait_for()
    app.assert_clean()
    shoot(app, tour, "predict")
    page.get_by_text("Random test images", exact=True).click()
    page.get_by_text(re.compile(r"correct$")).first.wait_for()
    correct = page.get_by_text(re.compile(r"^\d+ of \d+ correct")).inner_text()
    print(f"Predict, random test images: {correct}")
    app.assert_clean()
    shoot(app, tour, "predict-test-images")

    for name in ("Dataset", "Model", "Train"):
        after[name] = app.goto(name)
        app.assert_clean()
    report("render, idle (after the run)", after)


# --- several sessions at once ---------------------------------------------------------------------

@pytest.mark.skipif(REAL, reason="screenshot mode: only the main path runs")
def test_concurrent_sessions(browser: object, app_url: str) -> None:
    """Three sessions while one trains: every page renders, the job cap queues, state stays apart."""
    apps = [new_app(browser, app_url, name) for name in "ABC"]
    a, b, c = apps
    failed = True
    try:
        for app in apps:
            app.open()
            app.assert_clean()

        # A changes its network and turns early stopping off (the run then lasts until stopped).
        a.goto("Model")
        set_number(a, "Dense 1: units", 256)
        expect(a.metric_value("Total params")).not_to_have_text("167,818")
        changed = a.metric("Total params")
        a.page.get_by_role("tab", name="Training").click()
        a.wait_quiet()
        switch_off(a, "Early stopping")
        expect(a.page.get_by_text(re.compile("early_stopping: True → False"))).to_be_visible()
        a.goto("Train")
        settings = settings_line(a)
        assert f"{changed} parameters" in settings and "no early stopping" in settings, settings
        set_number(a, "Epochs", 500)
        a.page.locator(".st-key-train-start button").first.click()
        a.batch_counter().wait_for()

        # Every page in every session while it trains.
        renders: dict[str, list[float]] = {name: [] for name in PAGES}
        for app in (b, c, a):
            for name in (*PAGES[1:], PAGES[0]):
                renders[name].append(app.goto(name))
                app.assert_clean()
                if name == "Model" and app is not a:
                    assert app.metric("Total params") == "167,818", f"{app.name} sees A's model"
                    assert app.page.get_by_text("Exactly the baseline preset.").is_visible()
                if name == "Model" and app is a:
                    assert a.metric("Total params") == changed
        print("\nrender while training, 3 sessions open (B, C, A): " + "; ".join(
            f"{name} " + "/".join(f"{s:.2f}" for s in times) + "s" for name, times in renders.items()))
        slowest = max(s for times in renders.values() for s in times)
        print(f"slowest page render under load: {slowest:.2f}s")

        # B sees A's run; B and C start their own: the cap (1 job) queues them in order.
        b.goto("Train")
        assert b.page.get_by_role("heading", name="A run started in another session").is_visible()
        position = b.position()
        assert position is not None, b.progress_texts()
        assert "167,818 parameters" in settings_line(b)
        wait_for_progress_after(b, position)
        c.goto("Train")
        for app, place in ((b, 1), (c, 2)):
            set_number(app, "Epochs", 1)
            app.page.locator(".st-key-train-start button").first.click()
            app.page.get_by_text(re.compile(f"waiting: number {place} in the queue")).wait_for()
            assert app.page.locator(".st-key-train-start button").first.is_disabled()
            app.assert_clean()
        a.goto("Train")
        others = a.page.get_by_text(re.compile("^Also on this server:")).inner_text()
        print(f"A: {others}; A's run at {a.position()}")
        assert others.count("queued") == 2, others
        assert wait_for_progress_after(a, a.position()), "A's run should still be training"
        c.screenshot(ARTIFACTS / "concurrent-C-queued.png")
        a.screenshot(ARTIFACTS / "concurrent-A-training.png")

        # The queued ones are cancelled before they start; A's run is stopped and saved.
        for app in (b, c):
            app.page.get_by_role("button", name="Cancel", exact=True).click()
            app.page.get_by_text(re.compile("was stopped before any epoch finished")).wait_for()
            app.assert_clean(allow_warnings=True)
        a.page.get_by_role("button", name="Stop", exact=True).click()
        result = finished_box(a)
        result.wait_for(timeout=120_000)
        assert "was stopped after" in result.inner_text(), result.inner_text()
        print(f"A: {result.inner_text().removeprefix('check_circle').strip()}")
        a.assert_clean()
        failed = False
    finally:
        for app in apps:
            close(app, f"concurrent-{app.name}" if failed else None)
