"""The demo page under ``megapresence serve --auth jwt``, in headless Chromium.

The page passes its own ``?token=`` on to its socket: the token, not ``?user=``,
says who the page is, and a page without a valid token never gets in.
"""

from __future__ import annotations

import time
from pathlib import Path

import jwt
import pytest

from .browser_helpers import skip_without_chromium
from .process_helpers import Command

skip_without_chromium()

from selenium import webdriver  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

SECRET = "browser-test-key-" + "k" * 32


def token(user: str, **claims: object) -> str:
    return jwt.encode(
        {"sub": user, "exp": int(time.time()) + 300, **claims}, SECRET, algorithm="HS256"
    )


def test_the_page_is_who_its_token_says_and_nobody_without_one(
    browser: webdriver.Chrome, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MEGAPRESENCE_JWT_SECRET", SECRET)
    server = Command(tmp_path, "serve", "serve", "--port", "0", "--auth", "jwt")
    try:
        base = f"http://127.0.0.1:{server.port}"
        wait = WebDriverWait(browser, 15)
        browser.get(f"{base}/?user=root&token={token('bob', admin=True)}")
        wait.until(lambda d: d.find_element(By.ID, "who").text == "bob (admin)")
        forged = token("bob").rpartition(".")[0] + ".c2lnbmF0dXJl"
        browser.get(f"{base}/?user=bob&token={forged}")
        wait.until(
            lambda d: (
                d.find_element(By.ID, "state").get_attribute("data-state")
                in ("reconnecting", "closed")
            )
        )
        assert browser.find_element(By.ID, "who").text == ""  # no welcome: never got in
    finally:
        assert server.stop() == 0
