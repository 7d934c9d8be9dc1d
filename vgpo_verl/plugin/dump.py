"""Opt-in dump of what verl trained on, per step: a debugging aid (`algorithm.vgpo.dump_dir=DIR`).

Off by default. When set, the trainer wiring (vgpo_verl.plugin.trainer_wiring, v1 trainer, adv_estimator
vgpo) calls `dump_step` right after verl's `_compute_advantage` has written the advantages into the
TransferQueue, and this module reads them back for the same keys, so the file holds exactly what
the actor update will consume, next to the inputs the estimator saw. It runs on the driver (the
TaskRunner), so a multi-node run writes one file per step too. Costs one extra TransferQueue read
per step plus the file (a few MB per 100 responses of a small image; it grows with pixel_values).

File: `DIR/step_{global_step:06d}.pt`, written with `torch.save` (load with
`torch.load(path, weights_only=False)`; plain tensors, lists and str only), a dict of B rows in the
batch's key order (the order verl's `_compute_advantage` used), T = the longest response:

    step                 int, verl's global step
    keys                 list[str] (B,), TransferQueue keys "{uid}_{session}_{turn}"
    uid                  list[str] (B,), prompt ids: the GRPO / VGPO groups
    response_mask        (B, T) bool, valid response tokens (right-padded)
    token_level_rewards  (B, T) float32, verl's `rm_scores` padded like response_mask (the outcome
                         reward sits on the last valid token); no KL-in-reward is applied to them
    estimator_inputs     dict: every extra tensor the estimator received, by keyword, exactly as
                         handed to it ((B, T) float32 per-token, 0 at padding; (B,) per-sample);
                         for vgpo: visual_similarity and has_visual, also stored as:
    similarity           (B, T) float32, the actor's raw cosine scores (vgpo only)
    has_visual           (B,) bool (vgpo only)
    is_padding           (B,) bool, rows verl's batch balancing added as padding (tag is_padding)
    advantages           (B, T) float32, what verl stored for the update (0 at padding)
    old_log_probs        (B, T) float32, the actor's log-probs of the response tokens in the
                         old-log-prob pass (0 at padding): a probe of the weights it ran with
    input_ids            list[(L_i,) int64] (B,), prompt + response token ids, unpadded
    prompt_length        (B,) int64, so input_ids[i][prompt_length[i]:] is the response
    image_grid_thw       list[(n_images_i, 3) int64 or None] (B,)
    pixel_values         list[(patches_i, C*T*P*P) float32 or None] (B,), what the actor saw
    index                list (B,), the dataset row's `index` (from extra_info) or None
    algorithm            dict, the resolved `algorithm` config (estimator, norm_adv_by_std_in_grpo,
                         vgpo knobs), so the advantages can be recomputed from the file alone

Recomputation (tests/test_dump_fidelity.py does it): verl's GRPO advantage from
(token_level_rewards, response_mask, uid) times alpha times psi from
`vgpo_verl.methods.vgpo.compute_vgpo_weights(similarity, response_mask, uid, config, has_visual)`
equals `advantages`; the similarity of row i equals cos(h_t, mean of h at image tokens) of a plain
transformers forward of input_ids[i] with pixel_values[i] / image_grid_thw[i].
"""

from __future__ import annotations

import os
import pathlib

import torch

DUMP_KEY = "dump_dir"  # under algorithm.vgpo; read here, skipped by VGPOConfig (not a weighting knob)
_FIELDS = ["uid", "response_mask", "rm_scores", "advantages", "old_log_probs", "input_ids", "multi_modal_inputs",
           "index"]


def dump_dir_from(algorithm_config) -> pathlib.Path | None:
    """`algorithm.vgpo.dump_dir` as a path, or None when unset / empty (the default)."""
    block = None if algorithm_config is None else algorithm_config.get("vgpo", None)
    value = None if block is None else block.get(DUMP_KEY, None)
    if value is None or str(value).strip() == "":
        return None
    return pathlib.Path(os.path.expanduser(str(value)))


def _as_list(values) -> list:
    if values is None:
        return []
    if isinstance(values, torch.Tensor) and not values.is_nested:
        return values.tolist()
    return list(values.tolist() if hasattr(values, "tolist") else values)


