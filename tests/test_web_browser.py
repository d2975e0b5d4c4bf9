"""The page in a real browser: ``minisd serve`` on a free loopback port, driven by the system's headless
Chromium through selenium (no browser is downloaded). Skipped, with the reason, where the web extra, selenium
or Debian's chromium and chromium-driver are missing; ``.ci/run`` installs them.

With ``MINISD_SCREENSHOTS=docs/figures/web`` the test also saves the README's screenshots there.
"""

import os
import shutil
import time
from pathlib import Path

import pytest

from minisd.pipelines.png_settings import read_settings

pytest.importorskip("gradio", reason="the web extra is not installed: pip install -e '.[web]'")
pytest.importorskip("selenium", reason="selenium is not installed: pip install -e '.[dev]'")

# A browser's timing depends on what else the machine runs: these run in make test-slow, alone, not beside the
# other worker of make test.
pytestmark = pytest.mark.slow

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
if not (CHROMIUM and CHROMEDRIVER):
    pytest.skip("no system chromium and chromedriver: apt-get install chromium chromium-driver",
                allow_module_level=True)

from selenium import webdriver  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.action_chains import ActionChains  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

from minisd.web.client import ServerProcess  # noqa: E402

PROMPT = "a handwritten digit 5"
STEPS = 40
# The probe's flags: without the background-networking ones, Chromium keeps calling hosts this machine can't reach.
CHROMIUM_FLAGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--no-first-run", "--disable-quic", "--window-size=1400,1500"]
# Every text the status line shows, collected in the page as it changes (a generation takes well under a second).
WATCH_STATUS = """
window.statusSeen = [];
new MutationObserver(() => window.statusSeen.push(document.querySelector('#status').innerText))
  .observe(document.querySelector('#status'), {subtree: true, childList: true, characterData: true});
"""

# True once the gallery holds four pictures and the browser has finished loading every one.
GALLERY_LOADED = """
const images = [...document.querySelectorAll('#gallery img')];
return images.length === 4 && images.every(image => image.complete && image.naturalWidth > 0);
"""


@pytest.fixture(scope="module")
def outputs(tmp_path_factory):
    return tmp_path_factory.mktemp("outputs")


@pytest.fixture(scope="module")
def server(outputs):
    with ServerProcess(["--outputs", str(outputs)]) as running:
        yield running


@pytest.fixture(scope="module")
def downloads(tmp_path_factory):
    return tmp_path_factory.mktemp("downloads")


@pytest.fixture(scope="module")
def browser(downloads):
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={downloads.parent / 'chromium-profile'}")
    options.add_experimental_option("prefs", {"download.default_directory": str(downloads),
                                              "download.prompt_for_download": False})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    yield driver
    driver.quit()


def _wait(browser, condition, seconds=60):
    return WebDriverWait(browser, seconds, poll_frequency=0.05).until(lambda driver: condition())


def _screenshot(browser, name: str) -> None:
    folder = os.environ.get("MINISD_SCREENSHOTS")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        browser.save_screenshot(str(Path(folder) / f"{name}.png"))


def _set_number(browser, selector: str, value) -> None:
    field = browser.find_element(By.CSS_SELECTOR, selector)
    field.send_keys(Keys.CONTROL, "a")
    field.send_keys(str(value), Keys.TAB)


def _status(browser) -> str:
    return browser.find_element(By.ID, "status").text


