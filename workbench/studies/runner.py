"""Run a study: a spec in, parquet tables and plotly figures in the store out, resumable and deterministic.

1. Load and check the spec (:mod:`.spec`); ``--quick`` merges its ``quick`` overrides and runs under
   ``<name>-quick``, so a quick run never mixes with the full one.
2. The study folder is ``<artifacts>/studies/<name>/``. Its ``spec.json`` holds the spec's digest: a
   folder written by a *different* spec is an error (no silent overwrite) unless ``fresh``.
3. The work is units, one per (step, model), in spec order. A unit's seed derives from the study seed,
   the step index and the model name, so a unit gives the same bytes whether it ran first or after a
   resume, alone or with the others.
4. Each unit writes ``tables/<unit>.parquet`` and ``figures/<unit>.json`` atomically, table last; a unit
   whose table exists is skipped, so a stopped run resumes where it stopped.
5. When every unit is done, ``study.json`` (spec, digest, units with their summaries) is written and the
   study is catalogued (kind ``study``), after its files are published.
6. :func:`publish_study` copies a finished study beside its spec (``studies/<study>/results``), and
   :func:`register_published_studies` catalogues those copies (``wb demo`` does), so a fresh checkout's
   app shows the committed results.
"""

from __future__ import annotations

import hashlib
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from workbench.store.atomic import (
    atomic_write_json,
    atomic_write_parquet,
    atomic_write_text,
    publish_dir,
    read_json,
    staging_dir,
)
from workbench.store.catalog import Catalog, inside_root, models_root
from workbench.studies.methods import METHODS, UnitContext
from workbench.studies.spec import StudySpec, load_spec

STUDY_FILE, SPEC_FILE = "study.json", "spec.json"


@dataclass
class StudyResult:
    name: str
    folder: Path
    units: list[dict]
    resumed: int


def unit_seed(seed: int, step_index: int, model: str) -> int:
    digest = hashlib.sha256(f"{seed}/{step_index}/{model}".encode()).digest()
    return int.from_bytes(digest[:6], "big")


def resolve_model(name: str, models_dir: Path) -> Path:
    """A zoo name (``transformer-recall``) or a model folder path."""
    candidate = Path(name)
    if "/" not in name and (models_dir / name / "config.json").is_file():
        return models_dir / name
    if (candidate / "config.json").is_file():
        return candidate.resolve()
    zoo = sorted(p.parent.name for p in models_dir.glob("*/config.json"))
    raise FileNotFoundError(f"study model {name!r} is neither a zoo model in {models_dir} nor a model folder; "
                            f"zoo models: {', '.join(zoo) or 'none'}")


def _prepare_folder(spec: StudySpec, folder: Path, fresh: bool) -> None:
    if fresh and folder.exists():
        shutil.rmtree(folder)
    marker = folder / SPEC_FILE
    if marker.is_file():
        recorded = read_json(marker).get("digest")
        if recorded != spec.digest():
            raise ValueError(f"study folder {folder} holds results of a different spec (digest {recorded}, this "
                             f"spec {spec.digest()}); rename the study or pass --fresh to start over")
    else:
        atomic_write_json(marker, {"digest": spec.digest(), "spec": spec.canonical()})


def _run_units(spec: StudySpec, folder: Path, model_paths: dict, contexts: dict, log) -> tuple[list[dict], int]:
    """Steps 3-4: every (step, model) unit in spec order; finished ones are kept, not rerun."""
    units, resumed = [], 0
    for index, step in enumerate(spec.steps):
        for model_name, model_path in model_paths.items():
            unit = f"{index:02d}-{step.label}-{model_path.name}"
            table_path = folder / "tables" / f"{unit}.parquet"
            summary_path = folder / "summaries" / f"{unit}.json"
            if table_path.is_file() and summary_path.is_file():
                units.append(read_json(summary_path))
                resumed += 1
                log(f"{unit}: done before, kept")
                continue
            result = METHODS[step.method].run(contexts[index, model_name])
            if result.figure is not None:
                atomic_write_text(folder / "figures" / f"{unit}.json", result.figure.to_json())
            summary = {"unit": unit, "method": step.method, "label": step.label, "model": model_path.name,
                       "model_folder": str(model_path), "params": step.params,
                       "table": f"tables/{unit}.parquet",
                       "figure": f"figures/{unit}.json" if result.figure is not None else None,
                       "summary": result.summary}
            atomic_write_json(summary_path, summary)
            atomic_write_parquet(table_path, result.table)
            units.append(summary)
            log(f"{unit}: " + ", ".join(f"{k} {v}" for k, v in result.summary.items()))
    return units, resumed