def _rows(nested) -> list[torch.Tensor]:
    """A nested (jagged) tensor or a stack as a list of per-row tensors."""
    if isinstance(nested, torch.Tensor) and nested.is_nested:
        return list(nested.unbind())
    return [torch.as_tensor(row) for row in nested]


def _padded(nested: torch.Tensor, width: int, dtype) -> torch.Tensor:
    rows = _rows(nested)
    out = torch.zeros(len(rows), width, dtype=dtype)
    for i, row in enumerate(rows):  # B rows of a debugging dump, not a hot path
        out[i, : row.numel()] = row.reshape(-1).to(dtype)
    return out


def collect(data, inputs: dict[str, torch.Tensor], step: int, algorithm: dict) -> dict:
    """The dump's dict (format in the module docstring) from a TensorDict read from the TransferQueue.

    Args:
        data: TensorDict with the `_FIELDS` present in the batch (nested tensors for per-token fields).
        inputs: the estimator's extra keyword tensors (vgpo_verl.plugin.trainer_wiring.fetch_v1_inputs).
    """
    keys = set(data.keys())
    width = max(row.numel() for row in _rows(data["response_mask"]))
    mask = _padded(data["response_mask"], width, torch.bool)
    mm = _as_list(data["multi_modal_inputs"]) if "multi_modal_inputs" in keys else [None] * mask.shape[0]
    input_ids = [row.long().cpu() for row in _rows(data["input_ids"])]
    # TransferQueue keeps each sample unpadded: input_ids = prompt + response, response_mask per response token
    response_lengths = [row.numel() for row in _rows(data["response_mask"])]
    record = {
        "step": int(step),
        "uid": [str(u) for u in _as_list(data["uid"])],
        "response_mask": mask,
        "token_level_rewards": _padded(data["rm_scores"], width, torch.float32),
        "estimator_inputs": {k: v.detach().cpu() for k, v in inputs.items()},
        "advantages": _padded(data["advantages"], width, torch.float32),
        "old_log_probs": _padded(data["old_log_probs"], width, torch.float32),
        "input_ids": input_ids,
        "prompt_length": torch.tensor([ids.numel() - n for ids, n in zip(input_ids, response_lengths)]),
        "image_grid_thw": [None if m is None or "image_grid_thw" not in m else m["image_grid_thw"].cpu() for m in mm],
        "pixel_values": [None if m is None or "pixel_values" not in m else m["pixel_values"].float().cpu() for m in mm],
        "index": _as_list(data["index"]) if "index" in keys else [None] * mask.shape[0],
        "algorithm": algorithm,
    }
    if "visual_similarity" in inputs:
        record["similarity"] = inputs["visual_similarity"].detach().float().cpu()
        record["has_visual"] = torch.as_tensor(inputs["has_visual"]).bool().cpu()
    return record


def dump_step(trainer, batch, inputs: dict[str, torch.Tensor]) -> pathlib.Path | None:
    """Write `step_{global_step:06d}.pt` for this KVBatchMeta if `algorithm.vgpo.dump_dir` is set.

    Call after verl's `_compute_advantage` (the advantages must be in the TransferQueue).
    Returns the file written, or None when the dump is off.
    """
    out_dir = dump_dir_from(trainer.config.algorithm)
    if out_dir is None:
        return None
    import transfer_queue as tq
    from omegaconf import OmegaConf

    fetched = tq.kv_batch_get(keys=batch.keys, partition_id=batch.partition_id, select_fields=_FIELDS)
    step = int(getattr(trainer, "global_steps", 0))
    algorithm = OmegaConf.to_container(trainer.config.algorithm, resolve=True)
    record = collect(fetched, inputs, step, algorithm)
    record["keys"] = [str(k) for k in batch.keys]
    record["is_padding"] = torch.tensor([bool(tag.get("is_padding", False)) for tag in batch.tags], dtype=torch.bool)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"step_{step:06d}.pt"
    tmp = path.with_suffix(".pt.tmp")
    torch.save(record, tmp)
    os.replace(tmp, path)  # a reader never sees a half-written step
    return path