def test_a_prompt_becomes_a_png_with_its_settings(server, browser, downloads):
    browser.get(server.url)
    _wait(browser, lambda: browser.find_elements(By.CSS_SELECTOR, "#prompt textarea"))
    browser.find_element(By.CSS_SELECTOR, "#prompt textarea").send_keys(PROMPT)
    _set_number(browser, "#steps input[type=number]", STEPS)
    _set_number(browser, "#seed input", 7)
    browser.execute_script(WATCH_STATUS)
    browser.find_element(By.ID, "generate").click()
    _wait(browser, lambda: _status(browser).startswith("done"))

    # Live progress: the status line went through the steps, and the preview shows the last x0 estimate.
    seen = browser.execute_script("return window.statusSeen")
    steps_seen = {line.split(" of ")[0] for line in seen if line.startswith("step ")}
    assert f"step {STEPS}" in steps_seen and len(steps_seen) > 1, seen
    assert browser.find_elements(By.CSS_SELECTOR, "#preview img")

    # The status reads "done" as soon as the server answers; the browser may still be fetching the pictures.
    _wait(browser, lambda: browser.execute_script(GALLERY_LOADED), 30)
    widths = browser.execute_script("return [...document.querySelectorAll('#gallery img')].map(i => i.naturalWidth)")
    assert widths == [28, 28, 28, 28], widths
    # One attention map per token of the prompt, captioned with the token.
    tokens = browser.execute_script(
        "return [...document.querySelectorAll('#attention img')].map(image => image.alt || image.title)")
    _screenshot(browser, "text_to_image")

    links = browser.find_elements(By.CSS_SELECTOR, "#files a[download]")
    assert len(links) == 4
    name = links[0].get_attribute("download")
    links[0].click()
    downloaded = downloads / name
    _wait(browser, lambda: downloaded.is_file() and downloaded.stat().st_size > 0, 30)
    time.sleep(0.2)  # the browser renames the finished download into place
    from PIL import Image

    with Image.open(downloaded) as image:
        assert image.size == (28, 28) and image.mode == "L"
        assert len(set(image.tobytes())) > 10  # a real picture, not a flat field
    settings = read_settings(downloaded)
    assert settings["prompt"] == PROMPT and settings["seed"] == 7 and settings["steps"] == STEPS
    assert settings["model"] == "mnist" and settings["num_images"] == 4 and settings["image_index"] == 0
    assert "5" in tokens and "handwritten" in tokens, tokens


def test_the_page_shows_a_refusal_and_goes_on(server, browser):
    browser.get(server.url)
    _wait(browser, lambda: browser.find_elements(By.CSS_SELECTOR, "#prompt textarea"))
    browser.find_element(By.ID, "generate").click()  # no prompt
    _wait(browser, lambda: "the prompt is empty" in browser.find_element(By.TAG_NAME, "body").text, 30)
    browser.find_element(By.CSS_SELECTOR, "#prompt textarea").send_keys("a handwritten digit 1")
    browser.find_element(By.ID, "generate").click()
    _wait(browser, lambda: _status(browser).startswith("done"))


def test_image_to_image_from_an_upload(server, browser, tmp_path):
    """Upload an image into the editor: the generation redraws it, and the PNGs record the init image."""
    from PIL import Image

    bar = Image.new("L", (28, 28), 0)
    bar.paste(255, (12, 4, 16, 24))
    bar.save(tmp_path / "bar.png")
    browser.get(server.url)
    _wait(browser, lambda: browser.find_elements(By.CSS_SELECTOR, "#prompt textarea"))
    browser.find_element(By.CSS_SELECTOR, "#prompt textarea").send_keys("a handwritten digit 1")
    [accordion] = [b for b in browser.find_elements(By.CSS_SELECTOR, "button") if "Image-to-image" in b.text]
    accordion.click()
    upload = _wait(browser, lambda: browser.find_element(By.CSS_SELECTOR, "#editor input[type=file]"))
    upload.send_keys(str(tmp_path / "bar.png"))
    editor = browser.find_element(By.ID, "editor")
    # The drop zone gives way to the editor's canvas and zoom once the upload has arrived.
    _wait(browser, lambda: "Drop" not in editor.text and "%" in editor.text, 30)
    time.sleep(2)  # the editor takes its picture in asynchronously after showing it; it is uploaded on generate
    browser.find_element(By.ID, "generate").click()
    _wait(browser, lambda: _status(browser).startswith("done"))
    names = [link.get_attribute("download") for link in browser.find_elements(By.CSS_SELECTOR, "#files a[download]")]
    assert "init-image.png" in names, names
    _screenshot(browser, "image_to_image")


