"""Interventions on every architecture: prompt pairs, activation patching, metrics, hook checks.

Every method takes hook names (shared, native or recurrent-state; ``architectures/hooked.py``), so it
works on every architecture; sweeps are batched (``patching``). One module per method, each stating its
algorithm in numbered steps.
"""

from workbench.interventions.hooks import (
    check_channels,
    check_heads,
    check_index,
    check_indices,
    check_layers,
    check_positions,
    hook_names_of,
    hook_shapes,
    resolve_hook,
)
from workbench.interventions.metrics import (
    METRICS,
    answer_prob,
    kl_clean_patched,
    logit_diff,
    logits_at,
    metric,
    normalised_score,
)
from workbench.interventions.pairs import (
    PromptPairs,
    induction_pairs,
    pairs_from_text,
    recall_pairs,
    task_pairs,
    toyworld_pairs,
)
from workbench.interventions.patching import (
    DIRECTIONS,
    PatchResult,
    Site,
    patch,
    patch_runs,
    sweep_channels,
    sweep_heads,
    sweep_layer_position,
)

# --- other intervention modules (ablation, steering, features, generate) import here -----------------
# (owned by their helper; add their imports below this line)
# isort: split
from workbench.interventions.ablation import Component as Component
from workbench.interventions.ablation import ablate as ablate
from workbench.interventions.ablation import components as components
from workbench.interventions.attribution_patching import EdgeAttribution as EdgeAttribution
from workbench.interventions.attribution_patching import attribution_scores as attribution_scores
from workbench.interventions.attribution_patching import edge_attribution as edge_attribution
from workbench.interventions.attribution_patching import real_edge_effects as real_edge_effects
from workbench.interventions.causal_tracing import TraceResult as TraceResult
from workbench.interventions.causal_tracing import causal_trace as causal_trace
from workbench.interventions.causal_tracing import toyworld_trace_prompts as toyworld_trace_prompts
from workbench.interventions.features import FeatureEdit as FeatureEdit
from workbench.interventions.features import FeatureSplice as FeatureSplice
from workbench.interventions.features import generate_with_features as generate_with_features
from workbench.interventions.features import graph_prediction as graph_prediction
from workbench.interventions.features import swap_edits as swap_edits
from workbench.interventions.generate import generate as generate
from workbench.interventions.path_patching import path_patch as path_patch
from workbench.interventions.path_patching import receivers as receivers
from workbench.interventions.path_patching import senders as senders
from workbench.interventions.steering import feature_direction as feature_direction
from workbench.interventions.steering import mean_difference as mean_difference
from workbench.interventions.steering import steer as steer
from workbench.interventions.steering import steer_generate as steer_generate

# --- end of other intervention modules --------------------------------------------------------------

__all__ = [
    "DIRECTIONS",
    "METRICS",
    "PatchResult",
    "PromptPairs",
    "Site",
    "answer_prob",
    "check_channels",
    "check_heads",
    "check_index",
    "check_indices",
    "check_layers",
    "check_positions",
    "hook_names_of",
    "hook_shapes",
    "induction_pairs",
    "kl_clean_patched",
    "logit_diff",
    "logits_at",
    "metric",
    "normalised_score",
    "pairs_from_text",
    "patch",
    "patch_runs",
    "recall_pairs",
    "resolve_hook",
    "sweep_channels",
    "sweep_heads",
    "sweep_layer_position",
    "task_pairs",
    "toyworld_pairs",
]
