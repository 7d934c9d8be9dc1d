"""What our actor engines add to verl's: the extra outputs our estimators need from the old-log-prob pass.

`ScoringEngineMixin`, first among the bases of vgpo_verl.plugin.engine's `VGPOFSDPEngineWithLMHead` (verl's
`FSDPEngineWithLMHead`) and vgpo_verl.plugin.engine_veomni's `VGPOVeOmniEngineWithLMHead` (verl's
`VeOmniEngineWithLMHead`, itself an `FSDPEngineWithLMHead`), leaves verl's engine unchanged, except in
forward-only micro-batches carrying one of two non-tensor flags (set by vgpo_verl.plugin.trainer_wiring for the
old-log-prob pass only, from the estimator's row in vgpo_verl.plugin.method_table):

VPPO, `vppo_perturb=True` (vgpo_verl.methods.perturb): after verl's own forward, one more forward of the
same micro-batch with the images' patches blackened (`vppo_black_prob`, `vppo_seed`; on the pixel
rows the model reads, in `prepare_model_inputs`), whose log-probs join the model output as
`vppo_aug_log_probs`, nested (bsz, response_len) float32: the response slice of that forward's
`log_probs`, taken like verl takes its own (`response_from_nested`: slots [end-R-1, end-1), so entry
t is log pi(y_t | ...)), i.e. exactly aligned with verl's `old_log_probs`. That second forward is
verl's own forward_step (packing, Ulysses, temperature), with entropy off.

VGPO, `vgpo_score=True`: a forward hook on one decoder layer (`vgpo_layer`, default -1: the
final norm, i.e. lm_head's input) turns that layer's output into per-token cosine scores while the
forward runs, and two nested tensors join the model output:

- `vgpo_visual_score` (bsz, response_len) float32: entry t of a sample is cos(h at response token
  y_t's own position, mu) (spec section 1), mu the mean hidden state over the sample's visual
  placeholder tokens; 0 for a sample without any.
- `vgpo_has_visual` (bsz, 1) bool: whether the sample's sequence contains a visual placeholder token.

Only what the estimator reads leaves the engine: prompt tokens never enter the TransferQueue.
Response lengths come from the micro-batch (`response_lengths`). A per-sample value still has one
element per sample, not zero: verl's `postprocess_batch_func` unbinds every model-output key into
per-sample rows and rebuilds a jagged nested tensor, which refuses zero-dim rows.

verl concatenates any model-output key over micro-batches, restores the dynamic-batch order and
writes it to the TransferQueue, so nothing else in verl needs to know about these keys.

Cost: the scoring (the hook, then the slicing of its scores to the responses) and the perturbed
forward are timed in every micro-batch (vgpo_verl.plugin.timing.PassTimer: CUDA events read once after the
pass), and `infer_batch` adds each one's seconds, summed over the pass, to verl's metrics of the
pass as `timing_s/vgpo_score` / `timing_s/vppo_aug_forward`.

The engines are registered (no user flag; `register_scoring_engine`) for their backends under the
engine key ("cuda", "nvidia"), which `EngineRegistry.get_engine_cls` tries before the stock bare
"cuda" key. The CPU platform of vgpo_verl.cpu resolves to the same key (VERL_ENGINE_DEVICE=cuda,
VERL_ENGINE_VENDOR=nvidia). Other vendors (AMD ROCm: ("cuda", "amd") falls back to the bare key; NPU)
keep verl's stock engines.

This module imports nothing under verl.workers.engine (whose package imports every engine module, and
so fires the hooks of both our engine modules): each engine module imports it, never each other.
"""

from __future__ import annotations

import contextlib
import logging

import torch
from verl.utils import tensordict_utils as tu
from verl.utils.device import get_device_name

