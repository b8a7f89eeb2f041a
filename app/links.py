"""Links between pages: a relative URL that opens one feature on the Features page, and its inverse.

A link names the dictionary set by its path relative to the zoo (``root=models``) or to the artifacts
root (``root=artifacts``), never by an absolute path, so a link copied to another machine (or a graph
file's link) still opens the same entry there::

    Features?root=models&set=transformer-recall/dictionaries/transcoders&layer=0&feature=12

Streamlit names the page ``app/pages/2_Features.py`` ``Features`` (the number prefix and the ``.py``
are dropped), and a relative URL resolves against the app's base, so the link works under any host.
Plain Python, no streamlit: the graph component and tests build links with it.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from urllib.parse import urlencode

from workbench.store.catalog import artifacts_root, inside_root, models_root

FEATURES_PAGE = "Features"
GRAPH_PAGE = "Attribution_graph"  # app/pages/3_Attribution_graph.py; it opens ``?graph=<catalog name>``
ROOTS = ("models", "artifacts")
PARAMS = ("root", "set", "layer", "feature")


def _root(name: str) -> Path:
    if name not in ROOTS:
        raise ValueError(f"unknown root {name!r}; choose one of: {', '.join(ROOTS)}")
    return models_root().resolve() if name == "models" else artifacts_root()


def relative_set(set_folder: str | Path) -> tuple[str, str]:
    """(root name, path relative to it) of a set folder inside the zoo or the artifacts root; a relative
    path is taken from the artifacts root. PermissionError for a folder outside both."""
    path = Path(set_folder)
    resolved = (path if path.is_absolute() else artifacts_root() / path).resolve()
    for name in ROOTS:  # the zoo first: an artifacts root inside the checkout must not claim models/
        root = _root(name)
        if resolved == root or root in resolved.parents:
            return name, resolved.relative_to(root).as_posix()
    raise PermissionError(f"the dictionary set {set_folder} is outside the zoo {_root('models')} and the "
                          f"artifacts root {_root('artifacts')}; the Features page opens sets only from those")


def features_params(set_folder: str | Path, layer: int, feature: int) -> dict[str, str]:
    """The query parameters of :func:`features_link`, as ``st.query_params`` holds them."""
    root, rel = relative_set(set_folder)
    return {"root": root, "set": rel, "layer": str(int(layer)), "feature": str(int(feature))}


def features_link(set_folder: str | Path, layer: int, feature: int) -> str:
    """``Features?root=..&set=..&layer=..&feature=..``: the Features page opened on one feature."""
    return f"{FEATURES_PAGE}?{urlencode(features_params(set_folder, layer, feature))}"


def graph_link(name: str) -> str:
    """``Attribution_graph?graph=<name>``: the Attribution graph page opened on a catalogued graph."""
    return f"{GRAPH_PAGE}?{urlencode({'graph': str(name)})}"


def _whole(params: Mapping, name: str) -> int:
    value = params.get(name)
    value = value[0] if isinstance(value, list) and value else value
    if value is None or not str(value).isdigit():
        raise ValueError(f"the link's {name} {value!r} is not a whole number")
    return int(value)


def features_target(params: Mapping) -> tuple[Path, int, int] | None:
    """(set folder, layer, feature) a link names, from the page's query parameters; None when they name
    no feature (the page opened plainly). ValueError (bad numbers, unknown root) or PermissionError
    (a ``set`` leading outside its root) say what is wrong with the link."""
    if not params.get("set"):
        return None
    root, rel = str(params.get("root") or "artifacts"), str(params.get("set"))
    if Path(rel).is_absolute():
        raise PermissionError(f"the link names the set by the absolute path {rel!r}; links name sets relative "
                              "to the zoo or the artifacts root")
    folder = inside_root(_root(root), rel, what=f"the {root} root")
    return folder, _whole(params, "layer"), _whole(params, "feature")


__all__ = ["FEATURES_PAGE", "GRAPH_PAGE", "PARAMS", "features_link", "features_params", "features_target", "graph_link", "relative_set"]
