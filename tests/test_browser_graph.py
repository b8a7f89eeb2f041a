"""The Attribution graph page end to end in Chromium (see test_browser.py for the browser): time how long
a pruned graph of about 1,000 nodes and 11,000 edges takes to draw in the graph viewer (issue #6: under
3 s); build a graph from a prompt, click a feature node, read its panel and feature card; import a
circuit-tracer file. The viewer's interactions and their timings: test_browser_graph_viewer.py."""

import statistics
import time
from pathlib import Path

import pytest
from graph_fixtures import save_graph, synthetic_graph, tiny_zoo
from test_browser import CHROMIUM, launch

pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (.ci/run installs it)")

FIXTURE = Path(__file__).parent / "fixtures" / "circuit_tracer_graph.json"
# nodes drawn by the viewer (its frame is same-origin: the page reaches into it); 0 while there is none
POINTS = ("(document.querySelector('iframe[title*=graph_viewer]')?.contentWindow?.__viewer?.visible?.()?.nodes"
          " ?? 0)")
DRAW_LIMIT_S = 3.0


@pytest.fixture
def graph_store(tmp_path, monkeypatch):
    """The tiny zoo (with feature data) and a catalogued synthetic graph that prunes (at its saved
    thresholds, 1.0 and 1.0) to about 1,000 nodes; returns how many nodes the page draws of it."""
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "app"))
    import graph_data

    from workbench.attribution.prune_sparse import prune_graph_sparse

    tiny_zoo(tmp_path / "models")
    graph = synthetic_graph(1300, fan_in=32, n_pos=12)
    save_graph(graph, "synthetic-1k", node_threshold=1.0, edge_threshold=1.0)
    pruned = prune_graph_sparse(graph, 1.0, 1.0)
    view = graph_data.view_from_graph(graph, pruned, *graph_data.cap_to_budget(graph, pruned))
    return len(view), len(view.weight)


def build_and_click(page, tmp_path) -> None:
    from test_browser_graph_viewer import (
        build_graph_in_page,
        click_node,
        feature_with_inputs,
        open_build_form,
        show,
        viewer_frame,
    )

    open_build_form(page)
    assert page.get_by_label("Prompt", exact=True).input_value().startswith("<bos>")  # the task's example
    build_graph_in_page(page, form_open=True)
    frame = viewer_frame(page)
    show(page)
    click_node(page, frame, feature_with_inputs(frame))
    assert frame.locator("#panel-title").text_content() == "Feature node"
    frame.get_by_text("Strongest inputs", exact=True).wait_for(timeout=5000)
    frame.get_by_text("Top-activating contexts", exact=True).first.wait_for(timeout=5000)
    page.screenshot(path=str(tmp_path / "graph.png"), full_page=True)
    page.screenshot(path=str(tmp_path / "graph-node.png"))


def test_graph_page_in_chromium(graph_store, running_app, tmp_path):
    from playwright.sync_api import sync_playwright

    n_nodes, n_edges = graph_store
    url, _ = running_app
    with sync_playwright() as p:
        browser, page = launch(p)
        start = time.perf_counter()
        page.goto(f"{url}/Attribution_graph")  # opens the newest catalogued graph: synthetic-1k
        page.wait_for_function(f"{POINTS} >= {n_nodes}", timeout=60000, polling=50)
        cold_s = time.perf_counter() - start

        draws = []  # the app is warm: what a user waits for when opening the graph; median of three
        for _ in range(3):
            page.get_by_text("Build from a prompt").click()
            page.get_by_role("button", name="Build graph").wait_for(timeout=30000)
            page.wait_for_function(f"{POINTS} < {n_nodes}", timeout=30000)  # the big graph is gone
            start = time.perf_counter()
            page.get_by_text("Saved graphs").click()
            page.wait_for_function(f"{POINTS} >= {n_nodes}", timeout=30000, polling=20)
            draws.append(time.perf_counter() - start)
        draw_s = statistics.median(draws)
        page.screenshot(path=str(tmp_path / "graph-1k.png"), full_page=True)
        build_and_click(page, tmp_path)  # after the timing: a built graph becomes the newest saved one
        page.get_by_text("Import a file").click()  # an uploaded circuit-tracer file opens too
        page.locator("input[type=file]").set_input_files(str(FIXTURE))
        page.get_by_text("Graph dallas-is-in-toy").wait_for(timeout=30000)
        browser.close()
    print(f"graph of {n_nodes} nodes and {n_edges} edges drawn in {draw_s:.2f} s (median of "
          f"{', '.join(f'{d:.2f}' for d in draws)}; "
          f"first load of the page, cold: {cold_s:.2f} s); screenshots in {tmp_path}")
    for name in ("graph.png", "graph-node.png", "graph-1k.png"):
        assert (tmp_path / name).stat().st_size > 10_000
    assert draw_s < DRAW_LIMIT_S, f"the {n_nodes}-node graph took {draw_s:.2f} s to draw"
