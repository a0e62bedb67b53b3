"""Helpers for the page's browser tests: headless Chromium (the Debian packages, driven by
Selenium; never a browser or driver download), a real `airflow standalone` or `api-server`
on a free port (optionally under a sub-path), and the Airflow UI's login and nav.

Screenshots go to `tests/artifacts/` (created with a `.gitignore` of its own; CI may keep
the folder as its artifacts).
"""

from __future__ import annotations

import contextlib
import json
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests

from tests.conftest import ROOT, airflow_api_server

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
ARTIFACTS = ROOT / "tests" / "artifacts"
VIEW_NAME = "Connector Segments"  # the external view's name: the nav entry and iframe title
CHROME_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--window-size=1280,1000",
)


def browser_missing() -> str | None:
    """Why the browser tests cannot run here, or None."""
    for binary, package in ((CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")):
        if not binary.is_file():
            return f"{binary} not found: install the Debian package {package} (.ci/run does)"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (requirements.txt)"
    return None


@contextlib.contextmanager
def chromium() -> Iterator[Any]:
    """A headless Chromium with a fresh profile, through the system chromedriver."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    with tempfile.TemporaryDirectory(prefix="cs-chromium-") as profile:
        options = webdriver.ChromeOptions()
        options.binary_location = str(CHROMIUM)
        for flag in CHROME_FLAGS:
            options.add_argument(flag)
        options.add_argument(f"--user-data-dir={profile}")
        # A driver path in the Service: Selenium Manager is never run (it would download).
        driver = webdriver.Chrome(
            service=Service(executable_path=str(CHROMEDRIVER)), options=options
        )
        driver.set_page_load_timeout(60)
        try:
            yield driver
        finally:
            driver.quit()


def screenshot(driver: Any, name: str) -> Path:
    """Save the browser's window as tests/artifacts/NAME.png and print where."""
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / ".gitignore").write_text("*\n")
    path = ARTIFACTS / f"{name}.png"
    driver.save_screenshot(str(path))
    print(f"screenshot: {path}")
    return path


def wait_for(check: Callable[[], Any], timeout: float, what: str, every: float = 0.25) -> Any:
    """`check()`'s first truthy value, polling; AssertionError naming `what` past `timeout`
    (with the last exception `check` raised, if any)."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = check()
            if value:
                return value
        except Exception as exc:  # the page is still changing: look again
            last = exc
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}: {last!r}")


# -- a real Airflow ----------------------------------------------------------------------------


@dataclass
class Airflow:
    url: str  # the UI's base URL, sub-path included, without a trailing slash
    home: Path
    log_path: Path

    @property
    def page(self) -> str:
        return f"{self.url}/connector-segments/"

    def password(self, user: str) -> str:
        passwords = self.home / "simple_auth_manager_passwords.json.generated"
        return json.loads(passwords.read_text())[user]

    def session(self, user: str) -> requests.Session:
        """A requests session with the user's Bearer token (`POST /auth/token`)."""
        answer = requests.post(
            f"{self.url}/auth/token",
            json={"username": user, "password": self.password(user)},
            timeout=30,
        )
        assert answer.status_code == 201, answer.text
        session = requests.Session()
        session.headers["Authorization"] = f"Bearer {answer.json()['access_token']}"
        return session

    def log_tail(self, chars: int = 4000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:]


@contextlib.contextmanager
def airflow(
    home: Path, log_path: Path, *, standalone: bool, sub_path: str = "", **env: str
) -> Iterator[Airflow]:
    """conftest's `airflow_api_server` (standalone or a lone API server) in AIRFLOW_HOME
    `home`, under `sub_path` ("" or "/airflow")."""
    with airflow_api_server(
        log_path, standalone=standalone, sub_path=sub_path, AIRFLOW_HOME=str(home), **env
    ) as url:
        yield Airflow(url, home, log_path)


# -- the Airflow UI ----------------------------------------------------------------------------


def log_in(driver: Any, airflow: Airflow, user: str, password: str | None = None) -> None:
    """Log in through the UI's login form: SimpleAuthManager's (its generated password) or
    FAB's (`password`)."""
    from selenium.webdriver.common.by import By

    driver.get(f"{airflow.url}/")
    field = wait_for(
        lambda: driver.find_element(By.CSS_SELECTOR, "input[name=username]"), 60, "login form"
    )
    field.send_keys(user)
    secret = password or airflow.password(user)
    driver.find_element(By.CSS_SELECTOR, "input[name=password]").send_keys(secret)
    driver.find_element(By.CSS_SELECTOR, "button[type=submit], input[type=submit]").click()
    wait_for(lambda: driver.get_cookie("_token"), 60, "the login's _token cookie")


def open_page(driver: Any, airflow: Airflow) -> None:
    """From the UI's home, click the nav entry and switch into its iframe."""
    from selenium.webdriver.common.by import By

    driver.switch_to.default_content()
    driver.get(f"{airflow.url}/")
    entry = wait_for(
        lambda: driver.find_element(By.CSS_SELECTOR, f'a[aria-label="{VIEW_NAME}"]'),
        60,
        "the Connector Segments nav entry",
    )
    entry.click()
    frame = wait_for(
        lambda: driver.find_element(By.CSS_SELECTOR, f'iframe[title="{VIEW_NAME}"]'),
        60,
        "the page's iframe",
    )
    driver.switch_to.frame(frame)
