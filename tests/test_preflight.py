"""vgpo_verl.plugin.preflight: unsupported setups are refused in the driver, before Ray, naming the dotted key.

The subprocess tests run verl's real entry points (`python -m verl.trainer.main_ppo` and the two
experimental mains) with a model path that does not exist: a refusal must come from our check,
and Ray must not have started (verl's run_ppo prints "ray init kwargs" right before ray.init).
"""

import os
import pathlib
import subprocess
import sys

import pytest
from omegaconf import OmegaConf

import verl
from vgpo_verl.plugin import preflight

REPO = pathlib.Path(__file__).resolve().parents[1]
SITE = pathlib.Path(verl.__file__).resolve().parents[1]  # the experimental configs' searchpath is relative
NVIDIA = ("cuda", "nvidia")


def config(**over):
    base = {
        "algorithm": {"adv_estimator": "vgpo", "vgpo": {"beta": 0.3},
                      "rollout_correction": {"bypass_mode": False}, "filter_groups": {"enable": True}},
        "actor_rollout_ref": {"actor": {"strategy": "fsdp2"}, "model": {"external_lib": None}},
        "trainer": {"use_v1": True, "device": "cuda", "v1": {"trainer_mode": "sync"}},
    }
    cfg = OmegaConf.create(base)
    for key, value in over.items():
        OmegaConf.update(cfg, key, value, force_add=True)
    return cfg


def test_supported_setup_passes():
    assert preflight.problems(config(), "verl.trainer.main_ppo", environ={}, engine_key=NVIDIA) == []


@pytest.mark.parametrize("key, value, expected", [
    ("algorithm.vgpo.kappa", 1.5, "algorithm.vgpo.kappa=1.5: must lie in [0.0, 1.0]"),
    ("algorithm.vgpo.no_such_knob", 1, "algorithm.vgpo: unknown key(s) ['no_such_knob']"),
    ("actor_rollout_ref.actor.strategy", "megatron",
     "actor_rollout_ref.actor.strategy=megatron: algorithm.adv_estimator=vgpo scores in verl's FSDP and VeOmni actor "
     "engines only; use model_engine=dp (verl's default) with actor_rollout_ref.actor.strategy=fsdp2 (or fsdp), or "
     "model_engine=veomni (Megatron: the design, not run yet, is in docs/megatron.md)."),
    ("actor_rollout_ref.actor.veomni.ulysses_parallel_size", 2,
     "actor_rollout_ref.actor.veomni.ulysses_parallel_size=2: algorithm.adv_estimator=vgpo has not run under "
     "VeOmni's sequence parallelism"),
    ("algorithm.rollout_correction.bypass_mode", True, "set algorithm.rollout_correction.bypass_mode=false."),
])
def test_each_refusal_names_its_key_and_the_fix(key, value, expected):
    over = {key: value, **({"actor_rollout_ref.actor.strategy": "veomni"} if ".veomni." in key else {})}
    found = preflight.problems(config(**over), "verl.trainer.main_ppo", environ={}, engine_key=NVIDIA)
    assert len(found) == 1 and expected in found[0], found


@pytest.mark.parametrize("engine_key, hint", [
    (("cuda", "amd"), "run on NVIDIA GPUs"),
    (("npu", "huawei"), "run on NVIDIA GPUs"),
    (("cpu", "cpu"), "set VERL_ENGINE_DEVICE=cuda VERL_ENGINE_VENDOR=nvidia"),
])
def test_vendors_without_the_scoring_engine_are_refused(engine_key, hint):
    (found,) = preflight.problems(config(), "verl.trainer.main_ppo", environ={}, engine_key=engine_key)
    assert f"engine key {engine_key!r}" in found and hint in found


