"""The MLflow screenshot of the README (docs/mlflow.png): a short vae-mnist run tracked on a local MLflow server,
evaluated, and the run's metrics page photographed in headless Chromium.

    python docs/mlflow_screenshot.py [--out docs/mlflow.png] [--epochs 5]

Needs the mlflow extra, selenium, chromium and chromedriver (as the explorer's browser test does). Everything stays
on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("mlflow.png"))
    parser.add_argument("--epochs", type=int, default=5)
    args = parser.parse_args()
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "GRADIO_ANALYTICS_ENABLED": "False"}
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    work = Path(tempfile.mkdtemp())
    uri = f"http://127.0.0.1:{port}"
    server = subprocess.Popen([str(Path(sys.executable).with_name("mlflow")), "server", "--backend-store-uri",
                               f"sqlite:///{work / 'store.db'}", "--artifacts-destination", str(work / "artifacts"),
                               "--host", "127.0.0.1", "--port", str(port), "--workers", "1"], cwd=work, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        for _ in range(120):
            try:
                urllib.request.urlopen(uri + "/health", timeout=1)
                break
            except OSError:
                time.sleep(0.5)
        run = work / "vae-mnist"
        env["MLFLOW_TRACKING_URI"] = uri
        vaelab = [sys.executable, "-m", "vaelab"]
        subprocess.run([*vaelab, "train", "--track", "mlflow", "--epochs", str(args.epochs), "--out", str(run),
                        "--no-progress"], check=True, env=env, stdout=subprocess.DEVNULL)
        subprocess.run([*vaelab, "evaluate", str(run), "--num-samples", "500", "--k", "0", "--no-utility"],
                       check=True, env=env, stdout=subprocess.DEVNULL)
        ids = json.loads((run / "trackers.json").read_text())["mlflow"]
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
        from selenium.webdriver.common.by import By

        os.environ["SE_AVOID_STATS"] = "true"  # selenium's manager would report usage and look up drivers online
        options = webdriver.ChromeOptions()
        options.binary_location = shutil.which("chromium") or shutil.which("chromium-browser") or ""
        for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1500,1000"):
            options.add_argument(flag)
        driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)
        try:
            driver.get(f"{uri}/#/experiments/{ids['experiment_id']}/runs/{ids['run_id']}/model-metrics")
            time.sleep(10)  # the UI's charts render after their data arrive
            for button in driver.find_elements(By.CSS_SELECTOR, "button[aria-label*='lose']"):
                try:  # the assistant's side panel covers the charts
                    button.click()
                except Exception:  # noqa: BLE001 - a hidden button: the panel may already be closed
                    pass
            search = driver.find_element(By.CSS_SELECTOR, "input[placeholder*='Search metric']")
            search.send_keys("epoch/")  # the per-epoch curves: sample FID, validation ELBO, ...
            time.sleep(4)
            driver.save_screenshot(str(args.out))
        finally:
            driver.quit()
        print(f"wrote {args.out}")
    finally:
        os.killpg(server.pid, 15)
        server.wait(timeout=30)


if __name__ == "__main__":
    main()
