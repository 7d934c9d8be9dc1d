"""Every VLM family verl 0.9.1 trains (vgpo_verl.doctor.tiny_models), through verl's real FSDP2 engine on CPU, against
a plain-transformers recomputation (vgpo_verl.doctor.reference); the backing of docs/models.md.

Per family one spawned rank runs every layout and method on one batch (one image, text only, two
images, a video next to an image; GLM-4V is refused): padded and packed (remove padding, dynamic
micro-batches), VGPO's scores at layer -1 and -2, VPPO's perturbed forward, verl's entropy, and
verl's LoRA path with a random non-zero adapter, once on every linear layer and once with the vision
tower left frozen. The processors' pixel geometry is checked without verl, on each family's image
processor.
"""

import numpy as np
import pytest
import torch

from _engine_utils import run_engine
from vgpo_verl.doctor import reference
from vgpo_verl.doctor.tiny_models import synthetic_sample, tiny_config, tiny_model
from vgpo_verl.plugin.families import FAMILIES, FAMILY_TABLE
from vgpo_verl.plugin.model_check import UNRUNNABLE, config_problems
from vgpo_verl.methods.perturb import black_patch_mask, black_row, blacken_patches

RUNNABLE = [f for f in FAMILIES if f not in UNRUNNABLE]
SEED, PROB = 7, 0.5
SCORE = {"vgpo_score": True}
FROZEN_VISION = r".*visual.*"  # every module of the vision tower: no adapter there, it stays the base model's
ATOL = 1e-5  # the engine agrees to ~1e-7; packed Qwen3.5 sequences leaking state into each other gave 5e-5


def perturb_flags(family):
    f = FAMILY_TABLE[family]
    return {"vppo_perturb": True, "vppo_black_prob": PROB, "vppo_seed": SEED,
            "vppo_image_mean": f.image_mean, "vppo_image_std": f.image_std}


def runs(family, adapter_dir, frozen_dir):
    both = {**SCORE, **perturb_flags(family)}
    packed = {"remove_padding": True, "dynamic_bsz": True, "max_token_len": 64}  # several micro-batches
    return [  # padded engines first (a packed engine patches the model classes' attention process-wide)
        {"name": "padded", "remove_padding": False, "flags": both},
        {"name": "lora_frozen_vision_padded", "remove_padding": False, "flags": both,
         "lora": {"lora_rank": 8, "lora_adapter_path": frozen_dir}},
        {"name": "packed", **packed, "flags": both},
        {"name": "packed_layer_-2", **packed, "flags": {**SCORE, "vgpo_layer": -2}},
        {"name": "lora_packed", **packed, "flags": both, "lora": {"lora_rank": 8, "lora_adapter_path": adapter_dir}},
    ]


def family_batch(name, directory):
    """The family's tiny model saved to `directory`, and the batch: one image, text only, two images, a video."""
    model = tiny_model(name)
    model.save_pretrained(directory)
    generator = torch.Generator().manual_seed(0)
    samples = [synthetic_sample(model.config, generator, images=1, response_len=9),
               synthetic_sample(model.config, generator, images=0, response_len=5),
               synthetic_sample(model.config, generator, images=2, response_len=12),
               synthetic_sample(model.config, generator, images=1, videos=1, response_len=7)]
    return model, samples


def references(name, model, samples):
    """Per sample: scores at layer -1 and -2, has_visual, log-probs, entropy, perturbed log-probs."""
    perturbation = (SEED, PROB, FAMILY_TABLE[name].image_mean, FAMILY_TABLE[name].image_std)
    return [dict(zip(("scores", "has_visual"), reference.scores(model, s)), layer_2=reference.scores(model, s, -2)[0],
                 **dict(zip(("log_probs", "entropy"), reference.log_probs_and_entropy(model, s))),
                 perturbed=reference.log_probs_and_entropy(model, s, perturbation)[0]) for s in samples]


@pytest.fixture(scope="module", params=RUNNABLE)
def family(request, tmp_path_factory):
    """One family's engine results and references: {"name", "samples", "results", "refs": {model: [...]}}."""
    name = request.param
    base = tmp_path_factory.mktemp(f"family_{name}")
    model, samples = family_batch(name, base / "model")
    models = {
        "base": model,
        "lora": reference.random_lora_adapter(tiny_model(name), str(base / "adapter")),
        "lora_frozen_vision": reference.random_lora_adapter(tiny_model(name), str(base / "frozen"),
                                                            exclude_modules=FROZEN_VISION),
    }
    results = run_engine(str(base / "model"), samples, runs(name, str(base / "adapter"), str(base / "frozen")),
                         str(base / "results.pt"))
    refs = {key: references(name, m, samples) for key, m in models.items()}
    return {"name": name, "samples": samples, "results": results, "refs": refs}


def response(values, sample):
    return values[-sample.response_len:]


