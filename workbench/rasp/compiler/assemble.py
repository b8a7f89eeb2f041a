"""Stage 6: assembly into a transformer_lens ``HookedTransformer`` (the workbench's, with shared hook names).

1. Config: no normalisation, ReLU MLPs (a zero MLP of width 1 when the program has none, so the shared
   hook names exist), standard learned
   positions, n_ctx = max_seq_len + 1 (BOS at position 0), causal or bidirectional attention (causal is
   transformer_lens's attention mask), no 1/sqrt(d_head) score scaling (scores are set exactly).
2. Embedding: BOS writes ``bos``; a token writes ``one``, its ``tokens:v`` and every Full SOp's value.
   Position p >= 1 writes ``indices:p-1`` (position 0 is BOS, so indices count tokens from 0).
3. A head's bilinear score form is factored as W_Q (one column per query dimension it reads) and W_K;
   its OV map as W_V (one column per key dimension it reads) and W_O. Heads of a layer sit side by side.
4. The MLPs of a layer are stacked into one: their hidden units are disjoint.
5. Unembedding: the output SOp's block (one-hot values, or its one number). All biases are zero.
"""

from __future__ import annotations

import torch
from transformer_lens import HookedTransformerConfig

from workbench.architectures.transformer import WorkbenchTransformer
from workbench.rasp import rasp
from workbench.rasp.compiler.residual import BOS, ONE, cat_dim, num_dim


def _head_width(head) -> int:
    return max(len({q for q, _ in head.qk}), len({k for k, _ in head.ov}), 1)


def model_config(graph, components, plan, residual, n_tokens, max_seq_len, causal, dtype) -> HookedTransformerConfig:
    heads = [len([h for lab in plan.heads_in(layer) for h in components[lab].heads]) for layer in range(plan.n_layers)]
    mlps = [sum(components[lab].mlp.width for lab in plan.mlps_in(layer, components)) for layer in range(plan.n_layers)]
    d_head = max([_head_width(h) for c in components.values() for h in c.heads] + [1])
    return HookedTransformerConfig(
        n_layers=plan.n_layers, d_model=residual.d_model, d_head=d_head, n_heads=max(heads + [1]),
        # never attn_only: the shared hook names (hook_resid_mid, hook_mlp_in) need an MLP sublayer, so a
        # program without MLPs gets a zero MLP of width 1
        d_mlp=max(mlps + [1]), attn_only=False, d_vocab=n_tokens,
        d_vocab_out=len(residual.blocks[graph.output]), n_ctx=max_seq_len + 1, act_fn="relu",
        normalization_type=None, positional_embedding_type="standard",
        attention_dir="causal" if causal else "bidirectional", use_attn_scale=False,
        default_prepend_bos=False, device="cpu", dtype=dtype, seed=0, init_weights=False,
        model_name="rasp-compiled")


def assemble(graph, components, plan, residual, vocab, max_seq_len, causal, dtype=torch.float32):
    cfg = model_config(graph, components, plan, residual, len(vocab) + 1, max_seq_len, causal, dtype)
    model = WorkbenchTransformer(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        _embed(model, graph, residual, vocab, max_seq_len)
        for layer in range(plan.n_layers):
            heads = [h for lab in plan.heads_in(layer) for h in components[lab].heads]
            for slot, head in enumerate(heads):
                _place_head(model.blocks[layer].attn, slot, head, residual)
            _place_mlps(model.blocks[layer].mlp, [components[lab].mlp for lab in plan.mlps_in(layer, components)],
                        residual)
        for col, row in enumerate(residual.blocks[graph.output]):
            model.unembed.W_U[row, col] = 1.0
    return model


def _embed(model, graph, residual, vocab, max_seq_len) -> None:
    idx = residual.index
    model.embed.W_E[0, idx[BOS]] = 1.0
    constants = [graph.sop(lab) for lab in graph.order if isinstance(graph.sop(lab), rasp.Full)]
    for token_id, token in enumerate(vocab, start=1):
        model.embed.W_E[token_id, idx[ONE]] = 1.0
        if "tokens" in residual.blocks:  # a program may read positions only
            model.embed.W_E[token_id, idx[cat_dim("tokens", token)]] = 1.0
        for sop in constants:
            if rasp.is_numerical(sop):
                model.embed.W_E[token_id, idx[num_dim(sop.label)]] = float(sop.value)
            else:
                model.embed.W_E[token_id, idx[cat_dim(sop.label, sop.value)]] = 1.0
    if "indices" in residual.blocks:
        for pos in range(1, max_seq_len + 1):
            model.pos_embed.W_pos[pos, idx[cat_dim("indices", pos - 1)]] = 1.0


def _place_head(attn, slot: int, head, residual) -> None:
    idx = residual.index
    queries = sorted({q for q, _ in head.qk}, key=idx.__getitem__)
    for j, q in enumerate(queries):
        attn.W_Q[slot, idx[q], j] = 1.0
    for (q, k), w in head.qk.items():
        attn.W_K[slot, idx[k], queries.index(q)] += w
    sources = sorted({k for k, _ in head.ov}, key=idx.__getitem__)
    for j, k in enumerate(sources):
        attn.W_V[slot, idx[k], j] = 1.0
    for (k, out), w in head.ov.items():
        attn.W_O[slot, sources.index(k), idx[out]] += w


def _place_mlps(mlp_module, mlps, residual) -> None:
    idx, offset = residual.index, 0
    for mlp in mlps:
        for (key, h), w in mlp.w_in.items():
            mlp_module.W_in[idx[key], offset + h] += w
        for h, b in enumerate(mlp.b_in):
            mlp_module.b_in[offset + h] = b
        for (h, key), w in mlp.w_out.items():
            mlp_module.W_out[offset + h, idx[key]] += w
        offset += mlp.width