def test_engine_key_follows_verl_overrides_in_driver_env_then_runtime_env():
    cfg = config(**{"ray_kwargs.ray_init.runtime_env.env_vars": {"VERL_ENGINE_VENDOR": "amd"}})
    env = preflight.worker_environment(cfg, {"VERL_ENGINE_DEVICE": "cuda", "VERL_ENGINE_VENDOR": "nvidia"})
    assert preflight.resolved_engine_key(env) == ("cuda", "amd")
    # our CPU platform (the demo) resolves to the scoring engine's key
    assert preflight.resolved_engine_key({"VERL_ENGINE_DEVICE": "cuda", "VERL_ENGINE_VENDOR": "nvidia"}) == NVIDIA


def test_disabled_entry_points_need_external_lib():
    (found,) = preflight.problems(config(), "verl.trainer.main_ppo", environ={"VERL_USE_EXTERNAL_PLUGINS": "none"},
                                  engine_key=NVIDIA)
    assert "set actor_rollout_ref.model.external_lib=vgpo_verl" in found
    fixed = config(**{"actor_rollout_ref.model.external_lib": "vgpo_verl"})
    assert preflight.problems(fixed, "x", environ={"VERL_USE_EXTERNAL_PLUGINS": "none"}, engine_key=NVIDIA) == []
    assert preflight.problems(config(), "x", environ={"VERL_USE_EXTERNAL_PLUGINS": "other,vgpo"},
                              engine_key=NVIDIA) == []


@pytest.mark.parametrize("plugins, external_lib, refused", [
    ("none", None, True),
    ("other", None, True),  # a list without our entry point
    ("other, vgpo", None, False),
    ("none", "other_lib", True),  # imports someone else's module, not ours
    ("none", "vgpo_verl_extras", True),  # a name that only starts like ours
    ("none", ["other_lib", "vgpo_verl"], False),  # verl accepts a list
    ("none", "vgpo_verl.plugin.engine", False),  # a submodule imports the package, which installs the plugin
])
def test_plugin_reaches_the_workers_by_entry_point_or_external_lib(plugins, external_lib, refused):
    cfg = config(**{"actor_rollout_ref.model.external_lib": external_lib})
    found = preflight.problems(cfg, "verl.trainer.main_ppo", environ={"VERL_USE_EXTERNAL_PLUGINS": plugins},
                               engine_key=NVIDIA)
    assert bool(found) == refused, found
    if refused:
        assert found[0].startswith(f"VERL_USE_EXTERNAL_PLUGINS={plugins}") and "external_lib=vgpo_verl" in found[0]


@pytest.mark.parametrize("modules, refused", [
    ("vgpo_verl.plugin", False),  # what examples/slurm/run_vgpo.slurm sets when entry points are off
    ("other_lib,vgpo_verl", False),
    ("vgpo_verl_extras", True),
    ("", True),
])
def test_the_modules_fallback_counts_as_reaching_the_workers(modules, refused):
    environ = {"VERL_USE_EXTERNAL_PLUGINS": "none", "VERL_USE_EXTERNAL_MODULES": modules}
    found = preflight.problems(config(), "verl.trainer.main_ppo", environ=environ, engine_key=NVIDIA)
    assert bool(found) == refused, found


def test_the_modules_fallback_loads_the_plugin_in_a_fresh_process():
    """What the check above trusts: with entry points off, VERL_USE_EXTERNAL_MODULES alone registers vgpo."""
    env = {**os.environ, "VERL_USE_EXTERNAL_PLUGINS": "none", "VERL_USE_EXTERNAL_MODULES": "vgpo_verl.plugin"}
    code = ("from verl.trainer.ppo import core_algos\n"
            "print(core_algos.get_adv_estimator_fn('vgpo').__name__)\n")
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().splitlines()[-1] == "compute_vgpo_advantage"


