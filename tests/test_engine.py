"""verl's real FSDP2 engine (gloo, CPU) with VGPO scoring, against a plain-transformers reference.

The engine runs in spawned ranks (tests/_engine_utils.py); the reference is computed here from the
same saved weights, one sample at a time, with the textbook cos(h_t, mu).
"""

import itertools

import pytest
import torch

from _engine_utils import run_engine
from vgpo_verl.doctor import reference
from vgpo_verl.doctor.tiny_models import synthetic_sample, tiny_model

SCORE = {"vgpo_score": True}
# VPPO's perturbed pass with explicit normalisation (the test engine loads no image processor)
IMAGE_MEAN, IMAGE_STD = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)  # tuples: verl stores a list as per-sample data
PERTURB = {"vppo_perturb": True, "vppo_black_prob": 0.5, "vppo_seed": 7,
           "vppo_image_mean": IMAGE_MEAN, "vppo_image_std": IMAGE_STD}
WS1_RUNS = [
    {"name": "padded", "remove_padding": False, "flags": SCORE},
    {"name": "padded_plain", "remove_padding": False},
    {"name": "rmpad", "remove_padding": True, "flags": SCORE},
    {"name": "rmpad_dynamic_bsz", "remove_padding": True, "dynamic_bsz": True, "max_token_len": 80, "flags": SCORE},
    {"name": "rmpad_layer0", "remove_padding": True, "flags": {**SCORE, "vgpo_layer": 0}},
    {"name": "rmpad_plain", "remove_padding": True},
    {"name": "padded_vppo", "remove_padding": False, "flags": PERTURB},
    {"name": "rmpad_vppo_dynamic_bsz", "remove_padding": True, "dynamic_bsz": True, "max_token_len": 80,
     "flags": PERTURB},
    {"name": "rmpad_vppo_and_score", "remove_padding": True, "flags": {**PERTURB, **SCORE}},
    {"name": "legacy_rmpad_vppo_and_score", "remove_padding": True, "legacy_layout": True,
     "flags": {**PERTURB, **SCORE}},
]
PERTURBED_RUNS = ["padded_vppo", "rmpad_vppo_dynamic_bsz", "rmpad_vppo_and_score", "legacy_rmpad_vppo_and_score"]
SCORED_RUNS = ["padded", "rmpad", "rmpad_dynamic_bsz", "legacy_rmpad_vppo_and_score"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """Tiny Qwen2.5-VL on disk, and a batch mixing one image, text only, two images, image + video."""
    model_dir = tmp_path_factory.mktemp("tiny_qwen2_5_vl")
    model = tiny_model("qwen2_5_vl")
    model.save_pretrained(model_dir)
    generator = torch.Generator().manual_seed(0)
    samples = [
        synthetic_sample(model.config, generator, images=1, response_len=9),
        synthetic_sample(model.config, generator, images=0, response_len=5),
        synthetic_sample(model.config, generator, images=2, response_len=12),
        synthetic_sample(model.config, generator, images=1, videos=1, response_len=7),
    ]
    return model, str(model_dir), samples


@pytest.fixture(scope="module")
def qwen3(tmp_path_factory):
    """Tiny Qwen3-VL (verl patches its forward differently), image / text / images / frame-split video."""
    model_dir = tmp_path_factory.mktemp("tiny_qwen3_vl")
    model = tiny_model("qwen3_vl")
    model.save_pretrained(model_dir)
    generator = torch.Generator().manual_seed(5)
    samples = [
        synthetic_sample(model.config, generator, images=1, response_len=6),
        synthetic_sample(model.config, generator, images=0, response_len=4),
        synthetic_sample(model.config, generator, images=2, response_len=5),
        synthetic_sample(model.config, generator, images=1, videos=1, response_len=7),
    ]
    return model, str(model_dir), samples


@pytest.fixture(scope="module")
def ws1(setup, qwen3):
    """All world-size-1 runs in one spawned rank (importing verl there dominates the cost)."""
    model, model_dir, samples = setup
    _, qwen3_dir, qwen3_samples = qwen3
    runs = WS1_RUNS + [{"name": "qwen3_padded", "remove_padding": False, "flags": SCORE,
                        "model_dir": qwen3_dir, "samples": qwen3_samples},
                       {"name": "qwen3_vppo", "remove_padding": False, "flags": PERTURB,
                        "model_dir": qwen3_dir, "samples": qwen3_samples}]
    return run_engine(model_dir, samples, runs, f"{model_dir}/ws1.pt")


@pytest.fixture(scope="module")
def references(setup):
    model, _, samples = setup
    return {layer: [reference.scores(model, s, layer=layer) for s in samples] for layer in (-1, 0)}


def test_qwen3_vl_scores_through_verls_engine(ws1, qwen3):
    model, _, samples = qwen3
    result = ws1["qwen3_padded"]
    for i, (sample, scores) in enumerate(zip(samples, result["outputs"]["vgpo_visual_score"])):
        expected, has_visual = reference.scores(model, sample)
        torch.testing.assert_close(scores.double(), expected[-sample.response_len :], atol=1e-4, rtol=0)
        assert result["outputs"]["vgpo_has_visual"][i].tolist() == [has_visual]


def test_verl_registry_picks_the_scoring_engine_on_nvidia_and_the_cpu_platform_only(monkeypatch):
    import vgpo_verl.plugin  # noqa: F401
    from verl.workers.engine import EngineRegistry
    from verl.workers.engine.fsdp.transformer_impl import FSDPEngineWithLMHead

    from vgpo_verl.plugin.engine import VGPOFSDPEngineWithLMHead

    monkeypatch.setenv("VERL_ENGINE_DEVICE", "cuda")
    for backend in ("fsdp", "fsdp2"):
        monkeypatch.setenv("VERL_ENGINE_VENDOR", "nvidia")  # an NVIDIA GPU, and vgpo_verl.cpu.enable()
        assert EngineRegistry.get_engine_cls("language_model", backend) is VGPOFSDPEngineWithLMHead
        monkeypatch.setenv("VERL_ENGINE_VENDOR", "amd")
        assert EngineRegistry.get_engine_cls("language_model", backend) is FSDPEngineWithLMHead
    assert EngineRegistry.get_engine_cls("value_model", "fsdp2") is not VGPOFSDPEngineWithLMHead


@pytest.mark.parametrize("run", SCORED_RUNS)
def test_response_scores_equal_plain_transformers_cosine(ws1, setup, references, run):
    """The engine stores the response tokens only, and the score of response token y_t is cos(h at
    y_t's own position, mu) (the plain reference's value at position prompt_len + t)."""
    _, _, samples = setup
    result = ws1[run]
    assert result["engine_class"] == "VGPOFSDPEngineWithLMHead"
    assert result["scoring_hooks"] > 0
    for i, (sample, scores) in enumerate(zip(samples, result["outputs"]["vgpo_visual_score"])):
        assert scores.shape == (sample.response_len,) and scores.dtype == torch.float32  # no prompt token
        expected = references[-1][i][0][-sample.response_len :]
        torch.testing.assert_close(scores.double(), expected, atol=1e-4, rtol=0, msg=f"sample {i}")


@pytest.mark.parametrize("run", SCORED_RUNS)
def test_has_visual_is_one_flag_per_sample(ws1, run):
    has_visual = ws1[run]["outputs"]["vgpo_has_visual"]
    assert [h.tolist() for h in has_visual] == [[True], [False], [True], [True]]
    assert all(h.dtype == torch.bool for h in has_visual)


def test_layer_flag_scores_another_decoder_layer(ws1, setup, references):
    _, _, samples = setup
    for i, (sample, scores) in enumerate(zip(samples, ws1["rmpad_layer0"]["outputs"]["vgpo_visual_score"])):
        torch.testing.assert_close(scores.double(), references[0][i][0][-sample.response_len :], atol=1e-4, rtol=0)


@pytest.mark.parametrize("plain, scored", [("padded_plain", "padded"), ("rmpad_plain", "rmpad")])
def test_without_the_flag_it_is_the_stock_engine(ws1, plain, scored):
    assert ws1[plain]["scoring_hooks"] == 0
    assert sorted(ws1[plain]["outputs"]) == ["entropy", "log_probs"]
    for key in ("log_probs", "entropy"):  # scoring leaves verl's own outputs untouched
        for a, b in zip(ws1[plain]["outputs"][key], ws1[scored]["outputs"][key]):
            torch.testing.assert_close(a, b, atol=0, rtol=0)


@pytest.mark.slow  # two ranks each import verl and build an engine: 1-2 minutes on 2 shared cores
def test_ulysses_sp2_gives_the_sp1_scores(setup, ws1, references):
    model, model_dir, samples = setup
    runs = [{"name": "sp2", "remove_padding": True, "sp": 2, "flags": SCORE}]
    sp2 = run_engine(model_dir, samples, runs, f"{model_dir}/sp2.pt", world_size=2)["sp2"]
    assert sp2["scoring_hooks"] > 0
    for i, (a, b) in enumerate(zip(sp2["outputs"]["vgpo_visual_score"], ws1["rmpad"]["outputs"]["vgpo_visual_score"])):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0, msg=f"sample {i}")
        torch.testing.assert_close(a.double(), references[-1][i][0][-samples[i].response_len :], atol=1e-4, rtol=0)
    assert [h.tolist() for h in sp2["outputs"]["vgpo_has_visual"]] == [[True], [False], [True], [True]]
    assert list(sp2["timings"]) == ["timing_s/vgpo_score"] and sp2["timings"]["timing_s/vgpo_score"] >= 0


