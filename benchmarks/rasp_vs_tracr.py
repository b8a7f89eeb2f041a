"""Our RASP compiler against tracr on the library's programs: layers, residual width, parameters, compile time.

tracr (tracr-pypi 1.0, https://github.com/google-deepmind/tracr) is the anchor. It is not a project
dependency (it pulls jax and haiku): install it in a virtualenv of its own, beside ours::

    python3 -m venv /tmp/tracr-venv && /tmp/tracr-venv/bin/pip install tracr-pypi
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/rasp_vs_tracr.py [--tracr-python /tmp/tracr-venv/bin/python]
        [--n 200] [--reps 3] [--seed 0] [--only NAME ...] [--write-readme]

Without that interpreter the script says how to make it and exits 2.

1. Rows: every library program at its defaults, plus ``count(token=a)`` (tracr refuses programs that never
   read ``tokens``), ``shuffle_dyck`` with two pair types and ``length`` at ``max_seq_len=10`` (where
   tracr's selector width decodes 10 as 9).
2. The same program on both sides, from the same source: this file, run by the tracr venv's python with
   ``--worker``, loads ``workbench/rasp/library.py`` with tracr's ``tracr.rasp.rasp`` standing in for
   ``workbench.rasp.rasp`` (our language has tracr's names, so the library runs unchanged on tracr's
   classes). ``torch`` is a stub only while the library's imports (task constants) load, since nothing
   in a program calls it. Each side then compiles with its own ``compile_rasp_to_model(program, vocab,
   max_seq_len, compiler_bos="BOS")``, bidirectional (tracr: ``mlp_exactness`` 100, its default).
3. Sizes. Layers: (attention, MLP) pairs, as both count them (tracr's ``model_config.num_layers``; our
   ``cfg.n_layers``); in brackets the sublayers that hold any non-zero weight. Width: residual dimensions.
   Parameters: every element of every weight and bias, embeddings included; tracr's unembedding is a fixed
   projection outside its ``params``, so its size (width x output dimensions) is added. In brackets the
   non-zero ones. Compile time, in this one run: the first compile of the program (each process first
   compiles a throwaway program, untimed, so imports and jax's first trace are excluded), and the fastest
   of the ``--reps`` - 1 compiles after it (jax caches traces of shapes it has seen).
4. Accuracy: the share of ``--n`` random inputs (length uniform in 1..max_seq_len, tokens uniform from
   the vocabulary; the same inputs for both) whose decoded output equals that side's own interpreter
   (``rasp.evaluate``) at every position. Positions where the interpreter gives None (an aggregate that
   selects nothing) are not scored: tracr has no None output. Numbers agree within 1e-3. Inputs the
   interpreter itself rejects are outside the program's domain and not scored ("of k" in the table):
   ours rejects a categorical aggregate over different values (recall with a key twice), tracr's also
   a None key in a Select (adder on short inputs) and a mean of strings (sort_unique with repeats).
5. A table with ratios ours / tracr; ``--write-readme`` puts it in ``workbench/rasp/README.md`` between
   its markers.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import subprocess
import sys
import time
import types
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TRACR_PYTHON = "/tmp/tracr-venv/bin/python"
INSTALL = "python3 -m venv /tmp/tracr-venv && /tmp/tracr-venv/bin/pip install tracr-pypi"
README = ROOT / "workbench" / "rasp" / "README.md"
BEGIN, END = "<!-- rasp_vs_tracr:begin -->", "<!-- rasp_vs_tracr:end -->"
TOL = 1e-3
WARM_UP = ("length", {"max_seq_len": 2})  # compiled once, untimed, before the rows (imports, jax's first trace)
EXTRA_ROWS = [("count(token=a)", "count", {"token": "a"}), ("shuffle_dyck(n_types=2)", "shuffle_dyck", {"n_types": 2}),
              ("length(max_seq_len=10)", "length", {"max_seq_len": 10})]


# ---------------------------------------------------------------- shared by both sides


def same(value, reference) -> bool:
    if reference is None or value is None or isinstance(reference, (str, tuple)):
        return value == reference
    try:
        return abs(float(value) - float(reference)) <= TOL
    except (TypeError, ValueError):
        return value == reference


def accuracy(run_batch, evaluate, inputs: list[list]) -> list[int]:
    """[right, scored]: inputs whose outputs equal the interpreter's wherever the interpreter is not None.

    An input on which the interpreter itself fails (a categorical aggregate selecting different values:
    recall on a random sequence with a key twice) is outside the program's domain and not scored."""
    by_length: dict[int, list[list]] = {}
    for xs in inputs:
        by_length.setdefault(len(xs), []).append(xs)
    right = scored = 0
    for batch in by_length.values():
        for xs, out in zip(batch, run_batch(batch)):
            try:
                ref = evaluate(xs)
            except Exception:  # noqa: BLE001, S112 - tracr's interpreter raises its own kinds
                continue
            scored += 1
            right += all(r is None or same(o, r) for o, r in zip(out, ref))
    return [right, scored]


