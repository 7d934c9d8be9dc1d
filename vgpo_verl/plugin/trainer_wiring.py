"""Carry what our estimators need from verl's old-log-prob pass to the estimator (vgpo_verl.plugin.method_table).

verl gives registered estimators only (rewards, response_mask, uid, config), so this module wraps
verl's trainer methods (their code is not copied), and only when `algorithm.adv_estimator` is one of
ours (vgpo, entropy_shaping, vppo); for every other estimator each wrapper calls the original and
nothing else. What each estimator needs is one row of `vgpo_verl.plugin.method_table.methods()`: flags for the
pass, the engine's extra outputs, and verl's own fields it reuses.

v1 trainer (`trainer.use_v1=true`, default; verl/trainer/ppo/v1/trainer_base.py, PPOTrainer):
- `_compute_old_log_prob`: sets the method's flags (vgpo: vgpo_verl.methods.scoring.SCORE_FLAG + the layer;
  vppo: vgpo_verl.methods.perturb.PERTURB_FLAG + probability + this step's seed) in the batch's extra_info
  for the duration of the call, then removes them again, so the reference pass that follows (same
  batch object) is plain. The engine's extra outputs land in the TransferQueue next to `log_probs`.
- `_compute_advantage`: fetches the method's fields for the same keys (the engine's outputs are
  already response-aligned, like verl's `old_log_probs`; pads them like verl pads its own with
  `to_padded_tensor`), and runs the original inside `vgpo_verl.plugin.estimator.estimator_inputs(...)`;
  the estimator's metrics (`vgpo/`, `entropy/`, `vppo/`) are merged into the trainer's `metrics`.
- Both return their KVBatchMeta without the engine's extra fields in `fields`, the list workers
  fetch: the reference and update workers never receive them (benchmarks/bench_transfer.py:
  bytes/step).
- `v1.utils.compute_advantage_for_multi_trajectories`: for agent loops returning several outputs
  per session (keys `{uid}_{session}_{i}`), tells our estimators which rows form a session
  (`estimator.agent_sessions`): verl itself gives the session treatment to its `grpo` only and would
  hand ours every output as its own group member. How each method treats a session is in
  vgpo_verl/plugin/estimator.py (all three start from verl's multi-output GRPO advantage).

Legacy trainer (`trainer.use_v1=false`; verl/trainer/ppo/ray_trainer.py, RayPPOTrainer, still
present in verl 0.9.1 but deprecated):
- `RayPPOTrainer._compute_old_log_prob`: the flags ride in `batch.meta_info` (verl turns meta_info
  into the worker batch's non-tensor data); the worker output is observed on its way back, and the
  estimator's inputs (the engine's response outputs padded to the batch's response width, copies
  of verl's `entropys` / `old_log_probs`, which the fit loop pops or keeps) are added to the
  returned DataProto under INPUT_PREFIX keys.
- `ray_trainer.compute_advantage` (module function the fit loop calls): takes those keys out of the
  batch and calls the original inside `estimator_inputs(...)`; the metrics wait for the next
  `metric_utils.compute_data_metrics` call (the same step's), which merges them. That function is
  wrapped where verl defines it, before any trainer binds the name, so the experimental
  fully_async / one_step_off trainers (verl/experimental/separation/ray_trainer.py imports it from
  metric_utils directly) log the metrics too; their old-log-prob and advantage calls are the legacy
  ones wrapped here (RayPPOTrainer subclasses, `compute_advantage` imported from ray_trainer).

Our cost (vgpo_verl.plugin.timing), in every trainer: both `_compute_old_log_prob` wrappers take the engine's
seconds from the metrics verl's workers return with `compute_log_prob` (v1: the returned meta's
`extra_info`, where verl's TransferQueue bridge puts a worker's non-tensor outputs; legacy: the
returned TensorDict), which verl itself reads no further for this pass. That costs no TransferQueue
field, no extra fetch and no change to the worker. The v1 advantage wrapper times the fetch of the
estimator's inputs, the estimators their own weights; `metric_utils.compute_timing_metrics` (wrapped
where verl defines it) logs the step's tally as `timing_s/...` next to verl's own timings, plus
`perf/our_share_of_step`.

Balance-batch padding rows of the v1 trainer (tags `is_padding`, verl/trainer/ppo/padding_utils.py)
are handed to the estimator (`is_padding`), which leaves them out of every metric and statistic.
"""

from __future__ import annotations

import contextlib
import functools

import torch

from vgpo_verl.plugin import timing
from vgpo_verl.plugin.method_table import Method, method_of

INPUT_PREFIX = "estimator_input__"  # legacy batch keys carrying an estimator keyword's tensor
# The legacy and experimental fit loops compute advantages and, later in the same step, their data
# metrics, in one trainer process (a module-level slot: the two calls may not share a thread).
_legacy_pending: dict[str, dict] = {}
_WRAPPED = "_vgpo_wrapped"


