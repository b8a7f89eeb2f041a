"""Compiled RASP programs as zoo models: exact circuits that read and write a task's tokens.

A library program compiled in its task's format (:mod:`workbench.rasp.library_tasks`) reads the
compiler's own token ids, ``max_seq_len + 1 = seq_len - 1`` positions, and writes its output block. The
zoo's model is the same network rewritten so that the zoo's evaluator, the app and every instrument run
it on the task's rows like a trained model (``build_model(config)`` rebuilds it):

1. Compile ``task_program(task, program)``, causal whenever the program only looks backwards.
2. Embedding: each task token gets the compiled token's row (``<bos>`` the BOS row); tokens the program
   never reads get a zero row.
3. Positions: a task row has one position more than the program's input (its last token is only ever
   predicted). The ``one`` dimension moves from the token rows to position rows ``1..max_seq_len``, and
   the extra last position writes nothing: a selector that reads positions or ``one`` never selects it,
   and causal attention never sees it. That it changes no prediction is measured, not assumed
   (:func:`interpreter_problems`, at build and by ``wb zoo verify``).
4. Unembedding: each value ``v`` of the output SOp puts ``LOGIT_SCALE`` on the task token that the
   task's binding formats ``v`` as (a None output gives all-zero logits).
5. Weights are stored as float16 when the rounded model decodes exactly as the float32 one on the
   check rows (step 3's), else as float32.
"""

from __future__ import annotations

import copy
import time

import torch

from workbench.architectures import build_model, count_parameters
from workbench.rasp.compiler.residual import ONE
from workbench.rasp.library import LibraryProgram
from workbench.rasp.library_tasks import answer_token, task_input, task_program
from workbench.tasks import Task
from workbench.tasks.tokenizer import BOS, Tokenizer

LOGIT_SCALE = 30.0  # p(answer) = 1 - O(vocab * e^-30): the card's loss is ~0, not a softmax of 0/1 logits
CHECK_ROWS = 200
CHECK_SEED = 4321


def compile_for_task(task: Task, program: str | None = None):
    """Step 1: ``(library program, compiled model)`` in ``task``'s format."""
    import warnings

    from workbench.rasp.compile import EmptySelectionWarning, compile_rasp_to_model

    lib = task_program(task, program)
    if lib.max_seq_len + 2 != task.seq_len:
        raise ValueError(f"program {lib.name!r} reads {lib.max_seq_len} tokens; a {task.name!r} row needs "
                         f"{task.seq_len - 2} (its seq_len - 2)")
    with warnings.catch_warnings():  # an aggregate selecting nothing is None by design (shift_by, recall)
        warnings.simplefilter("ignore", EmptySelectionWarning)
        compiled = compile_rasp_to_model(lib.program, lib.vocab, lib.max_seq_len, causal=lib.causal)
    return lib, compiled


def rewired_config(compiled, d_vocab: int, n_ctx: int) -> dict:
    """The workbench transformer config (``build_model`` rebuilds it) of a rewired compiled model."""
    cfg = compiled.model.cfg
    return {"architecture": "transformer", "n_layers": cfg.n_layers, "d_model": cfg.d_model,
            "n_heads": cfg.n_heads, "d_head": cfg.d_head, "d_mlp": cfg.d_mlp, "act_fn": cfg.act_fn,
            "normalization_type": None, "positional_embedding_type": "standard",
            "attention_dir": cfg.attention_dir, "use_attn_scale": False,
            "d_vocab": d_vocab, "n_ctx": n_ctx}


def output_token(task: Task, value):
    """The task token the program's output ``value`` stands for, or None (None, or not a task token)."""
    if value is None:
        return None
    token = answer_token(task, value)
    return token if token in task.tokenizer.index else None


def task_model(compiled, task: Task) -> tuple[torch.nn.Module, dict]:
    """Steps 2-4: the compiled network rebuilt on the task's tokens and positions."""
    return rewire(compiled, task.tokenizer, lambda value: output_token(task, value), task.seq_len)


