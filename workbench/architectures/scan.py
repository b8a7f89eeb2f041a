"""Linear recurrences behind hooks: the patchable scans every recurrent architecture shares.

    h_t = a_t * h_{t-1} + b_t          (elementwise; time is dim 1; h_{-1} = h0, or 0)

- :func:`linear_scan`, :func:`linear_scan_sequential`: the scan itself and its step-by-step reference,
  in ``workbench.kernels.linear_scan`` (the blocked parallel form and its hand-written backward; the
  kernels import nothing from the workbench, so the primitive lives there) and re-exported here.
- :func:`patchable_linear_scan` (= :func:`hook_patch_mask` then :func:`patched_linear_scan`): states
  behind a hook, patchable so that a patch at position t carries forward to every later position
  (see "Patchable states" below); :func:`patch_values` is the substitution, for sequential cells too.

Patchable states. A mixer exposes its states ``H`` ([B, T, ...]) through a hook. If a hook changes
some elements (a patch), later states must follow the patched ones, as the recurrence would. For a
linear recurrence that is again a linear recurrence, a "reset" scan: where the mask ``m`` is set the
state is the patched value, elsewhere the recurrence continues from the (possibly patched) previous
state: ``a' = a (1 - m)``, ``b' = b (1 - m) + m H_patched``. States before the first patched position are
recomputed bit-identically (a scan step at t reads only positions <= t). The mask is "elements the
hook changed" (the hooks see a copy and are compared with the original, so in-place edits count too);
an element a hook sets to exactly its old value therefore counts as unpatched and follows the dynamics.

Gradients at a state hook. With gradients on and a hook attached, the rerun adds ``H_hooked -
detach(H_hooked)`` (zero in value) to ``b'`` at unpatched elements, and the hook's copy is cut from the
first scan's graph. So parameters get their gradient once (through the rerun) and the gradient at the
hook is the total derivative dL/dh_t, through the output at t and, via the decays, every later state:
the derivative of the patch it would make, which attribution patching needs. Without it the hook
would see only the direct part (the output at t).
"""

from __future__ import annotations

import torch

from workbench.kernels.linear_scan import linear_scan, linear_scan_sequential

__all__ = [
    "hook_patch_mask",
    "linear_scan",
    "linear_scan_sequential",
    "patch_values",
    "patchable_linear_scan",
    "patched_linear_scan",
]


def hook_patch_mask(hook, states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Run ``states`` through ``hook``; return the hooked states and the mask of elements the hook
    changed. A mask of None means "use the hooked states as they are" (no hook attached, or nothing
    changed and no gradient to route); any mask means "rerun the recurrence with
    :func:`patch_values`" (an all-False mask when gradients must reach the hook, see module docstring).
    """
    if not (hook._forward_hooks or hook._backward_hooks):  # nothing can read or change the value
        return hook(states), None
    route = torch.is_grad_enabled() and states.requires_grad
    # The hooks see a copy, so an in-place edit (``act[:, t] = ...``) leaves the states the scan saved
    # for its backward untouched, and the original stays the reference for the comparison. With
    # gradients on, the copy is cut from the graph: parameters get their gradient through the rerun,
    # and the gradient reaching the hook is the total derivative (:func:`patch_values`).
    exposed = states.detach().requires_grad_().clone() if route else states.clone()
    hooked = hook(exposed)
    mask = hooked.detach() != states.detach()
    return hooked, (mask if route or bool(mask.any()) else None)


def patch_values(live: torch.Tensor, patched: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``patched`` where ``mask`` is set, else ``live``, plus a zero-valued term whose gradient
    reaches ``patched`` everywhere: so the gradient at a state hook is dL/dh_t through the outputs
    at t and every later position, whether or not the element was patched."""
    if patched.requires_grad:
        live = live + (patched - patched.detach())
    return torch.where(mask, patched, live)


def patched_linear_scan(a: torch.Tensor, b: torch.Tensor, h0: torch.Tensor | None,
                        patched: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """The states once the elements in ``mask`` are replaced by ``patched`` and every later state
    follows from them (a reset scan, see the module docstring). ``mask=None`` returns ``patched``."""
    if mask is None:
        return patched
    return linear_scan(a * (~mask).to(a.dtype), patch_values(b, patched, mask), h0)


def patchable_linear_scan(hook, a: torch.Tensor, b: torch.Tensor,
                          h0: torch.Tensor | None = None) -> torch.Tensor:
    """:func:`linear_scan` whose states pass through ``hook``, patches carrying forward: the one call
    a mixer makes for a hooked linear state."""
    hooked, mask = hook_patch_mask(hook, linear_scan(a, b, h0))
    return patched_linear_scan(a, b, h0, hooked, mask)
