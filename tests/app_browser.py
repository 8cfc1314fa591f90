"""Start ``fastmetro app`` in a subprocess and drive it with a real headless Chromium (Selenium).

Shared by tests/test_app.py and benchmarks/app_first_result.py. Needs Debian's ``chromium`` and
``chromium-driver`` (``make browser-deps``) and the ``app`` and ``test`` extras.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

CHROMIUM = ("chromium", "chromium-browser")
CHROMEDRIVER = ("chromedriver",)
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run", "--window-size=1400,1700")


def find_browser() -> tuple[str | None, str | None]:
    """Paths of chromium and chromedriver, or None where missing."""
    browser = next((shutil.which(name) for name in CHROMIUM if shutil.which(name)), None)
    driver = next((shutil.which(name) for name in CHROMEDRIVER if shutil.which(name)), None)
    return browser, driver


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class AppProcess:
    """``python -m fastmetro app ARGS --port P`` until :meth:`stop`; ``log`` holds its output."""

    def __init__(self, args: list[str], log_path: Path, env: dict | None = None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        self.log_path = Path(log_path)
        self._log = open(self.log_path, "w")
        self.started = time.perf_counter()
        self.process = subprocess.Popen([sys.executable, "-m", "fastmetro", "app", *args, "--port", str(self.port)],
                                        stdout=self._log, stderr=subprocess.STDOUT, env=env)

    @property
    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text()

    def wait_ready(self, timeout: float = 300.0) -> float:
        """Seconds from the process start until the page answers."""
        deadline = time.perf_counter() + timeout
        while time.perf_counter() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"fastmetro app exited with {self.process.returncode}:\n{self.log}")
            try:
                with urllib.request.urlopen(self.url, timeout=5) as response:
                    if response.status == 200:
                        return time.perf_counter() - self.started
            except OSError:
                time.sleep(0.5)
        raise RuntimeError(f"fastmetro app did not answer within {timeout:.0f} s:\n{self.log}")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()


def start_browser(width: int = 1400, height: int = 1700):
    """A headless Chromium with a new empty profile (removed by :func:`quit_browser`)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    browser, driver = find_browser()
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    profile = tempfile.mkdtemp(prefix="fastmetro-chromium-")
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--window-size={width},{height}")
    options.add_argument(f"--user-data-dir={profile}")
    session = webdriver.Chrome(service=Service(driver), options=options)
    session.fastmetro_profile = profile
    return session


def quit_browser(session) -> None:
    try:
        session.quit()
    finally:
        shutil.rmtree(session.fastmetro_profile, ignore_errors=True)


class Page:
    """The app's page, by the ``elem_id``s set in fastmetro.app.ui."""

    def __init__(self, session, url: str, timeout: float = 120.0):
        from selenium.webdriver.support.ui import WebDriverWait

        self.session = session
        self.timeout = timeout
        session.get(url)
        WebDriverWait(session, timeout).until(lambda s: s.find_elements("css selector", "#input-image input[type=file]"))
        self._requests = 0

    def find(self, selector: str):
        return self.session.find_elements("css selector", selector)

    def text(self, selector: str) -> str:
        found = self.find(selector)
        return found[0].text if found else ""

    def set_image(self, path: Path) -> None:
        for remove in self.find("#input-image button[aria-label='Remove Image']"):
            remove.click()
        self.find("#input-image input[type=file]")[0].send_keys(str(path))

    def set_boxes(self, text: str) -> None:
        field = self.find("#boxes textarea, #boxes input")[0]
        field.clear()
        field.send_keys(text)

    def run_image(self) -> tuple[str, float]:
        """Click Reconstruct; wait for a new status; (its text, seconds it took)."""
        from selenium.webdriver.support.ui import WebDriverWait

        before = self.text("#status")
        # Wait until the upload has reached the server (the preview shows it), then run.
        WebDriverWait(self.session, self.timeout).until(lambda s: self.find("#input-image img"))
        started = time.perf_counter()
        self.find("#run-image")[0].click()
        WebDriverWait(self.session, self.timeout).until(
            lambda s: self.text("#status") and self.text("#status") != before
            and not self.find("#status .pending, #overlay .pending"))
        return self.text("#status"), time.perf_counter() - started

    def overlay_sources(self) -> list[str]:
        return [img.get_attribute("src") or "" for img in self.find("#overlay img")]

    def viewer_canvases(self) -> int:
        return len(self.find("#scene canvas"))

    def body_text(self) -> str:
        return self.session.find_element("css selector", "body").text


__all__ = ["AppProcess", "Page", "find_browser", "free_port", "start_browser", "quit_browser"]
