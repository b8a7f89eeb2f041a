"""The last layer of a patched run, computed for the answer position only (Transformer, recurrent).

The batched engine (:mod:`~workbench.interventions.patch_engine`) needs only the answer logits. In a
causal Transformer the last layer's output at the answer position ``a`` reads the other positions only
through their keys and values, so the last layer needs, at positions ``< a``, just ``ln1`` and the
key/value projections, and the query, attention output and MLP at ``a`` alone. Algorithm, for a chunk
of runs whose every site lies before the last layer or is a whole-vector ``blocks.{L-1}.hook_resid_pre``
site (all prompts sharing one answer position ``a``):

1. Positions after ``a`` are dropped everywhere: a causal model's answer cannot read them.
2. Start layer ``l < L - 1``: layers ``l .. L-2`` run on positions ``p0 .. a`` (at least ``TAIL`` of
   them) with the base run's keys and values of positions ``< p0`` (:func:`block_forward` when the
   chunk patches ``resid_pre`` alone, else transformer_lens's forward with a frozen KV cache), giving
   the last layer's residual there; last-layer ``resid_pre`` sites are patched into it. Layer ``l``'s
   queries, keys and values there are not projected when its input differs from the base run's only
   by whole-vector ``resid_pre`` patches: position by position they are the base or the source
   run's (both cached by the engine's first pass; ``torch.where``). Keys and values of positions
   ``p0 .. a-1`` of the last layer are projected from its residual (:func:`keys_values`) and appended
   to the base run's keys and values of positions ``< p0``.
3. Start layer ``L - 1`` (every site a last-layer ``resid_pre``): nothing changes but the patched
   positions, and keys/values are position-wise maps of the residual, so run ``s``'s keys and values
   at positions ``< a`` are the base run's with the patched positions' taken from the source run
   (``torch.where``; no projection at all), and its answer residual is the base or source one.
4. The last block's attention runs for the answer's query (in practice the last ``TAIL`` queries, see
   below) against those keys and values, its output projection and MLP at the answer alone
   (:func:`block_forward`: transformer_lens's own block's operations in its order, so rotary offsets,
   masking and rounding are the full pass's); then the final norm and unembedding at the answer.
5. On a recurrent model (``BlockLM``, every block's MLP position-wise) the mixer state carries every
   position forward, so the last block's mixer runs at positions ``p0 .. a`` (from the engine's
   carried state); its residual add, ``ln2`` and MLP run at the answer alone (:func:`block_at_answer`).
   Last-layer sites are allowed up to ``hook_mixer_out``.

Every step computes the same per-position functions as the full pass, so the answer logits equal it
(to rounding; the tests hold the two paths equal in float64).
"""

from __future__ import annotations

import einops
import torch
import torch.nn.functional as F
from transformer_lens.utilities.attention import simple_attn_linear

from workbench.architectures.components import BlockLM

# The last block's attention runs for the last TAIL queries, not the answer's alone: with one query row
# the attention products take another BLAS path whose rounding differs from the full pass's; from 4
# rows on they agree bit for bit on this CPU (float32, the zoo Transformer), so results match
# transformer_lens's.
TAIL = 4


# transformer_lens config flags under which its block does something :func:`block_forward` does not
UNSUPPORTED_FLAGS = ("use_split_qkv_input", "use_attn_in", "use_qk_norm", "load_in_4bit", "attn_only",
                     "parallel_attn_mlp", "use_normalization_before_and_after", "use_logn_attn",
                     "use_attention_sinks", "use_dynamic_ntk_rope", "use_attn_result")


def supported(model) -> bool:
    """Whether the answer path applies: a recurrent ``Block`` whose MLP reads its own position only
    (RWKV's channel-mix reads the previous one), or a pre-norm causal Transformer block with standard
    or rotary positions and none of ``UNSUPPORTED_FLAGS`` (what :func:`keys_values` and
    :func:`block_forward` reproduce)."""
    if isinstance(model, BlockLM):
        return not getattr(model.blocks[-1].mlp, "carries_state", False)
    cfg = model.cfg
    if any(getattr(cfg, flag, False) for flag in UNSUPPORTED_FLAGS):
        return False
    return (cfg.positional_embedding_type in ("standard", "rotary") and cfg.attention_dir == "causal"
            and (getattr(cfg, "attn_scores_soft_cap", -1.0) or -1.0) <= 0
            and cfg.original_architecture not in ("OlmoeForCausalLM", "Olmo2ForCausalLM", "Olmo3ForCausalLM"))


def runs_everywhere(model, site) -> bool:
    """Whether a last-layer site lies where the answer path computes every position: on a Transformer
    a whole-vector ``resid_pre`` (step 3); on a recurrent model ``resid_pre``, ``ln1``, ``mixer_in``,
    the mixer and ``mixer_out`` (step 5)."""
    last = f"blocks.{model.cfg.n_layers - 1}."
    if not site.hook.startswith(last):
        return False
    name = site.hook[len(last):]
    if not isinstance(model, BlockLM):
        return name == "hook_resid_pre" and site.index is None
    mixer = model.blocks[-1].mixer_name
    return name in ("hook_resid_pre", "hook_mixer_in", "hook_mixer_out") or name.startswith(("ln1.", f"{mixer}."))


