"""`detcrop ui` in a real headless Chromium, step by step as a beginner uses it.

Debian's `chromium` (installed by `make test`) driven by Playwright; Playwright's own browser
download is never used. The camera is Chromium's fake device. No request may leave
127.0.0.1. With DETCROP_SCREENSHOTS=DIR each step is saved as a small PNG in DIR (the README's
screenshots come from `DETCROP_SCREENSHOTS=tests/pipeline/ui_screenshots`), and the model is
trained with the page's real defaults instead of the fast test backbone.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream"]
SHARED_PHOTOS = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "watches-brands"
CLASSES = ("rolex", "seiko")
SCREENSHOTS = os.environ.get("DETCROP_SCREENSHOTS")


def _require(condition: bool, why: str) -> None:
    """Skip on a developer's machine without the browser; fail in CI, where `make test` installs it."""
    if not condition:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{why}; `make test` installs it (apt-get install chromium), so CI must have it")
        pytest.skip(why, allow_module_level=True)


_require(CHROMIUM.is_file(), f"{CHROMIUM} not found (apt-get install chromium)")
try:
    import uvicorn
    from playwright.sync_api import expect, sync_playwright
except ImportError as error:  # pragma: no cover - the test and ui extras are installed by make
    _require(False, f"{error.name} is not installed (pip install -e '.[test,ui]')")

# Each step waits up to 30 s for what it expects (5 s by default): a shared 2-core machine
# can take that long to decode and store a batch of photos.
expect.set_options(timeout=30_000)

from detcrop.pipeline.ui.app import create_app  # noqa: E402
from ui_helpers import fast_training  # noqa: E402


def _photos(tmp_path: Path) -> dict[str, list[Path]]:
    """Seven photos per class: real watch photos when ../shared/data is there, else drawn ones."""
    if SHARED_PHOTOS.is_dir():
        return {name: sorted((SHARED_PHOTOS / name).glob("*.jpg"))[:7] for name in CLASSES}
    rng = np.random.default_rng(0)
    photos = {}
    for index, name in enumerate(CLASSES):
        photos[name] = []
        for number in range(7):
            image = np.full((96, 128, 3), (40, 90, 200) if index else (200, 160, 40), np.uint8)
            image = np.clip(image + rng.integers(-30, 30, image.shape), 0, 255).astype(np.uint8)
            path = tmp_path / "photos" / name / f"{name}-{number}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image).save(path)
            photos[name].append(path)
    return photos


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture()
def server(tmp_path):
    """`detcrop ui`'s app served by uvicorn on 127.0.0.1 in a thread; yields its base URL."""
    overrides = {"cache_dir": str(tmp_path / "cache")} if SCREENSHOTS else fast_training(tmp_path / "cache")
    app = create_app(tmp_path / "project", train_overrides=overrides)
    port = _free_port()
    uvicorn_server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=uvicorn_server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not uvicorn_server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "uvicorn did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    app.state.training.join(60)
    uvicorn_server.should_exit = True
    thread.join(30)


@pytest.fixture()
def page(server):
    """A Chromium page with a fake camera; records every request the browser makes."""
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        context = browser.new_context(viewport={"width": 1100, "height": 900})
        context.grant_permissions(["camera"], origin=server)
        requests: list[str] = []
        context.on("request", lambda request: requests.append(request.url))
        # Anything not for the page's own server is stopped (and still recorded above).
        context.route(lambda url: not _is_local(url, server), lambda route: route.abort())
        browser_page = context.new_page()
        browser_page.requests = requests
        yield browser_page
        context.close()
        browser.close()


def _wait_for_camera(page, timeout: float = 15) -> None:
    """Until the camera preview shows frames. Polled from here: `wait_for_function` evaluates its
    predicate as a string inside the page, which the page's CSP (no eval) refuses."""
    video = page.locator("#camera-video")
    deadline = time.monotonic() + timeout
    while not video.evaluate("element => element.videoWidth > 0"):
        if time.monotonic() > deadline:
            raise AssertionError("the camera preview showed no frame")
        time.sleep(0.1)


def _is_local(url: str, server: str) -> bool:
    """The page's own server, or an image the page made in memory (a preview of a chosen photo)."""
    return url.startswith((server + "/", f"blob:{server}/", "data:"))


def _screenshot(page, name: str) -> None:
    """Save the page as a small PNG (600 px wide, 128 colours) when DETCROP_SCREENSHOTS is set."""
    if not SCREENSHOTS:
        return
    folder = Path(SCREENSHOTS)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    image = Image.open(path).convert("RGB")
    image = image.resize((600, round(image.height * 600 / image.width)), Image.Resampling.LANCZOS)
    image.quantize(colors=128, method=Image.Quantize.MAXCOVERAGE).save(path, optimize=True)


