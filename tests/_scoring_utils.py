"""Tiny random Qwen2-VL / Qwen2.5-VL / Qwen3-VL models and multimodal samples, built offline from configs.

Shared by the actor-scoring tests (test_scoring, test_engine, test_trainer_wiring) and the benchmarks
(benchmarks/bench_extractor.py builds its samples as `Sample`s and its engine batches with
tests/_engine_utils.py).
"""

from __future__ import annotations

import dataclasses

import torch

IMAGE_TOKEN, VIDEO_TOKEN, VISION_START, VISION_END = 250, 251, 248, 249
VOCAB = 256
PATCH, TEMPORAL_PATCH, MERGE = 2, 2, 2


def tiny_vlm_config(family: str, hidden: int = 64, layers: int = 2, heads: int = 4, vocab: int = VOCAB):
    """HF config of a tiny VLM. family: 'qwen2_vl', 'qwen2_5_vl' or 'qwen3_vl'."""
    import transformers

    head_dim = hidden // heads
    half = head_dim // 2
    mrope = [half - 2 * (half // 3), half // 3, half // 3]
    text = dict(
        vocab_size=vocab, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=max(1, heads // 2), max_position_embeddings=4096,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": mrope},
        tie_word_embeddings=False,
    )
    vision = dict(depth=1, hidden_size=32, num_heads=2, in_channels=3, patch_size=PATCH,
                  temporal_patch_size=TEMPORAL_PATCH, spatial_merge_size=MERGE)
    tokens = dict(image_token_id=IMAGE_TOKEN, video_token_id=VIDEO_TOKEN,
                  vision_start_token_id=VISION_START, vision_end_token_id=VISION_END)
    if family == "qwen2_vl":
        vision.update(embed_dim=32, mlp_ratio=2)
        vision["hidden_size"] = hidden
        return transformers.Qwen2VLConfig(text_config=text, vision_config=vision, **tokens)
    if family == "qwen2_5_vl":
        vision.update(intermediate_size=64, out_hidden_size=hidden, window_size=2 * PATCH * MERGE,
                      fullatt_block_indexes=[0])
        return transformers.Qwen2_5_VLConfig(text_config=text, vision_config=vision, **tokens)
    if family == "qwen3_vl":
        text["rope_parameters"]["mrope_interleaved"] = True
        text["head_dim"] = head_dim
        vision.update(intermediate_size=64, out_hidden_size=hidden, num_position_embeddings=64,
                      deepstack_visual_indexes=[0])
        return transformers.Qwen3VLConfig(text_config=text, vision_config=vision, **tokens)
    raise ValueError(f"unknown family {family!r}")


def tiny_vlm(family: str = "qwen2_5_vl", seed: int = 0, dtype=torch.float32, **config_kwargs):
    """Random-weight model (eval mode, eager attention) for `tiny_vlm_config(family)`."""
    import transformers

    config = tiny_vlm_config(family, **config_kwargs)
    config._attn_implementation = "eager"
    torch.manual_seed(seed)
    model = transformers.AutoModelForImageTextToText.from_config(config, dtype=dtype)
    return model.eval()


@dataclasses.dataclass
class Sample:
    """One prompt+response: input_ids (L,), its visual inputs and the response length."""

    input_ids: torch.Tensor
    response_len: int
    pixel_values: torch.Tensor | None = None  # (patches, C*T*P*P)
    image_grid_thw: torch.Tensor | None = None  # (images, 3)
    pixel_values_videos: torch.Tensor | None = None
    video_grid_thw: torch.Tensor | None = None


def make_sample(generator: torch.Generator, images: int = 1, videos: int = 0, grid=(1, 4, 4),
                video_grid=(2, 4, 4), prompt_text: int = 6, response_len: int = 8,
                split_video_frames: bool = False) -> Sample:
    """Random text around `images` images and `videos` videos (each framed by vision start/end).

    split_video_frames: frame each temporal patch of a video separately, with text (Qwen3-VL's
    timestamps) between, as Qwen3-VL's processor does.
    """
    def text(n):
        return torch.randint(0, VISION_START, (n,), generator=generator)

    patch_dim = 3 * TEMPORAL_PATCH * PATCH * PATCH
    parts, pixels, grids, vpixels, vgrids = [text(prompt_text)], [], [], [], []
    for kind, count, g in (("image", images, grid), ("video", videos, video_grid)):
        for _ in range(count):
            t, h, w = g
            n_patches, n_tokens = t * h * w, t * h * w // (MERGE * MERGE)
            token = IMAGE_TOKEN if kind == "image" else VIDEO_TOKEN
            frames = t if (kind == "video" and split_video_frames) else 1
            for _ in range(frames):
                parts += [torch.tensor([VISION_START]), torch.full((n_tokens // frames,), token),
                          torch.tensor([VISION_END]), text(2)]
            (pixels if kind == "image" else vpixels).append(torch.randn(n_patches, patch_dim, generator=generator))
            (grids if kind == "image" else vgrids).append(torch.tensor([g]))
    parts.append(text(response_len))
    return Sample(
        input_ids=torch.cat(parts).long(),
        response_len=response_len,
        pixel_values=torch.cat(pixels) if pixels else None,
        image_grid_thw=torch.cat(grids) if grids else None,
        pixel_values_videos=torch.cat(vpixels) if vpixels else None,
        video_grid_thw=torch.cat(vgrids) if vgrids else None,
    )


def visual_kwargs(sample: Sample) -> dict:
    """The model kwargs for a sample's images/videos (empty for text-only)."""
    out = {}
    for key in ("pixel_values", "image_grid_thw", "pixel_values_videos", "video_grid_thw"):
        value = getattr(sample, key)
        if value is not None:
            out[key] = value
    return out


def mm_token_type_ids(input_ids: torch.Tensor, config) -> torch.Tensor:
    """0 text, 1 image, 2 video (what the HF processor returns alongside input_ids), by the model config's ids."""
    return (input_ids == config.image_token_id).int() + 2 * (input_ids == config.video_token_id).int()


@torch.no_grad()
def position_ids_4d(model, sample: Sample) -> torch.Tensor:
    """(4, L) long: [text positions; mRoPE t; h; w], the layout verl's agent loop stores per sample."""
    ids = sample.input_ids[None]
    mrope, _ = model.model.get_rope_index(
        ids, mm_token_type_ids(ids, model.config), image_grid_thw=sample.image_grid_thw,
        video_grid_thw=sample.video_grid_thw,
    )
    text = torch.arange(ids.shape[1])[None]
    return torch.cat([text, mrope[:, 0]], dim=0)


@torch.no_grad()
def reference_scores(model, sample: Sample, layer: int = -1) -> tuple[torch.Tensor, bool]:
    """Independent plain computation: one sample alone, hidden states from the model's outputs,
    cos(h_t, mu) of every position by the textbook formula. Returns ((L,) float64, has_visual)."""
    outputs = model.model(input_ids=sample.input_ids[None], position_ids=position_ids_4d(model, sample)[:, None],
                          output_hidden_states=layer != -1, **visual_kwargs(sample))
    if layer == -1:  # the final norm's output
        hidden = outputs.last_hidden_state[0]
    else:  # hidden_states[0] is the embedding output, hidden_states[k + 1] decoder layer k's
        hidden = outputs.hidden_states[layer % model.config.text_config.num_hidden_layers + 1][0]
    hidden = hidden.double()
    config = model.config
    visual = (sample.input_ids == config.image_token_id) | (sample.input_ids == config.video_token_id)
    if not visual.any():
        return torch.zeros(len(sample.input_ids), dtype=torch.float64), False
    mu = hidden[visual].mean(0)
    cos = (hidden @ mu) / (hidden.norm(dim=-1) * mu.norm())
    return cos, True