def run_study(spec: StudySpec | str | Path, catalog: Catalog | None = None, *, quick: bool = False,
              fresh: bool = False, models_dir: Path | None = None,
              log: Callable[[str], None] = lambda _: None) -> StudyResult:
    spec = spec if isinstance(spec, StudySpec) else load_spec(spec)
    spec = spec.quick_version() if quick else spec
    catalog = catalog or Catalog()
    models_dir = models_root(models_dir)
    folder = inside_root(catalog.root, Path("studies") / spec.name)
    model_paths = {m: resolve_model(m, models_dir) for m in spec.models}
    bundles: dict = {}  # each model loads once, shared by its units
    contexts = {(index, name): UnitContext(path, {**spec.prompts, **step.prompts}, step.params,
                                           unit_seed(spec.seed, index, name), log, bundles)
                for index, step in enumerate(spec.steps) for name, path in model_paths.items()}
    for ctx in contexts.values():
        ctx.pairs  # noqa: B018  (bad prompts, unknown tokens, unequal lengths: fail before writing anything)
    created = not folder.exists()
    _prepare_folder(spec, folder, fresh)
    try:
        units, resumed = _run_units(spec, folder, model_paths, contexts, log)
    except BaseException:
        if created and not any((folder / "tables").glob("*.parquet")):
            shutil.rmtree(folder, ignore_errors=True)  # a first run that finished nothing leaves nothing
        raise
    meta = {"name": spec.name, "digest": spec.digest(), "spec": spec.canonical(), "source": spec.source,
            "description": spec.description, "units": units}
    atomic_write_json(folder / STUDY_FILE, meta)
    catalog.register("study", spec.name, folder, {k: v for k, v in meta.items() if k != "units"}
                     | {"n_units": len(units), "methods": sorted({s.method for s in spec.steps})})
    return StudyResult(spec.name, folder, units, resumed)


def publish_study(folder: str | Path, dest: str | Path) -> Path:
    """Copy a finished study (``study.json``, tables, figures, summaries) to ``dest`` atomically, e.g. into
    the checkout's ``studies/<study>/results`` so the measured results travel with the code."""
    folder, dest = Path(folder), Path(dest)
    if not (folder / STUDY_FILE).is_file():
        raise FileNotFoundError(f"{folder} holds no finished study ({STUDY_FILE}); run it to the end first")
    stage = staging_dir(dest)
    for item in (STUDY_FILE, SPEC_FILE, "tables", "figures", "summaries"):
        source = folder / item
        if source.is_dir():
            shutil.copytree(source, stage / item)
        elif source.is_file():
            shutil.copy2(source, stage / item)
    return publish_dir(stage, dest)


def register_published_studies(studies_dir: str | Path, catalog: Catalog) -> list[str]:
    """Catalogue every published study under ``studies_dir`` (``*/results/study.json``), so the app lists
    the committed results beside the ones run on this machine."""
    names = []
    for path in sorted(Path(studies_dir).glob(f"*/results/{STUDY_FILE}")):
        meta = read_json(path)
        catalog.register("study", meta["name"], path.parent, {k: v for k, v in meta.items() if k != "units"}
                         | {"n_units": len(meta["units"]), "published": True,
                            "methods": sorted({u["method"] for u in meta["units"]})})
        names.append(meta["name"])
    return names


def load_study(folder: str | Path) -> dict:
    """``study.json`` with each unit's table (DataFrame) and figure JSON text attached."""
    folder = Path(folder)
    meta = read_json(folder / STUDY_FILE)
    for unit in meta["units"]:  # paths come from a file: they must stay inside the study folder
        unit["frame"] = pd.read_parquet(inside_root(folder, unit["table"], "the study folder"))
        figure = unit.get("figure")
        unit["figure_json"] = inside_root(folder, figure, "the study folder").read_text() if figure else None
    return meta
