"""The web explorer: its callbacks directly, then the page in headless Chromium (as CI runs it)."""

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from vaelab.config import load_config
from vaelab.training import train

pytest.importorskip("gradio", reason="the explorer needs gradio: pip install -e '.[test]'")
from vaelab.explore import Explorer  # noqa: E402


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("explore")
    train(load_config(overrides=["train.epochs=3", "train.trackers=[]", "train.num_sample_images=16",
                              "train.sampler=prior"]),
          root / "vae", progress=False)
    return root / "vae"


def test_sliders_follow_the_kl_order_and_move_the_image(run):
    e = Explorer(run)
    assert len(e.shown) == 16 and e.kl == sorted(e.kl, reverse=True)
    zero = e.decode([0.0] * 16)
    assert zero.shape == (252, 252, 3) and zero.dtype == np.uint8  # 28 px x 9
    moved = e.decode([2.5] + [0.0] * 15)
    assert np.abs(moved.astype(int) - zero.astype(int)).mean() > 1.0
    # slider i is the dimension with the i-th largest average KL over the validation images, computed here by hand
    import torch

    from vaelab.data import first_images

    x = first_images(e.data.validation, 1000)
    with torch.no_grad():
        mu, logvar = e.model.encode(x)
    kl = (0.5 * (mu**2 + logvar.exp() - 1 - logvar)).mean(0)
    assert e.shown == torch.argsort(kl, descending=True)[:16].tolist()
    assert e.kl[:16] == pytest.approx(kl.sort(descending=True).values[:16].tolist(), rel=1e-5)
    # and moving a slider moves that dimension of the decoded latent: slider 0 at 2.5 is z[shown[0]] = 2.5
    z = torch.zeros(1, 16)
    z[0, e.shown[0]] = 2.5
    with torch.no_grad():
        by_hand = e.model.decode(z)[0]
    assert np.array_equal(moved[::9, ::9, 0], (by_hand[0].clamp(0, 1) * 255).round().byte().numpy())
    assert e.random(seed=3) == e.random(seed=3) and len(e.random()) == 16
    strip = e.interpolate(1, 2, 5, True)
    assert strip.shape == (252, 5 * 252, 3)
    recon = e.reconstruct((np.random.default_rng(0).random((40, 40)) * 255).astype(np.uint8))
    assert recon.shape == (252, 504, 3)


def test_an_uploaded_file_is_decoded_as_training_decodes_it(run, tmp_path):
    """The explorer reads an upload through the training decode path: a 16-bit PNG whose EXIF says "rotate" shows
    the input the model would have been trained on (the rotated image, scaled from 16 bits)."""
    from PIL import Image

    from vaelab.data import read_image_files

    pixels = np.zeros((40, 20), dtype=np.uint16)
    pixels[:15, :] = 65535  # a bright band at the top of a tall image
    path = tmp_path / "upload.png"
    image = Image.fromarray(pixels)
    exif = image.getexif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    image.save(path, exif=exif)
    e = Explorer(run)
    shown = e.reconstruct(str(path))[:, :252]  # the input half of "input | reconstruction"
    x, _ = read_image_files(tmp_path, 1, 28)
    expected = np.repeat(np.repeat((x[0, 0].numpy() * 255).round(), 9, 0), 9, 1)
    assert np.abs(shown[..., 0].astype(float) - expected).max() <= 1
    assert shown[:, -9:].mean() > 200 and shown[:, :9].mean() < 50  # rotated: the band is on the right


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _chromium():
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name):
            return shutil.which(name)
    return None


@pytest.mark.slow
def test_explorer_in_headless_chromium(run, tmp_path):
    browser, driver_path = _chromium(), shutil.which("chromedriver")
    if not (browser and driver_path):
        if os.environ.get("CI"):
            pytest.fail("CI must install chromium and chromium-driver (see .ci/run)")
        pytest.skip("chromium / chromedriver not installed (apt-get install chromium chromium-driver)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    port = _free_port()
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_DISABLE_TELEMETRY": "1"}
    server = subprocess.Popen([sys.executable, "-m", "vaelab", "explore", str(run), "--port", str(port)],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    try:
        url = f"http://127.0.0.1:{port}/"
        deadline = time.time() + 120
        while True:
            try:
                urllib.request.urlopen(url, timeout=2)
                break
            except OSError:
                if server.poll() is not None or time.time() > deadline:
                    raise AssertionError(f"the explorer did not start:\n{server.stdout.read()}")
                time.sleep(0.5)
        options = webdriver.ChromeOptions()
        options.binary_location = browser
        for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                     "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
                     "--window-size=1280,900"):
            options.add_argument(flag)
        driver = webdriver.Chrome(service=Service(driver_path), options=options)
        try:
            driver.get(url)
            wait = WebDriverWait(driver, 60)
            image = lambda: driver.find_element(By.CSS_SELECTOR, "#decoded img")
            wait.until(lambda d: image().get_attribute("src"))
            before = image().get_attribute("src")
            box = driver.find_element(By.CSS_SELECTOR, "#z-slider-0 input[type=number]")
            box.send_keys(Keys.CONTROL, "a")
            box.send_keys("2.5", Keys.ENTER)
            wait.until(lambda d: image().get_attribute("src") != before)
            assert image().get_attribute("src") != before
            shot = Path(os.environ.get("VAELAB_SCREENSHOT", tmp_path / "explorer.png"))
            assert driver.save_screenshot(str(shot)) and shot.stat().st_size > 10_000
        finally:
            driver.quit()
    finally:
        server.terminate()
        server.wait(timeout=30)