@pytest.mark.parametrize("estimator, strategy_refused", [("vgpo", True), ("vppo", True), ("entropy_shaping", False)])
def test_each_method_gets_only_the_checks_its_table_row_implies(estimator, strategy_refused):
    """Entropy shaping reads verl's own entropy, which every engine writes: Megatron and AMD are fine for
    it; vgpo and vppo need outputs of our FSDP engine. Bypass mode and the plugin check stay for all."""
    from vgpo_verl.plugin.method_table import ENGINE_ESTIMATORS, method_of

    assert (estimator in ENGINE_ESTIMATORS) == method_of(estimator).needs_engine_pass
    cfg = config(**{"algorithm.adv_estimator": estimator, "actor_rollout_ref.actor.strategy": "megatron"})
    found = preflight.problems(cfg, "verl.trainer.main_ppo", environ={}, engine_key=("cuda", "amd"))
    assert len(found) == (2 if strategy_refused else 0), found
    cfg.algorithm.rollout_correction.bypass_mode = True
    found = preflight.problems(cfg, "verl.trainer.main_ppo", environ={"VERL_USE_EXTERNAL_PLUGINS": "none"},
                               engine_key=("cuda", "amd"))
    assert sum("bypass_mode=false" in f for f in found) == 1
    assert sum("VERL_USE_EXTERNAL_PLUGINS=none" in f for f in found) == 1


@pytest.mark.parametrize("estimator", ["vgpo", "vppo"])
def test_veomni_is_a_scoring_strategy_with_sp_one(estimator):
    cfg = config(**{"algorithm.adv_estimator": estimator, "actor_rollout_ref.actor.strategy": "veomni",
                    "actor_rollout_ref.actor.veomni.ulysses_parallel_size": 1})
    assert preflight.problems(cfg, "verl.trainer.main_ppo", environ={}, engine_key=NVIDIA) == []


def _saved(tmp_path, family, fused):
    from vgpo_verl.doctor.tiny_models import tiny_model

    tiny_model(family).save_pretrained(tmp_path / family, save_original_format=not fused)
    return str(tmp_path / family)


@pytest.mark.parametrize("family", ["qwen3_5", "qwen3_5_moe"])
@pytest.mark.parametrize("remove_padding, refused", [(False, True), (True, False)])
def test_veomni_qwen3_5_runs_packed_only(tmp_path, family, remove_padding, refused):
    cfg = config(**{"actor_rollout_ref.actor.strategy": "veomni",
                    "actor_rollout_ref.model.path": _saved(tmp_path, family, fused=True),
                    "actor_rollout_ref.model.use_remove_padding": remove_padding})
    found = preflight.problems(cfg, "verl.trainer.main_ppo", environ={}, engine_key=NVIDIA)
    assert found == ([f"actor_rollout_ref.model.use_remove_padding=false with model_type={family} on VeOmni: VeOmni's "
                      "Qwen3.5 decoder layers assert cu_seq_lens_q, which verl passes only for packed sequences; set "
                      "actor_rollout_ref.model.use_remove_padding=true."] if refused else []), found


def _cached_on_the_hub(tmp_path, monkeypatch, folder, repo_id="someorg/Tiny-MoE"):
    """`folder` as a hub id's snapshot in a Hugging Face cache of its own (HF_HUB_CACHE)."""
    import shutil

    cache = tmp_path / "hub_cache"
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    shutil.copytree(folder, repo / "snapshots" / "0123abc")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0123abc")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(cache))
    return repo_id


