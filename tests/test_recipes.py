"""recipes/: every recipe composes on the installed verl's trainer config and passes verl's own checks.

Compose = Hydra's compose API on recipes/ (verl's ppo_trainer found through the recipes' searchpath),
exactly what `python -m verl.trainer.main_ppo --config-path recipes --config-name <recipe>` does.
"""

import copy
import functools
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from verl.trainer.config import AlgoConfig, FilterGroupsConfig
from verl.experimental.reward_loop.reward_manager import get_reward_manager_cls
from verl.trainer.ppo.reward import get_custom_reward_fn, resolve_reward_manager_cls
from verl.trainer.ppo.utils import need_critic, need_reference_policy
from verl.utils.config import omega_conf_to_dataclass, validate_config
from verl.workers.config import FSDPActorConfig, RolloutConfig, VeOmniActorConfig
from vgpo_verl.methods.vgpo import VGPOConfig
from vgpo_verl.methods.entropy_shaping import EntropyShapingConfig
from vgpo_verl.methods.vppo import VPPOConfig

REPO = Path(__file__).resolve().parents[1]
RECIPES = REPO / "recipes"
MODELS = ["qwen2_5_vl_7b", "qwen2_5_vl_3b", "qwen2_5_vl_32b", "qwen3_vl_8b", "qwen3_vl_30b_a3b", "qwen3_5_27b",
          "qwen3_vl_30b_a3b_veomni"]
# The paper's comparison methods, paired with the 7B and 3B runs (estimator file only).
COMPARISON_MODELS = ["qwen2_5_vl_7b", "qwen2_5_vl_3b"]
METHOD_CONFIGS = {"entropy_shaping": EntropyShapingConfig, "vppo": VPPOConfig}
ALL_RECIPES = [f"{estimator}_{model}" for model in MODELS for estimator in ("dapo", "vgpo")] + [
    f"{method}_{model}" for model in COMPARISON_MODELS for method in METHOD_CONFIGS
]


@functools.lru_cache(maxsize=None)
def _compose(name, overrides):
    with initialize_config_dir(config_dir=str(RECIPES), version_base=None):
        return compose(config_name=name, overrides=list(overrides))


def compose_recipe(name, overrides=()):
    """A fresh copy each call (tests resolve and mutate); composing takes seconds, so it is cached."""
    return copy.deepcopy(_compose(name, tuple(overrides)))