def timed(reps: int, compile_once):
    """(first compile's seconds, fastest repeat's seconds, the compiled model)."""
    times, result = [], None
    for _ in range(max(reps, 1)):
        start = time.perf_counter()
        result = compile_once()
        times.append(time.perf_counter() - start)
    return times[0], min(times[1:] or times), result


# ---------------------------------------------------------------- tracr side (runs in the tracr venv)


class _AnyAttribute(types.ModuleType):
    """A stand-in module: every attribute is another stand-in (the task modules import torch)."""

    def __getattr__(self, name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        return _AnyAttribute(f"{self.__name__}.{name}")


def load_library_on_tracr():
    """``workbench.rasp.library`` built on tracr's rasp, without running any workbench ``__init__``."""
    for name in ("workbench", "workbench.rasp", "workbench.tasks"):
        package = types.ModuleType(name)
        package.__path__ = [str(ROOT / name.replace(".", "/"))]
        sys.modules[name] = package
    from tracr.rasp import rasp

    sys.modules["workbench.rasp.rasp"] = rasp
    sys.modules["torch"] = _AnyAttribute("torch")
    try:
        from workbench.rasp import library
    finally:  # einops (inside tracr) tests isinstance against torch.Tensor when torch is imported
        del sys.modules["torch"]
    return library, rasp


def tracr_sizes(assembled) -> dict:
    import numpy as np

    params = assembled.params
    width = len(assembled.residual_labels)
    out_dims = len(assembled.output_encoder.encoding_map) if hasattr(assembled.output_encoder, "encoding_map") else 1
    total = sum(v.size for d in params.values() for v in d.values()) + width * out_dims
    nonzero = sum(int(np.count_nonzero(np.asarray(v))) for d in params.values() for v in d.values()) + out_dims
    used = {k.rsplit("/", 1)[0] for k, d in params.items() if "transformer" in k
            and any(np.count_nonzero(np.asarray(v)) for v in d.values())}
    return {"layers": assembled.model_config.num_layers, "sublayers": len(used), "width": width,
            "params": int(total), "nonzero": nonzero}


def tracr_runner(assembled):
    import jax.numpy as jnp

    def run_batch(batch: list[list]) -> list[list]:
        tokens = jnp.array([assembled.input_encoder.encode(["BOS", *xs]) for xs in batch])
        out = assembled.forward(assembled.params, tokens).unembedded_output
        rows = [row[1:] for row in out.tolist()]
        return [assembled.output_encoder.decode(r) for r in rows] if assembled.output_encoder else rows

    return run_batch


def tracr_row(library, rasp, job: dict) -> dict:
    from tracr.compiler import compiling

    lp = library.make_program(job["name"], **job["params"])
    try:
        first, again, assembled = timed(job["reps"], lambda: compiling.compile_rasp_to_model(
            lp.program, set(lp.vocab), lp.max_seq_len, compiler_bos="BOS"))
    except Exception as err:  # noqa: BLE001 - tracr's refusals are results (NotImplementedError, TypeError, ...)
        message = re.sub(r"<([\w.]+) object at 0x[0-9a-f]+>", r"\1", str(err).splitlines()[-1])
        return {"error": f"{type(err).__name__}: {message[:160]}"}
    acc = accuracy(tracr_runner(assembled), lambda xs: rasp.evaluate(lp.program, xs), job["inputs"])
    return {**tracr_sizes(assembled), "compile_s": first, "again_s": again, "accuracy": acc}


def worker() -> None:
    """Read the jobs (JSON on stdin), print one JSON result per line."""
    import warnings

    warnings.simplefilter("ignore")
    library, rasp = load_library_on_tracr()
    from tracr.compiler import compiling

    warm = library.make_program(WARM_UP[0], **WARM_UP[1])
    compiling.compile_rasp_to_model(warm.program, set(warm.vocab), warm.max_seq_len, compiler_bos="BOS")
    for job in json.load(sys.stdin):
        print(json.dumps({"label": job["label"], **tracr_row(library, rasp, job)}), flush=True)
        print(f"  tracr: {job['label']} done", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- our side


def our_sizes(model) -> dict:
    params = list(model.parameters())
    used = sum(bool(block.attn.W_Q.count_nonzero()) + bool(block.mlp.W_in.count_nonzero()) for block in model.blocks)
    return {"layers": model.cfg.n_layers, "sublayers": used, "width": model.cfg.d_model,
            "params": sum(p.numel() for p in params), "nonzero": sum(int(p.count_nonzero()) for p in params)}


def our_row(job: dict) -> dict:
    import warnings

    from workbench.rasp import rasp
    from workbench.rasp.compile import compile_rasp_to_model
    from workbench.rasp.library import make_program

    lp = make_program(job["name"], **job["params"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # EmptySelectionWarning: expected for shift_by & co.
        first, again, compiled = timed(job["reps"], lambda: compile_rasp_to_model(lp.program, lp.vocab, lp.max_seq_len))
    acc = accuracy(compiled.run_batch, lambda xs: rasp.evaluate(lp.program, xs), job["inputs"])
    return {**our_sizes(compiled.model), "compile_s": first, "again_s": again, "accuracy": acc}


def jobs(names: list[str] | None, n: int, reps: int, seed: int) -> list[dict]:
    from workbench.rasp.library import make_program, program_names

    rows = [(name, name, {}) for name in program_names()] + EXTRA_ROWS
    rows = [r for r in rows if not names or r[1] in names or r[0] in names]
    rng = random.Random(seed)
    out = []
    for label, name, params in rows:
        lp = make_program(name, **params)
        inputs = [[rng.choice(lp.vocab) for _ in range(rng.randint(1, lp.max_seq_len))] for _ in range(n)]
        out.append({"label": label, "name": name, "params": params, "inputs": inputs, "reps": reps,
                    "max_seq_len": lp.max_seq_len})
    return out


def run_tracr(python: str, todo: list[dict]) -> dict[str, dict]:
    proc = subprocess.run([python, __file__, "--worker"], input=json.dumps(todo), capture_output=True, text=True,
                          check=False, cwd=ROOT)
    if proc.returncode:
        raise SystemExit(f"the tracr worker failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    return {r["label"]: r for r in map(json.loads, proc.stdout.splitlines())}


# ---------------------------------------------------------------- table


def _ratio(ours: float, theirs: float) -> str:
    return f"{ours / theirs:.2f}" if theirs else "-"


def _share(right_scored: list[int], n: int) -> str:
    """"100.0%", or "100.0% of 37" when only 37 of the n inputs were in the program's domain."""
    right, scored = right_scored
    if not scored:
        return "n/a"
    return f"{right / scored:.1%}" + (f" of {scored}" if scored != n else "")


def _pair(o: dict, t: dict, key: str, ratio: bool = True) -> str:
    if t.get(key) is None:
        return f"{o[key]} / -"
    return f"{o[key]} / {t[key]}" + (f" ({_ratio(o[key], t[key])})" if ratio else "")


def table_row(job: dict, o: dict, t: dict) -> str:
    """One markdown row; ``t`` is empty where tracr cannot compile the program."""
    n = len(job["inputs"])
    layers = f"{o['layers']} ({o['sublayers']}) / " + (f"{t['layers']} ({t['sublayers']})" if t else "-")
    compile_ms = " | ".join(f"{o[k] * 1000:.0f} / " + (f"{t[k] * 1000:.0f} ({o[k] / t[k]:.3f})" if t else "-")
                            for k in ("compile_s", "again_s"))
    exact = f"{_share(o['accuracy'], n)} / " + (_share(t["accuracy"], n) if t else "-")
    return (f"| `{job['label']}` | {job['max_seq_len']} | {layers} | {_pair(o, t, 'width')} | "
            f"{_pair(o, t, 'params')} | {_pair(o, t, 'nonzero', ratio=False)} | {compile_ms} | {exact} |")


def table(todo: list[dict], ours: dict[str, dict], theirs: dict[str, dict]) -> tuple[str, list[str]]:
    """The markdown table and the list of "program: measure" where ours is larger than tracr's."""
    head = ("| program | n | layers (sublayers) ours / tracr | width ours / tracr (ratio) | "
            "params ours / tracr (ratio) | non-zero params ours / tracr | compile ms ours / tracr (ratio) | "
            "compile again ms ours / tracr (ratio) | exact ours / tracr |")
    lines, larger, errors = [head, "|" + "---|" * 9], [], []
    for job in todo:
        o, t = ours[job["label"]], theirs[job["label"]]
        if "error" in t:
            errors.append(f"- `{job['label']}`: tracr cannot compile it ({t['error']})")
            t = {}
        larger += [f"{job['label']}: {k}" for k in ("layers", "width", "params") if t and o[k] > t[k]]
        lines.append(table_row(job, o, t))
    return "\n".join(lines + ([""] + errors if errors else [])), larger


def write_readme(markdown: str, command: str) -> None:
    from workbench.store.atomic import atomic_write_text

    text = README.read_text(encoding="utf-8")
    if BEGIN not in text or END not in text:
        raise ValueError(f"{README} has no {BEGIN} ... {END} markers to put the table between")
    before, rest = text.split(BEGIN, 1)
    after = rest.split(END, 1)[1]
    atomic_write_text(README, f"{before}{BEGIN}\nMeasured by `{command}`:\n\n{markdown}\n{END}{after}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tracr-python", default=TRACR_PYTHON)
    parser.add_argument("--n", type=int, default=200, help="random inputs per program")
    parser.add_argument("--reps", type=int, default=3, help="compiles per program: the first, and the fastest of the rest")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--only", nargs="+", help="program names or row labels")
    parser.add_argument("--write-readme", action="store_true")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker()
    if not Path(args.tracr_python).exists():
        print(f"no tracr interpreter at {args.tracr_python}; make one with: {INSTALL}", file=sys.stderr)
        raise SystemExit(2)
    todo = jobs(args.only, args.n, args.reps, args.seed)
    our_row({"name": WARM_UP[0], "params": WARM_UP[1], "inputs": [], "reps": 1})  # imports, first-call costs
    ours = {}
    for job in todo:
        ours[job["label"]] = our_row(job)
        print(f"  ours: {job['label']} done", file=sys.stderr, flush=True)
    theirs = run_tracr(args.tracr_python, todo)
    markdown, larger = table(todo, ours, theirs)
    print(markdown)
    print("ours larger than tracr's: " + (", ".join(larger) if larger else "nowhere"))
    if args.write_readme:
        command = "OMP_NUM_THREADS=1 .venv/bin/python benchmarks/rasp_vs_tracr.py " + " ".join(sys.argv[1:])
        write_readme(markdown, command.strip())


if __name__ == "__main__":
    main()
