"""Plain-transformers recomputation of what the engine adds to verl's outputs, one sample at a time:
the yardstick of the doctor and the tests. Pure torch + transformers (no verl, no hook of ours).

Everything runs the unpatched HF model (run it before verl's engine is built in the same process:
verl monkey-patches the model classes) on one sample alone, so no packing, padding or micro-batch
cut can enter, and computes by the textbook formula in float64.
"""

from __future__ import annotations

import torch

from vgpo_verl.doctor.tiny_models import Sample, position_ids
from vgpo_verl.methods.perturb import blacken_patches


@torch.no_grad()
def layer_outputs(model, sample: Sample) -> list[torch.Tensor]:
    """[decoder layer 0, ..., decoder layer n-1, final norm] outputs, each (L, H) float64: the list
    `VGPOConfig.layer` indexes. Layers 0..n-2 from HF's `hidden_states`, the last layer's output as
    the final norm's input, the norm's output as `last_hidden_state`.

    Args:
        model: an HF *ForConditionalGeneration of vgpo_verl.doctor.tiny_models (a LoRA adapter merged into it:
            peft's `merge_and_unload()`); its text decoder is `model.model.language_model`.
    """
    decoder = model.model.language_model
    norm = decoder.norm
    norm_input = []
    handle = norm.register_forward_pre_hook(lambda module, args: norm_input.append(args[0]))
    try:
        outputs = model.model(input_ids=sample.input_ids[None], position_ids=position_ids(model, sample)[:, None],
                              output_hidden_states=True, **sample.visual_kwargs())
    finally:
        handle.remove()
    n_layers = len(decoder.layers)
    hidden = outputs.hidden_states  # (embeddings, layer 0, ..., layer n-2, norm output)
    if len(hidden) != n_layers + 1 or len(norm_input) != 1:
        raise RuntimeError(f"{type(model).__name__}: expected {n_layers + 1} hidden states and one norm call, got "
                           f"{len(hidden)} and {len(norm_input)}")
    return [h[0].double() for h in (*hidden[1:-1], norm_input[0], outputs.last_hidden_state)]


def visual_positions(config, sample: Sample) -> torch.Tensor:
    """(L,) bool: the sample's image / video placeholder tokens (ids from the config)."""
    ids = [i for i in (getattr(config, "image_token_id", None), getattr(config, "video_token_id", None)) if i is not None]
    return torch.isin(sample.input_ids, torch.tensor(ids, dtype=sample.input_ids.dtype, device=sample.input_ids.device))


def scores(model, sample: Sample, layer: int = -1) -> tuple[torch.Tensor, bool]:
    """((L,) float64 cos(h_t, mu) of every position, has_visual): mu the mean of h over the visual
    placeholders; zeros and False without any (spec section 1)."""
    hidden = layer_outputs(model, sample)[layer]
    visual = visual_positions(model.config, sample)
    if not visual.any():
        return torch.zeros(len(sample.input_ids), dtype=torch.float64), False
    mu = hidden[visual].mean(0)
    return (hidden @ mu) / (hidden.norm(dim=-1) * mu.norm()), True


@torch.no_grad()
def log_probs_and_entropy(model, sample: Sample, perturbation: tuple | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(log p(token j+1 | ..j) for j < L-1, (L-1,) float64; entropy of every position's distribution, (L,)).

    perturbation: (seed, prob, image_mean, image_std): blacken the sample's own patches first
    (vgpo_verl.methods.perturb, as VPPO's extra forward does), images and videos alike.
    """
    kwargs = sample.visual_kwargs()
    if perturbation is not None:
        for pixels, grid in (("pixel_values", "image_grid_thw"), ("pixel_values_videos", "video_grid_thw")):
            if pixels in kwargs:
                kwargs[pixels], _ = blacken_patches(kwargs[pixels], kwargs[grid], *perturbation)
    logits = model(input_ids=sample.input_ids[None], position_ids=position_ids(model, sample)[:, None],
                   **kwargs).logits[0].double()
    log_p = torch.log_softmax(logits, dim=-1)
    entropy = -(log_p.exp() * log_p).sum(-1)
    return log_p[:-1].gather(1, sample.input_ids[1:, None])[:, 0], entropy


def random_lora_adapter(model, out_dir: str, rank: int = 8, exclude_modules: str | None = None, seed: int = 0):
    """Give `model` a LoRA adapter with random non-zero weights on every linear layer (verl's defaults:
    target_modules "all-linear", lora_alpha 16; `exclude_modules` a regex of modules left alone, e.g. the
    vision tower), save it to `out_dir` for verl's `lora_adapter_path`, and return the model with it
    merged (the reference for the adapted model). `model` itself is changed."""
    import peft

    torch.manual_seed(seed)
    config = peft.LoraConfig(task_type="CAUSAL_LM", r=rank, lora_alpha=16, target_modules="all-linear",
                             exclude_modules=exclude_modules, init_lora_weights=False)
    adapted = peft.get_peft_model(model, config)
    adapted.save_pretrained(out_dir)
    return adapted.merge_and_unload()
