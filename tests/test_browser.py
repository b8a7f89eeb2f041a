"""End to end in a real browser: Debian's Chromium, driven by Playwright, against `wb app` on loopback.

.ci/run installs chromium (Debian's package); Playwright's own browser download is never used. Where
the machine has no Chromium the test is skipped with that reason (the developers' machines may lack
it; CI does not).
"""

import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (.ci/run installs it)")


@pytest.fixture
def app_url(monkeypatch):
    monkeypatch.setenv("WB_MODELS", str(REPO / "models"))  # the committed zoo, read only
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "workbench", "app", "--port", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            if urllib.request.urlopen(f"{url}/_stcore/health", timeout=2).read() == b"ok":
                break
        except OSError:
            time.sleep(0.5)
    yield url
    proc.terminate()
    proc.wait(timeout=20)


def test_models_page_in_chromium(app_url, tmp_path):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
            "--disable-component-update", "--disable-sync"])
        page = browser.new_page(viewport={"width": 1400, "height": 1800})
        start = time.perf_counter()
        page.goto(f"{app_url}/Models")
        page.get_by_text("Model zoo").wait_for(timeout=30000)
        # the zoo table is a canvas grid; its cells exist for accessibility but are not "visible"
        page.get_by_text("transformer-toyworld").first.wait_for(state="attached", timeout=30000)
        page.get_by_text("Training curves").wait_for(timeout=30000)
        load_s = time.perf_counter() - start
        assert page.get_by_text("100.00%").count() >= 1  # transformer-recall's card is the first shown
        page.screenshot(path=str(tmp_path / "models.png"), full_page=True)
        browser.close()
    assert (tmp_path / "models.png").stat().st_size > 10_000
    print(f"Models page ready in {load_s:.2f} s")