@pytest.mark.parametrize("estimator", ["vgpo", "grpo"])
@pytest.mark.parametrize("fused", [False, True])
@pytest.mark.parametrize("where", ["folder", "sharded", "home", "hub cache"])
def test_veomni_refuses_a_checkpoint_with_one_tensor_per_expert_for_every_estimator(tmp_path, monkeypatch, estimator,
                                                                                   fused, where):
    """transformers 5 saves Qwen3.5-MoE as the hub stores it, one tensor per expert; VeOmni 0.1.12 has no
    converter for it and would initialise the experts at random (tests/test_veomni.py saves them fused).
    Read from a folder (one file, or shards with an index), under ~, or a hub id in the local cache."""
    from vgpo_verl.doctor.tiny_models import tiny_model

    model = tiny_model("qwen3_5_moe")
    model.save_pretrained(tmp_path / "ckpt", save_original_format=not fused,
                          **({"max_shard_size": "100KB"} if where == "sharded" else {}))
    assert (tmp_path / "ckpt" / "model.safetensors.index.json").is_file() == (where == "sharded")
    path = str(tmp_path / "ckpt")
    if where == "home":
        monkeypatch.setenv("HOME", str(tmp_path))
        path = "~/ckpt"
    elif where == "hub cache":
        path = _cached_on_the_hub(tmp_path, monkeypatch, tmp_path / "ckpt")
    cfg = config(**{"algorithm.adv_estimator": estimator, "actor_rollout_ref.actor.strategy": "veomni",
                    "actor_rollout_ref.model.path": path})
    found = preflight.problems(cfg, "verl.trainer.main_ppo", environ={}, engine_key=NVIDIA)
    if fused:
        assert found == []
    else:
        assert len(found) == 1 and found[0].startswith(
            f"actor_rollout_ref.model.path={path}: its checkpoint stores one tensor per expert "
            "(model.language_model.layers.0.mlp.experts.0."), found
        assert "save_original_format=False" in found[0]
    cfg.actor_rollout_ref.actor.strategy = "fsdp2"  # transformers fuses on load: FSDP is fine either way
    assert preflight.problems(cfg, "verl.trainer.main_ppo", environ={}, engine_key=NVIDIA) == []


def test_on_veomni_a_per_expert_checkpoint_and_the_stop_path_are_both_refused(tmp_path):
    cfg = config(**{"algorithm.adv_estimator": "grpo", "actor_rollout_ref.actor.strategy": "veomni",
                    "actor_rollout_ref.model.path": _saved(tmp_path, "qwen3_5_moe", fused=False),
                    "actor_rollout_ref.actor.checkpoint.async_save": True})
    found = preflight.problems(cfg, "verl.trainer.main_ppo", environ={"VGPO_STOP_FILE": "/tmp/stop"}, engine_key=NVIDIA)
    assert [line.split(":")[0] for line in found] == ["actor_rollout_ref.actor.checkpoint.async_save=true with "
                                                       "VGPO_STOP_FILE=/tmp/stop", "actor_rollout_ref.model.path=" +
                                                       str(tmp_path / "qwen3_5_moe")], found


def test_other_estimators_are_never_refused():
    bad = config(**{"algorithm.adv_estimator": "grpo", "actor_rollout_ref.actor.strategy": "megatron",
                    "algorithm.rollout_correction.bypass_mode": True, "algorithm.vgpo.beta": -1.0})
    assert preflight.problems(bad, "verl.trainer.main_ppo", environ={"VERL_USE_EXTERNAL_PLUGINS": "none"},
                              engine_key=("npu", "huawei")) == []


def test_config_value_reads_dicts_and_configs_and_falls_back_only_on_missing_or_none():
    from types import SimpleNamespace

    from vgpo_verl.plugin.config_value import config_value

    assert config_value({"a": {"b": 3}}, "a.b", 5) == 3
    assert config_value(OmegaConf.create({"a": {"b": 3}}), "a.b", 5) == 3
    assert config_value(SimpleNamespace(a=SimpleNamespace(b=3)), "a.b", 5) == 3  # attribute access
    assert config_value({"a": None}, "a.b", 5) == 5  # a None level
    assert config_value({"a": {"b": None}}, "a.b", 5) == 5  # a None leaf
    assert config_value({"a": {}}, "a.b", 5) == 5 and config_value(None, "a", 5) == 5
    assert config_value({"a": {"b": False}}, "a.b", True) is False  # falsy values are values
    assert config_value({"a": {"b": 0}}, "a.b", 7) == 0


