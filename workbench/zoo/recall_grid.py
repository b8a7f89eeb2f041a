"""The recall sweep in the Zoology manner (issue #16): which models solve single-query recall, at
which width and learning rate.

Zoology (Arora et al. 2023) trains each mixer at several widths, sweeps the learning rate at each, and
plots the best accuracy against d_model. We do the same on the zoo's recall recipe:

1. The grid: architecture variants (:data:`VARIANTS`: the four recurrent mixers, RWKV, minGRU and LSTM
   also with a short causal convolution in front, Mamba with a larger state; the Transformer and xLSTM as
   references) x d_model (64, 128, 256) x learning rates (:data:`LRS`). 2 layers, d_mlp = 4 d_model.
2. Each point is one run of the shared trainer (:func:`workbench.training.train`) on ``recall_multi``
   (eight queries a row, the zoo's recipe), evaluated every ``eval_every`` steps on single-query
   ``recall`` and stopped early at 99% (:data:`STOP_AT`). A finished run is measured on 2,000 test rows,
   as the zoo cards are, and writes ``result.json`` (atomic).
3. Runs live in ``<artifacts>/sweeps/recall/runs/<run>/``. A process claims a run with the folder's
   writer lock (:func:`workbench.store.names.sole_writer`), so several processes share one grid (each
   skips runs another holds or finished), and a killed run resumes from its checkpoint. A run that
   neither stopped early nor reached a larger ``--steps`` given later resumes to it (:func:`finished`);
   ``fresh`` runs train a budget from scratch instead, as their own grid points (``-s<steps>``), so that
   their learning-rate schedule is one and they can be promoted.
4. A run that solves recall becomes a zoo entry with :func:`entry_recipe`'s fields; :func:`promote`
   hands its checkpoints to ``wb zoo build``, which then trains nothing, while a fresh machine retrains
   the entry to the same weights.
5. :func:`sweep_table` collects every ``result.json`` into ``table.parquet``; :func:`best_rows` keeps the
   best learning rate per (variant, d_model). Zoology compares mixers at one budget, so the table and
   the plot (:func:`sweep_figure`) draw the grid's budget (:data:`GRID_STEPS`) as the lines and report
   longer schedules (:func:`longer_schedule`) beside them, never mixed into the same cell or line.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import pandas as pd
import torch

from workbench.architectures import count_parameters, model_config
from workbench.store.atomic import atomic_write_parquet, atomic_write_text
from workbench.store.names import FolderBusy, sole_writer
from workbench.training import TrainConfig, train

# name -> (architecture, model overrides, training task). The recurrent models at the zoo's settings
# (Mamba with expand 1: the [B, T, d_inner, N] scan dominates its CPU cost).
RECALL_MULTI = {"name": "recall_multi", "n_queries": 8}
VARIANTS: dict[str, tuple[str, dict, dict]] = {
    "rwkv": ("rwkv", {}, RECALL_MULTI),
    "rwkv-conv4": ("rwkv", {"conv_kernel": 4}, RECALL_MULTI),
    "mamba": ("mamba", {"expand": 1, "d_state": 16}, RECALL_MULTI),
    "mamba-N64": ("mamba", {"expand": 1, "d_state": 64}, RECALL_MULTI),
    "mingru": ("mingru", {}, RECALL_MULTI),
    "mingru-conv4": ("mingru", {"conv_kernel": 4}, RECALL_MULTI),
    "lstm": ("lstm", {}, RECALL_MULTI),
    "lstm-conv4": ("lstm", {"conv_kernel": 4}, RECALL_MULTI),
    "mingru-conv4-curriculum": ("mingru", {"conv_kernel": 4}, {"name": "recall", "min_pairs": 1}),
    "tokenformer": ("tokenformer", {}, RECALL_MULTI),
    "gyro": ("gyro", {}, RECALL_MULTI),
    # the zoo's recall Transformer (rotary positions); with learned absolute positions it stayed on the
    # plateau through 2,000 steps at d_model 64 (both learning rates)
    "transformer": ("transformer", {"n_heads": 4, "positional_embedding_type": "rotary"}, RECALL_MULTI),
    "transformer-abspos": ("transformer", {"n_heads": 4}, RECALL_MULTI),
    "xlstm": ("xlstm", {"n_heads": 4, "slstm_at": []}, RECALL_MULTI),
}
MAIN_VARIANTS = ("rwkv", "rwkv-conv4", "mamba", "mingru", "mingru-conv4", "lstm", "lstm-conv4")
REFERENCES = ("transformer", "xlstm")
WIDTHS = (64, 128, 256)
LRS = (3e-4, 1e-3, 3e-3, 1e-2)
REFERENCE_LRS = (1e-3, 3e-3)  # the zoo's Transformer recipe is lr 1e-3
STOP_AT = 0.99
GRID_STEPS = 2000  # every grid point's budget; longer schedules (--steps N [--fresh]) are reported apart
EVAL_TASK = {"name": "recall"}
MEASURE_EXAMPLES = 2000
SWEEP_DIR = Path("sweeps") / "recall"
PUBLISHED = "recall-sweep.parquet"  # the committed copy of the table, beside the zoo (models/)
PUBLISHED_FIGURE = "recall-sweep.svg"  # its plot, for the README


@dataclass(frozen=True)
class RunSpec:
    variant: str
    d_model: int
    lr: float
    steps: int = GRID_STEPS
    seed: int = 0
    fresh: bool = False  # a budget of its own (one schedule from step 0), not a resumed 2000-step run

    @property
    def name(self) -> str:
        return f"{self.variant}-d{self.d_model}-lr{self.lr:g}" + (f"-s{self.steps}" if self.fresh else "")

    def model_overrides(self) -> dict:
        _arch, extra, _task = VARIANTS[self.variant]
        return {"n_layers": 2, "d_model": self.d_model, "d_mlp": 4 * self.d_model, **extra}

    def train_config(self) -> TrainConfig:
        return TrainConfig(steps=self.steps, batch_size=64, lr=self.lr, warmup_steps=100, eval_every=250,
                           checkpoint_every=250, seed=self.seed)


def check_variants(names) -> list[str]:
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        raise ValueError(f"unknown recall-sweep variant(s) {unknown}; choose from: {', '.join(VARIANTS)}")
    return list(names)


def grid(variants=None, widths=WIDTHS, lrs=None, steps: int = GRID_STEPS, fresh: bool = False) -> list[RunSpec]:
    """The runs, cheapest first (by width, then variant, then learning rate); references at their rates."""
    variants = check_variants(variants or (*MAIN_VARIANTS, *REFERENCES))
    runs = [RunSpec(v, w, lr, steps, fresh=fresh) for w in widths for v in variants
            for lr in (lrs or (REFERENCE_LRS if v in REFERENCES else LRS))]
    return runs


def run_dir(root: Path, spec: RunSpec) -> Path:
    return root / SWEEP_DIR / "runs" / spec.name


def finished(folder: Path, spec: RunSpec) -> dict | None:
    """The run's recorded result if it is final for ``spec``: it stopped early, or it trained at least
    ``spec.steps`` steps. A result under a smaller budget is not final: a larger ``steps`` resumes the
    run from its last checkpoint (the trainer lets ``steps`` grow), so a promising run can go on."""
    done = folder / "result.json"
    if not done.is_file():
        return None
    row = json.loads(done.read_text())
    return row if row.get("stopped_early") is not None or row["steps_trained"] >= spec.steps else None


def run_one(spec: RunSpec, root: Path, progress: bool = False) -> dict | None:
    """Train, measure and record one grid point; ``None`` if another process holds it right now."""
    folder = run_dir(root, spec)
    row = finished(folder, spec)
    if row is not None:
        return row
    try:
        with sole_writer(folder, "recall-sweep run"):
            row = finished(folder, spec)  # another process may have finished it meanwhile
            return row if row is not None else _train_and_measure(spec, folder, progress)
    except FolderBusy:
        return None


def _train_and_measure(spec: RunSpec, folder: Path, progress: bool) -> dict:
    from workbench.zoo.build import measure, task_from_spec  # here: entries.py imports this module

    arch, _extra, task_spec = VARIANTS[spec.variant]
    task, eval_task = task_from_spec(task_spec), task_from_spec(EVAL_TASK)
    config = model_config(arch, task.tokenizer.vocab_size, task.seq_len, **spec.model_overrides())
    started = time.perf_counter()
    result = train(config, task, spec.train_config(), folder, progress=progress, eval_task=eval_task,
                   stop_at=STOP_AT)
    measured = measure(result.model, eval_task, MEASURE_EXAMPLES)
    curve = result.curves[(result.curves.split == "test") & (result.curves.metric == "accuracy")]
    row = {**asdict(spec), "run": spec.name, "architecture": arch, "params": count_parameters(result.model),
           "steps_trained": result.steps, "stopped_early": result.extra.get("stopped_early"),
           "accuracy": measured["test_accuracy"], "answer_loss": measured["test_answer_loss"],
           "examples": measured["test_examples"], "train_seconds": round(result.elapsed_s, 1),
           "wall_seconds": round(time.perf_counter() - started, 1),
           "curve": [[int(s), round(float(v), 4)] for s, v in zip(curve.step, curve.value, strict=True)],
           "torch_threads": torch.get_num_threads()}
    atomic_write_text(folder / "result.json", json.dumps(row, indent=1))
    return row


def entry_recipe(spec: RunSpec, steps_trained: int) -> dict:
    """The ``ZooEntry`` fields that rebuild a grid run exactly: the same model, task, training config
    and seed, stopped where the run stopped (``stop_after``; the learning-rate schedule is the run's)."""
    arch, _extra, task = VARIANTS[spec.variant]
    return {"architecture": arch, "task": task, "eval_task": EVAL_TASK, "model": spec.model_overrides(),
            "train": spec.train_config(), "stop_after": steps_trained if steps_trained < spec.steps else None}


def budget_grew(root: Path, spec: RunSpec) -> bool:
    """Whether the run was resumed with a larger ``steps`` (the trainer notes it in ``train.log``)."""
    log = run_dir(root, spec) / "train.log"
    return log.is_file() and "train.steps:" in log.read_text()


def promote(root: Path, spec: RunSpec, entry_name: str, replace: bool = False) -> Path:
    """Copy a finished run's checkpoints to ``<root>/runs/<entry_name>``, where ``wb zoo build`` looks:
    the build then resumes at the run's last step and trains nothing (the entry must hold
    :func:`entry_recipe`'s fields; a different config is refused by the trainer's resume check).
    ``replace`` moves an existing run folder of the entry aside (``<entry_name>.replaced-<UTC time>``)
    instead of refusing; nothing is deleted."""
    import shutil
    import time

    source, target = run_dir(root, spec) / "checkpoints", root / "runs" / entry_name / "checkpoints"
    if not (run_dir(root, spec) / "result.json").is_file():
        raise FileNotFoundError(f"recall-sweep run {spec.name} has not finished; nothing to promote")
    if budget_grew(root, spec):
        raise ValueError(f"recall-sweep run {spec.name} was resumed with a larger step budget, so its learning-rate "
                         "schedule changed midway and a fresh build would not reach its weights; build the entry "
                         "from scratch instead (wb zoo build --only NAME)")
    if target.parent.exists() and replace:
        target.parent.rename(target.parent.with_name(f"{entry_name}.replaced-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}"))
    if target.exists():
        raise FileExistsError(f"{target} exists; remove it (or pass replace / --replace) to promote {spec.name} "
                              f"into {entry_name}")
    shutil.copytree(source, target)
    return target


def promote_entry(root: Path, entry, replace: bool = False) -> Path:
    """:func:`promote` for a zoo entry made by ``entries.from_sweep``: its own run, checked to have stopped
    where the entry says (otherwise the build would train on, or past, the run's weights)."""
    spec = getattr(entry, "sweep_run", None)
    if spec is None:
        raise ValueError(f"zoo entry {entry.name!r} is not a recall-sweep run (entries.from_sweep); "
                         "build it with wb zoo build --only NAME")
    done = run_dir(root, spec) / "result.json"
    if not done.is_file():
        raise FileNotFoundError(f"recall-sweep run {spec.name} (zoo entry {entry.name}) has not finished; run "
                                f"wb zoo recall-sweep --variant {spec.variant} --width {spec.d_model} --lr {spec.lr:g}"
                                + (f" --steps {spec.steps} --fresh" if spec.fresh else ""))
    stopped = json.loads(done.read_text())["steps_trained"]
    expected = entry.stop_after or entry.train.steps
    if stopped != expected:
        raise ValueError(f"recall-sweep run {spec.name} stopped at step {stopped}, but zoo entry {entry.name} "
                         f"says {expected}; set steps_trained={stopped} in its from_sweep(...) in entries.py")
    return promote(root, spec, entry.name, replace)


def card_section(table: pd.DataFrame, architecture: str) -> dict:
    """The ``recall_grid`` field of an architecture's recall card: its variants' best run per width, and
    the references' for comparison (the evidence behind the entry's size, or behind its miss)."""
    arch_of = {name: arch for name, (arch, _extra, _task) in VARIANTS.items()}
    best = best_rows(table)
    best = best[best.variant.map(lambda v: arch_of.get(v) in (architecture, *REFERENCES))]
    keep = ["variant", "d_model", "lr", "accuracy", "steps_trained", "stopped_early", "params"]
    rows = [{k: (None if pd.isna(r[k]) else r[k]) for k in keep if k in r} for r in best.to_dict("records")]
    return {"recall_grid": {"command": "wb zoo recall-sweep", "table": f"models/{PUBLISHED}", "runs": len(table),
                            "best_per_width": rows}}


def publish_into_cards(models_dir: Path, table: pd.DataFrame) -> list[str]:
    """Every committed recall card (trained and tested on recall; not a compiled RASP model) gets
    :func:`card_section` for its architecture, rewritten with its checksum; returns the folders updated."""
    from workbench.store.integrity import rewrite_json

    updated, swept = [], set(table.architecture)
    for card_path in sorted(Path(models_dir).glob("*/card.json")):
        card = json.loads(card_path.read_text())
        trained_on_recall = (card.get("eval_task") or {}).get("name") == "recall" and "rasp" not in card
        if not trained_on_recall or card.get("architecture") not in swept:
            continue  # a compiled RASP model is not a point of the sweep
        rewrite_json(card_path.parent, "card.json", {**card, **card_section(table, card["architecture"])})
        updated.append(card_path.parent.name)
    return updated


def zoo_card_section(entry, _model, _config, _task, _eval_task, _runs_dir) -> dict:
    """Card section hook for ``ZooEntry.card_sections``: the published sweep's rows for this architecture."""
    from workbench.store import models_root

    path = models_root() / PUBLISHED
    return card_section(pd.read_parquet(path), entry.architecture) if path.is_file() else {}


def sweep_table(root: Path) -> pd.DataFrame:
    """Every finished run's row (step 4), written to ``table.parquet`` beside the runs."""
    rows = [json.loads(p.read_text()) for p in sorted((root / SWEEP_DIR / "runs").glob("*/result.json"))]
    table = pd.DataFrame(rows)
    if len(table):
        table = table.drop(columns=["curve"]).sort_values(["variant", "d_model", "lr"]).reset_index(drop=True)
        atomic_write_parquet(root / SWEEP_DIR / "table.parquet", table)
    return table


def best_rows(table: pd.DataFrame) -> pd.DataFrame:
    """The best run per (variant, d_model): highest accuracy, then fewest steps."""
    if not len(table):
        return table
    ranked = table.sort_values(["accuracy", "steps_trained"], ascending=[False, True])
    return ranked.groupby(["variant", "d_model"], as_index=False).first().sort_values(["variant", "d_model"])


def longer_schedule(table: pd.DataFrame) -> pd.Series:
    """Which runs had a budget above the grid's: fresh longer schedules, or grid runs resumed to more
    steps (a table without the ``steps`` / ``fresh`` columns holds grid runs only)."""
    longer = pd.Series(False, index=table.index)
    if "steps" in table:
        longer |= table["steps"].fillna(GRID_STEPS) > GRID_STEPS
    if "fresh" in table:
        longer |= table["fresh"].fillna(False).astype(bool)
    return longer


def smallest_solving(table: pd.DataFrame, target: float = 0.95) -> dict[str, dict]:
    """Per variant, the smallest d_model (then fewest parameters) whose best run reaches ``target``."""
    best = best_rows(table)
    out = {}
    for variant, rows in best.groupby("variant"):
        solving = rows[rows.accuracy >= target].sort_values(["d_model", "params"])
        if len(solving):
            out[variant] = solving.iloc[0].to_dict()
    return out


def markdown_table(table: pd.DataFrame) -> str:
    """Best accuracy per variant (rows) and d_model (columns) within the grid's budget, with the learning
    rate that reached it and how many rates were tried; a longer schedule's best follows it, marked."""
    if not len(table):
        return "(no finished runs)"
    longer = longer_schedule(table)
    grid_best, long_best = best_rows(table[~longer]), best_rows(table[longer])
    widths = sorted(table.d_model.unique())
    lines = ["| variant | " + " | ".join(f"d_model {w}" for w in widths) + " |",
             "|---|" + "---|" * len(widths)]
    for variant in sorted(table.variant.unique()):
        cells = []
        for w in widths:
            parts = []
            hit = grid_best[(grid_best.variant == variant) & (grid_best.d_model == w)]
            if len(hit):
                r = hit.iloc[0]
                tried = table[~longer & (table.variant == variant) & (table.d_model == w)].lr.nunique()
                parts.append(f"{r.accuracy:.1%} (lr {r.lr:g}, {int(r.steps_trained)} steps; {tried} lr)")
            hit = long_best[(long_best.variant == variant) & (long_best.d_model == w)]
            if len(hit):
                r = hit.iloc[0]
                parts.append(f"longer: {r.accuracy:.1%} (lr {r.lr:g}, {int(r.steps_trained)} of {int(r.steps)} steps)")
            cells.append(" · ".join(parts) or "-")
        lines.append(f"| {variant} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def sweep_colours() -> list[str]:
    """One colour per variant for both plots (the Models page's and the SVG): Plotly's ten, then Dark2's
    eight, so that the grid's twelve-odd variants never share one."""
    from plotly.colors import qualitative

    return [*qualitative.Plotly, *qualitative.Dark2]


def sweep_figure(table: pd.DataFrame):
    """Zoology's plot: best single-query recall accuracy against d_model within the grid's budget, one
    line per variant; longer schedules as open markers of the variant's colour."""
    import plotly.graph_objects as go

    longer = longer_schedule(table)
    grid_best, long_best = best_rows(table[~longer]), best_rows(table[longer])
    colours = sweep_colours()
    fig = go.Figure()
    for i, variant in enumerate(sorted(table.variant.unique())):
        colour = colours[i % len(colours)]
        for rows, longer_runs in ((grid_best[grid_best.variant == variant], False),
                                  (long_best[long_best.variant == variant], True)):
            if not len(rows):
                continue
            fig.add_trace(go.Scatter(
                x=rows.d_model, y=rows.accuracy, mode="markers" if longer_runs else "lines+markers",
                name=f"{variant} (longer schedule)" if longer_runs else variant, legendgroup=variant,
                marker={"color": colour, "symbol": "circle-open" if longer_runs else "circle", "size": 10 if longer_runs else 7},
                line={"color": colour},
                text=[f"lr {lr:g}, {int(n)} steps" for lr, n in zip(rows.lr, rows.steps_trained, strict=True)]))
    fig.update_layout(title=f"Single-query recall (8 pairs, 28 tokens): best over learning rates, {GRID_STEPS} steps "
                            "(open: longer schedules)",
                      xaxis={"title": "d_model", "type": "log", "tickvals": list(WIDTHS)},
                      yaxis={"title": "exact match", "range": [0, 1.02]},
                      legend={"orientation": "h", "y": -0.2})
    return fig


def sweep_svg(table: pd.DataFrame, width: int = 720, height: int = 400) -> str:
    """The same plot as :func:`sweep_figure` as a standalone SVG, for the README (no browser, no kaleido):
    best accuracy within the grid's budget against d_model (log axis), one coloured line per variant,
    longer schedules as open circles, the 95% bar dashed."""
    from html import escape

    colours = sweep_colours()
    longer = longer_schedule(table) if len(table) else pd.Series(dtype=bool)
    grid_best, long_best = best_rows(table[~longer]), best_rows(table[longer])
    widths = sorted(set(WIDTHS) | {int(w) for w in table.d_model}) if len(table) else list(WIDTHS)
    left, right, top, bottom = 56, 200, 30, 44
    plot_w, plot_h = width - left - right, height - top - bottom
    lo, hi = math.log(widths[0]), math.log(widths[-1])

    def x(w):
        return left + (plot_w * (math.log(w) - lo) / (hi - lo) if hi > lo else plot_w / 2)

    def y(acc):
        return top + plot_h * (1 - acc)

    out = [(f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" '
           'font-size="12">'), f'<rect width="{width}" height="{height}" fill="white"/>',
           (f'<text x="{left}" y="18" font-size="14">Single-query recall, 8 pairs: best of {GRID_STEPS} steps per '
            'width (open: longer schedules)</text>')]
    for acc in (0, 0.25, 0.5, 0.75, 1.0):
        out.append(f'<line x1="{left}" x2="{left + plot_w}" y1="{y(acc):.1f}" y2="{y(acc):.1f}" stroke="#ddd"/>')
        out.append(f'<text x="{left - 6}" y="{y(acc) + 4:.1f}" text-anchor="end">{acc:.0%}</text>')
    out.append(f'<line x1="{left}" x2="{left + plot_w}" y1="{y(0.95):.1f}" y2="{y(0.95):.1f}" stroke="#888" '
               'stroke-dasharray="4 3"/>')
    for w in widths:
        out.append(f'<text x="{x(w):.1f}" y="{top + plot_h + 16}" text-anchor="middle">{w}</text>')
    out.append(f'<text x="{left + plot_w / 2}" y="{height - 8}" text-anchor="middle">d_model</text>')
    for i, variant in enumerate(sorted(table.variant.unique()) if len(table) else []):
        colour = colours[i % len(colours)]
        rows = grid_best[grid_best.variant == variant]
        points = [(x(int(w)), y(float(a))) for w, a in zip(rows.d_model, rows.accuracy, strict=True)]
        if points:
            out.append(f'<polyline fill="none" stroke="{colour}" stroke-width="2" points="'
                       + " ".join(f"{px:.1f},{py:.1f}" for px, py in points) + '"/>')
        out += [f'<circle cx="{px:.1f}" cy="{py:.1f}" r="3.5" fill="{colour}"/>' for px, py in points]
        rows = long_best[long_best.variant == variant]
        out += [f'<circle cx="{x(int(w)):.1f}" cy="{y(float(a)):.1f}" r="5.5" fill="none" stroke="{colour}" '
                'stroke-width="2"/>' for w, a in zip(rows.d_model, rows.accuracy, strict=True)]
        ly = top + 14 + 18 * i
        out.append(f'<line x1="{left + plot_w + 12}" x2="{left + plot_w + 32}" y1="{ly - 4}" y2="{ly - 4}" '
                   f'stroke="{colour}" stroke-width="2"/>')
        out.append(f'<text x="{left + plot_w + 38}" y="{ly}">{escape(str(variant))}</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"


def save_outputs(root: Path, table: pd.DataFrame) -> Path:
    """The sweep's table (markdown) and figure (Plotly JSON for the app, SVG) beside its runs."""
    folder = root / SWEEP_DIR
    atomic_write_text(folder / "figure.json", sweep_figure(table).to_json())
    atomic_write_text(folder / "figure.svg", sweep_svg(table))
    atomic_write_text(folder / "table.md", markdown_table(table) + "\n")
    return folder


def publish(models_dir: Path, table: pd.DataFrame) -> list[str]:
    """The committed copy beside the zoo: the table, its SVG figure (the README's), and every recall
    card's ``recall_grid`` section (:func:`publish_into_cards`, whose updated folders it returns)."""
    atomic_write_parquet(Path(models_dir) / PUBLISHED, table)
    atomic_write_text(Path(models_dir) / PUBLISHED_FIGURE, sweep_svg(table))
    return publish_into_cards(models_dir, table)


__all__ = ["LRS", "VARIANTS", "WIDTHS", "RunSpec", "best_rows", "entry_recipe", "grid", "longer_schedule", "markdown_table", "promote",
           "promote_entry", "publish", "publish_into_cards", "run_one", "save_outputs", "smallest_solving", "sweep_figure", "sweep_svg", "sweep_table"]