def block_at_answer(block, x: torch.Tensor, state) -> torch.Tensor:
    """Step 5: ``Block.forward`` (no state-carrying MLP) with everything after the mixer at the last
    position only: the mixer must see every position (its state runs through them), the residual
    add, ``ln2`` and the MLP are position-wise. ``x [B, P, d]`` -> the block's output ``[B, 1, d]``."""
    resid_pre = block.hook_resid_pre(x)
    mixed, _ = block.mixer(block.hook_mixer_in(block.ln1(resid_pre)), state)
    resid_mid = block.hook_resid_mid(resid_pre[:, -1:] + block.hook_mixer_out(mixed)[:, -1:])
    mlp_out = block.hook_mlp_out(block.mlp(block.hook_mlp_in(block.ln2(resid_mid))))
    return block.hook_resid_post(resid_mid + mlp_out)


def qkv_hooks(model, layer: int) -> list[str]:
    """Block ``layer``'s query, key and value hooks, whose values :func:`block_forward` takes: rotated
    queries and keys when rotary (rotating cached keys once per pass, not once per chunk, saves most
    of the attention's cost)."""
    rot = "rot_" if model.cfg.positional_embedding_type == "rotary" else ""
    return [f"blocks.{layer}.attn.hook_{rot}q", f"blocks.{layer}.attn.hook_{rot}k", f"blocks.{layer}.attn.hook_v"]


def keys_values(model, layer: int, resid: torch.Tensor, offset: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Block ``layer``'s keys (rotated, when rotary, as at positions ``offset..``) and values for
    residuals ``[B, P, d]``: ``[B, P, h, d_head]`` each, the values of :func:`qkv_hooks`' key and value hooks."""
    block = model.blocks[layer]
    x = block.ln1(resid)
    keys = simple_attn_linear(x, block.attn.W_K, block.attn.b_K)
    if model.cfg.positional_embedding_type == "rotary":
        keys = block.attn.apply_rotary(keys, offset)
    return keys, simple_attn_linear(x, block.attn.W_V, block.attn.b_V)


def block_forward(model, layer: int, rows: torch.Tensor, keys: torch.Tensor, values: torch.Tensor,
                  answer_only: bool = False, qkv: tuple | None = None) -> torch.Tensor:
    """Block ``layer`` at positions ``past .. past + P - 1`` from their residuals ``rows [B, P, d]`` and
    the keys (as :func:`qkv_hooks` has them) and values of the positions before, ``[B, past, h, d_head]``:
    the block's output ``[B, P, d]``, or ``[B, 1, d]`` at the last position with ``answer_only``.
    ``qkv``: the rows' queries, keys and values when known (the patched layer's are the base or source
    run's, position by position), so that ``ln1`` and the projections are skipped.

    transformer_lens's block, op for op (``hook_resid_pre``, ``ln1``, projections, rotary, scores,
    causal mask, softmax, ``z``, output projection, ``ln2``, MLP, in its order), so values and rounding
    are the full pass's, except that cached keys come rotated (rotary is elementwise per position,
    so rotating in pieces is exact), ``ln1`` runs once instead of three times (same values), and with
    ``answer_only`` the output projection and MLP run at the last position alone. Hooks other than
    ``hook_resid_pre``, ``ln1``'s, ``attn.hook_z`` and the MLP's do not fire (the engine takes this path
    only for chunks that patch ``resid_pre`` alone)."""
    block = model.blocks[layer]
    attn = block.attn
    rows = block.hook_resid_pre(rows)
    past = keys.shape[1]
    if qkv is None:
        q = simple_attn_linear(block.ln1(rows), attn.W_Q, attn.b_Q)
        if model.cfg.positional_embedding_type == "rotary":
            q = attn.apply_rotary(q, past)
        new_keys, new_values = keys_values(model, layer, rows, past)
    else:
        q, new_keys, new_values = qkv
    k, v = torch.cat([keys, new_keys], dim=1), torch.cat([values, new_values], dim=1)
    scores = attn.apply_causal_mask(attn.calculate_attention_scores(q, k), past)
    pattern = F.softmax(scores, dim=-1).to(v.dtype)
    z = attn.calculate_z_scores(v, pattern)  # every row even for the answer: one row takes another BLAS path
    if answer_only:
        z, rows = z[:, -1:], rows[:, -1:]
    w_out = einops.rearrange(attn.W_O, "head_index d_head d_model -> d_model (head_index d_head)").contiguous()
    resid_mid = rows + F.linear(z.reshape(*z.shape[:2], -1), w_out, attn.b_O)
    return resid_mid + block.apply_mlp(block.ln2(resid_mid))


def where_patched(mask: torch.Tensor, source: torch.Tensor, base: torch.Tensor) -> torch.Tensor:
    """``[S * N, ...]``: run ``s`` takes ``source`` where ``mask [S, 1, P, 1...]`` is set, else ``base``
    (``source`` / ``base`` ``[N, P, ...]``, ``mask`` broadcast over their trailing dims)."""
    mask = mask.reshape(*mask.shape[:3], *[1] * (base.dim() - 2))
    out = torch.where(mask, source.unsqueeze(0), base.unsqueeze(0))
    return out.reshape(-1, *base.shape[1:])
