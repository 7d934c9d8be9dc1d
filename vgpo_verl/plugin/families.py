"""The VLM families verl 0.9.1 patches for training (verl/models/transformers/monkey_patch.py), as VGPO
sees them: one row per `model_type`, what its processor does with images and videos. Stdlib only: the
start-up model check (vgpo_verl.plugin.model_check) reads it in the driver; the tiny random models and
synthetic prompts built from it live in vgpo_verl.doctor.tiny_models.

What differs between families:
- patch geometry of the vision tower: 14-px patches (Qwen2-VL, Qwen2.5-VL, GLM-4V) or 16-px
  (Qwen3-VL, Qwen3.5), 2 frames per temporal patch, 2x2 patches merged into one token; a pixel row
  holds C*T*P*P values, channel-major (vgpo_verl.methods.perturb);
- how a video reaches the text: one span of video tokens (Qwen2/2.5-VL), one span per temporal
  patch after a timestamp (Qwen3-VL, Qwen3.5), or image tokens per frame inside begin/end-of-video
  (GLM-4V, whose processor writes `<|image|>` for video frames too);
- the pixel normalisation (mean, std) the black of vgpo_verl.methods.perturb is computed from.
"""

from __future__ import annotations

import dataclasses

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
HALF = (0.5, 0.5, 0.5)

# Video layouts of the processors (see the module docstring).
ONE_SPAN, TIMESTAMPED_FRAMES, GLM_FRAMES = "one_span", "timestamped_frames", "glm_frames"


@dataclasses.dataclass(frozen=True)
class Family:
    """What a family's processor does with images and videos.

    image_mean / image_std: the released checkpoints' preprocessor_config.json (Qwen2/2.5-VL and
    GLM-4.1V: OpenAI CLIP's; Qwen3-VL and Qwen3.5: 0.5), the normalisation black is computed from.
    """

    model_type: str
    patch_size: int
    image_mean: tuple[float, ...]
    image_std: tuple[float, ...]
    video_layout: str


FAMILY_TABLE = {
    f.model_type: f
    for f in (
        Family("qwen2_vl", 14, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, ONE_SPAN),
        Family("qwen2_5_vl", 14, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, ONE_SPAN),
        Family("qwen3_vl", 16, HALF, HALF, TIMESTAMPED_FRAMES),
        Family("qwen3_vl_moe", 16, HALF, HALF, TIMESTAMPED_FRAMES),
        Family("qwen3_5", 16, HALF, HALF, TIMESTAMPED_FRAMES),
        Family("qwen3_5_moe", 16, HALF, HALF, TIMESTAMPED_FRAMES),
        Family("glm4v", 14, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, GLM_FRAMES),
    )
}
FAMILIES = tuple(FAMILY_TABLE)


def family_of(config) -> Family:
    """The Family of an HF config; ValueError naming the model_type if it is none of FAMILIES."""
    model_type = getattr(config, "model_type", None)
    if model_type not in FAMILY_TABLE:
        raise ValueError(f"model_type={model_type!r} is not one of the families verl 0.9.1 trains as a VLM "
                         f"({', '.join(FAMILIES)})")
    return FAMILY_TABLE[model_type]
