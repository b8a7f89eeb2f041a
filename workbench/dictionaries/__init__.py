"""Replacement models: activation stores, SAEs, transcoders, skip transcoders and cross-layer
transcoders for every architecture, their losses, trainer and metrics (DESIGN.md, "Dictionaries and
graphs").

    store = collect_activations(model, task, folder, transcoder_hooks([0, 1]), n_sequences=512)
    config = DictionaryConfig("transcoder", d_in=store.widths["blocks.0.hook_mlp_in"], n_features=256,
                              d_out=store.widths["blocks.0.hook_mlp_out"],
                              input_hooks=["blocks.0.hook_mlp_in"], output_hooks=["blocks.0.hook_mlp_out"])
    result = train_dictionary(config, store, DictTrainConfig(steps=2000), run_dir)

Data parallel: the same call in every process of ``torchrun --nproc_per_node N`` (after
``init_from_env()``), see :mod:`.distributed`. Foreign formats: :func:`save_saelens` /
:func:`load_saelens` (SAELens folders) and :func:`save_circuit_tracer` / :func:`load_circuit_tracer`
(circuit-tracer transcoder sets and CLTs).
"""

from workbench.dictionaries.activation_reader import ActivationStore, TensorActivations, shuffled_minibatches
from workbench.dictionaries.activations import (
    HookNotFound,
    LiveActivations,
    StorePlan,
    check_model_hooks,
    collect_activations,
    layer_hooks,
    plan_activation_store,
    real_token_rows,
    transcoder_hooks,
)
from workbench.dictionaries.distributed import Comm, init_from_env
from workbench.dictionaries.interop_circuit_tracer import load_circuit_tracer, save_circuit_tracer
from workbench.dictionaries.interop_saelens import load_saelens, save_saelens
from workbench.dictionaries.losses import (
    DeadFeatureTracker,
    auxk_loss,
    l0_penalty,
    l1_penalty,
    pre_activation_loss,
    reconstruction_mse,
    sparsity_penalty,
    tanh_penalty,
)
from workbench.dictionaries.metrics import DictionaryMetrics, evaluate_dictionary, fvu, l0
from workbench.dictionaries.models import (
    SAE,
    CrossLayerTranscoder,
    Dictionary,
    DictionaryConfig,
    SkipTranscoder,
    Transcoder,
    build_dictionary,
    load_dictionary,
    load_dictionary_card,
    register_dictionary,
    save_dictionary,
)
from workbench.dictionaries.nonlinearities import BatchTopK, JumpReLU, ReLU, TopK, heaviside_step, jumprelu
from workbench.dictionaries.resampling import resample_dead_features
from workbench.dictionaries.trainer import DictTrainConfig, DictTrainResult, train_dictionary

__all__ = [
    "SAE",
    "ActivationStore",
    "BatchTopK",
    "Comm",
    "CrossLayerTranscoder",
    "DeadFeatureTracker",
    "DictTrainConfig",
    "DictTrainResult",
    "Dictionary",
    "DictionaryConfig",
    "DictionaryMetrics",
    "HookNotFound",
    "JumpReLU",
    "LiveActivations",
    "ReLU",
    "SkipTranscoder",
    "StorePlan",
    "TensorActivations",
    "TopK",
    "Transcoder",
    "auxk_loss",
    "build_dictionary",
    "check_model_hooks",
    "collect_activations",
    "evaluate_dictionary",
    "fvu",
    "heaviside_step",
    "init_from_env",
    "jumprelu",
    "l0",
    "l0_penalty",
    "l1_penalty",
    "layer_hooks",
    "load_circuit_tracer",
    "load_dictionary",
    "load_dictionary_card",
    "load_saelens",
    "plan_activation_store",
    "pre_activation_loss",
    "real_token_rows",
    "reconstruction_mse",
    "register_dictionary",
    "resample_dead_features",
    "save_circuit_tracer",
    "save_dictionary",
    "save_saelens",
    "shuffled_minibatches",
    "sparsity_penalty",
    "tanh_penalty",
    "train_dictionary",
    "transcoder_hooks",
]
