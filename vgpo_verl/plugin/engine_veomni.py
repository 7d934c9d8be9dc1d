"""verl's VeOmni actor engine with the scoring of vgpo_verl.plugin.engine (VGPO's visual-focus scores,
VPPO's perturbed log-probs), for `model_engine=veomni` / `actor_rollout_ref.actor.strategy=veomni`.

verl's `VeOmniEngineWithLMHead` subclasses its `FSDPEngineWithLMHead` and keeps its `forward_step`,
so vgpo_verl.plugin.scoring_engine's `ScoringEngineMixin` wraps the same methods here as on the FSDP
engine (vgpo_verl.plugin.engine): one implementation, two engines. What VeOmni adds to the inputs (`_apply_veomni_input_transforms`: the image and video masks,
the varlen attention arguments) runs inside `prepare_model_inputs`, below the mixin.

One difference: verl builds the placeholder masks from token ids it hard-codes per model_type
(verl/workers/engine/veomni/utils.py, `VL_TYPE2INDEX`: 151655/151656 for Qwen-VL, 248056/248057 for
Qwen3.5), and VeOmni's models scatter the vision features by those masks without checking them
against the config. A checkpoint whose config names other ids would train with its images silently
dropped (or fail in the deepstack merge). Here the masks are built from the config's
`image_token_id` / `video_token_id` (the ids our scorer reads), from the same full-length input ids
verl builds its masks from, before VeOmni's sequence-parallel slicing: for the released Qwen
checkpoints they are verl's masks. (Dropping the masks instead, so that VeOmni's model derives them,
breaks Qwen2.5-VL: its fallback all-gathers the ids over a sequence-parallel group that is None
without SP, i.e. over every rank.)

Registered for backend veomni under the engine keys of vgpo_verl.plugin.preflight (verl registers its
own under the bare "cuda" / "npu" keys), when verl imports its VeOmni engine module, i.e. where the
`veomni` package is installed. Ulysses sequence parallelism is refused at start-up for the scoring
estimators (not run: VeOmni's SP attention is a flash-attention kernel).
"""

from __future__ import annotations

import sys

from vgpo_verl.plugin.scoring_engine import ScoringEngineMixin, register_scoring_engine

BACKENDS = ("veomni",)
PLACEHOLDER_MASKS = {"image_mask": "image_token_id", "video_mask": "video_token_id"}  # model input -> config id


def register() -> None:
    """Register the engine for backend veomni (the plugin runs this once verl's VeOmni engine module is
    imported). Idempotent; a no-op while this module is the one importing verl's (the call at the end
    registers)."""
    register_scoring_engine(sys.modules[__name__], "VGPOVeOmniEngineWithLMHead", BACKENDS)


from verl.workers.engine.veomni.transformer_impl import VeOmniEngineWithLMHead  # noqa: E402  (after register)


class VGPOVeOmniEngineWithLMHead(ScoringEngineMixin, VeOmniEngineWithLMHead):
    """verl's VeOmni LM engine with the scoring of ScoringEngineMixin; placeholder masks from the model's
    config (see the module docstring)."""

    def _apply_veomni_input_transforms(self, model_inputs, micro_batch):
        input_ids = model_inputs["input_ids"]  # (1, N) packed or (bsz, L) padded: not yet sliced for SP
        super()._apply_veomni_input_transforms(model_inputs, micro_batch)
        config = self.module.config
        for mask, token in PLACEHOLDER_MASKS.items():
            if mask in model_inputs and getattr(config, token, None) is not None:  # verl set it: a VL model
                model_inputs[mask] = input_ids == getattr(config, token)


register()  # importing this module directly (not through the plugin's hook) registers it too