def test_registry_lets_another_estimator_get_the_same_checks(monkeypatch):
    monkeypatch.setattr(preflight, "_SCORING_ESTIMATORS", dict(preflight._SCORING_ESTIMATORS))
    seen = []
    preflight.register_scoring_estimator("shaped", validate=seen.append)
    assert preflight.requires_scoring_pass("shaped") and not preflight.requires_scoring_pass("grpo")
    cfg = config(**{"algorithm.adv_estimator": "shaped", "algorithm.rollout_correction.bypass_mode": True})
    (found,) = preflight.problems(cfg, "verl.trainer.main_ppo", environ={}, engine_key=NVIDIA)
    assert "algorithm.adv_estimator=shaped" in found and seen and seen[0] is cfg.algorithm


@pytest.mark.parametrize("entry, use_v1, kind", [
    ("verl.trainer.main_ppo", True, "v1"),
    ("verl.trainer.main_ppo", False, "legacy"),
    ("verl.experimental.fully_async_policy.fully_async_main", True, "fully_async"),
    ("verl.experimental.one_step_off_policy.main_ppo", True, "one_step_off"),
    ("my_launcher", True, None),
])
def test_trainer_kind_and_filter_groups_warning(entry, use_v1, kind):
    cfg = config(**{"trainer.use_v1": use_v1})
    assert preflight.trainer_kind(cfg, entry) == kind
    warned = any("filter_groups.enable=true is IGNORED" in w for w in preflight.warnings_for(cfg, entry))
    assert warned == (kind in ("legacy", "fully_async", "one_step_off"))
    cfg.algorithm.filter_groups.enable = False
    assert preflight.warnings_for(cfg, entry) == []


@pytest.mark.parametrize("keep, save_freq, warned", [(1, 10, True), (2, 10, False), (1, -1, False), (None, 10, False)])
def test_one_checkpoint_kept_is_warned_of(keep, save_freq, warned):
    """verl's retention deletes the old checkpoint before the new one is whole: a kill then leaves none."""
    cfg = config(**{"trainer.max_actor_ckpt_to_keep": keep, "trainer.save_freq": save_freq,
                    "algorithm.filter_groups.enable": False})
    found = [w for w in preflight.warnings_for(cfg, "verl.trainer.main_ppo") if "max_actor_ckpt_to_keep=1" in w]
    assert bool(found) == warned
    if warned:
        assert "no checkpoint left to resume from" in found[0] and "max_actor_ckpt_to_keep=2" in found[0]


def test_wrapped_auto_set_device_reads_the_calling_main():
    from verl.utils import device

    assert getattr(device.auto_set_device, "_vgpo_wrapped", False)
    entries = []

    def fake_main():
        entries.append(preflight._caller_entry(sys._getframe(0)))

    fake_main()
    assert entries == [__name__]


# ------------------------------------------------------------------ verl's real entry points


def start(module, *overrides, cwd=REPO, **env):
    """Run an entry point in a child process; (returncode, stdout + stderr)."""
    child_env = {**os.environ, "PYTHONPATH": str(REPO), "HYDRA_FULL_ERROR": "0", **env}
    proc = subprocess.run([sys.executable, "-m", module, *overrides], capture_output=True, text=True,
                          timeout=300, cwd=cwd, env=child_env)
    return proc.returncode, proc.stdout + proc.stderr


RECIPE = ["--config-path", str(REPO / "recipes"), "--config-name"]


def test_main_ppo_refuses_every_problem_at_once_before_ray():
    rc, out = start(
        "verl.trainer.main_ppo", *RECIPE, "vgpo_qwen2_5_vl_3b", "actor_rollout_ref.model.path=/nonexistent",
        "algorithm.rollout_correction.bypass_mode=true", "actor_rollout_ref.actor.strategy=megatron",
        "algorithm.vgpo.beta=-1", VERL_ENGINE_VENDOR="amd",
    )
    assert rc != 0
    assert "vgpo-verl refuses this run before starting Ray (algorithm.adv_estimator=vgpo)" in out, out[-3000:]
    for line in ("algorithm.vgpo.beta=-1: must lie in", "actor_rollout_ref.actor.strategy=megatron:",
                 "engine key ('cuda', 'amd')", "set algorithm.rollout_correction.bypass_mode=false"):
        assert line in out, line
    assert "ray init kwargs" not in out and "Started a local Ray instance" not in out