@pytest.mark.parametrize("run", [r["name"] for r in WS1_RUNS])
def test_the_pass_reports_the_seconds_of_our_additions(ws1, run):
    """infer_batch's metrics carry this rank's seconds in the scoring hook / the perturbed forward
    (vgpo_verl.plugin.timing), one number per pass, only for what the flags asked for."""
    flags = next(r for r in WS1_RUNS if r["name"] == run).get("flags", {})
    expected = {"timing_s/vgpo_score"} if flags.get("vgpo_score") else set()
    expected |= {"timing_s/vppo_aug_forward"} if flags.get("vppo_perturb") else set()
    timings = ws1[run]["timings"]
    assert set(timings) == expected
    assert all(isinstance(v, float) and v >= 0 for v in timings.values()), timings


def test_training_forward_is_never_scored_even_with_the_flag(monkeypatch):
    """forward_only=False (update_actor) goes straight to verl's forward_step: no hook."""
    import vgpo_verl.plugin.engine as engine_module
    import vgpo_verl.plugin.scoring_engine as scoring_module
    from verl.utils import tensordict_utils as tu
    from verl.workers.engine.fsdp.transformer_impl import FSDPEngineWithLMHead

    calls = []
    monkeypatch.setattr(FSDPEngineWithLMHead, "forward_step", lambda self, mb, lf, fo: calls.append(fo) or ("loss", {}))
    monkeypatch.setattr(scoring_module, "HiddenStateCapture", lambda *a, **k: pytest.fail("hook installed"))
    batch = tu.get_tensordict({"input_ids": torch.zeros(2, 3)}, non_tensor_dict={"vgpo_score": True})
    engine = object.__new__(engine_module.VGPOFSDPEngineWithLMHead)
    assert engine.forward_step(batch, loss_function=None, forward_only=False) == ("loss", {})
    assert calls == [False]


