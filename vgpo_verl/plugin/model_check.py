"""Start-up check of the actor's model, from its config.json alone: no weights are read, no worker starts.

`model_problems(config)` (called by vgpo_verl.plugin.preflight.problems in the driver, before Ray) refuses
a model the estimator cannot work with, naming the `model_type` and what is missing:
- vgpo: no image/video placeholder id in the config (the visual prototype has no positions), no text
  decoder the scorer can hook (a module with `layers` and `norm`, found on a copy of the model built
  on the meta device), or `algorithm.vgpo.layer` outside that decoder;
- vppo: no placeholder id (nothing to perturb), or a family whose pixel rows vgpo_verl.methods.perturb does
  not know (vgpo_verl.plugin.families: patch rows with `image_grid_thw`);
- both: a family verl 0.9.1 cannot run with the installed transformers (UNRUNNABLE, with the reason).
entropy_shaping reads only verl's own entropy and needs nothing of the model. Logged, not refused:
`actor_rollout_ref.actor.freeze_vision_tower=true`, which verl 0.9.1 declares but never reads.

A family outside vgpo_verl.plugin.families that passes these checks is let through with a warning: nothing
of it is tested. Where the config comes from: `actor_rollout_ref.model.hf_config_path` (else
`.path`), a local directory or a Hugging Face hub id already in the local cache; anything else is not
fetched (the check is skipped with a logged note, and the workers meet the model as usual).
"""

from __future__ import annotations

import json
import logging
import os
import re
from typing import Any

from vgpo_verl.plugin.config_value import config_value

logger = logging.getLogger("vgpo_verl")

# Estimators that read the model's visual inputs in the flagged old-log-prob pass.
NEEDS_DECODER = ("vgpo",)
NEEDS_PIXEL_ROWS = ("vppo",)

# model_type -> why verl 0.9.1 cannot run it with transformers 5.x (each reason held by tests/test_families.py).
UNRUNNABLE: dict[str, str] = {
    "glm4v": (
        "verl 0.9.1 cannot run GLM-4V with transformers 5.x: its patched forward "
        "(verl/models/transformers/glm4v.py, _get_input_embeds) reads the vision tower's output as a tensor "
        "(`image_embeds.shape[0]`), but Glm4vVisionModel returns a BaseModelOutputWithPooling, so every image "
        "fails with AttributeError; and its FSDP2 wrapping shards every nn.Embedding as its own unit "
        "(verl/utils/fsdp_utils.py, _select_fsdp2_wrap_targets) while Glm4vVisionEmbeddings reads "
        "`position_embedding.weight` without calling the module, so the weight is still a sharded DTensor "
        "('aten.grid_sampler_2d.default got mixed torch.Tensor and DTensor')"
    ),
}


def load_local_config(path: str, trust_remote_code: bool = False):
    """The HF config at `path` (a directory, or a hub id in the local cache); None if neither, without
    any download. A directory whose config cannot be read raises ValueError with transformers' reason."""
    import transformers

    local = os.path.isdir(os.path.expanduser(path))
    try:
        return transformers.AutoConfig.from_pretrained(os.path.expanduser(path) if local else path,
                                                       trust_remote_code=trust_remote_code, local_files_only=True)
    except (OSError, ValueError, KeyError) as error:
        if local:
            raise ValueError(f"cannot read its config.json: {error}") from error
        return None


def meta_model(hf_config, trust_remote_code: bool = False):
    """The model verl's engine would build (verl's own choice of auto class), on the meta device: the
    module tree without memory or weights."""
    import torch
    from verl.utils.model import get_hf_auto_model_class

    with torch.device("meta"):
        return get_hf_auto_model_class(hf_config).from_config(hf_config, trust_remote_code=trust_remote_code)


def config_problems(hf_config, estimator: str, layer: int = -1, trust_remote_code: bool = False) -> list[str]:
    """What `estimator` cannot work with in this HF config, one line each (empty: fine)."""
    from vgpo_verl.methods.scoring import LAYER_HELP, find_text_decoder, layer_range, layer_range_text, visual_token_ids
    from vgpo_verl.plugin.families import FAMILIES

    model_type = getattr(hf_config, "model_type", None)
    found = []
    if model_type in UNRUNNABLE:
        found.append(f"model_type={model_type}: {UNRUNNABLE[model_type]}")
    if not visual_token_ids(hf_config):
        found.append(f"model_type={model_type}: config.json names no image_token_id or video_token_id, so no "
                     f"token of a sequence is visual; {estimator} needs a vision-language model "
                     f"(tested: {', '.join(FAMILIES)})")
    if estimator in NEEDS_PIXEL_ROWS and model_type not in FAMILIES:
        found.append(f"model_type={model_type}: vppo blackens the pixel rows of the families it knows "
                     f"({', '.join(FAMILIES)}); this family's pixel layout is unknown to vgpo_verl.methods.perturb")
    if estimator in NEEDS_DECODER:
        try:
            model = meta_model(hf_config, trust_remote_code)
        except Exception as error:  # noqa: BLE001  (whatever transformers raises, the user needs its words)
            return found + [f"model_type={model_type}: transformers cannot build the model from config.json "
                            f"({type(error).__name__}: {error})"]
        decoder = find_text_decoder(model)
        if decoder is None:
            found.append(f"model_type={model_type}: no text decoder the scorer can hook in {type(model).__name__} "
                         "(a module with a `layers` ModuleList and a `norm`, as in the families of "
                         "vgpo_verl.plugin.families)")
        else:
            layers = len(decoder[1].layers)
            if layer not in layer_range(layers):
                found.append(f"algorithm.vgpo.layer={layer}: model_type={model_type} has {layers} decoder "
                             f"layers ({decoder[0]}.layers), allowed {layer_range_text(layers)} ({LAYER_HELP})")
    if not found and model_type not in FAMILIES:
        logger.warning("vgpo-verl: model_type=%s is not among the tested families (%s); %s runs, untested",
                       model_type, ", ".join(FAMILIES), estimator)
    return found


