"""End to end in a real browser: Debian's Chromium, driven by Playwright, against `wb app` on loopback.

.ci/run installs chromium (Debian's package); Playwright's own browser download is never used. Where
the machine has no Chromium the test is skipped with that reason (the developers' machines may lack
it; CI does not).
"""

import json
import re
import shutil
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (.ci/run installs it)")


@pytest.fixture
def committed_zoo(monkeypatch):
    """Point the app at the checkout's models/ (read only); requested before running_app starts it."""
    monkeypatch.setenv("WB_MODELS", str(REPO / "models"))


def launch(p):
    """Debian's Chromium with what a sandboxed CI container needs off; a 1400x1800 page."""
    browser = p.chromium.launch(executable_path=CHROMIUM, args=[
        "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync"])
    return browser, browser.new_page(viewport={"width": 1400, "height": 1800})


def test_models_page_in_chromium(committed_zoo, running_app, tmp_path):
    from playwright.sync_api import sync_playwright

    url, _ = running_app
    with sync_playwright() as p:
        browser, page = launch(p)
        start = time.perf_counter()
        page.goto(f"{url}/Models")
        page.get_by_text("Model zoo").wait_for(timeout=30000)
        # the zoo table is a canvas grid; its cells exist for accessibility but are not "visible", and
        # only for the rows in view: wait for the first card's (cards are read in folder order)
        first = json.loads(min((REPO / "models").glob("*/card.json")).read_text())["name"]
        page.get_by_text(first, exact=True).first.wait_for(state="attached", timeout=30000)
        page.get_by_text("Training curves").wait_for(timeout=30000)
        load_s = time.perf_counter() - start
        # the first card's metrics (waited for: under load they come in late)
        page.get_by_text("Test accuracy", exact=True).first.wait_for(timeout=30000)
        page.screenshot(path=str(tmp_path / "models.png"), full_page=True)
        browser.close()
    assert (tmp_path / "models.png").stat().st_size > 10_000
    print(f"Models page ready in {load_s:.2f} s")


def test_features_page_in_chromium(feature_set, running_app, tmp_path):
    """A store with one transcoder set: the page opens its densest feature, contexts and logit tables."""
    from playwright.sync_api import sync_playwright

    feature_set("tiny-transcoder-L0-1")  # the app reads the catalog per page load, so after its start is fine
    url, _ = running_app
    with sync_playwright() as p:
        browser, page = launch(p)
        page.goto(f"{url}/Features")
        page.get_by_text(re.compile(r"^Feature \d+ · layer 0$")).wait_for(timeout=30000)
        page.get_by_text("Top-activating contexts").wait_for(timeout=30000)
        page.get_by_text("Activation histogram").wait_for(timeout=30000)
        page.get_by_text("Lowers logits of").wait_for(timeout=30000)
        page.screenshot(path=str(tmp_path / "features.png"), full_page=True)
        browser.close()
    assert (tmp_path / "features.png").stat().st_size > 10_000
