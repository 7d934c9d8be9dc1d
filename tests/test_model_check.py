"""vgpo_verl.plugin.model_check: the model is refused in the driver from its config.json alone (no weights), naming
model_type and what is missing; preflight.problems carries the refusal."""

import logging
import pathlib

import pytest
import transformers
from omegaconf import OmegaConf

from vgpo_verl.doctor.tiny_models import tiny_config
from vgpo_verl.plugin import preflight
from vgpo_verl.plugin.families import FAMILIES
from vgpo_verl.plugin.model_check import UNRUNNABLE, model_problems

NVIDIA = ("cuda", "nvidia")
REPO_DOCS = pathlib.Path(__file__).resolve().parents[1] / "docs"


def run_config(path, estimator="vgpo", **algorithm):
    return OmegaConf.create({
        "algorithm": {"adv_estimator": estimator, **algorithm},
        "actor_rollout_ref": {"actor": {"strategy": "fsdp2"}, "model": {"path": str(path), "external_lib": None}},
        "trainer": {"use_v1": True},
    })


def config_only(tmp_path, config):
    """A checkpoint directory holding config.json and nothing else: no weights to read."""
    config.save_pretrained(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json"]
    return tmp_path


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("estimator", ["vgpo", "vppo"])
def test_every_runnable_family_passes_and_the_others_are_refused_with_the_reason(tmp_path, family, estimator):
    found = model_problems(run_config(config_only(tmp_path, tiny_config(family)), estimator))
    if family in UNRUNNABLE:
        assert found == [f"actor_rollout_ref.model.path={tmp_path}: model_type={family}: {UNRUNNABLE[family]}"]
    else:
        assert found == []


def test_a_text_only_model_is_refused_naming_model_type_and_the_missing_ids(tmp_path):
    text_only = transformers.Qwen2Config(num_hidden_layers=2, hidden_size=32, intermediate_size=64,
                                         num_attention_heads=2, num_key_value_heads=1, vocab_size=128,
                                         architectures=["Qwen2ForCausalLM"])
    path = config_only(tmp_path, text_only)
    (line,) = model_problems(run_config(path))
    assert line.startswith(f"actor_rollout_ref.model.path={path}: model_type=qwen2: config.json names no "
                           "image_token_id or video_token_id")
    assert model_problems(run_config(path, "entropy_shaping")) == []  # reads verl's entropy only


def test_a_text_only_hf_config_path_next_to_a_vlm_path_is_refused_naming_that_key(tmp_path):
    """verl builds the model from hf_config_path when it is set: that is the config checked and named."""
    (tmp_path / "vlm").mkdir()
    vlm = config_only(tmp_path / "vlm", tiny_config("qwen2_5_vl"))
    text_only = transformers.Qwen2Config(num_hidden_layers=2, hidden_size=32, intermediate_size=64,
                                         num_attention_heads=2, num_key_value_heads=1, vocab_size=128,
                                         architectures=["Qwen2ForCausalLM"])
    (tmp_path / "text").mkdir()
    text = config_only(tmp_path / "text", text_only)
    cfg = run_config(vlm)
    assert model_problems(cfg) == []
    OmegaConf.update(cfg, "actor_rollout_ref.model.hf_config_path", str(text), force_add=True)
    (line,) = model_problems(cfg)
    assert line.startswith(f"actor_rollout_ref.model.hf_config_path={text}: model_type=qwen2: config.json names no "
                           "image_token_id"), line


def test_kimi_vl_is_refused_as_docs_models_md_says():
    """verl's monkey_patch.py also handles kimi_vl: its placeholder id has another name, so nothing is visual."""
    from vgpo_verl.plugin.model_check import config_problems

    kimi = transformers.PretrainedConfig(media_placeholder_token_id=163605)
    kimi.model_type = "kimi_vl"
    (line, *_) = config_problems(kimi, "vppo")
    assert line.startswith("model_type=kimi_vl: config.json names no image_token_id or video_token_id")
    assert "names no image_token_id or video_token_id" in (REPO_DOCS / "models.md").read_text()


def test_a_decoder_the_scorer_cannot_find_is_refused(tmp_path):
    """GPT-2 keeps its blocks in `h` and its norm in `ln_f`: no module with `layers` and `norm` to hook."""
    gpt2 = transformers.GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=128, architectures=["GPT2LMHeadModel"])
    gpt2.image_token_id = 7  # pretend it were a VLM: the token check passes, the decoder one must not
    (line,) = model_problems(run_config(config_only(tmp_path, gpt2)))
    assert "model_type=gpt2: no text decoder the scorer can hook in GPT2Model" in line  # verl builds AutoModel
    (vppo_line,) = model_problems(run_config(tmp_path, "vppo"))
    assert "model_type=gpt2: vppo blackens the pixel rows of the families it knows" in vppo_line


@pytest.mark.parametrize("layer, allowed", [(-1, True), (-3, True), (2, True), (3, False), (-4, False)])
def test_the_layer_must_exist_in_the_decoder(tmp_path, layer, allowed):
    path = config_only(tmp_path, tiny_config("qwen3_vl"))
    found = model_problems(run_config(path, vgpo={"layer": layer}))
    assert (found == []) == allowed
    if not allowed:
        assert f"algorithm.vgpo.layer={layer}: model_type=qwen3_vl has 2 decoder layers " \
               "(model.language_model.layers), allowed -3..2" in found[0]


def test_a_hub_id_that_is_not_local_is_not_fetched_but_noted(caplog, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # a download attempt would fail loudly instead of reaching out
    with caplog.at_level(logging.WARNING, logger="vgpo_verl"):
        assert model_problems(run_config("no-such-org/no-such-model")) == []
    assert "is neither a local directory nor in the Hugging Face cache" in caplog.text


def test_preflight_carries_the_refusal(tmp_path):
    text_only = transformers.Qwen2Config(num_hidden_layers=1, hidden_size=32, intermediate_size=64,
                                         num_attention_heads=2, num_key_value_heads=1, vocab_size=128,
                                         architectures=["Qwen2ForCausalLM"])
    found = preflight.problems(run_config(config_only(tmp_path, text_only)), "verl.trainer.main_ppo", environ={},
                               engine_key=NVIDIA)
    assert len(found) == 1 and "model_type=qwen2: config.json names no image_token_id" in found[0]


def test_verls_freeze_vision_tower_switch_is_named_as_ignored(tmp_path, caplog):
    """verl 0.9.1 declares actor.freeze_vision_tower but nothing reads it; the user hears so at start-up."""
    import verl

    readers = [p for p in pathlib.Path(verl.__file__).parent.rglob("*.py")
               if "freeze_vision_tower" in p.read_text(errors="ignore")]
    assert [p.name for p in readers] == ["actor.py"]  # the dataclass field only
    cfg = run_config(config_only(tmp_path, tiny_config("qwen2_5_vl")))
    OmegaConf.update(cfg, "actor_rollout_ref.actor.freeze_vision_tower", True)
    with caplog.at_level(logging.WARNING, logger="vgpo_verl"):
        assert model_problems(cfg) == []
    assert "freeze_vision_tower=true is read by nothing in verl 0.9.1" in caplog.text
