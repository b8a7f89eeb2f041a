"""The Features page in Debian's Chromium (Playwright) against `wb app`: a link made by
``links.features_link`` opens the feature it names (Streamlit's page name and the query parameters), the
URL follows a new pick, and a label typed and saved shows on the page and in ``labels.json``."""

import re
import sys

import pytest
from test_browser import CHROMIUM, launch

from workbench.dictionaries.labels import user_labels

pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (.ci/run installs it)")


def test_features_link_and_label_in_chromium(feature_set, running_app, tmp_path):
    from playwright.sync_api import sync_playwright
    from test_app import APP

    folder = feature_set("a-transcoder")
    feature_set("b-clt", kind="clt")
    sys.path.insert(0, str(APP))
    import links

    link = links.features_link(tmp_path / "artifacts" / "dictionaries" / "b-clt", 1, 7)
    assert str(tmp_path) not in link
    url, _ = running_app
    with sync_playwright() as p:
        browser, page = launch(p)
        page.goto(f"{url}/{link}")
        page.get_by_text("Feature 7 · layer 1", exact=True).wait_for(timeout=30000)
        page.get_by_text("Activations on my text").wait_for(timeout=30000)
        page.screenshot(path=str(tmp_path / "features-link.png"), full_page=True)
        assert "set=dictionaries%2Fb-clt" in page.url or "set=dictionaries/b-clt" in page.url

        page.goto(f"{url}/{links.features_link(folder, 0, 2)}")
        page.get_by_text("Feature 2 · layer 0", exact=True).wait_for(timeout=30000)
        box = page.get_by_role("textbox", name="Label")
        box.fill("copies the key")
        box.press("Enter")  # commits the box (a rerun) before the button is clicked
        page.wait_for_timeout(1000)
        page.get_by_role("button", name="Save label").click()
        page.get_by_text("Label saved.").wait_for(timeout=30000)
        page.get_by_text("copies the key", exact=True).first.wait_for(timeout=30000)
        page.screenshot(path=str(tmp_path / "features-label.png"), full_page=True)
        browser.close()
    assert user_labels(folder) == {(0, 2): "copies the key"}
    link = links.features_link(folder, 0, 2)
    assert re.search(r"feature=2$", link) and "root=artifacts" in link
