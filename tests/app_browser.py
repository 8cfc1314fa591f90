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
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    # The 3D viewer needs WebGL; without a GPU that is Chromium's software renderer.
    "--enable-unsafe-swiftshader",
    # A fake camera (a test pattern), allowed without a prompt, for the webcam snapshot.
    "--use-fake-device-for-media-stream",
    "--use-fake-ui-for-media-stream",
)


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
        self.process = subprocess.Popen(
            [sys.executable, "-m", "fastmetro", "app", *args, "--port", str(self.port)],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=env,
        )

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
        WebDriverWait(session, timeout).until(
            lambda s: s.find_elements("css selector", "#input-image input[type=file]")
        )
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

    def webcam_snapshot(self) -> None:
        """Switch the image input to the camera and take a snapshot (Chromium's fake camera)."""
        from selenium.webdriver.support.ui import WebDriverWait

        for remove in self.find("#input-image button[aria-label='Remove Image']"):
            remove.click()
        self.find("#input-image button[aria-label='Capture from camera']")[0].click()
        WebDriverWait(self.session, self.timeout).until(
            lambda s: (
                [b for b in self.find("#input-image button") if b.text == "Click to Access Webcam"]
                or self.find("#input-image button[aria-label='capture photo']")
            )
        )
        for button in [b for b in self.find("#input-image button") if b.text == "Click to Access Webcam"]:
            button.click()
        WebDriverWait(self.session, self.timeout).until(
            lambda s: self.find("#input-image button[aria-label='capture photo']")
        )
        time.sleep(1.0)  # the first frames of the stream
        self.find("#input-image button[aria-label='capture photo']")[0].click()

    def live_stream(self, frames: int = 3) -> str:
        """Open the Live tab, start streaming Chromium's fake camera, and return the status once
        ``frames`` results have come back (the status changes with every frame's rate)."""
        from selenium.common.exceptions import StaleElementReferenceException
        from selenium.webdriver.support.ui import WebDriverWait

        # Gradio re-renders these buttons as the camera starts: look them up again on each try.
        wait = WebDriverWait(self.session, self.timeout, ignored_exceptions=(StaleElementReferenceException,))

        def click(selector: str, text: str):
            buttons = [b for b in self.find(selector) if b.text == text]
            if buttons:
                buttons[0].click()
            return bool(buttons)

        wait.until(lambda s: click("button[role=tab]", "Live"))
        wait.until(lambda s: click("#live-camera button", "Click to Access Webcam"))
        wait.until(lambda s: click("#live-camera button", "Record"))
        seen: set[str] = set()
        wait.until(lambda s: seen.add(self.text("#live-status")) or len(seen - {""}) >= frames)
        return self.text("#live-status")

    def click_image(self, fraction_x: float, fraction_y: float) -> None:
        """Click the input image at a fraction of its displayed width and height."""
        from selenium.webdriver.common.action_chains import ActionChains

        image = self.find("#input-image img")[0]
        width, height = image.size["width"], image.size["height"]
        # Offsets are from the element's centre.
        ActionChains(self.session).move_to_element_with_offset(
            image, int((fraction_x - 0.5) * width), int((fraction_y - 0.5) * height)
        ).click().perform()

    def draw_box(self, first: tuple[float, float], second: tuple[float, float]) -> str:
        """Click two opposite corners (fractions of the image); the box text the page made."""
        from selenium.webdriver.support.ui import WebDriverWait

        self.click_image(*first)
        WebDriverWait(self.session, self.timeout).until(lambda s: "First corner" in self.text("#box-hint"))
        self.click_image(*second)
        WebDriverWait(self.session, self.timeout).until(lambda s: "Box added" in self.text("#box-hint"))
        WebDriverWait(self.session, self.timeout).until(lambda s: self.boxes_text().count(",") == 3)
        return self.boxes_text()

    def boxes_text(self) -> str:
        return self.find("#boxes textarea, #boxes input")[0].get_attribute("value")

    def set_boxes(self, text: str) -> None:
        from selenium.webdriver.common.keys import Keys

        field = self.find("#boxes textarea, #boxes input")[0]
        # Keystrokes (not WebElement.clear, which the page's input events do not see).
        field.send_keys(Keys.CONTROL, "a")
        field.send_keys(Keys.BACKSPACE)
        if text:
            field.send_keys(text)

    def run_image(self) -> tuple[str, float]:
        """Click Reconstruct and wait for the request to finish: (the status text, seconds)."""
        from selenium.webdriver.support.ui import WebDriverWait

        before = (self.text("#status"), self.overlay_sources())
        # Wait until the upload has reached the server (the preview shows it), then run.
        WebDriverWait(self.session, self.timeout).until(lambda s: self.find("#input-image img"))
        started = time.perf_counter()
        self.find("#run-image")[0].click()
        seen_pending = False

        def finished(_):
            nonlocal seen_pending
            if self.find(
                "#status [data-testid=status-tracker]:not(.hide), #overlay [data-testid=status-tracker]:not(.hide)"
            ):
                seen_pending = True
                return False
            changed = (self.text("#status"), self.overlay_sources()) != before
            return bool(self.text("#status")) and (changed or seen_pending)

        WebDriverWait(self.session, self.timeout, poll_frequency=0.1).until(finished)
        return self.text("#status"), time.perf_counter() - started

    def overlay_sources(self) -> list[str]:
        return [img.get_attribute("src") or "" for img in self.find("#overlay img")]

    def viewer_canvases(self) -> int:
        return len(self.find("#scene canvas"))

    def viewer_drawn_pixels(self, timeout: float = 60.0, background: int = 250) -> int:
        """Pixels of the 3D viewer's canvas that are not its white background, once the mesh is
        drawn (software WebGL takes a few seconds); 0 if it never draws within ``timeout``."""
        import io

        import numpy as np
        from PIL import Image

        deadline = time.perf_counter() + timeout
        drawn = 0
        while time.perf_counter() < deadline:
            canvases = self.find("#scene canvas")
            if canvases:
                pixels = np.asarray(Image.open(io.BytesIO(canvases[0].screenshot_as_png)).convert("RGB"))
                drawn = int((pixels.min(axis=2) < background).sum())
                if drawn > 100:
                    return drawn
            time.sleep(1.0)
        return drawn

    def choose_joint(self, name: str) -> None:
        from selenium.webdriver.common.keys import Keys

        field = self.find("#joint input")[0]
        field.click()
        field.send_keys(Keys.CONTROL, "a")
        field.send_keys(name, Keys.ENTER)

    def attention_images(self) -> int:
        return len(self.find("#attention img"))

    def full_page_screenshot(self, path, width: int = 1400) -> None:
        height = self.session.execute_script("return document.documentElement.scrollHeight")
        self.session.set_window_size(width, int(height) + 100)
        time.sleep(1.0)
        self.session.save_screenshot(str(path))

    def body_text(self) -> str:
        return self.session.find_element("css selector", "body").text


__all__ = ["AppProcess", "Page", "find_browser", "free_port", "start_browser", "quit_browser"]