def max_delta(outputs, refs, samples, key, ref_key, sliced=True):
    return max(float((out.double() - (response(ref[ref_key], s) if sliced else ref[ref_key])).abs().max())
               for out, ref, s in zip(outputs[key], refs, samples))


@pytest.mark.parametrize("run, model", [("padded", "base"), ("packed", "base"), ("lora_packed", "lora"),
                                        ("lora_frozen_vision_padded", "lora_frozen_vision")])
def test_scores_equal_plain_transformers(family, run, model):
    """Padded and packed (dynamic micro-batches), full model and LoRA: each response token's score is
    cos(h, mu) of the plain model at that token; one has-visual flag per sample, False for text only."""
    result, refs = family["results"][run], family["refs"][model]
    assert result["engine_class"] == "VGPOFSDPEngineWithLMHead"
    prefix = "base_model.model." if model != "base" else ""  # PEFT's wrapper
    assert result["scored_modules"] == [f"{prefix}model.language_model.norm"]
    assert max_delta(result["outputs"], refs, family["samples"], "vgpo_visual_score", "scores") < ATOL
    assert [h.tolist() for h in result["outputs"]["vgpo_has_visual"]] == [[True], [False], [True], [True]]


def test_layer_minus_two_scores_the_last_decoder_layer_before_the_norm(family):
    result, refs = family["results"]["packed_layer_-2"], family["refs"]["base"]
    assert result["scored_modules"] == ["model.language_model.layers.1"]
    outputs, samples = result["outputs"], family["samples"]
    assert max_delta(outputs, refs, samples, "vgpo_visual_score", "layer_2") < ATOL
    assert max_delta(outputs, refs, samples, "vgpo_visual_score", "scores") > 100 * ATOL  # the check can tell layers apart


@pytest.mark.parametrize("run, model", [("padded", "base"), ("packed", "base"), ("lora_packed", "lora"),
                                        ("lora_frozen_vision_padded", "lora_frozen_vision")])
def test_perturbed_forward_blackens_each_samples_own_patches(family, run, model):
    """VPPO's extra forward: the plain model on the sample's pixel rows blackened by vgpo_verl.methods.perturb,
    images and video alike; a text-only sample is left as it was; verl's own outputs are the clean model's."""
    outputs, refs, samples = family["results"][run]["outputs"], family["refs"][model], family["samples"]
    assert max_delta(outputs, refs, samples, "vppo_aug_log_probs", "perturbed") < ATOL
    for out, ref in zip(outputs["log_probs"], refs):
        torch.testing.assert_close(out[:-1].double(), ref["log_probs"], atol=ATOL, rtol=0)
    gaps = [float((aug.double() - response(ref["log_probs"], s)).abs().max())
            for aug, ref, s in zip(outputs["vppo_aug_log_probs"], refs, samples)]
    assert gaps[1] < ATOL and min(gaps[0], gaps[2], gaps[3]) > 100 * ATOL, gaps


def test_entropy_shaping_reads_verls_entropy_of_every_position(family):
    for run, model in (("padded", "base"), ("packed", "base"), ("lora_packed", "lora")):
        outputs = family["results"][run]["outputs"]
        assert max_delta(outputs, family["refs"][model], family["samples"], "entropy", "entropy", sliced=False) < ATOL


def test_lora_adapter_reaches_the_scores_and_the_perturbed_forward(family):
    """The adapter changes what the base model would give, in the scores and in VPPO's perturbed pass:
    the engine's values are the adapted model's (the old policy), not the base weights'."""
    samples = family["samples"]
    for run in ("lora_packed", "lora_frozen_vision_padded"):
        outputs, base = family["results"][run]["outputs"], family["refs"]["base"]
        assert max_delta(outputs, base, samples, "vppo_aug_log_probs", "perturbed") > 100 * ATOL
        assert max_delta(outputs, base, samples, "vgpo_visual_score", "scores") > 100 * ATOL
    # the frozen vision tower is the base one: its outputs are not the fully adapted model's
    frozen = family["results"]["lora_frozen_vision_padded"]["outputs"]
    assert max_delta(frozen, family["refs"]["lora"], samples, "vppo_aug_log_probs", "perturbed") > 100 * ATOL


