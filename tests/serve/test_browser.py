"""The page of ``sbir serve`` in a real browser: headless Chromium (selenium, the system's chromium and
chromedriver) draws strokes on the canvas with the mouse, the result grid shows the k photos of the search the
library makes for that drawing, a click on a photo shows its explanation, and a blank drawing shows the server's
message. Skips with the reason when selenium, chromium or chromedriver is absent.

``SBIR_SERVE_SCREENSHOT=PATH`` also saves a screenshot of the page after the search and the click (how
docs/serve.png is made: docs/serve.md)."""

from __future__ import annotations

import base64
import io
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sbir.retrieval.search import open_gallery, search
from sbir.serve.app import create_app
from sbir.utils.device import torch_threads
from tests.helpers import serving

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
TOP_K = 5


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install selenium)")
    for program in (CHROMIUM, CHROMEDRIVER):
        if not Path(program).is_file():
            pytest.skip(f"{program} is absent (apt-get install chromium chromium-driver)")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", "--window-size=1400,1000",
                 f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture(scope="module")
def page(tiny, folder_gallery, browser):
    with torch_threads(1), serving(create_app(tiny.model, open_gallery(folder_gallery), top_k=TOP_K)) as url:
        browser.get(url + "/")
        yield url


def wait(driver, condition, seconds: float = 60):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, seconds).until(condition)


def draw(driver, strokes) -> None:
    """Draw each stroke (points in canvas pixels from the centre) with the mouse: press, move, release."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    canvas = driver.find_element(By.ID, "canvas")
    for stroke in strokes:
        actions = ActionChains(driver, duration=20)
        actions.move_to_element_with_offset(canvas, *stroke[0]).click_and_hold()
        for (x0, y0), (x1, y1) in zip(stroke, stroke[1:]):
            actions.move_by_offset(x1 - x0, y1 - y0)
        actions.release().perform()


def canvas_image(driver) -> Image.Image:
    data = driver.execute_script("return document.getElementById('canvas').toDataURL('image/png');")
    return Image.open(io.BytesIO(base64.b64decode(data.partition(",")[2]))).convert("RGB")


STROKES = [[(-120, -100), (-40, -140), (60, -120), (130, -60)], [(-100, 80), (0, 130), (110, 90)],
           [(-20, -60), (-10, 20), (10, 60)]]


def test_drawing_searches_and_a_click_explains(page, browser, tiny, folder_gallery):
    from selenium.webdriver.common.by import By

    wait(browser, lambda d: "photos of" in d.find_element(By.ID, "gallery").text)
    draw(browser, STROKES)
    drawn = canvas_image(browser)
    assert (np.asarray(drawn.convert("L")) < 128).mean() > 0.005, "the strokes are on the canvas"
    browser.find_element(By.ID, "search").click()
    wait(browser, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#results .result")) == TOP_K
         and "photos, best first" in d.find_element(By.ID, "status").text)
    items = browser.find_elements(By.CSS_SELECTOR, "#results .result")
    assert len(items) == TOP_K
    wait(browser, lambda d: all(d.execute_script("return arguments[0].complete && arguments[0].naturalWidth", img)
                                for img in d.find_elements(By.CSS_SELECTOR, "#results img")))
    from sbir.data.images import fit

    hits = search(tiny.model, open_gallery(folder_gallery), fit(drawn, "sketch", 224), top_k=TOP_K)
    assert [int(item.get_attribute("data-row")) for item in items] == [hit.row for hit in hits]
    assert [item.text.splitlines()[0] for item in items] == [hit.class_name or hit.key for hit in hits]

    items[1].click()
    wait(browser, lambda d: d.find_element(By.ID, "explanation").is_displayed()
         and d.execute_script("return document.getElementById('explanation-picture').naturalWidth") > 0)
    assert browser.find_element(By.ID, "explanation-title").text.startswith(f"#2 {hits[1].class_name or hits[1].key}")
    assert browser.execute_script("return document.getElementById('explanation-synthesis').naturalWidth") == 224
    assert not browser.find_element(By.ID, "error").is_displayed()
    screenshot = os.environ.get("SBIR_SERVE_SCREENSHOT")
    if screenshot:
        browser.save_screenshot(screenshot)


def test_a_blank_drawing_shows_the_servers_message(page, browser):
    from selenium.webdriver.common.by import By

    browser.find_element(By.ID, "clear").click()
    assert browser.find_elements(By.CSS_SELECTOR, "#results .result") == []
    browser.find_element(By.ID, "search").click()
    wait(browser, lambda d: d.find_element(By.ID, "error").is_displayed())
    assert browser.find_element(By.ID, "error").text == "drawing.png: the sketch is blank (one flat colour)"
    assert browser.find_elements(By.CSS_SELECTOR, "#results .result") == []