def test_the_chapter_tabs(server, browser):
    browser.get(server.url)
    _wait(browser, lambda: browser.find_elements(By.CSS_SELECTOR, "#prompt textarea"))
    browser.find_element(By.CSS_SELECTOR, "#prompt textarea").send_keys("a handwritten digit 2")
    browser.find_element(By.ID, "generate").click()
    _wait(browser, lambda: _status(browser).startswith("done"))

    [tab] = [t for t in browser.find_elements(By.CSS_SELECTOR, "button[role=tab]") if "latent plane" in t.text]
    tab.click()
    plane = _wait(browser, lambda: browser.find_element(By.CSS_SELECTOR, "#plane img"))
    decoded_before = browser.find_element(By.CSS_SELECTOR, "#decoded img").get_attribute("src")
    # A point in the plane's upper left: the sliders move to it and the decoded digit changes.
    ActionChains(browser).move_to_element_with_offset(plane, -plane.size["width"] // 3,
                                                      -plane.size["height"] // 3).click().perform()
    _wait(browser, lambda: browser.find_element(By.CSS_SELECTOR, "#decoded img").get_attribute("src")
          != decoded_before, 30)
    z0 = float(browser.find_element(By.CSS_SELECTOR, "#z0 input[type=number]").get_attribute("value"))
    z1 = float(browser.find_element(By.CSS_SELECTOR, "#z1 input[type=number]").get_attribute("value"))
    assert z0 < -0.5 and z1 > 0.5
    _screenshot(browser, "vae_latent_plane")

    [tab] = [t for t in browser.find_elements(By.CSS_SELECTOR, "button[role=tab]") if "noising" in t.text]
    tab.click()
    browser.find_element(By.ID, "noise-go").click()
    _wait(browser, lambda: len(browser.find_elements(By.CSS_SELECTOR, "#denoised img")) == 8)
    assert len(browser.find_elements(By.CSS_SELECTOR, "#noised img")) == 8
    _screenshot(browser, "diffusion_noising")


def _type_slowly(field, text: str, pause: float = 0.05) -> None:
    """Key by key, as a person types (20 keys a second)."""
    for key in text:
        field.send_keys(key)
        time.sleep(pause)


def _drawings(outputs: Path) -> set[Path]:
    return {folder for folder in outputs.iterdir() if folder.is_dir()}


def _drawn_prompt(browser) -> str:
    return browser.find_element(By.ID, "settings").text


def test_a_few_step_model_draws_as_the_prompt_is_typed(server, browser, outputs):
    browser.get(server.url)
    field = _wait(browser, lambda: browser.find_element(By.CSS_SELECTOR, "#prompt textarea"))
    live = browser.find_element(By.CSS_SELECTOR, "#live input")
    assert not live.is_selected()  # the 20-step teacher draws on Generate only
    before = _drawings(outputs)
    _type_slowly(field, "a handwritten digit 4")
    time.sleep(1.5)
    assert _drawings(outputs) == before

    # Choosing the few-step model brings its own settings, and drawing as you type.
    choice = browser.find_element(By.CSS_SELECTOR, "#model input")
    choice.click()
    choice.send_keys(Keys.CONTROL, "a")
    choice.send_keys("mnist-fast")
    _wait(browser, lambda: browser.find_elements(By.CSS_SELECTOR, "#model li[role=option][aria-label='mnist-fast']"), 10)
    browser.find_element(By.CSS_SELECTOR, "#model li[role=option][aria-label='mnist-fast']").click()
    _wait(browser, lambda: live.is_selected(), 30)
    steps = browser.find_element(By.CSS_SELECTOR, "#steps input[type=number]").get_attribute("value")
    guidance = browser.find_element(By.CSS_SELECTOR, "#guidance input[type=number]").get_attribute("value")
    assert (steps, float(guidance)) == ("4", 1.0)

    # Typing draws, with no click: once per pause, not once per key.
    field.send_keys(Keys.CONTROL, "a", Keys.DELETE)
    before = _drawings(outputs)
    _type_slowly(field, "a handwritten digit 6")
    typed = time.perf_counter()
    _wait(browser, lambda: "a handwritten digit 6" in _drawn_prompt(browser), 30)
    _wait(browser, lambda: browser.execute_script(GALLERY_LOADED), 30)
    print(f"\ndraw as you type: 4 pictures shown {time.perf_counter() - typed:.2f} s after the last key "
          f"(the pause of 0.3 s included; the server on 1 thread)")
    drawn = _drawings(outputs) - before
    assert 1 <= len(drawn) <= 3, f"{len(drawn)} drawings for {len('a handwritten digit 6')} keys"
    [png] = [path for folder in drawn for path in folder.glob("*-0.png")
             if read_settings(path)["prompt"] == "a handwritten digit 6"]
    settings = read_settings(png)
    assert (settings["model"], settings["steps"], settings["guidance_scale"]) == ("mnist-fast", 4, 1.0)
    _screenshot(browser, "draw_as_you_type")

    # The next words redraw it.
    _type_slowly(field, ", thick")
    _wait(browser, lambda: "a handwritten digit 6, thick" in _drawn_prompt(browser), 30)
