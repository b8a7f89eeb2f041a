"""Interventions in Chromium (see test_browser.py for the browser): on the committed zoo, pick
transformer-recall on the Interventions page, run a residual patching sweep and see its layer x position
heatmap drawn; on the Attribution graph page, open a graph of the tiny zoo, turn on the Intervene section,
ablate a feature and read the new top logits, the continuation and the graph's prediction."""

import re
import time

import numpy as np
import pytest
from test_browser import CHROMIUM, committed_zoo, launch  # noqa: F401 - committed_zoo: a fixture used below

pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (.ci/run installs it)")

HEATMAP_CELLS = "document.querySelectorAll('.js-plotly-plot .heatmaplayer image').length"


def wait_idle(page, timeout_ms: int = 60000) -> None:
    """Until Streamlit's "running" indicator is gone: the rerun has drawn everything."""
    page.wait_for_function("!document.querySelector('[data-testid=\"stStatusWidget\"] button')"
                           " && !document.querySelector('[data-testid=\"stStatusWidget\"] img')", timeout=timeout_ms)


def choose(page, label: str, option: str) -> None:
    """Pick ``option`` in the selectbox (or multiselect) labelled ``label``."""
    page.get_by_label(label, exact=True).click()
    # the dropdown draws only the options in view (the zoo has more models than fit): type to filter
    page.keyboard.type(option)
    page.get_by_role("option", name=option, exact=True).click()


@pytest.mark.usefixtures("committed_zoo")  # set up before running_app starts the app
def test_patching_sweep_in_chromium(running_app, tmp_path):
    from playwright.sync_api import sync_playwright

    url, _ = running_app
    with sync_playwright() as p:
        browser, page = launch(p)
        page.goto(f"{url}/Interventions")
        page.get_by_text("Stored studies", exact=True).wait_for(timeout=30000)
        choose(page, "Model", "transformer-recall")
        page.get_by_text("Corruption", exact=True).wait_for(timeout=30000)  # the recall task's pairs
        pairs = page.get_by_label("Pairs", exact=True)
        pairs.fill("2")
        pairs.press("Enter")
        wait_idle(page)
        choose(page, "Method", "patch")  # a residual sweep over layers x positions, by default
        wait_idle(page)
        start = time.perf_counter()
        page.get_by_role("button", name="Run", exact=True).click()
        page.wait_for_function(f"{HEATMAP_CELLS} > 0", timeout=60000)
        run_s = time.perf_counter() - start
        wait_idle(page)
        figure = page.locator(".js-plotly-plot").filter(has=page.locator(".heatmaplayer image")).first
        figure.scroll_into_view_if_needed()
        figure.screenshot(path=str(tmp_path / "patching.png"))
        page.screenshot(path=str(tmp_path / "interventions.png"), full_page=True)
        title = figure.locator(".gtitle").first.text_content()
        y_ticks = figure.locator(".ytick text").count()
        x_ticks = figure.locator(".xtick text").count()
        browser.close()
    print(f"patching sweep run and drawn in {run_s:.2f} s ({title!r}); screenshots in {tmp_path}")
    assert title.startswith("transformer-recall: denoise patching of resid_pre")
    assert y_ticks >= 2 and x_ticks >= 2  # layers x positions
    assert (tmp_path / "patching.png").stat().st_size > 10_000


@pytest.fixture
def tiny_graph(tmp_path, monkeypatch):
    """A graph of the tiny zoo's model (no feature data: not needed here), built and catalogued before
    the app starts, so the page opens it as the newest saved graph."""
    from graph_fixtures import tiny_zoo

    from workbench.attribution.jobs import build_graph
    from workbench.store.catalog import Catalog

    bundle, folder, prompt = tiny_zoo(tmp_path / "models", with_features=False)
    return build_graph(bundle, folder, prompt, node_threshold=0.99, catalog=Catalog(), progress=False)


def test_graph_intervention_in_chromium(tiny_graph, running_app, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    url, _ = running_app
    with sync_playwright() as p:
        browser, page = launch(p)
        page.goto(f"{url}/Attribution_graph")
        page.get_by_text(f"Graph {tiny_graph['name']}", exact=True).wait_for(timeout=60000)
        toggle = page.get_by_text("Intervene on this graph's features", exact=True)
        toggle.scroll_into_view_if_needed()
        assert not page.get_by_role("button", name="Run intervention").count()  # closed: nothing drawn
        toggle.click()
        picker = page.get_by_label("Features to change (pinned features come preselected)")
        picker.wait_for(timeout=60000)
        picker.click()
        page.get_by_role("option").filter(has_text=re.compile(r"^L\d+ F\d+ @")).first.click()  # not "Select all"
        page.keyboard.press("Escape")
        box = page.locator("[data-testid=stMultiSelect]").filter(has_text="Features to change")
        expect(box.get_by_role("button", name=re.compile(r"^Remove L\d+ F\d+ @"))).to_have_count(1)  # one feature
        wait_idle(page)
        page.get_by_role("button", name="Run intervention").click()
        page.get_by_text("Change of the graph's logit targets").wait_for(timeout=60000)
        page.get_by_text("Next token: with the intervention (frozen)", exact=True).wait_for(timeout=30000)
        continuation = page.get_by_text("with the intervention (live): …")
        continuation.wait_for(timeout=30000)
        wait_idle(page)
        # the tables are canvas grids whose cells are in the page (hidden, for accessibility) once in view;
        # the graph's prediction is the section's last table
        prediction = page.locator("[data-testid=stDataFrame]").last
        prediction.scroll_into_view_if_needed()
        cells = prediction.locator("td[role=gridcell]")
        cells.first.wait_for(state="attached", timeout=30000)
        headers = prediction.locator("th[role=columnheader]").all_text_contents()
        rows = [[c.text_content() for c in row.locator("td").all()] for row in prediction.locator("tbody tr").all()]
        page.screenshot(path=str(tmp_path / "graph-intervention.png"))
        errors = page.locator("[data-testid=stException], [data-testid=stAlertContentError]").count()
        browser.close()
    assert errors == 0
    assert headers == ["logit target", "graph prediction", "frozen model", "live model"], headers
    predicted, frozen = (np.array([float(r[i]) for r in rows]) for i in (1, 2))
    assert len(rows) >= 2 and np.abs(predicted).max() > 0  # the ablated feature changed the targets
    assert predicted == pytest.approx(frozen, abs=1e-4)  # the frozen model does what the graph predicts
    assert (tmp_path / "graph-intervention.png").stat().st_size > 10_000
