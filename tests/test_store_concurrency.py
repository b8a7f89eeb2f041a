"""Many writers on one artifacts root at once (issue 17's acceptance test), and a writer that cannot reach
the catalog in time: every artifact ends up published, complete and catalogued (or re-indexable).

The multi-process tests start one Python process (``python -c``, :func:`launcher_main`) that imports the
workbench once and forks one process per writer and one reader; a start file lines them up so the
writers publish at the same moment."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
import traceback
from pathlib import Path

import pytest

from workbench.store import Catalog

TESTS = Path(__file__).resolve().parent
READY_TIMEOUT_S = 180


# -- in the child processes --------------------------------------------------------------------------

def _line_up(spec: dict) -> None:
    """Say ready, then wait for the parent's start file."""
    Path(spec["work"], f"ready-{spec['id']}").touch()
    deadline = time.monotonic() + READY_TIMEOUT_S
    while not Path(spec["work"], "go").exists():
        if time.monotonic() > deadline:
            raise TimeoutError("no start file")
        time.sleep(0.005)


def _read_until_stopped(spec: dict) -> None:
    """Read the catalog in a tight loop (list, get-or-miss, a query) until the stop file appears."""
    catalog, reads = Catalog(spec["root"]), 0
    _line_up(spec)  # a reader spinning meanwhile would slow the writers' start-up on a 2-core machine
    while not Path(spec["work"], "stop").exists():
        catalog.list("graph")
        catalog.list("dictionary")
        catalog.query("SELECT kind, count(*) FROM artifacts GROUP BY kind")
        reads += 1
    Path(spec["work"], "reads").write_text(str(reads))


def _publish(spec: dict) -> None:
    from workbench.store.model_files import load_model_folder

    bundle, catalog = load_model_folder(spec["model"]), Catalog(spec["root"])
    if spec["role"] == "graph":
        from workbench.attribution.jobs import build_graph

        _line_up(spec)
        build_graph(bundle, spec["dicts"], spec["prompt"], catalog=catalog, name=spec["name"], progress=False)
    elif spec["role"] == "dictionaries":
        from workbench.dictionaries.jobs import train_set

        _line_up(spec)
        train_set(bundle, "transcoder", "topk", 4, 32, spec["layers"], steps=3, batch_size=64, lr=1e-3, out=None,
                  activations="live", n_sequences=16, catalog=catalog, n_eval=8, progress=False)


