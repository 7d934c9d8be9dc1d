"""vgpo_verl.methods.scoring against independent plain computations (loops, float64, the model's own outputs)."""

import pytest
import torch

from vgpo_verl.doctor import reference
from vgpo_verl.doctor.tiny_models import position_ids, synthetic_sample, tiny_model
from vgpo_verl.plugin.families import FAMILIES
from vgpo_verl.methods.scoring import (
    HiddenStateCapture,
    resolve_layer,
    response_slice,
    visual_mask_of,
    visual_similarity,
    visual_token_ids,
)


def loop_similarity(hidden, lengths, visual_mask):
    """Textbook per-sequence computation in float64: (N,) cosine and (S,) has_visual."""
    out, has_visual, start = [], [], 0
    for length in lengths:
        h = hidden[start : start + length].double()
        v = visual_mask[start : start + length]
        if v.any():
            mu = h[v].mean(0)
            out.append((h @ mu) / (h.norm(dim=-1) * mu.norm()))
        else:
            out.append(torch.zeros(length, dtype=torch.float64))
        has_visual.append(bool(v.any()))
        start += length
    return torch.cat(out), torch.tensor(has_visual)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("chunk_tokens", [3, 7, 8192])
def test_visual_similarity_matches_per_sequence_loop(dtype, chunk_tokens):
    generator = torch.Generator().manual_seed(0)
    lengths = [9, 1, 14, 6, 11]
    hidden = torch.randn(sum(lengths), 32, generator=generator).to(dtype)
    visual_mask = torch.rand(sum(lengths), generator=generator) < 0.3
    visual_mask[9] = False  # the one-token sequence has no visual token
    visual_mask[10:24] = False  # nor the third
    visual_mask[24] = True
    cu_seqlens = torch.tensor([0] + lengths).cumsum(0)

    similarity, has_visual = visual_similarity(hidden, cu_seqlens, visual_mask, chunk_tokens=chunk_tokens)

    expected, expected_has_visual = loop_similarity(hidden.float(), lengths, visual_mask)
    assert similarity.dtype == torch.float32 and similarity.shape == (sum(lengths),)
    torch.testing.assert_close(similarity.double(), expected, atol=1e-5, rtol=0)
    assert has_visual.tolist() == expected_has_visual.tolist() == [True, False, False, True, True]
    assert similarity[9:24].eq(0).all()  # no prototype -> exactly 0


def test_response_slice_takes_own_positions_and_verls_log_prob_slots():
    """shift=0: response token t of sequence i gets the value at its own packed position; shift=1 gives
    exactly verl's `response_from_nested` slice of a log-prob-style tensor (slot j = token j + 1)."""
    from verl.workers.utils.padding import response_from_nested

    lengths, responses = [9, 3, 14, 6], [4, 2, 14 - 1, 1]
    cu_seqlens = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()])
    values = torch.arange(sum(lengths), dtype=torch.float32) * 0.5
    own = response_slice(values, cu_seqlens, torch.tensor(responses), shift=0)
    assert own.offsets().tolist() == [0, *torch.tensor(responses).cumsum(0).tolist()]
    for i, (row, r) in enumerate(zip(own.unbind(), responses)):
        end = int(cu_seqlens[i + 1])
        torch.testing.assert_close(row, values[end - r : end], atol=0, rtol=0)  # plain indexing, token by token

    nested = torch.nested.nested_tensor_from_jagged(values, cu_seqlens)
    mask = torch.nested.as_nested_tensor([torch.ones(r) for r in responses], layout=torch.jagged)
    shifted = response_slice(values, cu_seqlens, torch.tensor(responses), shift=1)
    for a, b in zip(shifted.unbind(), response_from_nested(nested, mask).unbind()):
        torch.testing.assert_close(a, b, atol=0, rtol=0)

    with pytest.raises(ValueError, match="exceed sequence lengths"):
        response_slice(values, cu_seqlens, torch.tensor([4, 3, 1, 1]), shift=1)  # no prompt token left


def test_visual_similarity_rejects_bad_shapes():
    hidden = torch.randn(10, 4)
    with pytest.raises(ValueError, match="visual_mask"):
        visual_similarity(hidden, torch.tensor([0, 10]), torch.zeros(9, dtype=torch.bool))
    with pytest.raises(ValueError, match="cu_seqlens"):
        visual_similarity(hidden, torch.tensor([0, 8]), torch.zeros(10, dtype=torch.bool))
    with pytest.raises(ValueError, match="hidden"):
        visual_similarity(hidden[None], torch.tensor([0, 10]), torch.zeros(10, dtype=torch.bool))


@pytest.mark.parametrize("family", FAMILIES)
def test_visual_token_ids_come_from_the_config(family):
    config = tiny_model(family).config
    assert visual_token_ids(config) == [config.image_token_id, config.video_token_id]
    ids = torch.tensor([1, config.image_token_id, 2, config.video_token_id])
    assert visual_mask_of(ids, visual_token_ids(config)).tolist() == [False, True, False, True]