def own_tokenizer(compiled) -> Tokenizer:
    """For a program without a task: its vocabulary, then its output values as words (``str(v)``)."""
    values = [str(v) for v in compiled.residual.values[compiled.output] if v is not None]
    return Tokenizer([*map(str, compiled.vocab), *[v for v in values if v and not any(c.isspace() for c in v)]])


@torch.no_grad()
def rewire(compiled, tokenizer: Tokenizer, output_word, n_ctx: int) -> tuple[torch.nn.Module, dict]:
    """Steps 2-4 for any tokenizer: ``output_word(value)`` is the token a value is written as (or None);
    ``n_ctx`` is ``max_seq_len + 1`` or one more (the empty last position)."""
    config = rewired_config(compiled, tokenizer.vocab_size, n_ctx)
    model = build_model(config)
    weights = model.state_dict()
    for name, tensor in compiled.model.state_dict().items():
        if weights[name].shape == tensor.shape and weights[name].dtype == tensor.dtype:
            weights[name] = tensor.clone()  # mask buffers keep the new model's n_ctx
    one = compiled.residual.index[ONE]
    src_embed, src_pos = compiled.model.embed.W_E, compiled.model.pos_embed.W_pos
    embed = torch.zeros_like(weights["embed.W_E"])
    for token, tid in tokenizer.index.items():
        source = 0 if token == BOS else None if token == compiled.compiler_bos else compiled.token_ids.get(token)
        if source is not None:
            embed[tid] = src_embed[source]
    embed[:, one] = 0.0
    pos = torch.zeros_like(weights["pos_embed.W_pos"])
    pos[: src_pos.shape[0]] = src_pos
    pos[1: src_pos.shape[0], one] = 1.0  # a position past max_seq_len + 1 stays empty
    unembed = torch.zeros_like(weights["unembed.W_U"])
    out = compiled.output
    for row, value in zip(compiled.residual.blocks[out], compiled.residual.values[out], strict=True):
        token = None if value is None else output_word(value)
        if token in tokenizer.index:
            unembed[row, tokenizer.index[token]] = LOGIT_SCALE
    weights.update({"embed.W_E": embed, "pos_embed.W_pos": pos, "unembed.W_U": unembed,
                    "unembed.b_U": torch.zeros_like(weights["unembed.b_U"])})
    model.load_state_dict(weights)
    return model.eval(), config


def expected_tokens(lib: LibraryProgram, task: Task, rows: torch.Tensor) -> list[list]:
    """The interpreter's prediction at each position 1..seq_len-2 of each row, as task tokens."""
    return [[output_token(task, v) for v in lib.evaluate(task_input(task, row.tolist()))] for row in rows]


@torch.no_grad()
def predicted_tokens(model: torch.nn.Module, task: Task, rows: torch.Tensor) -> list[list]:
    """The model's prediction at the same positions: the argmax token, or None where no logit is on."""
    logits = model(rows)[:, 1:-1].float()
    top, arg = logits.max(dim=-1)
    vocab = task.tokenizer.tokens(range(task.tokenizer.vocab_size))
    return [[vocab[a] if t > LOGIT_SCALE / 2 else None for t, a in zip(tr.tolist(), ar.tolist(), strict=True)]
            for tr, ar in zip(top, arg, strict=True)]


def interpreter_problems(model: torch.nn.Module, lib: LibraryProgram, task: Task, n: int = CHECK_ROWS,
                         seed: int = CHECK_SEED) -> list[str]:
    """Compiled = interpreter at every predicting position of ``n`` test rows; one line per bad row (<= 3)."""
    rows = task.sample("test", n, seed).tokens
    problems = []
    for i, (want, got) in enumerate(zip(expected_tokens(lib, task, rows), predicted_tokens(model, task, rows),
                                        strict=True)):
        if want != got:
            bad = next(p for p, (w, g) in enumerate(zip(want, got, strict=True)) if w != g)
            problems.append(f"row {i}: the interpreter predicts {want[bad]!r} at position {bad + 1}, "
                            f"the model {got[bad]!r}")
    return problems[:3] + ([f"... {len(problems) - 3} more rows differ"] if len(problems) > 3 else [])