@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_the_pass_sums_our_seconds_over_its_micro_batches(monkeypatch, device):
    """infer_batch times our additions in every micro-batch of the pass on one timer (CUDA events on a
    CUDA device) and adds each name's sum to the pass's metrics once. verl's micro-batch loop, its
    forward and our scorer are stand-ins; the timer's clock advances 1 s per reading, so every timed
    region lasts 1 s: per micro-batch the hook and the slicing of its scores, and the perturbed forward."""
    import vgpo_verl.plugin.engine as engine_module
    import vgpo_verl.plugin.scoring_engine as scoring_module
    from verl.utils import tensordict_utils as tu
    from verl.workers.engine.fsdp.transformer_impl import FSDPEngineWithLMHead

    from vgpo_verl.plugin import timing

    real_timer, asked_for_events = timing.PassTimer, []

    def pass_timer(cuda_events):  # the engine's timer, asked for CUDA events or not, on the 1-s clock
        asked_for_events.append(cuda_events)
        return real_timer(cuda_events=False, clock=itertools.count(0.0).__next__)

    class Capture:  # HiddenStateCapture's contract: the hook hands the layer output to on_capture once
        def __init__(self, module, layer, on_capture):
            self.on_capture, self.calls = on_capture, 0

        def __enter__(self):
            self.result, self.calls = self.on_capture("hidden"), 1
            return self

        def __exit__(self, *exc):
            pass

    class Scorer:
        token_ids, cu_seqlens = [1], None

        def __init__(self, engine, micro_batch, chunk_tokens):
            pass

        def __call__(self, hidden):
            return "similarity", "has_visual"

    def micro_batch_loop(self, data, loss_function=None):  # verl's infer_batch: each micro-batch, then metrics
        for micro_batch in data:
            self.forward_step(micro_batch, loss_function, forward_only=True)
        return {"model_output": {}, "loss": [], "metrics": {"mfu": 0.5}}

    monkeypatch.setattr(timing, "PassTimer", pass_timer)
    monkeypatch.setattr(scoring_module, "get_device_name", lambda: device)
    monkeypatch.setattr(scoring_module, "HiddenStateCapture", Capture)
    monkeypatch.setattr(scoring_module, "_MicroBatchScorer", Scorer)
    monkeypatch.setattr(scoring_module, "score_outputs", lambda *args: {"vgpo_visual_score": "scores"})
    monkeypatch.setattr(scoring_module, "response_lengths", lambda micro_batch: None)
    monkeypatch.setattr(engine_module.VGPOFSDPEngineWithLMHead, "_perturbed_log_probs", lambda self, mb, lf: "aug")
    monkeypatch.setattr(FSDPEngineWithLMHead, "forward_step", lambda self, mb, lf, fo: ("loss", {"model_output": {}}))
    monkeypatch.setattr(FSDPEngineWithLMHead, "infer_batch", micro_batch_loop)
    engine = object.__new__(engine_module.VGPOFSDPEngineWithLMHead)
    engine.module = None

    def micro_batches(**flags):
        return [tu.get_tensordict({"input_ids": torch.zeros(2, 3)}, non_tensor_dict=flags) for _ in range(3)]

    output = engine.infer_batch(micro_batches(vgpo_score=True, vppo_perturb=True))
    assert output["metrics"] == {"mfu": 0.5, "timing_s/vgpo_score": 6.0, "timing_s/vppo_aug_forward": 3.0}
    assert asked_for_events == [device == "cuda"] and engine._pass_timer is None
    assert engine.infer_batch(micro_batches())["metrics"] == {"mfu": 0.5}  # a new timer per pass, nothing timed


