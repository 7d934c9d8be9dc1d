"""verl's FSDP actor engine with our scoring: `VGPOFSDPEngineWithLMHead` is verl's `FSDPEngineWithLMHead`
with vgpo_verl.plugin.scoring_engine's `ScoringEngineMixin` (VGPO's visual-focus scores, VPPO's perturbed
log-probs in the flagged old-log-prob pass; what and how: that module's docstring).

Registered (no user flag) for backends fsdp/fsdp2 under the engine keys of vgpo_verl.plugin.preflight,
when verl imports its FSDP engine module (the plugin's hook runs `register`).
"""

from __future__ import annotations

import sys

from vgpo_verl.plugin.scoring_engine import ScoringEngineMixin, register_scoring_engine

BACKENDS = ("fsdp", "fsdp2")


def register() -> None:
    """Register the engine for fsdp/fsdp2 (the plugin runs this once verl's FSDP engine module is
    imported). Idempotent. When this module is the one importing verl's FSDP engine, the plugin's hook
    fires before the class below exists; it is then a no-op and the call at the end registers."""
    register_scoring_engine(sys.modules[__name__], "VGPOFSDPEngineWithLMHead", BACKENDS)


from verl.workers.engine.fsdp.transformer_impl import FSDPEngineWithLMHead  # noqa: E402  (after register)


class VGPOFSDPEngineWithLMHead(ScoringEngineMixin, FSDPEngineWithLMHead):
    """verl's FSDP LM engine with the scoring of ScoringEngineMixin."""


register()  # importing this module directly (not through the plugin's hook) registers it too
