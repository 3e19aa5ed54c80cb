"""The README's JavaScript example runs as written, in headless Chromium (``readme_js_app.py``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .asgi_process import asgi_server
from .browser_helpers import skip_without_chromium

skip_without_chromium()

from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402


def logged(driver: Any) -> list[str]:
    lines: list[str] = driver.execute_script("return window.logged || []")
    return lines


def test_the_readme_s_js_example_watches_the_lobby(
    browser: Any, second_browser: Any, tmp_path: Path
) -> None:
    with asgi_server("uvicorn", "tests.readme_js_app:app", tmp_path) as (port, _):
        ann, bob = browser, second_browser
        wait = WebDriverWait(ann, 15)
        ann.get(f"http://127.0.0.1:{port}/?user=ann")
        wait.until(lambda d: "open  " in logged(d))  # onState: state, delay, code
        wait.until(lambda d: any(line.startswith("ann is here") for line in logged(d)))
        bob.get(f"http://127.0.0.1:{port}/?user=bob")
        wait.until(lambda d: any(line.startswith("bob is here") for line in logged(d)))
        assert "members: ann,bob" in logged(ann)  # onSync, after the diff
        bob.get("about:blank")  # bob's page goes away
        wait.until(lambda d: "bob left" in logged(d))
        assert logged(ann)[-1] == "members: ann"
        assert not [line for line in logged(ann) if "rror" in line]