def _actor_config_source(config: Any) -> tuple[str, str, bool]:
    """(the key the actor's HF config comes from, its path, trust_remote_code), as verl reads them."""
    key = ("actor_rollout_ref.model.hf_config_path"
           if config_value(config, "actor_rollout_ref.model.hf_config_path", None) else "actor_rollout_ref.model.path")
    return key, str(config_value(config, key, "")), bool(config_value(config, "actor_rollout_ref.model.trust_remote_code",
                                                                      False))


def actor_model_type(config: Any) -> str | None:
    """The actor's model_type, read from its local config.json; None where it cannot be read without a
    download (model_problems reports an unreadable one)."""
    _, path, trust_remote_code = _actor_config_source(config)
    try:
        hf_config = load_local_config(path, trust_remote_code) if path else None
    except ValueError:
        return None
    return getattr(hf_config, "model_type", None)


PER_EXPERT_KEY = re.compile(r"\.mlp\.experts\.\d+\.")


def checkpoint_keys(path: str) -> list[str]:
    """The tensor names of the safetensors checkpoint in directory `path` (its index, else the headers of
    its files: no tensor is read); [] where there is none."""
    path = os.path.expanduser(path)
    index = os.path.join(path, "model.safetensors.index.json")
    if os.path.isfile(index):
        with open(index) as f:
            return list(json.load(f).get("weight_map", {}))
    from safetensors import safe_open

    keys = []
    for name in sorted(os.listdir(path)) if os.path.isdir(path) else []:
        if name.endswith(".safetensors"):
            with safe_open(os.path.join(path, name), "pt") as f:
                keys.extend(f.keys())
    return keys


def veomni_checkpoint_problems(config: Any) -> list[str]:
    """A checkpoint with one tensor per expert under model_engine=veomni: VeOmni 0.1.12 loads fused expert
    tensors only (its checkpoint converters exist for Qwen3-VL-MoE's fused layout, none for Qwen3.5-MoE),
    logs each per-expert key as "Unexpected key" at INFO level and initialises the experts at random."""
    path = str(config_value(config, "actor_rollout_ref.model.path", "") or "")
    folder = _local_checkpoint(path) if path else None
    if folder is None:
        return []
    per_expert = next((k for k in checkpoint_keys(folder) if PER_EXPERT_KEY.search(k)), None)
    if per_expert is None:
        return []
    return [f"actor_rollout_ref.model.path={path}: its checkpoint stores one tensor per expert ({per_expert}); "
            "VeOmni 0.1.12 would skip them and train experts initialised at random. Save it with fused experts "
            "first, with its tokenizer and processor: in transformers, AutoModelForImageTextToText.from_pretrained"
            "(path).save_pretrained(out, save_original_format=False) and AutoProcessor.from_pretrained(path)"
            ".save_pretrained(out); then point actor_rollout_ref.model.path at `out`."]


def _local_checkpoint(path: str) -> str | None:
    """The local folder of a checkpoint: `path` itself (a directory), or a hub id's snapshot already in the
    local Hugging Face cache (what the workers will load); None where neither is here (nothing is fetched)."""
    expanded = os.path.expanduser(path)
    if os.path.isdir(expanded):
        return expanded
    from huggingface_hub import snapshot_download

    try:
        return snapshot_download(path, local_files_only=True)
    except Exception:  # not a hub id, or not cached: the workers meet it as usual
        return None


def model_problems(config: Any) -> list[str]:
    """Problems of `actor_rollout_ref.model` for `algorithm.adv_estimator`, each naming the path and model_type."""
    estimator = str(config_value(config, "algorithm.adv_estimator", ""))
    if estimator not in NEEDS_DECODER + NEEDS_PIXEL_ROWS:
        return []
    key, path, trust_remote_code = _actor_config_source(config)
    if not path:
        return []  # verl itself refuses a run without a model
    where = f"{key}={path}"
    try:
        hf_config = load_local_config(path, trust_remote_code)
    except ValueError as error:
        return [f"{where}: {error}"]
    if hf_config is None:
        logger.warning("vgpo-verl: %s is neither a local directory nor in the Hugging Face cache; the start-up "
                       "model check (visual token ids, text decoder) is skipped, nothing is downloaded", where)
        return []
    if bool(config_value(config, "actor_rollout_ref.actor.freeze_vision_tower", False)):
        logger.warning("vgpo-verl: actor_rollout_ref.actor.freeze_vision_tower=true is read by nothing in verl 0.9.1 "
                       "(only its config declares it): the vision tower trains. Under LoRA, keep it frozen with "
                       "actor_rollout_ref.model.exclude_modules='.*visual.*' (no adapter there)")
    layer = config_value(config, "algorithm.vgpo.layer", -1)
    if isinstance(layer, bool) or not isinstance(layer, int):
        layer = -1  # VGPOConfig's own check names a malformed value
    return [f"{where}: {line}" for line in config_problems(hf_config, estimator, layer, trust_remote_code)]