def storage_copy(model: torch.nn.Module, lib: LibraryProgram, task: Task) -> tuple[torch.nn.Module, str]:
    """Step 5: a float16 copy when it decodes exactly, else the model itself."""
    half = copy.deepcopy(model).half().float()  # what loading a float16 file into float32 gives
    if interpreter_problems(half, lib, task):
        return model, "float32"
    return copy.deepcopy(model).half(), "float16"


def rasp_card_section(lib: LibraryProgram, compiled, seconds: float) -> dict:
    """The card's ``rasp`` block: the program, its parameters and its true circuit."""
    circuit = {name: {**entry, "heads": [list(h) for h in entry["heads"]]}
               for name, entry in compiled.circuit.items()}
    cfg = compiled.model.cfg
    return {"program": lib.name, "params": lib.params, "causal": lib.causal, "max_seq_len": lib.max_seq_len,
            "vocab": list(lib.vocab), "output": compiled.output, "circuit": circuit,
            "residual_labels": compiled.residual_labels, "compiled_parameters": count_parameters(compiled.model),
            "layers": cfg.n_layers, "heads_per_layer": cfg.n_heads, "d_mlp": cfg.d_mlp,
            "compile_time_s": round(seconds, 3)}


def compile_entry(task: Task, program: str | None):
    """Steps 1-5 for a zoo entry: ``(model to save, config, lib, compiled, dtype, compile seconds)``."""
    start = time.perf_counter()
    lib, compiled = compile_for_task(task, program)
    seconds = time.perf_counter() - start
    model, config = task_model(compiled, task)
    problems = interpreter_problems(model, lib, task)
    if problems:
        raise ValueError(f"compiled {lib.name!r} in {task.name!r}'s format differs from the interpreter: "
                         + "; ".join(problems))
    stored, dtype = storage_copy(model, lib, task)
    return stored, config, lib, compiled, dtype, seconds


def build_rasp_entry(entry, models_dir, catalog):
    """A ``RaspEntry``'s folder: compile, check against the interpreter, measure like any model, save."""
    import platform

    from workbench.store.model_files import save_model_folder
    from workbench.training.evaluate import EVAL_SEED
    from workbench.zoo.build import measure, task_from_spec  # build imports this module

    task = task_from_spec(entry.task)
    model, config, lib, compiled, dtype, seconds = compile_entry(task, entry.program)
    metrics = measure(model.float(), task, entry.eval_examples)
    card = {
        "name": entry.name, "architecture": entry.architecture, "task": task.spec(), "eval_task": task.spec(),
        "model_config": config, "metrics": metrics, "targets": entry.targets,
        "parameters": count_parameters(model), "training_tokens": 0, "training_time_s": 0.0,
        "eval": {"split": "test", "examples": entry.eval_examples, "seed": EVAL_SEED},
        "weights_dtype": dtype, "rasp": rasp_card_section(lib, compiled, seconds),
        "compiled_on": f"{platform.machine()} cpu, torch {torch.__version__}",
        "notes": f"compiled, not trained: {entry.notes}",
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    folder = save_model_folder(models_dir / entry.name, model.half() if dtype == "float16" else model, config,
                               task.tokenizer, card)
    catalog.register("model", entry.name, folder, card)
    return folder


def rasp_problems(bundle, task: Task) -> list[str]:
    """``wb zoo verify``'s extra check of a compiled model: it still decodes as the interpreter."""
    from workbench.rasp.library import make_program

    section = bundle.card["rasp"]
    return interpreter_problems(bundle.model, make_program(section["program"], **section["params"]), task)