def flatten(container, prefix=""):
    """{"a": {"b": 1}} -> {"a.b": 1}; lists stay leaves."""
    if isinstance(container, dict):
        out = {}
        for key, value in container.items():
            out.update(flatten(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: container}


def test_every_recipe_file_is_listed():
    on_disk = sorted(p.stem for p in RECIPES.glob("*.yaml"))
    assert on_disk == sorted(ALL_RECIPES)


@pytest.mark.parametrize("name", ALL_RECIPES)
def test_recipe_composes_and_passes_verls_validation(name):
    config = compose_recipe(name)
    OmegaConf.resolve(config)  # every interpolation resolves against verl's tree

    # What main_ppo runs before it starts Ray: batch divisibility, micro-batch settings, actor checks.
    validate_config(config, use_reference_policy=need_reference_policy(config), use_critic=need_critic(config))
    assert not need_reference_policy(config), "published runs have no KL term, so no reference model"
    assert not need_critic(config)

    # verl's dataclasses for the blocks we change (the model block is skipped: it downloads the tokenizer).
    actor = omega_conf_to_dataclass(config.actor_rollout_ref.actor)
    assert isinstance(actor, VeOmniActorConfig if name.endswith("_veomni") else FSDPActorConfig)
    rollout = omega_conf_to_dataclass(config.actor_rollout_ref.rollout)
    assert isinstance(rollout, RolloutConfig)
    # verl 0.9.1's RewardManagerConfig cannot be instantiated (its __post_init__ calls a missing
    # super().__post_init__), and verl itself never does: it resolves the class from the config.
    assert resolve_reward_manager_cls(config) is get_reward_manager_cls("dapo")
    # verl passes `algorithm` to estimators as a DictConfig; AlgoConfig has no `vgpo` field, so the
    # VGPO block is validated by its own dataclass and the rest by verl's.
    algorithm = OmegaConf.to_container(config.algorithm)
    vgpo_block = algorithm.pop("vgpo", None)
    method_blocks = {method: algorithm.pop(method, None) for method in METHOD_CONFIGS}
    algo = omega_conf_to_dataclass(OmegaConf.create(algorithm))
    assert isinstance(algo, AlgoConfig) and isinstance(algo.filter_groups, FilterGroupsConfig)
    method = next((m for m in METHOD_CONFIGS if name.startswith(m + "_")), None)
    if name.startswith("vgpo_"):
        assert algo.adv_estimator == "vgpo"
        assert set(vgpo_block) == {f.name for f in VGPOConfig.__dataclass_fields__.values()}
        VGPOConfig.from_mapping(vgpo_block)
    elif method is not None:
        assert algo.adv_estimator == method and vgpo_block is None
        block = method_blocks.pop(method)
        assert set(block) == set(METHOD_CONFIGS[method].__dataclass_fields__)  # every knob written out
        METHOD_CONFIGS[method].from_mapping(block)
    else:
        assert algo.adv_estimator == "grpo" and vgpo_block is None
    assert not any(method_blocks.values()), "another method's knobs in this recipe"

    # The reward verl will load is ours and grades a boxed answer.
    reward_fn = get_custom_reward_fn(config)
    assert reward_fn(data_source="t", solution_str=r"\boxed{\frac12}", ground_truth="0.5", extra_info={}) == 1.0


@pytest.mark.parametrize("model", MODELS)
def test_pair_differs_only_in_the_estimator(model):
    dapo = flatten(OmegaConf.to_container(compose_recipe(f"dapo_{model}"), resolve=False))
    vgpo = flatten(OmegaConf.to_container(compose_recipe(f"vgpo_{model}"), resolve=False))
    differing = {key for key in dapo.keys() | vgpo.keys() if dapo.get(key, "<absent>") != vgpo.get(key, "<absent>")}
    estimator_keys = {"algorithm.adv_estimator", "trainer.method_tag"} | {
        k for k in differing if k.startswith("algorithm.vgpo.")}
    assert differing == estimator_keys, f"{model}: the pair also differs in {sorted(differing - estimator_keys)}"
    assert (dapo["algorithm.adv_estimator"], vgpo["algorithm.adv_estimator"]) == ("grpo", "vgpo")
    # Experiment names still tell the runs apart once resolved.
    names = {compose_recipe(f"{e}_{model}").trainer.experiment_name for e in ("dapo", "vgpo")}
    assert len(names) == 2


@pytest.mark.parametrize("model", COMPARISON_MODELS)
@pytest.mark.parametrize("method", list(METHOD_CONFIGS))
def test_comparison_recipe_differs_from_dapo_only_in_the_estimator(model, method):
    dapo = flatten(OmegaConf.to_container(compose_recipe(f"dapo_{model}"), resolve=False))
    other = flatten(OmegaConf.to_container(compose_recipe(f"{method}_{model}"), resolve=False))
    differing = {key for key in dapo.keys() | other.keys() if dapo.get(key, "<absent>") != other.get(key, "<absent>")}
    estimator_keys = {"algorithm.adv_estimator", "trainer.method_tag"} | {
        k for k in differing if k.startswith(f"algorithm.{method}.")}
    assert differing == estimator_keys, f"{model}: also differs in {sorted(differing - estimator_keys)}"
    assert other["algorithm.adv_estimator"] == method
    assert compose_recipe(f"dapo_{model}", [f"estimator={method}"]) == compose_recipe(f"{method}_{model}")
    names = {compose_recipe(f"{e}_{model}").trainer.experiment_name for e in ("dapo", "vgpo", method)}
    assert len(names) == 3


def test_comparison_methods_published_settings():
    """VPPO: the authors' 7B script (top 40% tokens, factors from 0.9, p = 0.5); entropy: alpha 0.4, kappa 2."""
    vppo = compose_recipe("vppo_qwen2_5_vl_7b").algorithm.vppo
    assert (vppo.top_share, vppo.beta_min, vppo.black_prob) == (0.4, 0.9, 0.5)
    assert vppo.token_filter and vppo.trajectory_shaping and vppo.scaling_scope == "batch"
    shaping = compose_recipe("entropy_shaping_qwen2_5_vl_7b").algorithm.entropy_shaping
    assert (shaping.alpha, shaping.kappa) == (0.4, 2.0)
    assert VPPOConfig.from_mapping(vppo) == VPPOConfig() and EntropyShapingConfig.from_mapping(shaping) == EntropyShapingConfig()


@pytest.mark.parametrize("name", ALL_RECIPES)
def test_rollout_loads_real_weights(name):
    # verl's default dummy start leaves vLLM's config-derived vision buffers (Qwen2.5-VL's image
    # normalisation) as noise that the weight sync never fixes: rollouts would see blank images.
    assert compose_recipe(name).actor_rollout_ref.rollout.load_format == "auto"


def test_published_7b_numbers():
    """Spec, 'Hyper-parameters of the published 7B run', read back from the composed VGPO recipe."""
    c = compose_recipe("vgpo_qwen2_5_vl_7b")
    actor, rollout, algo = c.actor_rollout_ref.actor, c.actor_rollout_ref.rollout, c.algorithm
    assert c.actor_rollout_ref.model.path == "Qwen/Qwen2.5-VL-7B-Instruct"
    assert (c.trainer.nnodes, c.trainer.n_gpus_per_node) == (1, 8)
    assert "virl39k/train" in c.data.train_files and "mmk12/test" in c.data.val_files
    # VGPO knobs: beta 0.3, gamma 0.5, kappa 0.2, all four switches on.
    assert (algo.vgpo.beta, algo.vgpo.gamma, algo.vgpo.kappa) == (0.3, 0.5, 0.2)
    assert algo.vgpo.compensation and algo.vgpo.gate and algo.vgpo.intra and algo.vgpo.inter
    assert (algo.vgpo.psi_min, algo.vgpo.psi_max, algo.vgpo.alpha_min, algo.vgpo.alpha_max) == (0.1, 2.0, 0.9, 2.0)
    # n = 8, 512 prompts per rollout batch, update batch 128.
    assert rollout.n == 8 and c.data.train_batch_size == 512 and actor.ppo_mini_batch_size == 128
    # lr 1e-6 constant, AdamW, weight decay 0.01, grad clip 1.0, 2 epochs.
    assert actor.optim.lr == pytest.approx(1e-6) and actor.optim.lr_scheduler_type == "constant"
    assert actor.optim.lr_warmup_steps_ratio == 0.0 and actor.optim.lr_warmup_steps <= 0
    assert actor.optim.optimizer == "AdamW" and actor.optim.weight_decay == 0.01 and actor.optim.clip_grad == 1.0
    assert c.trainer.total_epochs == 2
    # max prompt 4096, max response 2048 tokens (the rollout inherits them).
    assert (c.data.max_prompt_length, c.data.max_response_length) == (4096, 2048)
    assert (rollout.prompt_length, rollout.response_length) == (4096, 2048)
    # temperature 1.0, top_p 0.99.
    assert rollout.temperature == 1.0 and rollout.top_p == 0.99
    # No KL term, no entropy bonus.
    assert not actor.use_kl_loss and not algo.use_kl_in_reward and actor.entropy_coeff == 0
    # clip 0.2 / 0.28, dual-clip 3, token-mean loss.
    assert (actor.clip_ratio_low, actor.clip_ratio_high, actor.clip_ratio_c) == (0.2, 0.28, 3.0)
    assert actor.loss_agg_mode == "token-mean"
    # Dynamic sampling on accuracy; no overlong penalty.
    assert algo.filter_groups.enable and algo.filter_groups.metric == "acc"
    assert c.reward.reward_manager.name == "dapo" and not c.reward.reward_kwargs.overlong_buffer_cfg.enable
    # Reward = accuracy of the boxed answer (ours), validation greedy.
    assert c.reward.custom_reward_function.path == "pkg://vgpo_verl.reward"
    assert rollout.val_kwargs.temperature == 0 and not rollout.val_kwargs.do_sample


def test_model_variants():
    small, big, qwen3 = (compose_recipe(f"vgpo_{m}") for m in ("qwen2_5_vl_3b", "qwen2_5_vl_32b", "qwen3_vl_8b"))
    published = compose_recipe("vgpo_qwen2_5_vl_7b")
    assert "3B" in small.actor_rollout_ref.model.path and small.trainer.nnodes == 1
    assert small.data.train_batch_size < published.data.train_batch_size
    assert "32B" in big.actor_rollout_ref.model.path
    assert big.trainer.nnodes >= 4 and big.trainer.n_gpus_per_node == 8
    assert big.actor_rollout_ref.rollout.tensor_model_parallel_size > 1
    assert big.actor_rollout_ref.actor.fsdp_config.param_offload
    assert big.actor_rollout_ref.actor.fsdp_config.optimizer_offload
    assert "Qwen3-VL-8B" in qwen3.actor_rollout_ref.model.path and qwen3.data.image_patch_size == 16
    # The VGPO knobs of every variant are the published ones.
    for c in (small, big, qwen3):
        assert c.algorithm.vgpo == published.algorithm.vgpo


# verl's own example scripts for these two models (verl-project/verl, release/v0.9.0): the batch and
# parallel settings the recipes take over; the algorithm's settings stay the published ones.
VERL_EXAMPLE_SETTINGS = {
    "qwen3_vl_30b_a3b": {  # examples/grpo_trainer/run_qwen3_vl_30b_a3b_fsdp.sh
        "data.train_batch_size": 512, "actor_rollout_ref.actor.ppo_mini_batch_size": 128,
        "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu": 10,
        "actor_rollout_ref.actor.fsdp_config.fsdp_size": 8,
        "actor_rollout_ref.actor.fsdp_config.ulysses_sequence_parallel_size": 2,
        "actor_rollout_ref.rollout.tensor_model_parallel_size": 4,
        "actor_rollout_ref.rollout.gpu_memory_utilization": 0.6,
        "actor_rollout_ref.rollout.max_num_batched_tokens": 20000,
        "actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu": 2,
        "actor_rollout_ref.model.path": "Qwen/Qwen3-VL-30B-A3B-Instruct", "data.image_patch_size": 16,
    },
    "qwen3_5_27b": {  # examples/grpo_trainer/run_qwen3_5_27b_fsdp.sh
        "data.train_batch_size": 64, "actor_rollout_ref.actor.ppo_mini_batch_size": 16,
        "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu": 1,
        "actor_rollout_ref.actor.fsdp_config.fsdp_size": 8,
        "actor_rollout_ref.actor.fsdp_config.param_offload": True,
        "actor_rollout_ref.actor.fsdp_config.optimizer_offload": True,
        "actor_rollout_ref.rollout.tensor_model_parallel_size": 4,
        "actor_rollout_ref.rollout.gpu_memory_utilization": 0.6,
        "actor_rollout_ref.rollout.max_num_batched_tokens": 8192,
        "actor_rollout_ref.model.path": "Qwen/Qwen3.5-27B", "data.image_patch_size": 16,
    },
    "qwen3_vl_30b_a3b_veomni": {  # examples/grpo_trainer/run_qwen3_vl_30b_moe_veomni.sh: engine and rollout
        "model_engine": "veomni", "actor_rollout_ref.actor.strategy": "veomni",
        "actor_rollout_ref.actor.veomni.param_offload": True, "actor_rollout_ref.actor.veomni.optimizer_offload": True,
        "actor_rollout_ref.actor.veomni.enable_full_shard": True,
        "actor_rollout_ref.actor.veomni.ulysses_parallel_size": 1,
        "actor_rollout_ref.actor.veomni.expert_parallel_size": 1,
        "actor_rollout_ref.actor.veomni.attn_implementation": "flash_attention_2",
        "actor_rollout_ref.actor.veomni.moe_implementation": "fused",
        "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu": 1, "actor_rollout_ref.actor.use_dynamic_bsz": True,
        "actor_rollout_ref.actor.use_torch_compile": False,
        "actor_rollout_ref.rollout.tensor_model_parallel_size": 2,
        "actor_rollout_ref.rollout.gpu_memory_utilization": 0.8, "actor_rollout_ref.rollout.enforce_eager": True,
        "actor_rollout_ref.rollout.enable_chunked_prefill": False,
        "actor_rollout_ref.rollout.enable_prefix_caching": False,
        "actor_rollout_ref.rollout.engine_kwargs.vllm.disable_mm_preprocessor_cache": True,
        # the batch of the FSDP recipe for this model (the example's 16 prompts and 10 steps are a smoke test)
        "data.train_batch_size": 512, "actor_rollout_ref.actor.ppo_mini_batch_size": 128,
        "actor_rollout_ref.model.path": "Qwen/Qwen3-VL-30B-A3B-Instruct", "data.image_patch_size": 16,
    },
}


def test_the_veomni_recipe_is_the_fsdp_one_on_verls_veomni_engine():
    """The VeOmni pair differs from the FSDP pair of the same model only where an engine setting or the
    VeOmni example's rollout differs: data, algorithm, reward and the actor's loss are the same."""
    veomni, fsdp = compose_recipe("vgpo_qwen3_vl_30b_a3b_veomni"), compose_recipe("vgpo_qwen3_vl_30b_a3b")
    assert veomni.data == fsdp.data and veomni.algorithm == fsdp.algorithm and veomni.reward == fsdp.reward
    for key in ("ppo_mini_batch_size", "clip_ratio_low", "clip_ratio_high", "clip_ratio_c", "loss_agg_mode",
                "use_kl_loss", "entropy_coeff", "optim.lr"):
        assert OmegaConf.select(veomni.actor_rollout_ref.actor, key) == OmegaConf.select(fsdp.actor_rollout_ref.actor, key)
    assert "fsdp_config" not in veomni.actor_rollout_ref.actor and veomni.actor_rollout_ref.ref.strategy == "veomni"
    assert veomni.trainer.experiment_name.startswith("qwen3_vl_30b_a3b_veomni_vgpo_")


@pytest.mark.parametrize("model", sorted(VERL_EXAMPLE_SETTINGS))
def test_new_family_recipes_take_verls_example_settings_and_the_published_algorithm(model):
    config = compose_recipe(f"vgpo_{model}")
    for key, value in VERL_EXAMPLE_SETTINGS[model].items():
        assert OmegaConf.select(config, key) == value, key
    published = compose_recipe("vgpo_qwen2_5_vl_7b")
    assert config.algorithm == published.algorithm
    actor, base = config.actor_rollout_ref.actor, published.actor_rollout_ref.actor
    assert (actor.optim.lr, actor.clip_ratio_high, actor.use_kl_loss) == (base.optim.lr, base.clip_ratio_high, False)
    assert config.actor_rollout_ref.rollout.n == 8  # the published group size (verl's examples use 5)


def test_command_line_overrides_win():
    c = compose_recipe(
        "vgpo_qwen2_5_vl_32b",
        ["algorithm.vgpo.beta=0.5", "algorithm.vgpo.gate=false", "trainer.nnodes=6", "data.train_batch_size=256"],
    )
    assert c.algorithm.vgpo.beta == 0.5 and c.algorithm.vgpo.gate is False
    assert c.trainer.nnodes == 6 and c.data.train_batch_size == 256
    with pytest.raises(Exception, match="not_a_knob"):
        compose_recipe("vgpo_qwen2_5_vl_7b", ["algorithm.vgpo.not_a_knob=1"])  # struct: typos fail


def test_cluster_md_plus_rule_on_verls_config_and_on_a_recipe():
    """docs/cluster.md: `+algorithm.vgpo.beta` on verl's own config, `algorithm.vgpo.beta` on a recipe; each
    the other way round fails as the doc says."""
    from hydra import initialize_config_module

    with initialize_config_module(config_module="verl.trainer.config", version_base=None):
        plain = compose(config_name="ppo_trainer", overrides=["+algorithm.vgpo.beta=0.3"])
        assert plain.algorithm.vgpo.beta == 0.3
        with pytest.raises(Exception, match="vgpo"):
            compose(config_name="ppo_trainer", overrides=["algorithm.vgpo.beta=0.3"])
    assert compose_recipe("vgpo_qwen2_5_vl_7b", ["algorithm.vgpo.beta=0.3"]).algorithm.vgpo.beta == 0.3
    with pytest.raises(Exception, match="Could not append to config. An item is already at 'algorithm.vgpo.beta'"):
        compose_recipe("vgpo_qwen2_5_vl_7b", ["+algorithm.vgpo.beta=0.3"])
    cluster = (REPO / "docs" / "cluster.md").read_text()
    assert "+algorithm.vgpo.beta=0.3" in cluster and "An item is already at 'algorithm.vgpo.beta'" in cluster


def test_reproduce_md_ablation_overrides_apply_to_a_recipe_as_written():
    import re

    text = (REPO / "docs" / "reproduce.md").read_text().split("## Ablations and switches", 1)[1].split("\n## ", 1)[0]
    overrides = re.findall(r"`(algorithm\.vgpo\.\w+=\w+)`", text)
    assert len(overrides) == 4
    composed = compose_recipe("vgpo_qwen2_5_vl_7b", overrides).algorithm.vgpo
    assert not any(composed[key] for key in ("intra", "inter", "compensation", "gate"))


def test_estimator_is_a_command_line_choice():
    """`estimator=vgpo` on a DAPO recipe gives exactly the VGPO recipe (and back)."""
    switched = compose_recipe("dapo_qwen2_5_vl_3b", ["estimator=vgpo"])
    assert switched == compose_recipe("vgpo_qwen2_5_vl_3b")
    assert compose_recipe("vgpo_qwen2_5_vl_3b", ["estimator=dapo"]) == compose_recipe("dapo_qwen2_5_vl_3b")


def test_main_ppo_entry_point_composes_the_recipe():
    """The real launcher: `python -m verl.trainer.main_ppo --config-path ... --cfg job` prints the config."""
    result = subprocess.run(
        [
            sys.executable, "-m", "verl.trainer.main_ppo",
            "--config-path", str(RECIPES), "--config-name", "vgpo_qwen2_5_vl_7b",
            "--cfg", "job", "--resolve",
            "algorithm.vgpo.kappa=0.4", "trainer.total_epochs=3",
        ],
        capture_output=True, text=True, timeout=600, cwd=REPO, env={**os.environ, "RAY_DISABLE_DOCKER_CPU_WARNING": "1"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    printed = OmegaConf.create(result.stdout[result.stdout.index("actor_rollout_ref:"):])
    assert printed.algorithm.adv_estimator == "vgpo" and printed.algorithm.vgpo.kappa == 0.4
    assert printed.trainer.total_epochs == 3 and printed.trainer.experiment_name == "qwen2_5_vl_7b_vgpo_beta0.3_gamma0.5_kappa0.4"


class _TextTokenizer:
    """Stands in for the model tokenizer: every response decodes to one fixed text."""

    def __init__(self, text):
        self.text = text

    def decode(self, ids, skip_special_tokens=True):
        return self.text


def _score_one_response(config, text, response_tokens):
    import numpy as np
    import torch

    from verl import DataProto
    from verl.trainer.ppo.reward import load_reward_manager

    manager = load_reward_manager(config, _TextTokenizer(text))
    prompt_tokens = 4
    data = DataProto.from_dict(
        tensors={
            "prompts": torch.ones(1, prompt_tokens, dtype=torch.long),
            "responses": torch.ones(1, response_tokens, dtype=torch.long),
            "attention_mask": torch.ones(1, prompt_tokens + response_tokens, dtype=torch.long),
        },
        non_tensors={
            "data_source": np.array(["geo3k"], dtype=object),
            "reward_model": np.array([{"style": "rule", "ground_truth": "30"}], dtype=object),
            "extra_info": np.array([{}], dtype=object),
        },
    )
    return manager.loop.run_until_complete(manager.run_single(data))


def test_reward_manager_gives_accuracy_and_no_overlong_penalty():
    """verl's reward manager built from the recipe: `acc` (the dynamic-sampling metric) and no length penalty."""
    config = compose_recipe("vgpo_qwen2_5_vl_7b")
    full_length = config.data.max_response_length
    right = _score_one_response(config, r"<think>...</think> \boxed{30^\circ}", full_length)
    assert right["reward_score"] == 1.0 and right["reward_extra_info"]["acc"] == 1.0
    wrong = _score_one_response(config, r"\boxed{31}", 10)
    assert wrong["reward_score"] == 0.0 and wrong["reward_extra_info"]["acc"] == 0.0
    # The overlong penalty is available: switched on, a full-length right answer loses reward.
    penalised = compose_recipe("vgpo_qwen2_5_vl_7b", ["reward.reward_kwargs.overlong_buffer_cfg.enable=true"])
    scored = _score_one_response(penalised, r"\boxed{30}", full_length)
    assert scored["reward_score"] < 1.0 and scored["reward_extra_info"]["acc"] == 1.0


@pytest.mark.parametrize("recipe", ALL_RECIPES)
def test_recipe_logs_to_wandb_named_by_model_method_and_knobs(recipe):
    """As verl's examples: console + W&B, project vgpo; the run's name is the model, the method and its key
    knobs (resolved, so a knob set on the command line names a run of its own)."""
    cfg = compose_recipe(recipe)
    assert list(cfg.trainer.logger) == ["console", "wandb"] and cfg.trainer.project_name == "vgpo"
    model = next(m for m in MODELS if recipe.endswith("_" + m))
    method = recipe[: -len(model) - 1]
    algo = cfg.algorithm
    tag = {
        "dapo": "grpo",
        "vgpo": f"vgpo_beta{algo.get('vgpo', {}).get('beta')}_gamma{algo.get('vgpo', {}).get('gamma')}"
                f"_kappa{algo.get('vgpo', {}).get('kappa')}",
        "vppo": f"vppo_top{algo.get('vppo', {}).get('top_share')}_betamin{algo.get('vppo', {}).get('beta_min')}",
        "entropy_shaping": f"entropy_shaping_alpha{algo.get('entropy_shaping', {}).get('alpha')}"
                           f"_kappa{algo.get('entropy_shaping', {}).get('kappa')}",
    }[method]
    assert cfg.trainer.experiment_name == f"{model}_{tag}"
    if method == "vgpo":
        assert algo.vgpo.focus_chart_every == VGPOConfig.focus_chart_every  # the recipe states the default
        changed = compose_recipe(recipe, ["algorithm.vgpo.kappa=0.35"]).trainer.experiment_name
        assert changed == f"{model}_{tag}".replace(f"kappa{algo.vgpo.kappa}", "kappa0.35")