@pytest.mark.parametrize("module, kind", [
    ("verl.experimental.fully_async_policy.fully_async_main", "fully_async"),
    ("verl.experimental.one_step_off_policy.main_ppo", "one_step_off"),
])
def test_experimental_trainers_are_refused_with_their_reasons(module, kind):
    rc, out = start(module, "algorithm.adv_estimator=vgpo", "actor_rollout_ref.model.path=/nonexistent", cwd=SITE)
    assert rc != 0
    assert f"{module}: algorithm.adv_estimator=vgpo is not run end to end by vgpo-verl" in out, out[-3000:]
    assert (f"algorithm.rollout_correction.bypass_mode=true (the experimental {kind} trainer's config sets it "
            "to true by default)") in out, out[-3000:]
    assert "ray init kwargs" not in out


def test_torchtitan_is_refused_because_verl_trains_no_vlm_on_it():
    """verl 0.9.1's TorchTitan engine maps text model types only and says it passes no images; when a
    VLM family appears in its table, this test fails and the refusal must be revisited."""
    import ast

    from vgpo_verl.plugin.families import FAMILIES

    titan = SITE / "verl" / "workers" / "engine" / "torchtitan"  # read, not imported: it needs torchtitan
    table = next(node.value for node in ast.walk(ast.parse((titan / "utils.py").read_text()))
                 if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "_HF_MODEL_TYPE_TO_TORCHTITAN_NAME")
    assert "qwen3" in ast.literal_eval(table) and not set(ast.literal_eval(table)) & set(FAMILIES)
    assert "multimodal is not yet supported for Torchtitan engine" in (titan / "transformer_impl.py").read_text()
    note = preflight.ENGINE_NOTES["torchtitan"]  # names the files read here
    assert "verl/workers/engine/torchtitan/utils.py" in note and "its transformer_impl.py" in note
    found = preflight.problems(config(**{"actor_rollout_ref.actor.strategy": "torchtitan"}), "verl.trainer.main_ppo",
                               environ={}, engine_key=NVIDIA)
    assert len(found) == 1 and "(TorchTitan: verl 0.9.1 trains no VLM on it" in found[0], found


def test_the_reason_the_experimental_trainers_are_refused_still_holds():
    """Their configs ask for the nccl checkpoint engine, which cannot load without a GPU: only verl's
    colocated 'naive' engine registers here. When that changes, this test fails and they can be run."""
    import yaml
    from verl.checkpoint_engine import CheckpointEngineRegistry

    for config in ("fully_async_policy/config/fully_async_ppo_trainer.yaml",
                   "one_step_off_policy/config/one_step_off_ppo_trainer.yaml"):
        text = yaml.safe_load((SITE / "verl" / "experimental" / config).read_text())
        assert text["actor_rollout_ref"]["rollout"]["checkpoint_engine"]["backend"] == "nccl"
    assert set(CheckpointEngineRegistry._registry) == {"naive"}
    with pytest.raises(ImportError, match="cupy"):
        import verl.checkpoint_engine.nccl_checkpoint_engine  # noqa: F401
    assert "NCCLCheckpointEngine imports cupy" in preflight.EXPERIMENTAL_NOT_RUN  # the refusal names this cause


