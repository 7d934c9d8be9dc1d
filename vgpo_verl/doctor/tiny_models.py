"""Tiny random models of every family in vgpo_verl.plugin.families, built offline from a config, and
synthetic prompts laid out like each family's HF processor output. No verl import; the doctor
(`python -m vgpo_verl.doctor --tiny FAMILY`), the benchmarks and the tests build their models and
samples here.

What a synthetic prompt must reproduce: the patch geometry and video layout of its family
(vgpo_verl.plugin.families); the token ids framing a visual span (`vision_start/end_token_id`,
GLM's `image_start/end_token_id` and `video_start/end_token_id`); the placeholder ids always come
from the config.
"""

from __future__ import annotations

import dataclasses

import torch

from vgpo_verl.plugin.families import FAMILIES, FAMILY_TABLE, ONE_SPAN, TIMESTAMPED_FRAMES, family_of

# Tiny configs: token ids at the top of a 256-token vocabulary.
TINY_VOCAB = 256
TINY_TOKENS = dict(image_token_id=250, video_token_id=251, vision_start_token_id=248, vision_end_token_id=249)
TINY_GLM_TOKENS = dict(image_token_id=250, video_token_id=251, image_start_token_id=244, image_end_token_id=245,
                       video_start_token_id=246, video_end_token_id=247)