def _per_sample_flags(value: torch.Tensor) -> torch.Tensor:
    """(B,) bool from a per-sample engine output: (B, 1), nested or dense (TransferQueue returns a
    field whose samples all have one shape either way)."""
    flags = value.values() if value.is_nested else value.reshape(-1)
    if flags.shape[0] != value.shape[0]:
        raise RuntimeError(f"a per-sample engine output must hold one value per sample, got {flags.shape[0]} "
                           f"values for {value.shape[0]} samples")
    return flags.bool()


def _padded_response(value: torch.Tensor, width: int) -> torch.Tensor:
    """(B, width) float32, 0 past each row, from a response-aligned engine output nested (B, R_i)."""
    lengths = value.offsets().diff()
    padded = torch.zeros(value.shape[0], width, dtype=torch.float32)
    padded[torch.arange(width) < lengths.unsqueeze(1)] = value.values().float()
    return padded


def _missing_inputs_error(method: Method, fields: list[str], cause: Exception) -> RuntimeError:
    from vgpo_verl.plugin.estimator import MISSING_SCORES_FIX

    return RuntimeError(
        f"adv_estimator={method.estimator}: the actor's old-log-prob outputs {fields} are not in the batch "
        f"({cause}). " + MISSING_SCORES_FIX
    )


def _clear_flags(info: dict | None, flags: dict) -> None:
    if info is not None:
        for key in flags:
            info.pop(key, None)


@contextlib.contextmanager
def _observed_compute_log_prob(worker_group):
    """For the block, `worker_group.compute_log_prob` also keeps its output in the yielded dict ("output")."""
    compute_log_prob, seen = worker_group.compute_log_prob, {}

    def observed(*args, **kwargs):
        seen["output"] = compute_log_prob(*args, **kwargs)
        return seen["output"]

    worker_group.compute_log_prob = observed
    try:
        yield seen
    finally:
        worker_group.compute_log_prob = compute_log_prob


def _tally_worker_seconds(worker_metrics) -> None:
    """Add the old-log-prob pass's engine seconds (vgpo_verl.plugin.engine: one value per rank) to the
    step's tally, averaged over ranks (vgpo_verl.plugin.timing.mean_over_ranks)."""
    for name in (timing.SCORE, timing.AUG_FORWARD):
        seconds = timing.mean_over_ranks(worker_metrics, timing.TIMING_PREFIX + name)
        if seconds is not None:
            timing.add_step_seconds(name, seconds)


def _pass_flags(method: Method, trainer) -> dict:
    if method.pass_flags is None:
        return {}
    return method.pass_flags(trainer.config, int(getattr(trainer, "global_steps", 0) or 0))


# ---------------------------------------------------------------- v1 trainer (TransferQueue)


def _wrap_v1_old_log_prob(original):
    @functools.wraps(original)
    def _compute_old_log_prob(self, batch, metrics):
        method = method_of(self.config.algorithm.adv_estimator)
        flags = {} if method is None else _pass_flags(method, self)
        if not flags:
            return original(self, batch, metrics)
        batch.extra_info.update(flags)
        try:
            with _observed_compute_log_prob(self.actor_rollout_wg) as seen:
                result = original(self, batch, metrics)
        finally:
            _clear_flags(batch.extra_info, flags)
        _clear_flags(result.extra_info, flags)  # the batch the reference pass receives next
        if "output" in seen:  # the workers' metrics ride in the returned meta's extra_info (tqbridge)
            _tally_worker_seconds(seen["output"].extra_info.get("metrics"))
        return _without_engine_outputs(result, method)

    return _compute_old_log_prob


def _without_engine_outputs(meta, method: Method):
    """The KVBatchMeta minus the method's engine outputs: workers fetch `meta.fields` from
    the TransferQueue, so the reference and update passes no longer receive them (only the driver
    reads them, once, in `_compute_advantage`; TransferQueue frees them with the step's kv_clear)."""
    if meta.fields is not None:
        meta.fields = [name for name in meta.fields if name not in method.engine_outputs]
    return meta


def fetch_v1_inputs(method: Method, batch) -> dict[str, torch.Tensor]:
    """The estimator's keyword tensors for a KVBatchMeta, in its key order: (B, T) padded like verl's
    `_compute_advantage` pads `response_mask` (to_padded_tensor, 0 at padding), in their stored dtype,
    (B,) bool for per-sample outputs."""
    import transfer_queue as tq
    from tensordict import TensorDict

    fields = [*method.engine_outputs, *method.verl_fields]
    try:
        data = tq.kv_batch_get(keys=batch.keys, partition_id=batch.partition_id,
                               select_fields=[*fields, "response_mask"])
    except Exception as error:
        raise _missing_inputs_error(method, fields, error) from error
    absent = [f for f in fields if f not in data.keys()]  # TransferQueue skips absent fields
    if absent:
        raise _missing_inputs_error(method, absent, KeyError(absent[0]))
    response_mask = data["response_mask"]
    per_sample, per_token = {}, {"response_mask": response_mask}
    for field, keyword in method.engine_outputs.items():
        if field in method.per_sample:
            per_sample[keyword] = _per_sample_flags(data[field])
        else:  # response-aligned by the engine, like verl's own fields
            per_token[keyword] = data[field]
    for field, keyword in method.verl_fields.items():  # response-sliced by verl
        per_token[keyword] = data[field]
    padded = TensorDict(per_token, batch_size=len(batch)).to_padded_tensor()
    # dtypes as stored (the engine's outputs are float32; verl's entropy keeps the dtype whose rounding
    # the entropy_shaping estimator allows for)
    return {**{k: padded[k] for k in per_token if k != "response_mask"}, **per_sample}


