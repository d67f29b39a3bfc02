"""Real-browser checks: the app served by `streamlit run` on localhost, every page opened in headless Debian
Chromium (driven by Playwright) for both shipped checkpoints, a Plotly chart rendered where the page has one, no error
box, a screenshot each; and the linked views: a selection made on a chart (a bucket bar clicked, a box drawn on the
prototype map) filters the Samples table to exactly those rows.

Screenshots go to $DE3_SCREENSHOTS (default: runs/screenshots/) to be looked at. Skips only outside CI when
Chromium or Playwright is missing; in CI (CI=true) a missing browser is a failure.
"""

from __future__ import annotations

import itertools
import os
import re
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
    "samples": False,  # a table, no chart
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
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "DE3_CACHE_DIR": str(tmp_path_factory.mktemp("cache"))}  # uploads, traces and fitted exits: never ~/.cache
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


# ---- linked views: a selection made on a chart filters the Samples table ---------------------------------------------


def _idle(page) -> None:
    """Wait until the app has finished its rerun (the status widget gone)."""
    time.sleep(0.3)
    page.wait_for_function("() => !document.querySelector('[data-testid=\"stStatusWidget\"]')", timeout=120_000)


def _selection_line(page) -> str:
    """The sidebar's "Selection: N samples — where" line, once a selection is set."""
    line = page.locator('[data-testid="stSidebarUserContent"] [data-testid="stMarkdown"]',
                        has_text=re.compile(r"Selection: \d"))
    line.first.wait_for(timeout=120_000)
    return line.first.inner_text()


def _count(text: str) -> int:
    return int(re.search(r"(\d[\d,]*) samples?", text).group(1).replace(",", ""))


def _samples_shown(page) -> str:
    """Go to the Samples page through the sidebar (the session keeps its selection); its "N of ... shown" line."""
    page.locator('[data-testid="stSidebarNav"] a', has_text="Samples").first.click()
    line = page.locator('[data-testid="stMarkdown"]', has_text=re.compile(r"samples shown"))
    line.first.wait_for(timeout=120_000)
    _idle(page)
    return line.first.inner_text()


@pytest.fixture
def chromium_page(server):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser.new_page(viewport={"width": 1440, "height": 900})
        browser.close()


def _no_new_traceback(log: Path, start: int) -> None:
    """No traceback in what the server logged since ``start`` (bytes): this test's own part of the shared log."""
    with open(log, "rb") as f:
        f.seek(start)
        written = f.read().decode("utf-8", "replace")
    assert "Traceback" not in written, written[-3000:]


def _shots() -> Path:
    shots = Path(os.environ.get("DE3_SCREENSHOTS", REPO / "runs" / "screenshots"))
    shots.mkdir(parents=True, exist_ok=True)
    return shots


def test_a_bucket_bar_click_filters_the_sample_table(server, chromium_page):
    """A bar clicked on the Misclassified page's bucket chart: the Samples page then shows exactly that bucket's
    samples, as many as the sidebar says were selected (SST-2 at the default policy: 6 premature exits)."""
    (url, log), page = server, chromium_page
    start = log.stat().st_size
    page.goto(f"{url}/errors", wait_until="domcontentloaded")
    page.wait_for_selector(".js-plotly-plot .main-svg", timeout=120_000)
    _idle(page)
    bar = page.locator(".js-plotly-plot").first.locator("g.point path").nth(2)  # the third bucket: premature exit
    bar.scroll_into_view_if_needed()
    box = bar.bounding_box()
    page.mouse.click(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    line = _selection_line(page)
    assert "bucket: premature exit" in line, line
    chosen = _count(line)
    shown = _samples_shown(page)
    assert shown.startswith(f"{chosen} of the selection's {chosen} samples shown"), (line, shown)
    page.screenshot(path=str(_shots() / "linked-bucket-samples.png"), full_page=True)
    _no_new_traceback(log, start)


def test_a_box_on_the_map_filters_the_sample_table(server, chromium_page):
    """A box drawn on the prototype map with Plotly's box-select tool (picked in the modebar): the Samples page then
    shows exactly the samples in the box, as many as the sidebar says were selected."""
    (url, log), page = server, chromium_page
    start = log.stat().st_size
    page.goto(f"{url}/map?method=pca", wait_until="domcontentloaded")
    page.wait_for_selector(".js-plotly-plot .main-svg", timeout=120_000)
    _idle(page)
    plot = page.locator(".js-plotly-plot").first
    plot.scroll_into_view_if_needed()
    plot.hover()
    page.locator('.js-plotly-plot .modebar-btn[data-title="Box Select"]').first.click()
    area = plot.locator(".nsewdrag").first.bounding_box()
    x0, y0 = area["x"] + 0.3 * area["width"], area["y"] + 0.3 * area["height"]
    page.mouse.move(x0, y0)
    page.mouse.down()
    page.mouse.move(x0 + 0.35 * area["width"], y0 + 0.35 * area["height"], steps=10)
    page.mouse.up()
    line = _selection_line(page)
    chosen = _count(line)
    assert chosen > 0, line
    page.screenshot(path=str(_shots() / "linked-map-box.png"), full_page=True)
    shown = _samples_shown(page)
    assert shown.startswith(f"{chosen} of the selection's {chosen} samples shown"), (line, shown)
    page.screenshot(path=str(_shots() / "linked-map-samples.png"), full_page=True)
    _no_new_traceback(log, start)


def test_fit_exits_on_an_uploaded_file(server, chromium_page, tmp_path):
    """The Overview's "Fit exits on my data": a labelled CSV uploaded, exits attached to the offline MiniLM, and the
    new checkpoint's held-out rows open with their charts and no error."""
    (url, log), page = server, chromium_page
    start = log.stat().st_size
    data = tmp_path / "moods.csv"
    data.write_text("text,label\n" + "".join(
        f"what a wonderful sunny day number {i},happy\n" if i % 2 else f"a grey and miserable rainy day number {i},sad\n"
        for i in range(60)), encoding="utf-8")
    page.goto(url, wait_until="domcontentloaded")
    page.wait_for_selector(".js-plotly-plot .main-svg", timeout=120_000)
    _idle(page)
    page.get_by_text("Checkpoint, data and device").click()
    page.get_by_text("Upload a CSV / TSV file").click()
    page.locator('input[type="file"]').set_input_files(str(data))
    button = page.get_by_role("button", name="Fit exits on my data")
    button.wait_for(timeout=120_000)
    _idle(page)
    button.click()
    page.wait_for_selector("text=minilm-l6-on-moods-", timeout=300_000)
    _idle(page)
    page.wait_for_selector(".js-plotly-plot .main-svg", timeout=120_000)
    caption = page.locator('[data-testid="stCaptionContainer"]', has_text="minilm-l6-on-moods-").first.inner_text()
    assert "test (6 samples" in caption, caption  # the 10 % held out of 60 rows
    errors = page.locator('[data-testid="stException"], [data-testid="stAlertContentError"]')
    assert not errors.count(), errors.first.inner_text()[:300]
    page.screenshot(path=str(_shots() / "fit-exits.png"), full_page=True)
    _no_new_traceback(log, start)