def test_main_ppo_other_estimator_passes_our_check_and_legacy_filter_groups_warns_once():
    # The same unsupported settings with DAPO's grpo: our check lets it through, so verl's own
    # validate_config (next in main) is what stops it, on a deliberately invalid sampling setting.
    rc, out = start(
        "verl.trainer.main_ppo", *RECIPE, "dapo_qwen2_5_vl_3b", "actor_rollout_ref.model.path=/nonexistent",
        "algorithm.rollout_correction.bypass_mode=true", "actor_rollout_ref.actor.strategy=megatron",
        "trainer.use_v1=false", "actor_rollout_ref.rollout.temperature=0",
        "actor_rollout_ref.rollout.val_kwargs.do_sample=true", VERL_ENGINE_VENDOR="amd",
    )
    assert rc != 0
    assert "validation gen temperature should be greater than 0" in out, out[-3000:]
    assert "vgpo-verl refuses" not in out
    assert out.count("algorithm.filter_groups.enable=true is IGNORED with trainer.use_v1=false") == 1
    assert "ray init kwargs" not in out


@pytest.mark.parametrize("estimator, key, value, expected", [
    ("vppo", "algorithm.vppo.top_share", 1.4, "algorithm.vppo.top_share=1.4: must be a number in [0, 1]"),
    ("vppo", "algorithm.vppo.top_p", 0.4, "algorithm.vppo: unknown key(s) ['top_p']"),
    ("entropy_shaping", "algorithm.entropy_shaping.kappa", 0.5, "algorithm.entropy_shaping.kappa=0.5"),
    ("vppo", "algorithm.vppo.image_mean", 0.5, "algorithm.vppo.image_mean=0.5: must be null or a list of 3 finite numbers"),
    ("vppo", "algorithm.vppo.image_std", [0.5, 0.5],
     "algorithm.vppo.image_std=[0.5, 0.5]: must be null or a list of 3 finite numbers"),
    ("vppo", "algorithm.vppo.image_mean", [0.5, 0.5, 0.5], "algorithm.vppo.image_mean and image_std: set both"),
    ("vppo", "algorithm.rollout_correction.bypass_mode", True, "set algorithm.rollout_correction.bypass_mode=false."),
    ("entropy_shaping", "algorithm.rollout_correction.bypass_mode", True, "bypass_mode=false"),
])
def test_comparison_methods_are_checked_at_start_up(estimator, key, value, expected):
    assert preflight.requires_scoring_pass(estimator)
    assert preflight.problems(config(**{"algorithm.adv_estimator": estimator}), "verl.trainer.main_ppo",
                              environ={}, engine_key=NVIDIA) == []
    found = preflight.problems(config(**{"algorithm.adv_estimator": estimator, key: value}), "verl.trainer.main_ppo",
                               environ={}, engine_key=NVIDIA)
    assert expected in found[0], found  # (an image_mean alone is also "set both or neither": a second line)


