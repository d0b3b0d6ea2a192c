"""The page in a real browser (headless Chromium through selenium): pick images, read the bars it draws."""

from __future__ import annotations

import base64
import io
import os
import shutil
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from conftest import CLASSES, serving

CHROMEDRIVER, CHROMIUM = "/usr/bin/chromedriver", "/usr/bin/chromium"

pytestmark = pytest.mark.skipif(not (Path(CHROMEDRIVER).exists() and Path(CHROMIUM).exists()),
                                reason=f"needs {CHROMEDRIVER} and {CHROMIUM} (Debian: apt install chromium "
                                       "chromium-driver); CI installs them")


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    os.environ["SE_AVOID_STATS"] = "true"  # selenium-manager must not phone home (no network here)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    profile = tmp_path_factory.mktemp("chromium-profile")
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run",
                 f"--user-data-dir={profile}", "--window-size=1280,900"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_script_timeout(30)
    yield driver
    driver.quit()
    shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture(scope="module")
def service(exported_model, tmp_path_factory):
    with serving(exported_model, tmp_path=tmp_path_factory.mktemp("serve")) as running:
        yield running


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> list[Path]:
    root = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(11)
    paths = []
    for i, (w, h) in enumerate([(48, 40), (32, 32), (70, 50)]):
        pixels = rng.integers(0, 100, (h, w, 3), dtype=np.uint8)
        pixels[..., i] += 140
        paths.append(root / f"photo{i}.{'jpg' if i != 1 else 'png'}")
        Image.fromarray(pixels).save(paths[-1])
    return paths


def wait_for(driver, condition, timeout: float = 30):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout).until(lambda d: condition(d))


def shown_predictions(card) -> list[tuple[str, str]]:
    from selenium.webdriver.common.by import By

    return [(row.find_element(By.CSS_SELECTOR, ".cls").text, row.find_element(By.CSS_SELECTOR, ".pct").text)
            for row in card.find_elements(By.CSS_SELECTOR, ".pred")]


def test_picked_images_get_the_bars_predict_answers(browser, service, photos):
    from selenium.webdriver.common.by import By

    browser.get(service.url + "/")
    wait_for(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#classes .chip"))
    chips = [c.text for c in browser.find_elements(By.CSS_SELECTOR, "#classes .chip")]
    assert chips == CLASSES
    card_text = browser.find_element(By.ID, "card").text
    accuracy = httpx.get(service.url + "/model").json()["metrics"]["accuracy"]
    assert f"{accuracy * 100:.1f}%" in card_text and "32 × 32 px" in card_text

    browser.find_element(By.ID, "file").send_keys("\n".join(str(p) for p in photos))
    wait_for(browser, lambda d: len(d.find_elements(By.CSS_SELECTOR, ".result.done")) == len(photos))
    for photo in photos:
        card = browser.find_element(By.CSS_SELECTOR, f'.result[data-image="{photo.name}"]')
        answer = httpx.post(service.url + "/predict", params={"name": photo.name}, content=photo.read_bytes(),
                            headers={"Content-Type": "application/octet-stream"}).json()
        shown = shown_predictions(card)
        assert [c for c, _ in shown] == [p["class"] for p in answer["predictions"]]
        for (_, text), p in zip(shown, answer["predictions"]):
            assert text.endswith("%") and abs(float(text[:-1]) - p["probability"] * 100) <= 0.05 + 1e-9
        # Each bar is as long as its probability.
        widths = browser.execute_script(
            "return [...arguments[0].querySelectorAll('.fill')].map(e => e.style.width)", card)
        assert [float(w[:-1]) for w in widths] == pytest.approx([p["probability"] * 100 for p in answer["predictions"]],
                                                                abs=0.01)


def test_a_file_that_is_not_an_image_shows_the_services_sentence(browser, service, tmp_path):
    from selenium.webdriver.common.by import By

    bogus = tmp_path / "notes.png"
    bogus.write_text("not really a picture")
    browser.get(service.url + "/")
    browser.find_element(By.ID, "file").send_keys(str(bogus))
    card = wait_for(browser, lambda d: d.find_elements(By.CSS_SELECTOR, ".result.failed"))[0]
    assert "notes.png cannot be read as an image" in card.text
    assert not card.find_elements(By.CSS_SELECTOR, ".pred")


def test_a_cards_control_shows_and_hides_where_the_model_looked(browser, service, photos):
    from selenium.webdriver.common.by import By

    photo = photos[0]
    browser.get(service.url + "/")
    browser.find_element(By.ID, "file").send_keys(str(photo))
    card = wait_for(browser, lambda d: d.find_elements(By.CSS_SELECTOR, f'.result.done[data-image="{photo.name}"]'))[0]
    control = card.find_element(By.CSS_SELECTOR, "button.explain")
    assert control.text == "Show where it looked" and not card.find_elements(By.CSS_SELECTOR, "img.overlay")

    control.click()
    overlay = wait_for(browser, lambda d: [img for img in card.find_elements(By.CSS_SELECTOR, "img.overlay")
                                           if d.execute_script("return arguments[0].complete && "
                                                               "arguments[0].naturalWidth > 0", img)])[0]
    assert overlay.is_displayed() and control.text == "Hide"
    answer = httpx.post(service.url + "/explain", params={"name": photo.name}, content=photo.read_bytes(),
                        headers={"Content-Type": "application/octet-stream"}, timeout=60).json()
    assert overlay.get_attribute("src") == answer["overlay"]  # the very PNG /explain answers for this image
    assert browser.execute_script("return arguments[0].naturalWidth", overlay) == Image.open(
        io.BytesIO(base64.b64decode(answer["overlay"].partition(",")[2]))).size[0]

    control.click()
    wait_for(browser, lambda d: not overlay.is_displayed())
    assert control.text == "Show where it looked"
    control.click()  # shown again, from what it fetched the first time
    wait_for(browser, lambda d: overlay.is_displayed())
    assert control.text == "Hide" and len(card.find_elements(By.CSS_SELECTOR, "img.overlay")) == 1