def test_ulysses_sp2_on_qwen3_vl_gives_the_plain_scores_and_perturbed_log_probs(tmp_path):
    """Two gloo ranks, Ulysses SP = 2, packed: verl slices the sequence after the embedding (deepstack
    features too), all-to-alls in attention; our scores all-reduce the prototypes over the SP group.
    (Qwen3.5 cannot: verl's SP for its linear attention imports flash-linear-attention's `fla.ops.cp`,
    a GPU-only package; docs/models.md.)"""
    model, samples = family_batch("qwen3_vl", tmp_path / "model")
    sp2 = {"name": "sp2", "remove_padding": True, "sp": 2, "flags": {**SCORE, **perturb_flags("qwen3_vl")}}
    result = run_engine(str(tmp_path / "model"), samples, [sp2], str(tmp_path / "sp2.pt"), world_size=2)["sp2"]
    refs = references("qwen3_vl", model, samples)
    assert result["scored_modules"] == ["model.language_model.norm"]
    assert max_delta(result["outputs"], refs, samples, "vgpo_visual_score", "scores") < ATOL
    assert max_delta(result["outputs"], refs, samples, "vppo_aug_log_probs", "perturbed") < ATOL
    assert [h.tolist() for h in result["outputs"]["vgpo_has_visual"]] == [[True], [False], [True], [True]]


# ------------------------------------------------------------------ without verl


@pytest.mark.parametrize("name", FAMILIES)
def test_blackened_rows_are_blackened_squares_of_the_image_the_processor_cut(name):
    """Each family's image processor (its patch size, 2 temporal frames, 2x2 merge order, its mean/std):
    blackening the rows of vgpo_verl.methods.perturb's mask equals painting those P x P squares black in the
    image before processing. A wrong patch size, row order or normalisation breaks the equality."""
    import transformers
    from PIL import Image

    family, vision = FAMILY_TABLE[name], tiny_config(name).vision_config
    size, merge = vision.patch_size, vision.spatial_merge_size
    processor_class = transformers.Glm4vImageProcessorPil if name == "glm4v" else transformers.Qwen2VLImageProcessorPil
    processor = processor_class(patch_size=size, temporal_patch_size=vision.temporal_patch_size, merge_size=merge,
                                image_mean=list(family.image_mean), image_std=list(family.image_std))
    rows, cols = 8, 10  # patches; 8*10 squares of P px stay unresized by both processors' bounds
    image = np.random.default_rng(0).integers(0, 256, (rows * size, cols * size, 3), dtype=np.uint8)
    processed = processor(images=[Image.fromarray(image)], return_tensors="pt")
    pixels, grid = processed["pixel_values"], processed["image_grid_thw"]
    assert grid.tolist() == [[1, rows, cols]] and pixels.shape[1] == 3 * vision.temporal_patch_size * size ** 2

    blackened, mask = blacken_patches(pixels, grid, SEED, PROB, family.image_mean, family.image_std)
    painted = image.copy()
    for row in mask.nonzero().flatten().tolist():  # rows run (h/m, w/m, m, m): merge windows, then inside
        block_h, block_w, in_h, in_w = np.unravel_index(row, (rows // merge, cols // merge, merge, merge))
        h, w = block_h * merge + in_h, block_w * merge + in_w
        painted[h * size:(h + 1) * size, w * size:(w + 1) * size] = 0
    repainted = processor(images=[Image.fromarray(painted)], return_tensors="pt")["pixel_values"]
    assert 0 < int(mask.sum()) < len(mask)
    torch.testing.assert_close(repainted, blackened, atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", FAMILIES)
def test_synthetic_prompts_hold_one_placeholder_per_merged_patch(name):
    config = tiny_config(name)
    sample = synthetic_sample(config, torch.Generator().manual_seed(0), images=2, videos=1)
    merged = config.vision_config.spatial_merge_size ** 2
    visual = sample.mm_token_type_ids > 0
    assert int((sample.mm_token_type_ids == 1).sum()) == int(sample.image_grid_thw.prod(-1).sum()) // merged
    assert int((sample.mm_token_type_ids == 2).sum()) == int(sample.video_grid_thw.prod(-1).sum()) // merged
    placeholder = torch.isin(sample.input_ids, torch.tensor([config.image_token_id, config.video_token_id]))
    assert torch.equal(visual, placeholder)
    assert sample.pixel_values.shape == (int(sample.image_grid_thw.prod(-1).sum()),
                                         3 * 2 * FAMILY_TABLE[name].patch_size ** 2)


def test_glm4v_is_refused_and_both_reasons_still_hold():
    """The refusal names model_type and verl's two defects; when verl or transformers fix them, this test
    fails and GLM-4V goes back into the table."""
    import verl.models.transformers.glm4v as verl_glm4v
    from verl.utils.fsdp_utils import _select_fsdp2_wrap_targets

    model = tiny_model("glm4v")
    (line,) = config_problems(model.config, "vgpo")
    assert line.startswith("model_type=glm4v: verl 0.9.1 cannot run GLM-4V")
    sample = synthetic_sample(model.config, torch.Generator().manual_seed(0), images=1)
    with pytest.raises(AttributeError, match="'BaseModelOutputWithPooling' object has no attribute 'shape'"):
        verl_glm4v._get_input_embeds(model.model, sample.input_ids[None], **sample.visual_kwargs())
    wrapped = _select_fsdp2_wrap_targets(model, model._no_split_modules)
    assert model.model.visual.embeddings.position_embedding in wrapped