def _mrope_section(rotary_dim: int) -> list[int]:
    """mRoPE's (t, h, w) split of the rotary frequencies (sums to rotary_dim / 2, as each family checks)."""
    half = rotary_dim // 2
    return [half - 2 * (half // 3), half // 3, half // 3]


# The experts' width: not hidden / 2. VeOmni's checkpoint converters tell the checkpoint's expert layout
# ([E, H, 2I]) from transformers 5's ([E, 2I, H]) by shape alone, so with 2I == H it transposes a v5 tensor.
MOE_INTERMEDIATE = 24


def tiny_config(family: str, hidden: int = 64, layers: int = 2, heads: int = 4):
    """HF config of a tiny random model of `family` (one of FAMILIES) with the real processor geometry
    (patch size, temporal patch 2, merge 2, 3 channels), so pixel rows look like the real ones.

    Qwen3.5 gets one linear-attention and one full-attention layer (its hybrid layout); the MoE
    families 4 experts, 2 per token. Attention: eager (the tests' plain reference).
    """
    import transformers

    if family not in FAMILY_TABLE:
        raise ValueError(f"unknown family {family!r}; one of {', '.join(FAMILIES)}")
    head_dim = 32 if family.startswith("qwen3_5") else hidden // heads
    rope = {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": _mrope_section(head_dim)}
    text = dict(vocab_size=TINY_VOCAB, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                num_attention_heads=heads, num_key_value_heads=max(1, heads // 2), max_position_embeddings=4096,
                rope_parameters=rope, tie_word_embeddings=False)
    vision = dict(depth=1, hidden_size=32, num_heads=2, in_channels=3, patch_size=FAMILY_TABLE[family].patch_size,
                  temporal_patch_size=2, spatial_merge_size=2)
    if family == "qwen2_vl":
        vision.update(embed_dim=32, mlp_ratio=2, hidden_size=hidden)
        config = transformers.Qwen2VLConfig(text_config=text, vision_config=vision, **TINY_TOKENS)
    elif family == "qwen2_5_vl":
        vision.update(intermediate_size=64, out_hidden_size=hidden, window_size=2 * 2 * vision["patch_size"],
                      fullatt_block_indexes=[0])
        config = transformers.Qwen2_5_VLConfig(text_config=text, vision_config=vision, **TINY_TOKENS)
    elif family in ("qwen3_vl", "qwen3_vl_moe"):
        rope["mrope_interleaved"] = True
        text["head_dim"] = head_dim
        vision.update(intermediate_size=64, out_hidden_size=hidden, num_position_embeddings=64,
                      deepstack_visual_indexes=[0])
        if family == "qwen3_vl_moe":
            text.update(moe_intermediate_size=MOE_INTERMEDIATE, num_experts=4, num_experts_per_tok=2, decoder_sparse_step=1)
        config_class = transformers.Qwen3VLConfig if family == "qwen3_vl" else transformers.Qwen3VLMoeConfig
        config = config_class(text_config=text, vision_config=vision, **TINY_TOKENS)
    elif family in ("qwen3_5", "qwen3_5_moe"):
        rope.update(mrope_interleaved=True, partial_rotary_factor=0.25,
                    mrope_section=_mrope_section(int(head_dim * 0.25)))
        text.update(head_dim=head_dim, linear_key_head_dim=16, linear_value_head_dim=16, linear_num_key_heads=2,
                    linear_num_value_heads=4, layer_types=(["linear_attention", "full_attention"] * layers)[:layers])
        vision.update(intermediate_size=64, out_hidden_size=hidden, num_position_embeddings=64)
        if family == "qwen3_5_moe":
            del text["intermediate_size"]
            text.update(moe_intermediate_size=MOE_INTERMEDIATE, shared_expert_intermediate_size=32, num_experts=4,
                        num_experts_per_tok=2)
        config_class = transformers.Qwen3_5Config if family == "qwen3_5" else transformers.Qwen3_5MoeConfig
        config = config_class(text_config=text, vision_config=vision, **TINY_TOKENS)
    else:  # glm4v
        rope.update(partial_rotary_factor=0.5, mrope_section=_mrope_section(head_dim // 2))
        vision.update(intermediate_size=64, out_hidden_size=hidden, image_size=4 * vision["patch_size"])
        config = transformers.Glm4vConfig(text_config=text, vision_config=vision, **TINY_GLM_TOKENS)
    config._attn_implementation = "eager"
    return config


def tiny_model(family: str, seed: int = 0, dtype=torch.float32, **config_kwargs):
    """Random-weight model of `tiny_config(family, **config_kwargs)`, eval mode, seeded."""
    import transformers

    config = tiny_config(family, **config_kwargs)
    torch.manual_seed(seed)
    return transformers.AutoModelForImageTextToText.from_config(config, dtype=dtype).eval()


@dataclasses.dataclass
class Sample:
    """One prompt + response as a processor and verl's agent loop hand it to the actor.

    input_ids, mm_token_type_ids: (L,) long; token types 0 text, 1 image, 2 video (what
    `get_rope_index` reads). pixel_values (patches, C*T*P*P), image_grid_thw (images, 3); the same
    for videos. The last `response_len` tokens are the response.
    """

    input_ids: torch.Tensor
    mm_token_type_ids: torch.Tensor
    response_len: int
    pixel_values: torch.Tensor | None = None
    image_grid_thw: torch.Tensor | None = None
    pixel_values_videos: torch.Tensor | None = None
    video_grid_thw: torch.Tensor | None = None

    def visual_kwargs(self) -> dict:
        """The model kwargs for the sample's images / videos (empty for text only)."""
        keys = ("pixel_values", "image_grid_thw", "pixel_values_videos", "video_grid_thw")
        return {k: getattr(self, k) for k in keys if getattr(self, k) is not None}


def _span_ids(config) -> dict[str, int]:
    """The ids framing visual spans: image/video start and end, the same pair for Qwen's families."""
    if getattr(config, "image_start_token_id", None) is not None:  # GLM-4V
        return {"image_start": config.image_start_token_id, "image_end": config.image_end_token_id,
                "video_start": config.video_start_token_id, "video_end": config.video_end_token_id}
    return {"image_start": config.vision_start_token_id, "image_end": config.vision_end_token_id,
            "video_start": config.vision_start_token_id, "video_end": config.vision_end_token_id}


def synthetic_sample(config, generator: torch.Generator, images: int = 1, videos: int = 0, grid=(1, 4, 4),
                     video_grid=(2, 4, 4), prompt_text: int = 6, response_len: int = 8) -> Sample:
    """Random text around `images` images and `videos` videos, laid out like the family's processor
    output, random pixel rows of the vision tower's geometry, then `response_len` response tokens.

    grid / video_grid: (t, h, w) in patches per image / video (h, w multiples of the merge size).
    Text tokens are drawn below the smallest special id the config names, so none is a placeholder.
    """
    family = family_of(config)
    vision = config.vision_config
    merge = vision.spatial_merge_size
    row_dim = vision.in_channels * vision.temporal_patch_size * vision.patch_size ** 2
    spans = _span_ids(config)
    text_vocab = min([*spans.values(), config.image_token_id, config.video_token_id,
                      config.get_text_config().vocab_size])

    ids, types = [], []

    def add(tokens, token_type=0):
        ids.append(torch.as_tensor(tokens, dtype=torch.long).reshape(-1))
        types.append(torch.full((ids[-1].numel(),), token_type, dtype=torch.long))

    def text(n):
        add(torch.randint(0, text_vocab, (n,), generator=generator))

    text(prompt_text)
    pixels, grids, video_pixels, video_grids = [], [], [], []
    for _ in range(images):
        t, h, w = grid
        add([spans["image_start"]])
        add([config.image_token_id] * (t * h * w // merge ** 2), 1)
        add([spans["image_end"]])
        text(2)
        pixels.append(torch.randn(t * h * w, row_dim, generator=generator))
        grids.append(torch.tensor([grid]))
    for _ in range(videos):
        t, h, w = video_grid
        per_frame = h * w // merge ** 2
        if family.video_layout == ONE_SPAN:
            add([spans["video_start"]])
            add([config.video_token_id] * (t * per_frame), 2)
            add([spans["video_end"]])
        elif family.video_layout == TIMESTAMPED_FRAMES:
            for _ in range(t):
                text(2)  # the frame's timestamp
                add([spans["video_start"]])
                add([config.video_token_id] * per_frame, 2)
                add([spans["video_end"]])
        else:  # GLM_FRAMES: image tokens per frame, then the timestamp, inside begin/end of video
            add([spans["video_start"]])
            for _ in range(t):
                add([spans["image_start"]])
                add([config.image_token_id] * per_frame, 2)
                add([spans["image_end"]])
                text(1)
            add([spans["video_end"]])
        text(2)
        video_pixels.append(torch.randn(t * h * w, row_dim, generator=generator))
        video_grids.append(torch.tensor([video_grid]))
    text(response_len)
    return Sample(
        input_ids=torch.cat(ids), mm_token_type_ids=torch.cat(types), response_len=response_len,
        pixel_values=torch.cat(pixels) if pixels else None, image_grid_thw=torch.cat(grids) if grids else None,
        pixel_values_videos=torch.cat(video_pixels) if video_pixels else None,
        video_grid_thw=torch.cat(video_grids) if video_grids else None,
    )


@torch.no_grad()
def position_ids(model, sample: Sample) -> torch.Tensor:
    """(4, L) long: [text positions; mRoPE t; h; w], the layout verl's agent loop stores per sample
    (`_compute_position_ids`), from the model's own `get_rope_index`."""
    ids = sample.input_ids[None]
    mrope, _ = model.model.get_rope_index(ids, sample.mm_token_type_ids[None], image_grid_thw=sample.image_grid_thw,
                                          video_grid_thw=sample.video_grid_thw)
    return torch.cat([torch.arange(ids.shape[1], device=ids.device)[None], mrope[:, 0].to(ids.device)], dim=0)