# ------------------------------------------------------------------ VPPO's perturbed forward


def reference_log_probs(model, sample, perturbed: bool):
    """(L-1,) float64: log p(token j+1 | ..j) of one sample alone, plain transformers, with the sample's
    own pixels blackened by vgpo_verl.methods.perturb (so the mask cannot depend on the batch it sat in)."""
    perturbation = (7, 0.5, IMAGE_MEAN, IMAGE_STD) if perturbed else None
    return reference.log_probs_and_entropy(model, sample, perturbation)[0]


@pytest.mark.parametrize("run", PERTURBED_RUNS)
def test_perturbed_forward_gives_each_samples_own_blackened_log_probs(ws1, setup, run):
    """One extra forward through verl's engine (padded, packed with dynamic micro-batches, next to
    VGPO's scoring, the legacy trainer's layout): entry t holds log pi(response token t) with the
    sample's patches blackened, response tokens only, whatever the batching; images, two images and
    image + video alike."""
    model, _, samples = setup
    result = ws1[run]
    assert result["engine_class"] == "VGPOFSDPEngineWithLMHead"
    for i, (sample, aug) in enumerate(zip(samples, result["outputs"]["vppo_aug_log_probs"])):
        expected = reference_log_probs(model, sample, perturbed=True)[-sample.response_len :]
        assert aug.shape == (sample.response_len,)
        torch.testing.assert_close(aug.double(), expected, atol=1e-4, rtol=0, msg=f"sample {i}")


@pytest.mark.parametrize("plain, perturbed", [("padded_plain", "padded_vppo"), ("rmpad_plain", "rmpad_vppo_and_score")])
def test_perturbed_pass_leaves_verls_outputs_alone_and_changes_only_visual_samples(ws1, setup, plain, perturbed):
    # 1 ulp allowed: the extra forward between micro-batches moves later allocations, and the CPU
    # BLAS result may depend on buffer alignment (seen in the padded layout)
    for key in ("log_probs", "entropy"):
        for a, b in zip(ws1[plain]["outputs"][key], ws1[perturbed]["outputs"][key]):
            torch.testing.assert_close(a, b, atol=1e-6, rtol=0)
    _, _, samples = setup
    for i, (aug, full) in enumerate(zip(ws1[perturbed]["outputs"]["vppo_aug_log_probs"],
                                        ws1[plain]["outputs"]["log_probs"])):
        clean = full[-samples[i].response_len - 1 : -1]  # verl's response slice of its own log_probs
        if i == 1:  # text only: nothing to perturb
            torch.testing.assert_close(aug, clean, atol=1e-6, rtol=0)
        else:
            assert (aug - clean).abs().max() > 1e-3, f"sample {i}: the perturbation changed nothing"


def test_qwen3_vl_perturbed_forward(ws1, qwen3):
    """Qwen3-VL (deepstack, frame-split video): the same per-sample blackened log-probs."""
    model, _, samples = qwen3
    for i, (sample, aug) in enumerate(zip(samples, ws1["qwen3_vppo"]["outputs"]["vppo_aug_log_probs"])):
        expected = reference_log_probs(model, sample, perturbed=True)[-sample.response_len :]
        torch.testing.assert_close(aug.double(), expected, atol=1e-4, rtol=0, msg=f"sample {i}")


def test_scores_are_unchanged_next_to_the_perturbed_pass(ws1):
    for a, b in zip(ws1["rmpad"]["outputs"]["vgpo_visual_score"], ws1["rmpad_vppo_and_score"]["outputs"]["vgpo_visual_score"]):
        torch.testing.assert_close(a, b, atol=0, rtol=0)