from vgpo_verl.plugin import timing
from vgpo_verl.plugin.preflight import SCORING_ENGINE_KEYS as ENGINE_KEYS  # one list, checked at start-up
from vgpo_verl.methods.perturb import (
    AUG_LOG_PROBS_KEY,
    MEAN_KEY,
    PERTURB_FLAG,
    PROB_KEY,
    SEED_KEY,
    STD_KEY,
    blacken_patches,
)
from vgpo_verl.methods.scoring import (
    CHUNK_KEY,
    DEFAULT_CHUNK_TOKENS,
    LAYER_KEY,
    SCORE_FLAG,
    HiddenStateCapture,
    cosine_to_prototypes,
    padded_segment_ids,
    response_slice,
    score_outputs,
    segment_ids_from_cu_seqlens,
    visual_mask_of,
    visual_prototypes,
    visual_token_ids,
)

logger = logging.getLogger(__name__)


def response_lengths(micro_batch) -> torch.Tensor:
    """(bsz,) long: each sample's response length, from the fields verl's own response slicing reads.

    v1 trainer (TransferQueue batches): `response_mask` is nested (bsz, R_i), as `response_from_nested`
    uses it. Legacy trainer (`left_right_2_no_padding` keeps the padded fields): `response_mask` is
    (bsz, R_max) and may hold zeros inside a response (tool tokens), so count the attention mask over
    the response columns, as `no_padding_2_padding` does.
    """
    response_mask = micro_batch["response_mask"]
    if response_mask.is_nested:
        return response_mask.offsets().diff()
    return micro_batch["attention_mask"][:, -response_mask.shape[-1]:].sum(-1)


