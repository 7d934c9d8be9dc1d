"""vgpo_verl.plugin.families: the family table holds the released processors' values, written here from
their published preprocessor_config.json (the tiny models and the doctor take the table's own values,
so only a literal copy catches a wrong one).

Sources (Hugging Face model repositories, preprocessor_config.json: patch_size, image_mean, image_std):
- Qwen/Qwen2-VL-7B-Instruct, Qwen/Qwen2.5-VL-7B-Instruct: 14, OpenAI CLIP's mean and std;
- Qwen/Qwen3-VL-8B-Instruct, Qwen/Qwen3-VL-30B-A3B-Instruct, Qwen/Qwen3.5-* (the Qwen3-VL processor):
  16, 0.5 and 0.5;
- zai-org/GLM-4.1V-9B-Thinking: 14, OpenAI CLIP's mean and std.
"""

import pytest

from vgpo_verl.plugin.families import FAMILIES, FAMILY_TABLE, GLM_FRAMES, ONE_SPAN, TIMESTAMPED_FRAMES, family_of

CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]
HALF = [0.5, 0.5, 0.5]
PUBLISHED = {
    "qwen2_vl": (14, CLIP_MEAN, CLIP_STD, ONE_SPAN),
    "qwen2_5_vl": (14, CLIP_MEAN, CLIP_STD, ONE_SPAN),
    "qwen3_vl": (16, HALF, HALF, TIMESTAMPED_FRAMES),
    "qwen3_vl_moe": (16, HALF, HALF, TIMESTAMPED_FRAMES),
    "qwen3_5": (16, HALF, HALF, TIMESTAMPED_FRAMES),
    "qwen3_5_moe": (16, HALF, HALF, TIMESTAMPED_FRAMES),
    "glm4v": (14, CLIP_MEAN, CLIP_STD, GLM_FRAMES),
}


def test_the_families_are_the_ones_verl_patches():
    assert FAMILIES == tuple(PUBLISHED)


@pytest.mark.parametrize("model_type", PUBLISHED)
def test_each_family_holds_its_released_processor_values(model_type):
    family = FAMILY_TABLE[model_type]
    assert (family.patch_size, list(family.image_mean), list(family.image_std), family.video_layout) == \
        PUBLISHED[model_type]


def test_family_of_names_an_unknown_model_type():
    class Config:
        model_type = "llava"

    with pytest.raises(ValueError, match=r"model_type='llava' is not one of the families .*qwen2_vl"):
        family_of(Config())
