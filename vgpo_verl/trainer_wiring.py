"""Carry the actor's visual scores from verl's old-log-prob pass to the `vgpo` estimator.

verl gives registered estimators only (rewards, response_mask, uid, config), so this module wraps
verl's trainer methods (their code is not copied), and only when `algorithm.adv_estimator == "vgpo"`;
for every other estimator each wrapper calls the original and nothing else.

v1 trainer (`trainer.use_v1=true`, default; verl/trainer/ppo/v1/trainer_base.py, PPOTrainer):
- `_compute_old_log_prob`: sets the engine's flag (vgpo_verl.engine.SCORE_FLAG, + the layer) in the
  batch's extra_info for the duration of the call, then removes it again, so the reference pass
  that follows (same batch object) is not scored. The engine's two extra outputs land in the
  TransferQueue next to `log_probs`.
- `_compute_advantage`: fetches them for the same keys, slices the response like verl's own fields
  (`response_from_nested`, then padded like `to_padded_tensor`), and runs the original inside
  `vgpo_verl.estimator.visual_scores(similarity, has_visual)`; the estimator's `vgpo/...` metrics
  are merged into the trainer's `metrics`.
- Both return their KVBatchMeta without the two score fields in `fields`, the list workers fetch:
  the reference and update workers never receive them (benchmarks/bench_transfer.py: bytes/step).
- `v1.utils.compute_advantage_for_multi_trajectories`: for agent loops returning several outputs
  per session (keys `{uid}_{session}_{i}`), tells the estimator which rows form a session
  (`estimator.agent_sessions`); how VGPO weights sessions is in vgpo_verl/estimator.py.

Legacy trainer (`trainer.use_v1=false`; verl/trainer/ppo/ray_trainer.py, RayPPOTrainer, still
present in verl 0.9.1 but deprecated):
- `RayPPOTrainer._compute_old_log_prob`: the flag rides in `batch.meta_info` (verl turns meta_info
  into the worker batch's non-tensor data); the worker output is observed on its way back, and
  the response-sliced scores are added to the returned DataProto, so they join the batch.
- `ray_trainer.compute_advantage` (module function the fit loop calls): takes the scores out of
  the batch and calls the original inside `visual_scores(...)`; the metrics wait for the next
  `metric_utils.compute_data_metrics` call (the same step's), which merges them. That function is
  wrapped where verl defines it, before any trainer binds the name, so the experimental
  fully_async / one_step_off trainers (verl/experimental/separation/ray_trainer.py imports it from
  metric_utils directly) log `vgpo/*` too; their old-log-prob and advantage calls are the legacy
  ones wrapped here (RayPPOTrainer subclasses, `compute_advantage` imported from ray_trainer).

Balance-batch padding rows of the v1 trainer (tags `is_padding`, verl/trainer/ppo/padding_utils.py)
are handed to the estimator, which leaves them out of every `vgpo/` metric.
"""

from __future__ import annotations

import functools

import torch

from vgpo_verl.scoring import HAS_VISUAL_KEY, LAYER_KEY, SCORE_FLAG, SCORE_KEY

ESTIMATOR = "vgpo"
# The legacy and experimental fit loops compute advantages and, later in the same step, their data
# metrics, in one trainer process (a module-level slot: the two calls may not share a thread).
_legacy_pending: dict[str, dict] = {}
_WRAPPED = "_vgpo_wrapped"


def _uses_vgpo(config) -> bool:
    return str(config.algorithm.adv_estimator) == ESTIMATOR


def _scored_layer(config) -> int:
    from vgpo_verl.estimator import vgpo_config_from

    return vgpo_config_from(config.algorithm).layer


def _first_token_flags(has_visual_nested: torch.Tensor) -> torch.Tensor:
    """(B,) bool from the engine's per-token has_visual (constant within each sample)."""
    return has_visual_nested.values()[has_visual_nested.offsets()[:-1].long()] > 0.5


def _missing_scores_error(cause: Exception) -> RuntimeError:
    from vgpo_verl.estimator import MISSING_SCORES_FIX

    return RuntimeError(
        f"adv_estimator=vgpo: the actor's visual scores ({SCORE_KEY!r}) are not in the batch ({cause}). "
        + MISSING_SCORES_FIX
    )


def _clear_flags(info: dict | None) -> None:
    if info is not None:
        info.pop(SCORE_FLAG, None)
        info.pop(LAYER_KEY, None)


# ---------------------------------------------------------------- v1 trainer (TransferQueue)


