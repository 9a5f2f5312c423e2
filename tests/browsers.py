"""
A real browser for the tests: headless Chromium from Debian's packages
(C{chromium}, C{chromium-driver}; C{scripts/test} installs them), driven
with Selenium.  Without one the browser tests are skipped, loudly, except
in CI (C{CI=true}), where they fail.

Selenium blocks; the bridge under test runs on the test's own reactor.
So every browser call goes through L{Chrome.do}, which runs it in a thread
and gives a L{Deferred}, and the reactor keeps serving meanwhile.
"""

from __future__ import annotations

import os
import shutil
from typing import Any, Callable

import pytest
from twisted.internet import threads

#: Where screenshots go when BRIDGEPROXY_UPDATE_SCREENSHOTS=1 (the committed ones).
DOCS_SCREENSHOTS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs", "ui")


def _first(*candidates: Any) -> Any:
    return next((c for c in candidates if c and os.path.exists(c)), None)


def _unavailable(reason: str) -> None:
    if os.environ.get("CI", "").lower() in ("true", "1", "yes"):
        pytest.fail(f"BROWSER TESTS CANNOT RUN IN CI: {reason} (scripts/test installs chromium and "
                    "chromium-driver from Debian's packages when run as root)")
    pytest.skip(f"BROWSER TESTS NOT RUN: {reason}; install chromium and chromium-driver (Debian), "
                "or run bash scripts/test as root")


def chrome(width: int = 1400, height: int = 1000) -> "Chrome":
    """A headless Chromium, or a skip (a failure in CI) saying why there is none."""
    binary = _first(os.environ.get("BRIDGEPROXY_CHROMIUM"), "/usr/bin/chromium", shutil.which("chromium"),
                    shutil.which("chromium-browser"))
    driver_path = _first(os.environ.get("BRIDGEPROXY_CHROMEDRIVER"), "/usr/bin/chromedriver",
                         shutil.which("chromedriver"))
    if binary is None or driver_path is None:
        _unavailable("no Chromium or no chromedriver found")
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        _unavailable("the selenium package is not installed (pip install '.[test]')")
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                     f"--window-size={width},{height}", "--force-device-scale-factor=1", "--lang=en-GB",
                     "--disable-extensions", "--no-first-run", "--disable-background-networking"):
        options.add_argument(argument)
    try:
        driver = webdriver.Chrome(service=Service(driver_path), options=options)
    except Exception as e:  # noqa: BLE001 - any reason the browser did not start
        _unavailable(f"Chromium did not start ({type(e).__name__}: {str(e).splitlines()[0][:200]})")
    return Chrome(driver, width)


class Chrome:
    """A Selenium driver whose calls run in a thread (L{do}); C{visited} holds every URL it ended up at."""

    def __init__(self, driver: Any, width: int):
        self.driver = driver
        self.width = width
        self.visited: list[str] = []
        self.sources: list[tuple[str, str]] = []

    def do(self, work: Callable[[Any], Any]) -> Any:
        """Run C{work(driver)} in a thread; a Deferred of its result."""
        return threads.deferToThread(work, self.driver)

    def _seen(self, driver: Any) -> None:
        self.visited.append(driver.current_url)
        self.sources.append((driver.current_url, driver.page_source))

    def get(self, url: str) -> Any:
        def work(driver: Any) -> None:
            driver.get(url)
            self._seen(driver)
        return self.do(work)

    def submit(self, action: Callable[[Any], Any], then: Callable[[Any], Any] = lambda driver: None) -> Any:
        """
        Run C{action(driver)}, which sends a form or follows a link, wait for
        the page it leads to, and give C{then(driver)} read on that page.
        """
        def both(driver: Any) -> Any:
            from selenium.common.exceptions import WebDriverException
            from selenium.webdriver.support.ui import WebDriverWait
            old = driver.find_element("tag name", "html")

            def left(driver: Any) -> bool:
                # The old page's root is gone once the new page replaced it; while the
                # page changes, Chromium may report that in more than one way.
                try:
                    old.is_enabled()
                    return False
                except WebDriverException:
                    return True
            action(driver)
            WebDriverWait(driver, 20).until(left)
            WebDriverWait(driver, 20).until(
                lambda d: d.execute_script("return document.readyState") == "complete")
            self._seen(driver)
            return then(driver)
        return self.do(both)

    def screenshot(self, directory: str, name: str) -> Any:
        """The whole page as C{<name>.png} in C{directory} (and in docs/ui/ with BRIDGEPROXY_UPDATE_SCREENSHOTS=1)."""
        def work(driver: Any) -> str:
            height = driver.execute_script("return document.documentElement.scrollHeight")
            driver.set_window_size(self.width, max(600, min(int(height) + 40, 2200)))
            path = os.path.join(directory, f"{name}.png")
            os.makedirs(directory, exist_ok=True)
            driver.save_screenshot(path)
            if os.environ.get("BRIDGEPROXY_UPDATE_SCREENSHOTS") == "1":
                os.makedirs(DOCS_SCREENSHOTS, exist_ok=True)
                shutil.copyfile(path, os.path.join(DOCS_SCREENSHOTS, f"{name}.png"))
            driver.set_window_size(self.width, 1000)
            return path
        return self.do(work)

    def quit(self) -> Any:
        return self.do(lambda driver: driver.quit())
