"""`convirt serve` end to end in a real headless browser: Debian's Chromium driven by Selenium through the system's
chromedriver (nothing is downloaded or installed here). Type a query, wait for the grid, check the k hits against
the ranking computed directly, click the planted image, check that its near-duplicate heads the similar-images grid,
see the Grad-CAM overlay and zero-shot scores, and take a screenshot.

Skips with the reason when Chromium, chromedriver or Selenium is missing; with ``CONVIRT_REQUIRE_BROWSER=1`` (set by
``.ci/run``, which installs them) it fails instead, so CI cannot pass without running it.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from PIL import Image

pytest.importorskip("fastapi", reason="the app extra is not installed (pip install -e '.[app]')")

from convirt.app.explorer import Explorer, ExplorerSettings
from convirt.app.server import background_server, create_app
from serve_fixtures import DUPLICATE, PLANTED, image_ranking, index_collection, text_ranking
from test_retrieval_support import write_tiny_checkpoint

BROWSERS = ("chromium", "chromium-browser", "google-chrome")
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",  # no connections out: this machine's closed network refuses them
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1280,900",
)
QUERY = "A pleural effusion is present."
WAIT = 60  # seconds for a grid to appear (the first query loads nothing, but the CPU may be shared)


def _missing(reason: str):
    if os.environ.get("CONVIRT_REQUIRE_BROWSER"):
        pytest.fail(f"CONVIRT_REQUIRE_BROWSER is set but {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        _missing("selenium is not installed (pip install -e '.[dev]')")
    binary = next((shutil.which(name) for name in BROWSERS if shutil.which(name)), None)
    driver_path = shutil.which("chromedriver")
    if binary is None or driver_path is None:
        _missing("no Chromium and chromedriver found (Debian: apt-get install chromium chromium-driver)")
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(driver_path))
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def site(tmp_path_factory, tiny_bert_dir):
    folder = tmp_path_factory.mktemp("explorer")
    checkpoint = write_tiny_checkpoint(folder / "tiny.ckpt", tiny_bert_dir)
    index = index_collection(folder / "images", checkpoint, folder / "images.index.pt")
    explorer = Explorer(ExplorerSettings(folder / "images.index.pt"))
    with background_server(create_app(explorer)) as url:
        yield {"url": url, "index": index, "checkpoint": checkpoint}
    explorer.close()


def _hits(driver) -> list[tuple[str, str]]:
    return [
        (card.find_element("css selector", ".rank").text, card.find_element("css selector", ".name").text)
        for card in driver.find_elements("css selector", "#results .hit")
    ]


def _wait_for_grid(driver, mode: str, count: int) -> None:
    from selenium.webdriver.support.ui import WebDriverWait

    def ready(d) -> bool:
        grid = d.find_element("id", "results")
        return grid.get_attribute("data-mode") == mode and len(grid.find_elements("css selector", ".hit")) == count

    WebDriverWait(driver, WAIT).until(ready)


def test_search_click_and_explain_in_a_real_browser(browser, site, tmp_path):
    from selenium.webdriver.support.ui import WebDriverWait

    index = site["index"]
    ranking = text_ranking(index, site["checkpoint"], QUERY)
    # enough hits that the planted image or its duplicate is on the page to be clicked
    k = max(4, 1 + min(ranking.index(PLANTED), ranking.index(DUPLICATE)))

    browser.get(site["url"])
    WebDriverWait(browser, WAIT).until(lambda d: "9 images" in d.find_element("id", "summary").text)
    k_box = browser.find_element("id", "k")
    k_box.clear()
    k_box.send_keys(str(k))
    browser.find_element("id", "query").send_keys(QUERY)
    browser.find_element("id", "search").click()
    _wait_for_grid(browser, "text", k)
    assert _hits(browser) == [(f"#{i + 1}", name) for i, name in enumerate(ranking[:k])]
    assert browser.find_element("id", "results-title").text == f"Text: “{QUERY}”"

    clicked = PLANTED if PLANTED in ranking[:k] else DUPLICATE
    twin = DUPLICATE if clicked == PLANTED else PLANTED
    row = index.paths.index(clicked)
    browser.find_element("css selector", f'#results .hit[data-row="{row}"]').click()
    _wait_for_grid(browser, "image", k)
    similar = [name for _, name in _hits(browser)]
    assert similar == image_ranking(index, row)[:k] and similar[0] == twin and clicked not in similar
    assert browser.find_element("id", "results-title").text == f"Images similar to {clicked}"

    # the detail panel: Grad-CAM of the text query on the clicked image, and the 8 zero-shot classes
    WebDriverWait(browser, WAIT).until(lambda d: d.find_element("id", "saliency-figure").is_displayed())
    overlay = browser.find_element("id", "saliency-image")
    assert browser.execute_script("return arguments[0].complete && arguments[0].naturalWidth", overlay) > 0
    assert browser.find_element("id", "saliency-caption").text.startswith(f"Grad-CAM for “{QUERY}” (cosine ")
    WebDriverWait(browser, WAIT).until(lambda d: len(d.find_elements("css selector", "#zeroshot tr")) == 8)

    screenshot = tmp_path / "explorer.png"
    assert browser.save_screenshot(str(screenshot))
    with Image.open(screenshot) as picture:
        assert picture.size == (1280, 900) or picture.size[0] >= 1000
    assert screenshot.stat().st_size > 10_000


def test_labels_precision_and_an_empty_query_in_a_real_browser(browser, site):
    from selenium.webdriver.support.ui import Select, WebDriverWait

    index = site["index"]
    browser.get(site["url"])
    WebDriverWait(browser, WAIT).until(lambda d: "9 images" in d.find_element("id", "summary").text)
    browser.find_element("id", "search").click()  # nothing typed
    message = browser.find_element("id", "message")
    WebDriverWait(browser, WAIT).until(lambda d: message.is_displayed())
    assert message.text.startswith("the query is empty")

    row = index.paths.index(PLANTED)
    browser.get(f"{site['url']}?similar={row}&k=5&label=Effusion")  # a view opened from its address
    _wait_for_grid(browser, "image", 5)
    expected = image_ranking(index, row)[:5]
    assert [name for _, name in _hits(browser)] == expected
    assert Select(browser.find_element("id", "label")).first_selected_option.get_attribute("value") == "Effusion"
    relevant = sum(index.labels[index.paths.index(name)] == ["Effusion"] for name in expected)
    WebDriverWait(browser, WAIT).until(lambda d: d.find_element("id", "precision").text)
    assert browser.find_element("id", "precision").text == (
        f"Precision@5 for Effusion: {relevant}/5 = {100 * relevant / 5:.1f} %"
    )
    assert len(browser.find_elements("css selector", "#results .hit.match")) == relevant
    browser.find_element("id", "only").click()  # only this label: the three other Effusion images
    WebDriverWait(browser, WAIT).until(lambda d: len(d.find_elements("css selector", "#results .hit")) == 3)
    assert {name for _, name in _hits(browser)} == {"img1.png", "img5.png", "img7.png"}
    assert Path(browser.current_url).name.endswith("only=true")