def test_beginners_flow(page, server, tmp_path):
    photos = _photos(tmp_path)
    page.goto(server)
    expect(page.locator("#model-info")).to_have_text("No model yet: train one first.")

    # 1. Two classes, their names shown big.
    for name in CLASSES:
        page.fill("#new-class", name)
        page.click("#add-class button")
        expect(page.locator(f'.class-card[data-class="{name}"] .class-name')).to_have_value(name)
    expect(page.locator("#train-button")).to_be_disabled()

    # 2. Six photos each (uploaded several at once), then one camera shot.
    for name in CLASSES:
        card = page.locator(f'.class-card[data-class="{name}"]')
        card.locator("input.upload-input").set_input_files([str(path) for path in photos[name][:6]])
        expect(card.locator(".thumb img")).to_have_count(6)
    expect(page.locator(".class-count.short")).to_have_count(0)
    _screenshot(page, "1-classes")
    rolex = page.locator('.class-card[data-class="rolex"]')
    rolex.locator(".camera-button").click()
    _wait_for_camera(page)
    _screenshot(page, "2-camera")
    page.click("#camera-capture")
    expect(rolex.locator(".thumb img")).to_have_count(7)
    expect(page.locator("#camera-message")).to_have_text("Captured.")
    page.click("#camera-close")

    # 3. Train three epochs: one chart point per epoch and series.
    expect(page.locator("#train-button")).to_be_enabled()
    page.fill("#setting-epochs", "3")
    page.click("#train-button")
    expect(page.locator("#train-message")).to_contain_text("Trained: 3 epochs", timeout=120_000)
    expect(page.locator("#chart circle.acc")).to_have_count(3)
    expect(page.locator("#chart circle.val_acc")).to_have_count(3)
    expect(page.locator("#model-info")).to_contain_text("classes rolex, seiko")
    _screenshot(page, "3-trained")

    # 4. Test a photo it has not seen: one bar per class and the three block answers.
    page.set_input_files("#test-file", str(photos["seiko"][6]))
    expect(page.locator("#bars .bar")).to_have_count(len(CLASSES), timeout=60_000)  # loads the model first
    top = page.locator("#test-top").inner_text()
    assert top in CLASSES
    expect(page.locator("#block-result")).to_have_text(top)
    page.select_option("#block-class-2", top)
    expect(page.locator("#block-is")).to_have_text("true")
    _screenshot(page, "4-test")

    # Nothing left this computer.
    assert page.requests and all(_is_local(url, server) for url in page.requests), \
        [url for url in page.requests if not _is_local(url, server)]


def test_find_the_object_first_shows_the_box(page, server, shared_data):
    """With the switch on, each added photo goes through the offline SSD; the page draws its box."""
    watches = shared_data / "caltech-watch" / "watch"
    page.goto(server)
    page.fill("#new-class", "watch")
    page.click("#add-class button")
    card = page.locator('.class-card[data-class="watch"]')
    expect(card).to_be_visible()
    page.check("#find-object")
    expect(page.locator("#classes-message")).to_contain_text("detector", timeout=30_000)
    # image_0019 is a watch the SSD calls a clock (0.996); in image_0004 it finds none.
    card.locator("input.upload-input").set_input_files([str(watches / "image_0019.jpg"),
                                                        str(watches / "image_0004.jpg")])
    expect(page.locator("#detections svg")).to_have_count(2, timeout=120_000)  # loads the detector first
    expect(page.locator("#detections svg rect")).to_have_count(1)
    expect(card.locator(".thumb.whole .badge")).to_have_count(1)
    expect(card.locator(".thumb img")).to_have_count(2)
    _screenshot(page, "5-find-object")
    assert all(_is_local(url, server) for url in page.requests)


def test_rename_delete_image_and_class(page, server, tmp_path):
    """The editing controls: rename by typing over the big name, X on a thumbnail, delete a class."""
    photos = _photos(tmp_path)
    page.goto(server)
    page.fill("#new-class", "cat")
    page.click("#add-class button")
    card = page.locator('.class-card[data-class="cat"]')
    card.locator("input.upload-input").set_input_files([str(path) for path in photos["rolex"][:2]])
    expect(card.locator(".thumb img")).to_have_count(2)
    expect(card.locator(".class-count")).to_have_text("2 images - add 3 more to train")
    name = card.locator(".class-name")
    name.fill("kitten")
    name.press("Enter")
    card = page.locator('.class-card[data-class="kitten"]')
    expect(card.locator(".thumb img")).to_have_count(2)
    card.locator(".thumb").first.hover()
    card.locator(".thumb .delete").first.click()
    expect(card.locator(".thumb img")).to_have_count(1)
    page.fill("#new-class", "../escape")
    page.click("#add-class button")
    expect(page.locator("#classes-message")).to_contain_text("plain folder name")
    page.once("dialog", lambda dialog: dialog.accept())
    card.locator(".delete-class").click()
    expect(page.locator(".class-card")).to_have_count(0)
    expect(page.locator("#train-reason")).to_have_text("Add at least 2 classes.")