class _MicroBatchScorer:
    """Called by the forward hook with the scored layer's output; returns the packed scores.

    Handles the three layouts verl's FSDP engine feeds the model:
    - remove-padding: hidden (1, P, H) over the packed sequences (+ right padding);
    - remove-padding + Ulysses SP: hidden (1, P, H) is this rank's contiguous slice of the padded
      packed sequence; prototype sums are all-reduced over the SP group and the scores all-gathered;
    - padded: hidden (bsz, max_len, H), right padding.
    """

    def __init__(self, engine, micro_batch, chunk_tokens: int):
        self.engine = engine
        self.input_ids = micro_batch["input_ids"]  # nested (bsz, j)
        self.cu_seqlens = self.input_ids.offsets().long()  # (S+1,)
        self.use_remove_padding = tu.get_non_tensor_data(micro_batch, "use_remove_padding", default=True)
        self.chunk_tokens = chunk_tokens
        config = getattr(engine.module, "config", None) or engine.model_config.hf_config
        self.token_ids = visual_token_ids(config)

    def __call__(self, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """hidden: the layer output. Returns (similarity (N,) float32 packed, has_visual (S,) bool)."""
        cu_seqlens = self.cu_seqlens.to(hidden.device)
        input_ids = self.input_ids.values().to(hidden.device)  # (N,)
        if self.use_remove_padding:
            return self._score_packed(hidden, cu_seqlens, input_ids)
        return self._score_padded(hidden, cu_seqlens, input_ids)

    def _score_packed(self, hidden, cu_seqlens, input_ids):
        """hidden (1, P, H): the packed sequences, or this Ulysses rank's contiguous slice of them."""
        if hidden.shape[0] != 1:
            raise RuntimeError(f"VGPO scoring: packed hidden states must be (1, P, H), got {tuple(hidden.shape)}")
        n_tokens, num_seqs, local_len = input_ids.shape[0], cu_seqlens.numel() - 1, hidden.shape[1]
        sp_size, sp_rank, group = 1, 0, None
        if self.engine.use_ulysses_sp:
            group = self.engine.ulysses_parallel_group
            sp_size, sp_rank = torch.distributed.get_world_size(group), torch.distributed.get_rank(group)
        positions = sp_rank * local_len + torch.arange(local_len, device=hidden.device)
        segment_ids = segment_ids_from_cu_seqlens(cu_seqlens, positions)  # S past the real tokens
        visual = visual_mask_of(input_ids, self.token_ids)[positions.clamp(max=n_tokens - 1)] & (positions < n_tokens)
        hidden = hidden[0]
        mu, has_visual = visual_prototypes(hidden, segment_ids, visual, num_seqs, self.chunk_tokens, group)
        similarity = cosine_to_prototypes(hidden, segment_ids, mu, self.chunk_tokens)
        total_pad = local_len * sp_size - n_tokens  # SP alignment pad + static bucket pad, at the tail
        if group is not None:
            return self.engine._gather_and_unpad_packed(similarity, total_pad), has_visual
        return similarity[:n_tokens], has_visual

    def _score_padded(self, hidden, cu_seqlens, input_ids):
        """hidden (bsz, max_len, H), right padding."""
        segment_ids, valid = padded_segment_ids(cu_seqlens.diff(), hidden.shape[1])
        visual = torch.zeros_like(valid)
        visual[valid] = visual_mask_of(input_ids, self.token_ids)
        hidden = hidden.reshape(-1, hidden.shape[-1])
        num_seqs = cu_seqlens.numel() - 1
        mu, has_visual = visual_prototypes(hidden, segment_ids, visual.reshape(-1), num_seqs, self.chunk_tokens)
        similarity = cosine_to_prototypes(hidden, segment_ids, mu, self.chunk_tokens)
        return similarity[valid.reshape(-1)], has_visual  # row-major = the nested values' order

class ScoringEngineMixin:
    """What our engines add to a verl LM engine built on FSDPEngineWithLMHead (its forward_step,
    prepare_model_inputs and the Ulysses fields): in forward-only passes flagged `vgpo_score` the
    visual-focus scores, in passes flagged `vppo_perturb` the log-probs under perturbed images.
    Listed first among the bases, so its methods wrap the engine's own through super()."""

    # (seed, prob, mean, std) while the perturbed forward runs; read by prepare_model_inputs
    _pixel_perturbation = None
    _pass_timer: timing.PassTimer | None = None  # set while infer_batch runs

    def infer_batch(self, data, loss_function=None):
        """verl's infer_batch; the seconds our additions took join the pass's metrics (one float per
        name, this rank's sum over micro-batches)."""
        self._pass_timer = timing.PassTimer(cuda_events=get_device_name() == "cuda")
        try:
            outputs = super().infer_batch(data, loss_function)
        finally:
            timer, self._pass_timer = self._pass_timer, None
        if isinstance(outputs, dict) and isinstance(outputs.get("metrics"), dict):
            outputs["metrics"].update({timing.TIMING_PREFIX + k: v for k, v in timer.seconds().items()})
        return outputs

    def _timed(self, name: str):
        return self._pass_timer.measure(name) if self._pass_timer is not None else contextlib.nullcontext()

    def forward_step(self, micro_batch, loss_function, forward_only):
        score = forward_only and tu.get_non_tensor_data(micro_batch, SCORE_FLAG, default=False)
        perturb = forward_only and tu.get_non_tensor_data(micro_batch, PERTURB_FLAG, default=False)
        if not score:
            loss, output = super().forward_step(micro_batch, loss_function, forward_only)
        else:
            loss, output = self._scored_forward_step(micro_batch, loss_function, forward_only)
        if perturb:
            with self._timed(timing.AUG_FORWARD):
                output["model_output"][AUG_LOG_PROBS_KEY] = self._perturbed_log_probs(micro_batch, loss_function)
        return loss, output

    def _scored_forward_step(self, micro_batch, loss_function, forward_only):
        layer = int(tu.get_non_tensor_data(micro_batch, LAYER_KEY, default=-1))
        chunk_tokens = int(tu.get_non_tensor_data(micro_batch, CHUNK_KEY, default=DEFAULT_CHUNK_TOKENS))
        scorer = _MicroBatchScorer(self, micro_batch, chunk_tokens)
        if not scorer.token_ids:
            logger.warning("vgpo: the model config names no image/video token id; every sample counts as text-only")
        on_capture = self._pass_timer.wrap(timing.SCORE, scorer) if self._pass_timer is not None else scorer
        with HiddenStateCapture(self.module, layer=layer, on_capture=on_capture) as capture:
            loss, output = super().forward_step(micro_batch, loss_function, forward_only)
        if capture.calls != 1:
            raise RuntimeError(
                f"vgpo: the scored layer ran {capture.calls} times in one forward pass (expected once); "
                "cannot tell which output belongs to the batch"
            )
        similarity, has_visual = capture.result
        with self._timed(timing.SCORE):
            output["model_output"].update(score_outputs(similarity, has_visual, scorer.cu_seqlens,
                                                        response_lengths(micro_batch)))
        return loss, output

    def _image_normalisation(self, micro_batch) -> tuple[list[float], list[float]]:
        """The processor's per-channel mean / std the pixel rows were normalised with."""
        mean = tu.get_non_tensor_data(micro_batch, MEAN_KEY, default=None)
        std = tu.get_non_tensor_data(micro_batch, STD_KEY, default=None)
        if mean is not None and std is not None:
            return list(mean), list(std)
        processor = getattr(getattr(self, "model_config", None), "processor", None)
        image_processor = getattr(processor, "image_processor", None)
        mean, std = getattr(image_processor, "image_mean", None), getattr(image_processor, "image_std", None)
        if mean is None or std is None:
            raise RuntimeError(
                "vppo: the actor has no image processor to read the pixel normalisation from (black = "
                "(0 - mean) / std); set algorithm.vppo.image_mean and algorithm.vppo.image_std"
            )
        return list(mean), list(std)

    def _perturbed_log_probs(self, micro_batch, loss_function) -> torch.Tensor:
        """verl's forward_step once more, on blackened image patches; the response slice of its log_probs,
        nested (bsz, response_len)."""
        seed = int(tu.get_non_tensor_data(micro_batch, SEED_KEY, default=0))
        prob = float(tu.get_non_tensor_data(micro_batch, PROB_KEY, default=0.5))
        calculate_entropy = tu.get_non_tensor_data(micro_batch, "calculate_entropy", default=False)
        self._pixel_perturbation = (seed, prob, *self._image_normalisation(micro_batch))
        tu.assign_non_tensor(micro_batch, calculate_entropy=False)  # the aug pass needs log-probs only
        try:
            _, output = super().forward_step(micro_batch, loss_function, True)
        finally:
            self._pixel_perturbation = None
            tu.assign_non_tensor(micro_batch, calculate_entropy=calculate_entropy)
        log_probs = output["model_output"]["log_probs"]  # nested (bsz, seq_len), slot j = token j + 1
        return response_slice(log_probs.values(), log_probs.offsets(), response_lengths(micro_batch), shift=1)

    def prepare_model_inputs(self, micro_batch):
        model_inputs, output_args = super().prepare_model_inputs(micro_batch=micro_batch)
        if self._pixel_perturbation is not None:
            seed, prob, mean, std = self._pixel_perturbation
            for pixels, grid in (("pixel_values", "image_grid_thw"), ("pixel_values_videos", "video_grid_thw")):
                if model_inputs.get(pixels) is not None:
                    model_inputs[pixels], _ = blacken_patches(model_inputs[pixels], model_inputs[grid], seed, prob,
                                                              mean, std)
        return model_inputs, output_args


def register_scoring_engine(module, class_name: str, backends: tuple[str, ...]) -> None:
    """Register `module.<class_name>` as verl's language-model engine for `backends` under every key of
    ENGINE_KEYS, where it is not registered already; a no-op while the class is not defined yet."""
    engine_cls = getattr(module, class_name, None)
    if engine_cls is None:
        return
    from verl.workers.engine.base import EngineRegistry  # loaded already: the hook fires inside its package

    registry = EngineRegistry._engines.get("language_model", {})
    for device, vendor in ENGINE_KEYS:
        missing = [b for b in backends if registry.get(b, {}).get((device, vendor)) is not engine_cls]
        if missing:
            EngineRegistry.register(model_type="language_model", backend=missing, device=device, vendor=vendor)(
                engine_cls
            )