def _wrap_v1_old_log_prob(original):
    @functools.wraps(original)
    def _compute_old_log_prob(self, batch, metrics):
        if not _uses_vgpo(self.config):
            return original(self, batch, metrics)
        batch.extra_info.update({SCORE_FLAG: True, LAYER_KEY: _scored_layer(self.config)})
        try:
            result = original(self, batch, metrics)
        finally:
            _clear_flags(batch.extra_info)
        _clear_flags(result.extra_info)  # the batch the reference pass receives next
        return _without_score_fields(result)

    return _compute_old_log_prob


def _without_score_fields(meta):
    """The KVBatchMeta minus the two full-sequence score fields: workers fetch `meta.fields` from the
    TransferQueue, so the reference and update passes no longer receive them (only the driver reads
    them, once, in `_compute_advantage`; TransferQueue frees them with the step's kv_clear)."""
    if meta.fields is not None:
        meta.fields = [name for name in meta.fields if name not in (SCORE_KEY, HAS_VISUAL_KEY)]
    return meta


def fetch_v1_scores(batch) -> tuple[torch.Tensor, torch.Tensor]:
    """(similarity (B, T) float32, has_visual (B,) bool) for a KVBatchMeta, in its key order, T and
    padding as verl's `_compute_advantage` pads `response_mask` (to_padded_tensor, 0 at padding)."""
    import transfer_queue as tq
    from tensordict import TensorDict
    from verl.workers.utils.padding import response_from_nested

    try:
        data = tq.kv_batch_get(
            keys=batch.keys, partition_id=batch.partition_id, select_fields=[SCORE_KEY, HAS_VISUAL_KEY, "response_mask"]
        )
    except Exception as error:
        raise _missing_scores_error(error) from error
    if SCORE_KEY not in data.keys() or HAS_VISUAL_KEY not in data.keys():  # TransferQueue skips absent fields
        raise _missing_scores_error(KeyError(SCORE_KEY))
    response_mask = data["response_mask"]
    similarity = response_from_nested(data[SCORE_KEY], response_mask)
    padded = TensorDict({SCORE_KEY: similarity, "response_mask": response_mask}, batch_size=len(batch)).to_padded_tensor()
    return padded[SCORE_KEY].float(), _first_token_flags(data[HAS_VISUAL_KEY])


def _wrap_v1_advantage(original):
    @functools.wraps(original)
    def _compute_advantage(self, batch, metrics):
        if not _uses_vgpo(self.config):
            return original(self, batch, metrics)
        from vgpo_verl.estimator import pop_metrics, visual_scores

        similarity, has_visual = fetch_v1_scores(batch)
        is_padding = torch.tensor([bool(tag.get("is_padding", False)) for tag in batch.tags], dtype=torch.bool)
        with visual_scores(similarity, has_visual, is_padding=is_padding):
            result = original(self, batch, metrics)
        metrics.update(pop_metrics())
        return _without_score_fields(result)  # the batch update_actor receives next

    return _compute_advantage


def agent_session_codes(batch_keys: list[str]) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(session (B,) long codes, is_final (B,) bool) from verl's v1 keys `{uid}_{session}_{i}`, parsed
    as verl's compute_advantage_for_multi_trajectories does; None when every session has one output."""
    parts = [key.rsplit("_", 2) for key in batch_keys]
    if not parts or any(len(p) != 3 for p in parts):
        return None
    sessions: dict[str, int] = {}
    session = torch.tensor([sessions.setdefault(f"{uid}_{sid}", len(sessions)) for uid, sid, _ in parts])
    if len(sessions) == len(batch_keys):
        return None
    output = torch.tensor([int(i) for _, _, i in parts])
    last = torch.full((len(sessions),), -1, dtype=torch.long).scatter_reduce(0, session, output, "amax")
    is_final = output == last[session]
    if int(is_final.sum()) != len(sessions):
        raise ValueError("adv_estimator=vgpo: a session has two outputs with the same index in its keys "
                         f"{[k for k, f in zip(batch_keys, is_final.tolist()) if f][:10]}")
    return session, is_final


def _wrap_multi_trajectories(original):
    @functools.wraps(original)
    def compute_advantage_for_multi_trajectories(data, batch_keys, adv_estimator, *args, **kwargs):
        structure = agent_session_codes(batch_keys) if str(adv_estimator) == ESTIMATOR else None
        if structure is None:
            return original(data, batch_keys, adv_estimator, *args, **kwargs)
        from vgpo_verl.estimator import agent_sessions

        with agent_sessions(*structure):
            return original(data, batch_keys, adv_estimator, *args, **kwargs)

    return compute_advantage_for_multi_trajectories


# ---------------------------------------------------------------- legacy trainer (DataProto)