def _wrap_v1_advantage(original):
    @functools.wraps(original)
    def _compute_advantage(self, batch, metrics):
        method = method_of(self.config.algorithm.adv_estimator)
        if method is None:
            return original(self, batch, metrics)
        from vgpo_verl.plugin.dump import dump_step
        from vgpo_verl.plugin.estimator import estimator_inputs, pop_metrics

        is_padding = torch.tensor([bool(tag.get("is_padding", False)) for tag in batch.tags], dtype=torch.bool)
        with timing.on_driver(timing.WEIGHTS):
            inputs = fetch_v1_inputs(method, batch)
        with estimator_inputs(**inputs, is_padding=is_padding):
            result = original(self, batch, metrics)
        metrics.update(pop_metrics())
        dump_step(self, result, inputs)  # no-op unless algorithm.vgpo.dump_dir is set
        return _without_engine_outputs(result, method)  # the batch update_actor receives next

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
        raise ValueError("agent sessions: a session has two outputs with the same index in its keys "
                         f"{[k for k, f in zip(batch_keys, is_final.tolist()) if f][:10]}")
    return session, is_final


def _wrap_multi_trajectories(original):
    @functools.wraps(original)
    def compute_advantage_for_multi_trajectories(data, batch_keys, adv_estimator, *args, **kwargs):
        structure = agent_session_codes(batch_keys) if method_of(adv_estimator) is not None else None
        if structure is None:
            return original(data, batch_keys, adv_estimator, *args, **kwargs)
        from vgpo_verl.plugin.estimator import agent_sessions

        with agent_sessions(*structure):
            return original(data, batch_keys, adv_estimator, *args, **kwargs)

    return compute_advantage_for_multi_trajectories


# ---------------------------------------------------------------- legacy trainer (DataProto)


def _wrap_legacy_old_log_prob(original):
    @functools.wraps(original)
    def _compute_old_log_prob(self, batch):
        method = method_of(self.config.algorithm.adv_estimator)
        if method is None:
            return original(self, batch)
        from verl.utils import tensordict_utils as tu

        flags = _pass_flags(method, self)
        batch.meta_info.update(flags)
        try:
            with _observed_compute_log_prob(self.actor_rollout_wg) as seen:
                old_log_prob, mfu = original(self, batch)
        finally:
            _clear_flags(batch.meta_info, flags)
        _tally_worker_seconds(tu.get(seen["output"], "metrics"))
        for field, keyword in method.engine_outputs.items():
            value = tu.get(seen["output"], field)
            if value is None:
                raise _missing_inputs_error(method, [field], KeyError(field))
            old_log_prob.batch[INPUT_PREFIX + keyword] = (
                _per_sample_flags(value) if field in method.per_sample
                else _padded_response(value, batch.batch["response_mask"].shape[-1])
            )
        for field, keyword in method.legacy_fields.items():
            old_log_prob.batch[INPUT_PREFIX + keyword] = old_log_prob.batch[field].clone()
        return old_log_prob, mfu

    return _compute_old_log_prob


def _wrap_legacy_compute_advantage(original):
    @functools.wraps(original)
    def compute_advantage(data, adv_estimator, *args, **kwargs):
        # The v1 trainer calls this same function (v1/utils.py imports it from ray_trainer) with its
        # inputs already in the estimator_inputs context and none in the batch: pass through.
        # Legacy without inputs (bypass mode) passes through too, and the estimator says what is missing.
        keys = [k for k in data.batch.keys() if k.startswith(INPUT_PREFIX)]
        if method_of(adv_estimator) is None or not keys:
            return original(data, adv_estimator, *args, **kwargs)
        from vgpo_verl.plugin.estimator import estimator_inputs, pop_metrics

        inputs = {k[len(INPUT_PREFIX):]: data.batch.pop(k) for k in keys}
        with estimator_inputs(**inputs):
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


def _wrap_timing_metrics(original):
    @functools.wraps(original)
    def compute_timing_metrics(batch, timing_raw):
        metrics = original(batch, timing_raw)
        metrics.update(timing.step_metrics(timing.pop_step_seconds(), timing_raw.get("step")))
        return metrics

    return compute_timing_metrics


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
    """Wrap metric_utils.compute_data_metrics and compute_timing_metrics where verl defines them (run
    when that module is imported, before the trainers bind the names). Idempotent."""
    from verl.trainer.ppo import metric_utils

    _wrap(metric_utils, "compute_data_metrics", _wrap_legacy_data_metrics)
    _wrap(metric_utils, "compute_timing_metrics", _wrap_timing_metrics)