@pytest.mark.parametrize("override", ["[nan,0.5,0.5]", "[0.5,inf,0.5]", "[0.5,0.5,-inf]"])
def test_a_non_finite_normalisation_from_the_command_line_is_refused(override):
    """Hydra's own parser reads `nan` and `inf` in a list: the black rows would be NaN or infinite."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    (parsed,) = OverridesParser.create().parse_overrides([f"algorithm.vppo.image_std={override}"])
    cfg = config(**{"algorithm.adv_estimator": "vppo", "algorithm.vppo.image_mean": [0.5, 0.5, 0.5],
                    "algorithm.vppo.image_std": parsed.value()})
    (found,) = preflight.problems(cfg, "verl.trainer.main_ppo", environ={}, engine_key=NVIDIA)
    assert found.startswith("algorithm.vppo.image_std=[") and "3 finite numbers" in found, found


@pytest.mark.parametrize("estimator, overrides, expected", [
    ("vgpo", {"beta": -1, "kappa": 5}, ["algorithm.vgpo.beta=-1: must lie in", "algorithm.vgpo.kappa=5: must lie in"]),
    ("vgpo", {"bogus": 1, "gamma": 2, "psi_min": 3.0, "intra": "yes"},
     ["algorithm.vgpo: unknown key(s) ['bogus']", "algorithm.vgpo.intra='yes': must be true or false",
      "algorithm.vgpo.gamma=2: must lie in", "algorithm.vgpo.psi_min=3.0 must be <= psi_max=2.0"]),
    ("vppo", {"top_share": 2, "seed": -1, "image_mean": [0.5] * 4},
     ["algorithm.vppo.top_share=2", "algorithm.vppo.seed=-1", "algorithm.vppo.image_mean=[0.5, 0.5, 0.5, 0.5]",
      "algorithm.vppo.image_mean and image_std: set both or neither"]),
    ("entropy_shaping", {"alpha": -1, "kappa": 0.5, "extra": 0},
     ["algorithm.entropy_shaping: unknown key(s) ['extra']", "algorithm.entropy_shaping.alpha=-1",
      "algorithm.entropy_shaping.kappa=0.5"]),
])
def test_every_bad_knob_of_a_block_is_listed_at_once(estimator, overrides, expected):
    """docs/troubleshooting.md: all problems are listed at once, an unknown key hiding none of the rest."""
    cfg = config(**{"algorithm.adv_estimator": estimator, f"algorithm.{estimator}": overrides})
    found = preflight.problems(cfg, "verl.trainer.main_ppo", environ={}, engine_key=NVIDIA)
    assert len(found) == len(expected), found
    for line in expected:
        assert sum(problem.startswith(line) for problem in found) == 1, (line, found)


@pytest.mark.parametrize("estimator", ["vgpo", "grpo"])
@pytest.mark.parametrize("where", ["driver", "runtime_env"])
def test_a_stop_file_with_async_save_is_refused_for_every_estimator(estimator, where):
    """The stop returns after a save verl records nowhere (async): the next start would begin at step 0."""
    cfg = config(**{"algorithm.adv_estimator": estimator, "actor_rollout_ref.actor.checkpoint.async_save": True,
                    "actor_rollout_ref.model.external_lib": "vgpo_verl"})
    stop = {"VGPO_STOP_FILE": "/runs/a/stop_requested"}
    environ = stop if where == "driver" else {}
    if where == "runtime_env":  # how examples/slurm/run_vgpo.slurm hands it to the trainer
        OmegaConf.update(cfg, "ray_kwargs.ray_init.runtime_env.env_vars", stop, force_add=True)
    (found,) = preflight.problems(cfg, "verl.trainer.main_ppo", environ=environ, engine_key=NVIDIA)
    assert found.startswith("actor_rollout_ref.actor.checkpoint.async_save=true with "
                            "VGPO_STOP_FILE=/runs/a/stop_requested: ") and "restart from step 0" in found
    OmegaConf.update(cfg, "actor_rollout_ref.actor.checkpoint.async_save", False)
    assert preflight.problems(cfg, "verl.trainer.main_ppo", environ=environ, engine_key=NVIDIA) == []
    async_only = config(**{"algorithm.adv_estimator": estimator, "actor_rollout_ref.actor.checkpoint.async_save": True,
                           "actor_rollout_ref.model.external_lib": "vgpo_verl"})  # async without a stop file
    assert preflight.problems(async_only, "verl.trainer.main_ppo", environ={}, engine_key=NVIDIA) == []


def test_the_cpu_demo_passes_the_checks():
    """The demo's real overrides and CPU-platform environment (vgpo_verl.demo.run, vgpo_verl.cpu)."""
    from hydra import compose, initialize_config_module

    from vgpo_verl.cpu import environment
    from vgpo_verl.demo.run import overrides

    path = pathlib.Path("/nonexistent")
    with initialize_config_module("verl.trainer.config", version_base=None):
        cfg = compose("ppo_trainer", overrides=overrides(path, path, path, "vgpo"))
    env = environment(hidden_modules=[])
    assert preflight.problems(cfg, "verl.trainer.main_ppo", environ=env,
                              engine_key=preflight.resolved_engine_key(env)) == []
    assert preflight.warnings_for(cfg, "verl.trainer.main_ppo") == []