def _child(spec: dict) -> None:
    """One forked process: its output goes to ``log-<id>.txt``; it exits 0 only if its job succeeded."""
    code = 1
    try:
        log = os.open(Path(spec["work"], f"log-{spec['id']}.txt"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        os.dup2(log, 1)
        os.dup2(log, 2)
        if spec["role"] == "reader":
            _read_until_stopped(spec)
        elif spec["role"] == "burst":
            _line_up(spec)
            catalog, folder = Catalog(spec["root"]), Path(spec["root"], "studies", str(spec["id"]))
            folder.mkdir(parents=True)
            for j in range(spec["n"]):
                catalog.register("study", f"w{spec['id']}-{j}", folder, {"j": j})
        else:
            _publish(spec)
        code = 0
    except BaseException:  # noqa: BLE001 - reported through the log and the exit code
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        Path(spec["work"], f"done-{spec['id']}").write_text(str(code))
        os._exit(code)


def launcher_main(raw: str) -> None:
    """Import the workbench once, then fork one process per spec (importing torch six times over would
    take most of the test's time on two cores); write their exit codes to ``codes.json``."""
    import torch

    torch.set_num_threads(1)
    specs, pids = json.loads(raw), {}
    if any(spec["role"] in ("graph", "dictionaries") for spec in specs):
        import workbench.attribution.jobs
        import workbench.dictionaries.jobs
        import workbench.store.model_files  # noqa: F401
    for spec in specs:
        pid = os.fork()
        if pid == 0:
            _child(spec)
        pids[pid] = spec["id"]
    codes = {}
    for _ in pids:
        pid, status = os.wait()
        codes[pids[pid]] = os.waitstatus_to_exitcode(status)
    Path(specs[0]["work"], "codes.json").write_text(json.dumps(codes))


# -- in the test process -----------------------------------------------------------------------------

def _run_at_once(writers: list[dict], work: Path, root: Path) -> tuple[list[int], list[str], int]:
    """Start a reader and the writers (separate processes); start the writers together; return their
    exit codes, their logs and how many reads the reader made (it must end without an error)."""
    specs = [{"id": "reader", "role": "reader", "root": str(root), "work": str(work)}, *writers]
    code = "import sys; sys.path.insert(0, sys.argv[1]); import test_store_concurrency as t; t.launcher_main(sys.argv[2])"
    env = os.environ | {"OMP_NUM_THREADS": "1", "WB_ARTIFACTS": str(root)}
    with open(work / "launcher.txt", "w") as out:
        launcher = subprocess.Popen([sys.executable, "-c", code, str(TESTS), json.dumps(specs)], stdout=out,
                                    stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while len(list(work.glob("ready-*"))) < len(specs):
            assert time.monotonic() < deadline and launcher.poll() is None, (work / "launcher.txt").read_text()
            time.sleep(0.02)
        (work / "go").touch()
        while not all((work / f"done-{s['id']}").exists() for s in writers):
            assert time.monotonic() < deadline + 240 and launcher.poll() is None, (work / "launcher.txt").read_text()
            time.sleep(0.02)
        (work / "stop").touch()
        assert launcher.wait(timeout=240) == 0, (work / "launcher.txt").read_text()
    finally:
        if launcher.poll() is None:  # a failed wait: stop the launcher and every process it forked
            os.killpg(launcher.pid, signal.SIGKILL)
    codes = json.loads((work / "codes.json").read_text())
    logs = [(work / f"log-{s['id']}.txt").read_text() for s in writers]
    assert codes["reader"] == 0, (work / "log-reader.txt").read_text()
    return [codes[str(s["id"])] for s in writers], logs, int((work / "reads").read_text())


def _temporaries(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.name.endswith((".tmp", ".staging"))]


def test_six_writers_publish_at_once_while_a_reader_reads(tmp_path):
    from test_graph_job import _dict_set, _model_folder, _prompt

    from workbench.attribution.graph import Graph
    from workbench.attribution.graph_file import load_graph_json
    from workbench.attribution.jobs import load_summary
    from workbench.dictionaries.dictionary_set import load_dictionary_set

    bundle = _model_folder(tmp_path / "model")
    dicts, root, work = _dict_set(tmp_path / "dicts", bundle), tmp_path / "root", tmp_path / "work"
    work.mkdir()
    common = {"root": str(root), "work": str(work), "model": str(bundle.folder)}
    writers = [common | {"id": i, "role": "graph", "name": f"g{i}", "dicts": str(dicts), "prompt": _prompt(bundle)}
               for i in range(4)]
    writers += [common | {"id": 4 + l, "role": "dictionaries", "layers": str(l)} for l in range(2)]
    codes, logs, reads = _run_at_once(writers, work, root)
    assert codes == [0] * 6, "\n".join(logs)
    assert not any("wb store reindex" in log for log in logs), "\n".join(logs)  # nobody gave up on the catalog
    assert reads > 0
    catalog = Catalog(root)
    graphs = {r["name"]: r["path"] for r in catalog.list("graph")}
    sets = {r["name"]: r["path"] for r in catalog.list("dictionary") if "/" not in r["name"]}
    assert sorted(graphs) == ["g0", "g1", "g2", "g3"]
    assert sorted(sets) == ["tiny-recall-transcoder-L0", "tiny-recall-transcoder-L1"]
    for name, folder in graphs.items():  # every published folder is whole
        assert Graph.load(folder).n_features > 0 and load_summary(folder)["n_nodes"] > 0
        assert load_graph_json(folder / "neuronpedia.json").metadata["slug"] == name
    for name, folder in sets.items():
        members, meta = load_dictionary_set(folder)
        assert list(members) == [f"layer{name[-1]}"] and meta["layers"] == [int(name[-1])]
    assert _temporaries(root) == []


def test_bursts_of_registers_from_four_processes_all_land(tmp_path):
    root, work = tmp_path / "root", tmp_path / "work"
    work.mkdir()
    writers = [{"id": i, "role": "burst", "n": 15, "root": str(root), "work": str(work)} for i in range(4)]
    codes, logs, _ = _run_at_once(writers, work, root)
    assert codes == [0] * 4, "\n".join(logs)
    rows = Catalog(root).list("study")
    assert sorted(r["name"] for r in rows) == sorted(f"w{i}-{j}" for i in range(4) for j in range(15))
    assert {r["name"]: r["meta"]["j"] for r in rows}["w3-14"] == 14
    assert len(list((root / "manifests" / "study").glob("*.json"))) == 60 and _temporaries(root) == []


def test_a_writer_blocked_past_the_timeout_leaves_its_artifact_re_indexable(tmp_path, caplog):
    from workbench.store import CatalogBusy

    catalog = Catalog(tmp_path / "root")
    folder = catalog.root / "graphs" / "late"
    folder.mkdir(parents=True)
    catalog.register("graph", "early", folder)
    impatient = Catalog(catalog.root, timeout=0.3)
    with catalog.lock.hold(exclusive=True, timeout=1), caplog.at_level(logging.WARNING):
        start = time.monotonic()
        impatient.register("graph", "late", folder, {"n": 1})  # returns: the work is not lost
        waited = time.monotonic() - start
        with pytest.raises(CatalogBusy, match="stayed locked by other processes for 0.3 s"):
            impatient.list("graph")
    assert 0.3 <= waited < 5
    assert "'late' is published" in caplog.text and "wb store reindex" in caplog.text
    assert (catalog.root / "manifests" / "graph" / "late.json").is_file()
    assert [r["name"] for r in catalog.list("graph")] == ["early"]
    done = catalog.reindex()
    assert sorted(done.restored) == [("graph", "early"), ("graph", "late")]
    assert catalog.get("graph", "late")["meta"] == {"n": 1}


def test_a_reader_waits_for_a_short_write_instead_of_failing(tmp_path):
    import threading

    catalog = Catalog(tmp_path / "root")
    catalog.register("graph", "g", catalog.root)
    held = threading.Event()

    def hold_briefly():
        with catalog.lock.hold(exclusive=True, timeout=1):
            held.set()
            time.sleep(0.3)

    thread = threading.Thread(target=hold_briefly)
    thread.start()
    held.wait()
    start = time.monotonic()
    assert [r["name"] for r in catalog.list("graph")] == ["g"]
    assert time.monotonic() - start >= 0.2  # it waited for the writer, then read
    thread.join()