def test_visual_token_ids_of_a_text_only_config_is_empty():
    import transformers

    assert visual_token_ids(transformers.Qwen2Config()) == []


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("layer", [-1, -2, -3, 0, 1, 2])
def test_hooked_layer_scores_match_the_models_own_hidden_states(family, layer):
    """Several images and a video in one prompt (GLM-4V: a video alone, see vgpo_verl.doctor.checks);
    the hook's scores equal a plain forward's at the same index of [layer 0, layer 1, final norm]."""
    model = tiny_model(family)
    sample = synthetic_sample(model.config, torch.Generator().manual_seed(1), images=0 if family == "glm4v" else 2,
                              videos=1)
    inputs = dict(input_ids=sample.input_ids[None], position_ids=position_ids(model, sample)[:, None],
                  **sample.visual_kwargs())
    mask = visual_mask_of(sample.input_ids, visual_token_ids(model.config))
    cu_seqlens = torch.tensor([0, len(sample.input_ids)])

    with torch.no_grad(), HiddenStateCapture(model, layer=layer) as capture:
        output = model(**inputs)
    assert output.hidden_states is None  # only one layer was kept, not every layer's
    similarity, has_visual = visual_similarity(capture.hidden[0], cu_seqlens, mask)

    expected, expected_has_visual = reference.scores(model, sample, layer=layer)
    torch.testing.assert_close(similarity.double(), expected, atol=1e-5, rtol=0)
    assert has_visual.tolist() == [expected_has_visual] == [True]


def test_on_capture_reduces_inside_the_hook_and_keeps_no_activation():
    model = tiny_model("qwen2_5_vl")
    sample = synthetic_sample(model.config, torch.Generator().manual_seed(2), images=1)
    mask = visual_mask_of(sample.input_ids, visual_token_ids(model.config))
    cu_seqlens = torch.tensor([0, len(sample.input_ids)])

    def score(hidden):
        return visual_similarity(hidden[0], cu_seqlens, mask)

    with torch.no_grad(), HiddenStateCapture(model, on_capture=score) as capture:
        model(input_ids=sample.input_ids[None], position_ids=position_ids(model, sample)[:, None],
              **sample.visual_kwargs())
    assert capture.hidden is None and capture.calls == 1
    torch.testing.assert_close(capture.result[0].double(), reference.scores(model, sample)[0], atol=1e-5, rtol=0)


def test_hook_is_removed_on_exit():
    model = tiny_model("qwen2_5_vl")
    with HiddenStateCapture(model) as capture:
        pass
    assert not capture.module._forward_hooks


def test_layer_indexes_the_decoder_layers_then_the_final_norm_on_a_two_layer_model():
    """`layer` is a Python index into [layer 0, layer 1, final norm]: -1 the norm (lm_head's input),
    -2 the last decoder layer's own output (before the norm), -3 layer 0; 0, 1, 2 the same from the front."""
    model = tiny_model("qwen2_5_vl")
    text = model.model.language_model
    assert len(text.layers) == 2
    expected = {-1: text.norm, -2: text.layers[1], -3: text.layers[0], 0: text.layers[0], 1: text.layers[1],
                2: text.norm}
    assert resolve_layer(model) is text.norm
    for layer, module in expected.items():
        assert resolve_layer(model, layer) is module, layer
    for layer in (3, -4):
        with pytest.raises(ValueError, match=r"out of range for a decoder with 2 layers: allowed -3\.\.2"):
            resolve_layer(model, layer)
    with pytest.raises(ValueError, match="no text decoder"):
        resolve_layer(torch.nn.Linear(2, 2))


def test_padded_layout_gives_the_packed_scores():
    """Right-padded (S, max_len) rows scored through padded_segment_ids equal the packed computation."""
    from vgpo_verl.methods.scoring import cosine_to_prototypes, padded_segment_ids, visual_prototypes

    generator = torch.Generator().manual_seed(3)
    lengths = torch.tensor([5, 2, 7])
    packed = torch.randn(int(lengths.sum()), 8, generator=generator)
    visual = torch.rand(len(packed), generator=generator) < 0.5
    segment_ids, valid = padded_segment_ids(lengths, 7)
    assert segment_ids.tolist()[:7] == [0] * 5 + [3] * 2 and valid.sum() == lengths.sum()
    padded = torch.full((3 * 7, 8), 1e3)  # padding rows must not leak into any prototype
    padded[valid.reshape(-1)] = packed
    padded_visual = torch.ones(3 * 7, dtype=torch.bool)
    padded_visual[valid.reshape(-1)] = visual
    mu, has_visual = visual_prototypes(padded, segment_ids, padded_visual, 3, chunk_tokens=4)
    similarity = cosine_to_prototypes(padded, segment_ids, mu, chunk_tokens=4)[valid.reshape(-1)]

    expected, expected_has_visual = visual_similarity(packed, torch.tensor([0, 5, 7, 14]), visual)
    torch.testing.assert_close(similarity, expected)
    assert has_visual.tolist() == expected_has_visual.tolist()


def test_resolve_layer_sees_through_fsdp1_style_wrappers():
    """FSDP1 and activation checkpointing insert `_fsdp_wrapped_module` / `_checkpoint_wrapped_module`."""

    class Wrapper(torch.nn.Module):
        def __init__(self, inner, attribute):
            super().__init__()
            setattr(self, attribute, inner)

    model = tiny_model("qwen2_5_vl")
    text_model = model.model.language_model
    model.model.language_model = Wrapper(text_model, "_checkpoint_wrapped_module")
    root = Wrapper(model, "_fsdp_wrapped_module")
    assert resolve_layer(root) is text_model.norm
    assert resolve_layer(root, 0) is text_model.layers[0]


@pytest.mark.parametrize("family", ["qwen2_5_vl", "qwen3_5"])
def test_resolve_layer_sees_through_peft_lora_wrappers(family):
    """verl's LoRA path wraps the model in PEFT (`base_model.model.`) and every linear in a LoRA layer."""
    import peft

    model = tiny_model(family)
    text = model.model.language_model
    adapted = peft.get_peft_model(model, peft.LoraConfig(r=8, target_modules="all-linear"))
    assert resolve_layer(adapted) is text.norm
    assert resolve_layer(adapted, -2) is text.layers[1]
    assert any(isinstance(m, peft.tuners.lora.LoraLayer) for m in text.layers[1].modules())
