"""The explorer page in a real browser: headless Chromium (Debian's `chromium`) driven by Playwright for Python
through its executable path. The page is opened, its controls are moved as a user moves them, and the pixels
the browser decoded are checked: a new seed changes them, psi = 0 gives one image for every seed, the class
selector changes a conditional network's output, the snapshot picker shows the chosen file, a StyleGAN3
translation moves the content. Screenshots go to $SG2_SCREENSHOT_DIR (docs/img for the docs), else a temp dir.

infra/install/browser.sh installs what this needs (chromium via apt-get, playwright via pip); without them the
module is skipped with that reason, or fails with it under SG2_REQUIRE_BROWSER=1 (what `make test` sets once it
has installed them). Playwright's own browser download is never used."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.browser import CHROMIUM, MISSING, needs_browser, sync_playwright
from tests.test_explore import SG3_RES, SNAPSHOTS, make_nets, reference, serving

pytestmark = needs_browser


@pytest.fixture(scope="module")
def nets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return make_nets(tmp_path_factory.mktemp("explore-browser"))


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = Path(os.environ.get("SG2_SCREENSHOT_DIR") or tmp_path_factory.mktemp("screenshots"))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture(scope="module")
def page(nets) -> Iterator[Any]:
    """The page for the run folder (conditional StyleGAN2, three snapshots) beside a StyleGAN3 network."""
    if MISSING is not None:
        pytest.fail(f"SG2_REQUIRE_BROWSER=1 but {MISSING}")
    with serving(network=str(nets["run"]), compare=str(nets["sg3"]), batch_window_ms=5.0) as (_, url), \
            sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True,
                                    args=["--disable-gpu", "--disable-dev-shm-usage", "--no-sandbox"])
        pg = browser.new_page(viewport={"width": 1400, "height": 1000})
        errors: list[str] = []
        pg.on("pageerror", lambda exc: errors.append(str(exc)))
        pg.goto(url + "/")
        settle(pg)
        yield pg
        browser.close()
        assert not errors, errors


def settle(page: Any) -> None:
    """Wait until every image on the page shows the latest settings."""
    page.wait_for_function("() => window.explorer && window.explorer.settled()", timeout=30_000)


def pixels(page: Any, image_id: str) -> np.ndarray:
    """The image as the browser decoded it, at its own size: [H, W, 3] int."""
    d = page.evaluate("id => window.explorer.pixels(id)", image_id)
    return np.asarray(d["data"], dtype=int).reshape(d["height"], d["width"], 4)[:, :, :3]


def status(page: Any, image_id: str) -> str:
    return page.get_attribute(f"#{image_id}", "data-status")


def test_a_new_seed_changes_the_pixels(page, shots):
    assert status(page, "main-0") == "ready" and status(page, "main-1") == "ready"
    before = pixels(page, "main-0")
    page.fill("#seed", "5")
    settle(page)
    after = pixels(page, "main-0")
    assert np.abs(after - before).max() > 10
    page.click("#seed-inc")  # + one step
    settle(page)
    assert page.input_value("#seed") == "6" and np.abs(pixels(page, "main-0") - after).max() > 10
    assert "render" in page.inner_text("figure:has(#main-0) figcaption")  # the latency is on the page
    page.screenshot(path=str(shots / "explorer.png"), full_page=True)


def test_psi_zero_gives_one_image_for_every_seed(page):
    page.fill("#psi-num", "0")
    page.fill("#seed", "11")
    settle(page)
    first = pixels(page, "main-0")
    page.fill("#seed", "4242")
    settle(page)
    assert np.abs(pixels(page, "main-0") - first).max() <= 1
    page.fill("#psi-num", "1")
    settle(page)
    assert np.abs(pixels(page, "main-0") - first).max() > 10


def test_the_class_selector_changes_the_output(page):
    page.select_option("#class", "0")
    settle(page)
    zero = pixels(page, "main-0")
    page.select_option("#class", "2")
    settle(page)
    assert np.abs(pixels(page, "main-0") - zero).max() > 10


def test_the_snapshot_picker_loads_the_chosen_file(page, nets):
    page.fill("#seed", "6")
    page.select_option("#class", "1")
    page.select_option("#snap-0", SNAPSHOTS[0])
    settle(page)
    oldest = pixels(page, "main-0")
    assert np.abs(oldest - reference(nets["run"] / SNAPSHOTS[0], 6, cls=1)).max() <= 1
    page.select_option("#snap-0", SNAPSHOTS[-1])
    settle(page)
    assert np.abs(pixels(page, "main-0") - reference(nets["run"] / SNAPSHOTS[-1], 6, cls=1)).max() <= 1
    assert np.abs(pixels(page, "main-0") - oldest).max() > 10


def test_a_stylegan3_translation_moves_the_content(page, shots):
    page.fill("#seed", "5")
    settle(page)
    a = pixels(page, "main-1")
    page.fill("#tx-num", str(4 / SG3_RES))   # 4 px right
    page.fill("#ty-num", str(-2 / SG3_RES))  # 2 px up
    settle(page)
    b = pixels(page, "main-1")
    m = 6  # border pixels influenced by the padding of the feature maps
    assert np.abs(b[m : -m - 2, m + 4 : -m] - a[m + 2 : -m, m : -m - 4]).max() <= 1
    assert np.abs(b[m:-m, m:-m] - a[m:-m, m:-m]).max() > 10
    page.check("#fft")
    settle(page)
    assert pixels(page, "main-1").shape == (SG3_RES, 2 * SG3_RES, 3)  # [image | spectrum]
    page.screenshot(path=str(shots / "explorer-sg3-fft.png"), full_page=True)
    page.uncheck("#fft")
    page.click("#transform-reset")
    settle(page)
    assert np.abs(pixels(page, "main-1") - a).max() <= 1


def test_interpolation_style_mixing_and_training_panels(page, shots, nets):
    page.fill("#seed2", "9")
    page.fill("#t-num", "1")
    settle(page)
    page.fill("#seed", "9")
    settle(page)
    assert np.abs(pixels(page, "interp-0") - pixels(page, "main-0")).max() <= 1  # t = 1 is the other seed
    page.click("#mix-panel summary")
    settle(page)
    cells = page.locator("table.mix[data-net='0'] img")
    assert cells.count() == 3 + 3 + 9  # column sources, row sources, mixes (rows/cols of the defaults)
    assert all(status(page, f"mix-0-{i}-{j}") == "ready" for i in range(3) for j in range(3))
    assert np.abs(pixels(page, "mix-0-0-0") - pixels(page, "mix-0-r0")).max() > 0
    page.screenshot(path=str(shots / "explorer-mixing.png"), full_page=True)
    page.click("#mix-panel summary")  # closed again
    page.click("#strip-panel summary")  # the seed across the run's snapshots
    settle(page)
    assert page.locator("#strip-rows img").count() == len(SNAPSHOTS)
    strip = [pixels(page, f"strip-0-{i}") for i in range(len(SNAPSHOTS))]
    assert np.abs(strip[0] - reference(nets["run"] / SNAPSHOTS[0], 9, cls=1)).max() <= 1
    assert np.abs(strip[0] - strip[-1]).max() > 10
    page.click("#strip-panel summary")
    page.click("#play")
    page.wait_for_timeout(600)
    page.click("#play")
    settle(page)
    assert page.input_value("#t-num") != "1"  # the loop moved t
