"""The Transformer: transformer_lens's own ``HookedTransformer``, with the shared hook names as aliases.

The model keeps every transformer_lens name (``blocks.0.attn.hook_pattern``, ``blocks.0.ln2.hook_scale``
...), so TransformerLens and circuit-tracer code runs on it unchanged. The shared names map onto them:

    shared                       transformer_lens
    hook_embed                   hook_embed           (token embedding; positions are hook_pos_embed)
    blocks.l.hook_mixer_in       blocks.l.ln1.hook_normalized
    blocks.l.hook_mixer_out      blocks.l.hook_attn_out
    blocks.l.hook_mlp_in         blocks.l.ln2.hook_normalized
    blocks.l.hook_mlp_out        blocks.l.hook_mlp_out
    hook_final                   ln_final.hook_normalized
    (resid_pre / resid_mid / resid_post are the same name in both)

Gate form comes for free: the attention pattern (``attn.hook_pattern``) and the LayerNorm scales
(``ln*.hook_scale``) are the data-dependent factors; freezing them makes the block linear in its input.

A pretrained GPT-2-shaped model can be loaded from a local Hugging Face folder (config.json +
model.safetensors) with :func:`load_pretrained_local`; nothing is downloaded.
"""

from __future__ import annotations

import json
import tempfile
import warnings
from pathlib import Path

from transformer_lens import HookedTransformer, HookedTransformerConfig

from workbench.architectures.hooked import SharedHookNames

DEFAULTS = {
    "n_layers": 2,
    "d_model": 64,
    "n_heads": 4,
    "d_mlp": 256,
    "act_fn": "gelu",
    "normalization_type": "LN",
    "positional_embedding_type": "standard",
}


def transformer_aliases(n_layers: int, normalized: bool = True) -> dict[str, str]:
    """Shared -> transformer_lens names; without LayerNorms the sublayers read the residual itself."""
    last = f"blocks.{n_layers - 1}.hook_resid_post"
    aliases = {"hook_final": "ln_final.hook_normalized" if normalized else last}
    for layer in range(n_layers):
        b = f"blocks.{layer}"
        aliases[f"{b}.hook_mixer_in"] = f"{b}.ln1.hook_normalized" if normalized else f"{b}.hook_resid_pre"
        aliases[f"{b}.hook_mixer_out"] = f"{b}.hook_attn_out"
        aliases[f"{b}.hook_mlp_in"] = f"{b}.ln2.hook_normalized" if normalized else f"{b}.hook_resid_mid"
    return aliases


class WorkbenchTransformer(SharedHookNames, HookedTransformer):
    """``HookedTransformer`` that also answers to the shared hook names."""

    def __init__(self, cfg: HookedTransformerConfig, **kwargs):
        with warnings.catch_warnings():
            # transformer_lens 3.x marks HookedTransformer deprecated in favour of TransformerBridge, a
            # wrapper around Hugging Face models; ours are built from a config, which the bridge lacks.
            warnings.simplefilter("ignore", DeprecationWarning)
            super().__init__(cfg, **kwargs)
        self.register_hook_aliases(transformer_aliases(cfg.n_layers, cfg.normalization_type is not None))

    def forward(self, tokens, *args, **kwargs):
        # Token ids always: a string prompt goes through the task's tokenizer, never a HF tokenizer.
        return super().forward(tokens, *args, **kwargs)


def build(config: dict) -> WorkbenchTransformer:
    """A freshly initialised Transformer from a workbench config (architecture, d_vocab, n_ctx, ...)."""
    fields = {**DEFAULTS, **{k: v for k, v in config.items() if k not in ("architecture", "seed")}}
    fields.setdefault("d_head", fields["d_model"] // fields["n_heads"])
    if fields["d_head"] * fields["n_heads"] != fields["d_model"] and "d_head" not in config:
        raise ValueError(
            f"d_model={fields['d_model']} is not divisible by n_heads={fields['n_heads']}; "
            "set d_head explicitly or change n_heads"
        )
    cfg = HookedTransformerConfig(
        default_prepend_bos=False,  # our tasks put <bos> themselves
        seed=config.get("seed"),
        device="cpu",  # transformer_lens would move to a GPU when it sees one; the caller decides
        **fields,
    )
    return WorkbenchTransformer(cfg)


def load_pretrained_local(folder: str | Path) -> WorkbenchTransformer:
    """Load a GPT-2-shaped Hugging Face checkpoint from a local folder, with no network access.

    transformer_lens converts the config and the weights; we only make sure the path is used as a
    path (never as a hub name) and that weights come from safetensors.
    """
    import transformer_lens.loading_from_pretrained as loading
    from transformers import AutoModelForCausalLM

    folder = Path(folder)
    name = folder.name
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"{folder} holds no config.json; expected a Hugging Face model folder")
    if not (folder / "model.safetensors").is_file():
        raise FileNotFoundError(f"{folder} holds no model.safetensors; weights load only from safetensors")
    hf_config = json.loads((folder / "config.json").read_text())
    with tempfile.TemporaryDirectory() as tmp:
        if "n_ctx" not in hf_config and "n_positions" in hf_config:
            # transformer_lens's GPT-2 converter reads n_ctx, which newer transformers no longer write;
            # patch a copy of the config (never the user's file) beside a link to the weights.
            hf_config["n_ctx"] = hf_config["n_positions"]
            (Path(tmp) / "config.json").write_text(json.dumps(hf_config))
            (Path(tmp) / "model.safetensors").symlink_to((folder / "model.safetensors").resolve())
            folder = Path(tmp)
        hf_model = AutoModelForCausalLM.from_pretrained(folder, use_safetensors=True, local_files_only=True)
        cfg = loading.get_pretrained_model_config(str(folder), fold_ln=False, local_files_only=True)
        state = loading.get_pretrained_state_dict(str(folder), cfg, hf_model)
    # Token ids in, logits out: no Hugging Face tokenizer is looked up (it would be a hub request).
    cfg.tokenizer_name = None
    cfg.model_name = name
    model = WorkbenchTransformer(cfg)
    model.load_and_process_state_dict(state, fold_ln=False, center_writing_weights=False, center_unembed=False)
    return model.eval()

