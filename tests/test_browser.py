"""One real-browser check: the app served by `streamlit run` on localhost, every page opened in headless Debian
Chromium (driven by Playwright) for both shipped checkpoints, a Plotly chart rendered where the page has one, no error
box, a screenshot each.

Screenshots go to $DE3_SCREENSHOTS (default: runs/screenshots/) to be looked at. Skips only outside CI when
Chromium or Playwright is missing; in CI (CI=true) a missing browser is a failure.
"""

from __future__ import annotations

import itertools
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from .conftest import REPO

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# url path -> must a Plotly chart render on first load (with the shipped default)?
PAGES = {
    "": True,  # Overview
    "tradeoff": True,
    "map": True,
    "inspector": True,
    "errors": True,
    "playground": False,  # waits for a sentence
    "export": False,
}
CHECKPOINTS = {"sst2": "", "bbc": "?ckpt=pretrained/bbc-minilm-l6"}  # the default, and the multi-class example
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def _requirements_or_skip():
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        if os.environ.get("CI"):
            raise
        pytest.skip("playwright is not installed")
    if not Path(CHROMIUM).exists():
        if os.environ.get("CI"):
            pytest.fail(f"{CHROMIUM} not found: .ci/run must install Debian's chromium")
        pytest.skip("Debian chromium is not installed (apt-get install chromium)")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    _requirements_or_skip()
    port = _free_port()
    log = tmp_path_factory.mktemp("server") / "streamlit.log"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "streamlit", "run", "streamlit_app.py", "--server.headless", "true",
                                 "--server.port", str(port), "--server.address", "127.0.0.1"],
                                cwd=REPO, stdout=out, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 90
        while time.time() < deadline:
            try:
                if urllib.request.urlopen(f"{url}/_stcore/health", timeout=2).read() == b"ok":
                    break
            except OSError:
                time.sleep(0.5)
        else:
            pytest.fail(f"streamlit did not start: {log.read_text()[-2000:]}")
        yield url, log
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


def test_every_page_renders_in_chromium(server):
    from playwright.sync_api import sync_playwright

    url, log = server
    shots = Path(os.environ.get("DE3_SCREENSHOTS", REPO / "runs" / "screenshots"))
    shots.mkdir(parents=True, exist_ok=True)
    problems = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        for (path, needs_chart), (name, query) in itertools.product(PAGES.items(), CHECKPOINTS.items()):
            page.goto(f"{url}/{path}{query}", wait_until="domcontentloaded")
            # the app is ready when its sidebar navigation is there and nothing is still running
            page.wait_for_selector('[data-testid="stSidebarNav"]', timeout=120_000)
            if needs_chart:
                try:
                    page.wait_for_selector(".js-plotly-plot .main-svg", timeout=120_000)
                except Exception:
                    problems.append(f"/{path}{query}: no Plotly chart rendered")
            page.wait_for_function(
                "() => !document.querySelector('[data-testid=\"stStatusWidget\"]')", timeout=120_000)
            errors = page.locator('[data-testid="stException"], [data-testid="stAlertContentError"]')
            if errors.count():
                problems.append(f"/{path}{query}: error box: {errors.first.inner_text()[:300]}")
            page.screenshot(path=str(shots / f"{name}-{path or 'overview'}.png"), full_page=True)
        browser.close()
    assert not problems, "\n".join(problems) + f"\nserver log: {log.read_text()[-1500:]}"
    assert "Traceback" not in log.read_text(), log.read_text()[-3000:]