def _wrap_legacy_old_log_prob(original):
    @functools.wraps(original)
    def _compute_old_log_prob(self, batch):
        if not _uses_vgpo(self.config):
            return original(self, batch)
        from verl.utils import tensordict_utils as tu
        from verl.workers.utils.padding import no_padding_2_padding

        worker_group = self.actor_rollout_wg
        compute_log_prob = worker_group.compute_log_prob
        seen = {}

        def observed_compute_log_prob(batch_td, *args, **kwargs):
            seen["input"], seen["output"] = batch_td, compute_log_prob(batch_td, *args, **kwargs)
            return seen["output"]

        batch.meta_info.update({SCORE_FLAG: True, LAYER_KEY: _scored_layer(self.config)})
        worker_group.compute_log_prob = observed_compute_log_prob
        try:
            old_log_prob, mfu = original(self, batch)
        finally:
            worker_group.compute_log_prob = compute_log_prob
            _clear_flags(batch.meta_info)
        scores = tu.get(seen["output"], SCORE_KEY)
        if scores is None:
            raise _missing_scores_error(KeyError(SCORE_KEY))
        old_log_prob.batch[SCORE_KEY] = no_padding_2_padding(scores, seen["input"]).float()
        old_log_prob.batch[HAS_VISUAL_KEY] = _first_token_flags(tu.get(seen["output"], HAS_VISUAL_KEY))
        return old_log_prob, mfu

    return _compute_old_log_prob


def _wrap_legacy_compute_advantage(original):
    @functools.wraps(original)
    def compute_advantage(data, adv_estimator, *args, **kwargs):
        # The v1 trainer calls this same function (v1/utils.py imports it from ray_trainer) with
        # its scores already in the visual_scores context and none in the batch: pass through.
        # Legacy without scores (bypass mode) passes through too, and the estimator says what is missing.
        if str(adv_estimator) != ESTIMATOR or SCORE_KEY not in data.batch.keys():
            return original(data, adv_estimator, *args, **kwargs)
        from vgpo_verl.estimator import pop_metrics, visual_scores

        similarity, has_visual = data.batch.pop(SCORE_KEY), data.batch.pop(HAS_VISUAL_KEY)
        with visual_scores(similarity, has_visual):
            result = original(data, adv_estimator, *args, **kwargs)
        _legacy_pending["metrics"] = pop_metrics()
        return result

    return compute_advantage


def _wrap_legacy_data_metrics(original):
    @functools.wraps(original)
    def compute_data_metrics(batch, *args, **kwargs):
        metrics = original(batch, *args, **kwargs)
        metrics.update(_legacy_pending.pop("metrics", None) or {})
        return metrics

    return compute_data_metrics


# ---------------------------------------------------------------- installation


def _wrap(owner, name: str, wrapper) -> None:
    current = getattr(owner, name)
    if getattr(current, _WRAPPED, False):
        return
    wrapped = wrapper(current)
    setattr(wrapped, _WRAPPED, True)
    setattr(owner, name, wrapped)


def install_v1() -> None:
    """Wrap the v1 PPOTrainer (run when verl.trainer.ppo.v1.trainer_base is imported). Idempotent."""
    from verl.trainer.ppo.v1.trainer_base import PPOTrainer

    _wrap(PPOTrainer, "_compute_old_log_prob", _wrap_v1_old_log_prob)
    _wrap(PPOTrainer, "_compute_advantage", _wrap_v1_advantage)


def install_multi_trajectories() -> None:
    """Wrap verl.trainer.ppo.v1.utils.compute_advantage_for_multi_trajectories (run when that module is
    imported, before trainer_base binds the name). Idempotent."""
    from verl.trainer.ppo.v1 import utils

    _wrap(utils, "compute_advantage_for_multi_trajectories", _wrap_multi_trajectories)


def install_legacy() -> None:
    """Wrap the legacy RayPPOTrainer path (run when verl.trainer.ppo.ray_trainer is imported). Idempotent."""
    from verl.trainer.ppo import ray_trainer

    _wrap(ray_trainer.RayPPOTrainer, "_compute_old_log_prob", _wrap_legacy_old_log_prob)
    _wrap(ray_trainer, "compute_advantage", _wrap_legacy_compute_advantage)


def install_metrics() -> None:
    """Wrap metric_utils.compute_data_metrics where verl defines it (run when that module is imported,
    before ray_trainer and the experimental trainers bind the name). Idempotent."""
    from verl.trainer.ppo import metric_utils

    _wrap(metric_utils, "compute_data_metrics", _wrap_legacy_data_metrics)
