"""Take the README's screenshots of the demo page: ``python docs/screenshots.py``.

Starts ``megapresence serve`` on a free port, has a few users join (two pages
in headless Chromium, others as plain WebSocket clients), and saves
``docs/page-desktop.png`` (1100 x 700) and ``docs/page-390.png`` (a 390-px-wide
phone). Needs chromium, chromedriver and the test extra (selenium, websockets).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select, WebDriverWait
from websockets.sync.client import connect

DOCS = Path(__file__).resolve().parent


def chromium(width: int, height: int, *, mobile: bool = False) -> Any:
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or shutil.which("chromium-browser") or ""
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars"):
        options.add_argument(flag)
    options.add_argument(f"--window-size={width},{height}")
    service = Service(executable_path=shutil.which("chromedriver"))
    driver = webdriver.Chrome(service=service, options=options)
    metrics = {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": mobile}
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", metrics)
    return driver


def until(driver: Any, text: str, element: str = "log") -> None:
    WebDriverWait(driver, 15).until(lambda d: text in d.find_element(By.ID, element).text)


def main() -> None:
    server = subprocess.Popen(
        [sys.executable, "-m", "megapresence_anyio", "serve", "--port", "0", "--admin", "ann"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert server.stdout is not None
    port = re.search(r":(\d+)/", server.stdout.readline())
    assert port, "no banner"
    base = f"http://127.0.0.1:{port.group(1)}"
    ann, bob = chromium(1100, 700), chromium(390, 760, mobile=True)
    try:
        ann.get(f"{base}/?user=ann&channels=lobby,dev")
        until(ann, "ann (you)", "rosters")
        ws = f"ws://127.0.0.1:{port.group(1)}/ws/chat"
        with (
            connect(f"{ws}?user=cat&channels=lobby,dev") as cat,
            connect(f"{ws}?user=dan&channels=dev") as dan,
        ):
            bob.get(f"{base}/?user=bob&channels=lobby")
            until(ann, "bob joined #lobby")
            Select(bob.find_element(By.ID, "status")).select_by_visible_text("away")
            bob.find_element(By.CSS_SELECTOR, "#meta button").click()
            until(ann, "bob in #lobby is now away")
            cat.send(json.dumps({"op": "metadata", "metadata": {"status": "busy"}}))
            hello = {"op": "publish", "channel": "dev", "type": "chat"}
            dan.send(json.dumps({**hello, "payload": {"text": "the build is green again"}}))
            until(ann, "the build is green")
            bob.find_element(By.ID, "text").send_keys("lunch at noon?")
            bob.find_element(By.CSS_SELECTOR, "#say button").click()
            until(ann, "lunch at noon")
            ann.find_element(By.ID, "text").send_keys("count me in")
            ann.find_element(By.CSS_SELECTOR, "#say button").click()
            until(bob, "count me in")
            bob.find_element(By.ID, "to").send_keys("eve")
            bob.find_element(By.ID, "dmtext").send_keys("are you around?")
            bob.find_element(By.CSS_SELECTOR, "#dm button").click()
            until(bob, "nobody called eve")
            time.sleep(0.3)  # the last renders
            ann.save_screenshot(str(DOCS / "page-desktop.png"))
            bob.save_screenshot(str(DOCS / "page-390.png"))
    finally:
        ann.quit()
        bob.quit()
        server.terminate()
        server.wait()


if __name__ == "__main__":
    main()
