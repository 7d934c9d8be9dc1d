"""vgpo_verl.plugin.trainer_wiring: verl's own trainer methods (wrapped) carry the scores to the estimator.

The v1 trainer's methods run unmodified against an in-memory stand-in for the TransferQueue
(same kv_batch_get / kv_batch_put contract: absent fields are skipped) and a stand-in actor worker
group that answers like the scoring engine (tested for real in test_engine.py): verl's own
full-sequence outputs (slot j holding the value of token j + 1), the engine's response-aligned
outputs (entry t for response token t) and one has-visual flag per sample, vgpo keys only when the
flag is set.
"""

import itertools
import statistics
import types

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from tensordict import NonTensorData, NonTensorStack, TensorDict

import vgpo_verl.plugin  # noqa: F401  (installs the wiring when verl's trainer modules are imported)
from vgpo_verl.methods.perturb import AUG_LOG_PROBS_KEY, PERTURB_FLAG, SEED_KEY
from vgpo_verl.methods.scoring import HAS_VISUAL_KEY, LAYER_KEY, SCORE_FLAG, SCORE_KEY

PROMPT_LENS = [5, 7, 4, 6]
RESPONSE_LENS = [6, 3, 8, 5]
UIDS = ["a", "a", "b", "b"]
HAS_VISUAL = [True, True, False, True]
REWARDS = [1.0, 0.0, 1.0, 0.0]


def aug_log_prob(sample: int, position: int) -> float:
    """The engine's log-prob of the token at `position` with the image perturbed, in this fake world."""
    return -0.1 * position - 0.05 * (position % 3) * (sample + 1)


def token_score(sample: int, position: int) -> float:
    """The engine's cos(h, mu) at `position` of `sample`, in this fake world."""
    return round(0.01 * position + 0.1 * sample, 6) if HAS_VISUAL[sample] else 0.0


class FakeTransferQueue:
    """kv_batch_get / kv_batch_put over a dict: {key: {field: per-sample value}}."""

    def __init__(self):
        self.store, self.tags = {}, {}

    def kv_batch_put(self, keys, partition_id, fields=None, tags=None):
        """Like TransferQueue: the returned meta carries the keys' stored tags and every stored field."""
        from transfer_queue import KVBatchMeta

        if fields is not None:
            for name in fields.keys():
                value = fields[name]
                items = list(value.unbind()) if isinstance(value, torch.Tensor) else list(value)
                for key, item in zip(keys, items):
                    self.store.setdefault(key, {})[name] = item
        for key, tag in zip(keys, tags or []):
            self.tags.setdefault(key, {}).update(tag)
        stored = sorted({name for key in keys for name in self.store.get(key, {})})
        return KVBatchMeta(keys=list(keys), tags=[dict(self.tags.get(k, {})) for k in keys],
                           partition_id=partition_id, fields=stored)

    def kv_batch_get(self, keys, partition_id, select_fields=None):
        names = select_fields or list(self.store[keys[0]])
        out = {}
        for name in names:
            if not all(name in self.store[k] for k in keys):
                continue  # TransferQueue skips fields that are absent
            items = [self.store[k][name] for k in keys]
            if isinstance(items[0], str):
                out[name] = NonTensorStack(*[NonTensorData(i) for i in items])
            elif items[0].dim() == 0:  # one number per sample (num_turns): dense (B,), as nesting needs a dim
                out[name] = torch.stack(items)
            else:
                out[name] = torch.nested.as_nested_tensor(items, layout=torch.jagged)
        return TensorDict(out, batch_size=len(keys))


def response_values(sample: int, fn) -> torch.Tensor:
    """(R,) float32: fn(sample, position) at each response token's own position prompt_len + t (the
    engine's layout for its outputs, vgpo_verl/plugin/engine.py)."""
    p, r = PROMPT_LENS[sample], RESPONSE_LENS[sample]
    return torch.tensor([fn(sample, p + t) for t in range(r)], dtype=torch.float32)


# seconds the engine reports per rank (vgpo_verl.plugin.engine: VGPOFSDPEngineWithLMHead.infer_batch), as verl gathers them over 2 DP ranks
SCORE_SECONDS, AUG_FORWARD_SECONDS = [0.25, 0.75], [1.0, 2.0]


def engine_metrics(scored: bool, perturbed: bool) -> dict:
    metrics = {"mfu": 0.0, "loss": 1.0}
    if scored:
        metrics["timing_s/vgpo_score"] = SCORE_SECONDS
    if perturbed:
        metrics["timing_s/vppo_aug_forward"] = AUG_FORWARD_SECONDS
    return metrics


STEP_SECONDS = 10.0  # verl's timing_raw["step"] in the tests that log a step's metrics


@pytest.fixture
def driver_clock(monkeypatch):
    """An empty tally of our seconds, and a clock under which every block the driver times
    (vgpo_verl.plugin.timing.on_driver) lasts exactly 1 s, so the logged seconds count the timed blocks."""
    from vgpo_verl.plugin import timing

    timing.pop_step_seconds()
    monkeypatch.setattr(timing, "time", types.SimpleNamespace(perf_counter=itertools.count(0.0).__next__))
    yield
    timing.pop_step_seconds()


class FakeActorWorkerGroup:
    """compute_log_prob like verl's worker + the VGPO engine: writes verl's full-sequence outputs and the
    engine's response-aligned / per-sample ones to the store."""

    def __init__(self, tq):
        self.tq, self.calls, self.fetched = tq, [], []

    def compute_log_prob(self, batch):
        self.calls.append(dict(batch.extra_info))
        self.fetched.append(batch.fields)  # what a real worker would fetch from the TransferQueue
        with_entropy = batch.extra_info.get("calculate_entropy", False)  # verl's engine: entropy only then
        fields = {"log_probs": [], "entropy": []} if with_entropy else {"log_probs": []}
        scored = batch.extra_info.get(SCORE_FLAG, False)
        perturbed = batch.extra_info.get(PERTURB_FLAG, False)
        if scored:
            fields[SCORE_KEY], fields[HAS_VISUAL_KEY] = [], []
        if perturbed:
            fields[AUG_LOG_PROBS_KEY] = []
        for key in batch.keys:
            sample = int(key.rsplit("_", 2)[1])  # keys {uid}_{session}_{output}: one output per session
            length = PROMPT_LENS[sample] + RESPONSE_LENS[sample]
            fields["log_probs"].append(-0.1 * torch.arange(1, length + 1, dtype=torch.float32))
            if with_entropy:
                fields["entropy"].append(0.05 * torch.arange(length, dtype=torch.float32) + 0.1 * sample)
            if perturbed:
                fields[AUG_LOG_PROBS_KEY].append(response_values(sample, aug_log_prob))
            if scored:
                fields[SCORE_KEY].append(response_values(sample, token_score))
                fields[HAS_VISUAL_KEY].append(torch.tensor([HAS_VISUAL[sample]]))
        nested = {k: torch.nested.as_nested_tensor(v, layout=torch.jagged) for k, v in fields.items()}
        output = self.tq.kv_batch_put(batch.keys, batch.partition_id, TensorDict(nested, batch_size=len(batch.keys)))
        # verl's workers' metrics ride back in extra_info: one dict per collecting rank, each gathered over DP
        output.extra_info = {"metrics": [engine_metrics(scored, perturbed)] * 2}
        return output


class OnePool:
    """verl's ResourcePoolManager as the metrics read it (throughput per GPU)."""

    def get_n_gpus(self) -> int:
        return 1


def make_config(estimator: str):
    return OmegaConf.create({
        "algorithm": {"adv_estimator": estimator, "gamma": 1.0, "lam": 1.0, "use_kl_in_reward": False,
                      "norm_adv_by_std_in_grpo": True, "rollout_correction": None},
        "actor_rollout_ref": {
            "model": {},
            "rollout": {"temperature": 1.0, "n": 2, "calculate_log_probs": False},
            "actor": {"loss_agg_mode": "token-mean", "loss_scale_factor": None},
        },
    })


@pytest.fixture
def v1(monkeypatch):
    """A v1 PPOTrainer (verl's class, wrapped methods) over the fake store, with 4 samples stored."""
    import verl.trainer.ppo.v1.trainer_base as trainer_base
    from verl.trainer.ppo.v1.trainer_sync import PPOTrainerSync

    tq = FakeTransferQueue()
    monkeypatch.setattr(trainer_base.tq, "kv_batch_get", tq.kv_batch_get)
    monkeypatch.setattr(trainer_base.tq, "kv_batch_put", tq.kv_batch_put)
    keys = [f"{uid}_{i}_0" for i, uid in enumerate(UIDS)]
    fields = {
        "input_ids": [torch.arange(p + r) for p, r in zip(PROMPT_LENS, RESPONSE_LENS)],
        "prompts": [torch.arange(p) for p in PROMPT_LENS],
        "responses": [torch.arange(p, p + r) for p, r in zip(PROMPT_LENS, RESPONSE_LENS)],
        "response_mask": [torch.ones(r, dtype=torch.long) for r in RESPONSE_LENS],
        "rm_scores": [torch.nn.functional.pad(torch.tensor([x]), (r - 1, 0)) for x, r in zip(REWARDS, RESPONSE_LENS)],
    }
    td = TensorDict({k: torch.nested.as_nested_tensor(v, layout=torch.jagged) for k, v in fields.items()},
                    batch_size=4)
    td["uid"] = NonTensorStack(*[NonTensorData(u) for u in UIDS])
    td["num_turns"] = torch.ones(4, dtype=torch.long)
    batch = tq.kv_batch_put(keys, "train", td, tags=[{"min_global_steps": 1, "max_global_steps": 1}] * 4)

    def trainer(estimator):
        t = object.__new__(PPOTrainerSync)
        t.config = make_config(estimator)
        t.actor_rollout_wg = t.ref_policy_wg = FakeActorWorkerGroup(tq)
        t.ref_in_actor = True
        # what verl's _compute_metrics reads besides the store: no critic, no MoE metrics, one GPU
        t.use_critic, t._rollout_moe_lb_metrics_accumulator = False, None
        t.resource_pool_manager = OnePool()
        return t

    return trainer, batch, tq


def run_steps(trainer, batch):
    """Old log-prob, reference, advantage: the order of verl's _step_once."""
    metrics = {}
    batch = trainer._compute_old_log_prob(batch, metrics)
    batch = trainer._compute_ref_log_prob(batch, metrics)
    batch = trainer._compute_advantage(batch, metrics)
    return batch, metrics


def test_v1_estimator_receives_own_position_scores_and_metrics_reach_the_trainer(v1, monkeypatch):
    import vgpo_verl.plugin.estimator as estimator

    make_trainer, batch, tq = v1
    trainer = make_trainer("vgpo")
    received = {}
    real_weights = estimator.compute_vgpo_weights_detailed

    def spy(similarity, response_mask, index, config, has_visual, **kwargs):
        received.update(similarity=similarity.clone(), has_visual=has_visual.clone(), mask=response_mask.clone())
        return real_weights(similarity, response_mask, index, config, has_visual, **kwargs)

    monkeypatch.setattr(estimator, "compute_vgpo_weights_detailed", spy)
    to_update_actor, metrics = run_steps(trainer, batch)

    # the flag reached the old-log-prob pass only, never the reference pass
    old_call, ref_call = trainer.actor_rollout_wg.calls
    assert old_call[SCORE_FLAG] is True and old_call[LAYER_KEY] == -1
    assert SCORE_FLAG not in ref_call and LAYER_KEY not in ref_call
    assert SCORE_FLAG not in batch.extra_info

    # response token t of sample i is scored at its own position prompt_len + t
    width = max(RESPONSE_LENS)
    assert received["similarity"].shape == received["mask"].shape == (4, width)
    for i, (p, r) in enumerate(zip(PROMPT_LENS, RESPONSE_LENS)):
        expected = torch.tensor([token_score(i, p + t) for t in range(r)])
        torch.testing.assert_close(received["similarity"][i, :r], expected)
        assert received["similarity"][i, r:].eq(0).all()  # padded like verl's own response fields
    assert received["has_visual"].tolist() == HAS_VISUAL
    assert any(k.startswith("vgpo/") for k in metrics), metrics

    # the scores are stored once and fetched by no worker after the scoring pass
    assert SCORE_KEY in tq.store[batch.keys[0]]
    ref_fields = trainer.actor_rollout_wg.fetched[1]
    assert "old_log_probs" in ref_fields and SCORE_KEY not in ref_fields and HAS_VISUAL_KEY not in ref_fields
    assert "advantages" in to_update_actor.fields
    assert SCORE_KEY not in to_update_actor.fields and HAS_VISUAL_KEY not in to_update_actor.fields

    # advantages written back are the estimator's on exactly these scores
    adv = torch.nested.to_padded_tensor(tq.kv_batch_get(batch.keys, "train", ["advantages"])["advantages"], 0.0)
    mask = received["mask"]
    rewards = torch.zeros(4, width)
    rewards[torch.arange(4), torch.tensor(RESPONSE_LENS) - 1] = torch.tensor(REWARDS)
    expected_adv, _ = estimator.compute_vgpo_advantage(
        rewards, mask, np.array(UIDS, dtype=object), config=make_config("vgpo").algorithm,
        visual_similarity=received["similarity"], has_visual=received["has_visual"],
    )
    torch.testing.assert_close(adv, expected_adv)


@pytest.mark.parametrize("trigger_step", [0, 2])
def test_v1_separate_async_scores_pi_old_in_the_trainers_actor(v1, trigger_step):
    """trainer.v1.trainer_mode=separate_async (GPU only in verl 0.9.1: it needs an nccl/nixl/mooncake checkpoint
    engine): its decoupled old-log-prob pass swaps pi_old's weights into the trainer's actor worker group and
    calls PPOTrainer._compute_old_log_prob, the method we wrap, so the scores come from the actor's forward on
    pi_old (not from the rollout pool) and reach the estimator."""
    from verl.trainer.ppo.v1.trainer_separate_async import PPOTrainerSeparateAsync

    make_trainer, batch, _ = v1
    trainer = object.__new__(PPOTrainerSeparateAsync)
    trainer.__dict__.update(make_trainer("vgpo").__dict__)
    trainer.local_trigger_step = trigger_step
    events, workers = [], trainer.actor_rollout_wg
    workers.save_model_to_cpu = lambda n: events.append(("save", n))
    workers.restore_model_from_cpu = lambda n: events.append(("restore", n))
    workers.clear_cpu_model = lambda n: events.append(("clear", n))
    compute = workers.compute_log_prob
    workers.compute_log_prob = lambda b: events.append(("forward", b.extra_info.get(SCORE_FLAG))) or compute(b)
    _, metrics = run_steps(trainer, batch)
    scored = [("forward", True)]  # the old-log-prob pass, flagged; the reference pass follows unflagged
    expected = ([("save", 0)] + scored if trigger_step == 0 else
                [("save", 2), ("restore", 0)] + scored + [("restore", 2), ("clear", 2)])
    assert events[:len(expected)] == expected
    assert metrics["vgpo/no_visual_fraction"] == pytest.approx(1 - sum(HAS_VISUAL) / len(HAS_VISUAL))


@pytest.mark.parametrize("layer", [0, 1, -2])
def test_v1_vgpo_layer_knob_reaches_the_scoring_pass(v1, layer):
    """algorithm.vgpo.layer travels to the engine's flag (test_engine checks the engine scores that layer)."""
    make_trainer, batch, _ = v1
    trainer = make_trainer("vgpo")
    trainer.config.algorithm.vgpo = {"layer": layer}
    trainer._compute_old_log_prob(batch, {})
    assert trainer.actor_rollout_wg.calls[-1][LAYER_KEY] == layer


def test_v1_grpo_is_untouched(v1, monkeypatch):
    import vgpo_verl.plugin.trainer_wiring as wiring
    from verl.trainer.ppo.v1.trainer_base import PPOTrainer

    monkeypatch.setattr(wiring, "fetch_v1_inputs", lambda method, batch: pytest.fail("inputs fetched for grpo"))
    make_trainer, batch, tq = v1
    trainer = make_trainer("grpo")
    assert getattr(PPOTrainer._compute_advantage, "_vgpo_wrapped", False)
    _, metrics = run_steps(trainer, batch)
    assert all(SCORE_FLAG not in call for call in trainer.actor_rollout_wg.calls)
    assert all(SCORE_KEY not in fields for fields in tq.store.values())
    assert not any(k.startswith("vgpo/") for k in metrics)
    wrapped_adv = tq.kv_batch_get(batch.keys, "train", ["advantages"])["advantages"]

    # verl's unwrapped methods on the same inputs give the same advantages
    for fields in tq.store.values():
        for name in ("advantages", "returns", "old_log_probs", "entropy", "ref_log_prob", "log_probs"):
            fields.pop(name, None)
    metrics = {}
    batch = PPOTrainer._compute_old_log_prob.__wrapped__(trainer, batch, metrics)
    batch = PPOTrainer._compute_ref_log_prob(trainer, batch, metrics)
    batch = PPOTrainer._compute_advantage.__wrapped__(trainer, batch, metrics)
    plain_adv = tq.kv_batch_get(batch.keys, "train", ["advantages"])["advantages"]
    for a, b in zip(wrapped_adv.unbind(), plain_adv.unbind()):
        torch.testing.assert_close(a, b, atol=0, rtol=0)


def test_v1_missing_scores_raise_a_clear_error(v1):
    make_trainer, batch, _ = v1
    trainer = make_trainer("vgpo")
    with pytest.raises(RuntimeError, match="vgpo_visual_score.*not in the batch"):
        trainer._compute_advantage(batch, {})  # the old-log-prob pass never ran


# ------------------------------------------------------------------ legacy trainer (use_v1=false)


class FakeLegacyWorkerGroup:
    """compute_log_prob on the worker's TensorDict (no-padding layout), answering like the engine."""

    def __init__(self):
        self.calls = []

    def compute_log_prob(self, batch_td):
        from verl.utils import tensordict_utils as tu

        flag = tu.get_non_tensor_data(batch_td, SCORE_FLAG, default=False)
        perturbed = tu.get_non_tensor_data(batch_td, PERTURB_FLAG, default=False)
        self.calls.append(flag or (PERTURB_FLAG if perturbed else False))
        lengths = batch_td["input_ids"].offsets().diff().tolist()
        outputs = {
            "log_probs": [-0.1 * torch.arange(1, n + 1, dtype=torch.float32) for n in lengths],
            "entropy": [0.05 * torch.arange(n, dtype=torch.float32) + 0.1 * i for i, n in enumerate(lengths)],
        }
        if perturbed:
            outputs[AUG_LOG_PROBS_KEY] = [response_values(i, aug_log_prob) for i in range(len(lengths))]
        if flag:
            outputs[SCORE_KEY] = [response_values(i, token_score) for i in range(len(lengths))]
            outputs[HAS_VISUAL_KEY] = [torch.tensor([HAS_VISUAL[i]]) for i in range(len(lengths))]
        nested = {k: torch.nested.as_nested_tensor(v, layout=torch.jagged) for k, v in outputs.items()}
        return tu.get_tensordict(nested, non_tensor_dict={"metrics": engine_metrics(bool(flag), bool(perturbed))})


def legacy_batch():
    """Legacy DataProto: prompts left-padded, responses right-padded."""
    from verl import DataProto

    max_p, max_r = max(PROMPT_LENS), max(RESPONSE_LENS)
    prompts = torch.zeros(4, max_p, dtype=torch.long)
    responses = torch.zeros(4, max_r, dtype=torch.long)
    attention = torch.zeros(4, max_p + max_r, dtype=torch.long)
    for i, (p, r) in enumerate(zip(PROMPT_LENS, RESPONSE_LENS)):
        prompts[i, max_p - p :] = torch.arange(1, p + 1)
        responses[i, :r] = torch.arange(1, r + 1)
        attention[i, max_p - p : max_p + r] = 1
    input_ids = torch.cat([prompts, responses], dim=1)
    position_ids = (attention.cumsum(-1) - 1).clamp(min=0)
    rewards = torch.zeros(4, max_r)
    rewards[torch.arange(4), torch.tensor(RESPONSE_LENS) - 1] = torch.tensor(REWARDS)
    return DataProto.from_dict(
        tensors={"prompts": prompts, "responses": responses, "input_ids": input_ids, "attention_mask": attention,
                 "position_ids": position_ids, "response_mask": attention[:, max_p:],
                 "token_level_scores": rewards, "token_level_rewards": rewards},
        non_tensors={"uid": np.array(UIDS, dtype=object)},
    )


def test_legacy_trainer_carries_scores_to_the_estimator_and_metrics(monkeypatch):
    import vgpo_verl.plugin.estimator as estimator
    from verl.trainer.ppo import ray_trainer

    trainer = object.__new__(ray_trainer.RayPPOTrainer)
    trainer.config = make_config("vgpo")
    trainer.actor_rollout_wg = FakeLegacyWorkerGroup()
    received = {}
    real_weights = estimator.compute_vgpo_weights_detailed

    def spy(similarity, response_mask, index, config, has_visual, **kwargs):
        received.update(similarity=similarity.clone(), has_visual=has_visual.clone())
        return real_weights(similarity, response_mask, index, config, has_visual, **kwargs)

    monkeypatch.setattr(estimator, "compute_vgpo_weights_detailed", spy)
    batch = legacy_batch()
    old_log_prob, _ = trainer._compute_old_log_prob(batch)
    assert trainer.actor_rollout_wg.calls == [True] and SCORE_FLAG not in batch.meta_info
    batch = batch.union(old_log_prob)
    batch = ray_trainer.compute_advantage(batch, adv_estimator="vgpo", num_repeat=2, config=trainer.config.algorithm)

    for i, (p, r) in enumerate(zip(PROMPT_LENS, RESPONSE_LENS)):
        expected = torch.tensor([token_score(i, p + t) for t in range(r)])
        torch.testing.assert_close(received["similarity"][i, :r], expected)
    assert received["has_visual"].tolist() == HAS_VISUAL
    assert SCORE_KEY not in batch.batch.keys()
    metrics = ray_trainer.compute_data_metrics(batch=batch, use_critic=False)
    assert any(k.startswith("vgpo/") for k in metrics), metrics
    assert not any(k.startswith("vgpo/") for k in ray_trainer.compute_data_metrics(batch=batch, use_critic=False))


def test_legacy_grpo_is_untouched():
    from verl.trainer.ppo import ray_trainer

    trainer = object.__new__(ray_trainer.RayPPOTrainer)
    trainer.config = make_config("grpo")
    trainer.actor_rollout_wg = FakeLegacyWorkerGroup()
    batch = legacy_batch()
    old_log_prob, _ = trainer._compute_old_log_prob(batch)
    assert trainer.actor_rollout_wg.calls == [False]
    assert sorted(old_log_prob.batch.keys()) == ["entropys", "old_log_probs"]
    wrapped = ray_trainer.compute_advantage(batch, adv_estimator="grpo", config=trainer.config.algorithm)
    plain = ray_trainer.compute_advantage.__wrapped__(legacy_batch(), adv_estimator="grpo",
                                                      config=trainer.config.algorithm)
    torch.testing.assert_close(wrapped.batch["advantages"], plain.batch["advantages"], atol=0, rtol=0)


def test_v1_padding_rows_enter_no_vgpo_metric(v1):
    make_trainer, batch, tq = v1
    _, metrics = run_steps(make_trainer("vgpo"), batch)
    assert metrics["vgpo/no_visual_fraction"] == pytest.approx(0.25)  # sample 2 has no image

    # the same rows, with sample 2 tagged as verl's balance-batch padding (padding_utils.py)
    padded = tq.kv_batch_put(batch.keys, batch.partition_id, tags=[{"is_padding": i == 2} for i in range(4)])
    _, metrics = run_steps(make_trainer("vgpo"), padded)
    assert metrics["vgpo/no_visual_fraction"] == 0.0


def test_experimental_trainers_metric_path_logs_vgpo_metrics(driver_clock):
    """verl's SeparateRayPPOTrainer (base of the fully_async and one_step_off trainers): its own
    _fit_compute_log_prob, _fit_compute_advantage and _fit_collect_metrics, which call
    compute_data_metrics and compute_timing_metrics as imported from metric_utils."""
    from verl.experimental.separation import ray_trainer as separation
    from verl.trainer.ppo import metric_utils

    assert getattr(separation.compute_data_metrics, "_vgpo_wrapped", False)
    assert separation.compute_data_metrics is metric_utils.compute_data_metrics
    trainer = object.__new__(separation.SeparateRayPPOTrainer)
    trainer.config = make_config("vgpo")
    trainer.config.actor_rollout_ref.rollout.multi_turn = {"enable": False}
    trainer.actor_rollout_wg = FakeLegacyWorkerGroup()
    trainer.use_critic, trainer.metrics, trainer.timing_raw = False, {}, {"step": STEP_SECONDS}
    trainer.use_reference_policy = False
    trainer.resource_pool_manager = OnePool()
    batch = legacy_batch()
    trainer.reward_tensor, trainer.reward_extra_infos_dict = batch.batch["token_level_rewards"], {}
    batch.meta_info["global_token_num"] = [10] * 4
    batch = trainer._fit_compute_log_prob(batch)
    assert trainer.actor_rollout_wg.calls == [True]
    batch = trainer._fit_compute_advantage(batch)
    trainer._fit_collect_metrics(batch)
    assert trainer.metrics["vgpo/no_visual_fraction"] == pytest.approx(0.25), trainer.metrics
    assert "vgpo/alpha_mean" in trainer.metrics
    # our cost: the scoring pass's seconds averaged over ranks, the estimator's block (1 s, driver_clock)
    ours = {k: trainer.metrics.get(k) for k in ("timing_s/vgpo_score", "timing_s/vgpo_weights", "perf/our_share_of_step")}
    assert ours == pytest.approx({"timing_s/vgpo_score": statistics.mean(SCORE_SECONDS), "timing_s/vgpo_weights": 1.0,
                                  "perf/our_share_of_step": (statistics.mean(SCORE_SECONDS) + 1.0) / STEP_SECONDS})


# ------------------------------------------------------------------ entropy shaping and VPPO through the same glue


def _padded_rewards():
    width = max(RESPONSE_LENS)
    rewards = torch.zeros(4, width)
    rewards[torch.arange(4), torch.tensor(RESPONSE_LENS) - 1] = torch.tensor(REWARDS)
    mask = (torch.arange(width)[None] < torch.tensor(RESPONSE_LENS)[:, None]).float()
    return rewards, mask


def _expected_response_values(fn):
    """(4, T) padded: fn(sample, position) at each response token's own position prompt_len + t."""
    width = max(RESPONSE_LENS)
    out = torch.zeros(4, width)
    for i, (p, r) in enumerate(zip(PROMPT_LENS, RESPONSE_LENS)):
        out[i, :r] = torch.tensor([fn(i, p + t) for t in range(r)])
    return out


def test_v1_entropy_shaping_reuses_verls_entropy_without_a_flag(v1):
    from vgpo_verl.plugin.estimator import compute_entropy_shaped_advantage

    make_trainer, batch, tq = v1
    trainer = make_trainer("entropy_shaping")
    _, metrics = run_steps(trainer, batch)
    assert all(SCORE_FLAG not in c and PERTURB_FLAG not in c for c in trainer.actor_rollout_wg.calls)
    assert any(k.startswith("entropy/") for k in metrics) and not any(k.startswith("vgpo/") for k in metrics)
    # verl's entropy of response token t: the value at full-sequence slot prompt_len + t - 1
    entropy = _expected_response_values(lambda i, pos: 0.05 * (pos - 1) + 0.1 * i)
    rewards, mask = _padded_rewards()
    expected, _ = compute_entropy_shaped_advantage(rewards, mask, np.array(UIDS, dtype=object),
                                                   config=make_config("entropy_shaping").algorithm, entropy=entropy)
    adv = torch.nested.to_padded_tensor(tq.kv_batch_get(batch.keys, "train", ["advantages"])["advantages"], 0.0)
    torch.testing.assert_close(adv, expected)


def test_v1_vppo_flags_the_old_log_prob_pass_only_and_gets_its_aug_log_probs(v1):
    from vgpo_verl.plugin.estimator import compute_vppo_advantage

    make_trainer, batch, tq = v1
    trainer = make_trainer("vppo")
    trainer.global_steps = 3
    _, metrics = run_steps(trainer, batch)
    old_call, ref_call = trainer.actor_rollout_wg.calls
    assert old_call[PERTURB_FLAG] is True and isinstance(old_call[SEED_KEY], int) and SCORE_FLAG not in old_call
    assert PERTURB_FLAG not in ref_call and PERTURB_FLAG not in batch.extra_info
    assert any(k.startswith("vppo/") for k in metrics)
    aug = _expected_response_values(lambda i, pos: aug_log_prob(i, pos))
    old = _expected_response_values(lambda i, pos: -0.1 * pos)  # verl's old_log_probs, same slots
    rewards, mask = _padded_rewards()
    expected, _ = compute_vppo_advantage(rewards, mask, np.array(UIDS, dtype=object),
                                         config=make_config("vppo").algorithm, aug_log_probs=aug, old_log_probs=old)
    adv = torch.nested.to_padded_tensor(tq.kv_batch_get(batch.keys, "train", ["advantages"])["advantages"], 0.0)
    torch.testing.assert_close(adv, expected)
    assert (adv == 0).sum() > (mask == 0).sum()  # the token filter dropped tokens


def test_v1_vppo_seed_changes_with_the_step(v1):
    make_trainer, batch, _ = v1
    seeds = []
    for step in (1, 2):
        trainer = make_trainer("vppo")
        trainer.global_steps = step
        trainer._compute_old_log_prob(batch, {})
        seeds.append(trainer.actor_rollout_wg.calls[-1][SEED_KEY])
    assert seeds[0] != seeds[1]


@pytest.mark.parametrize("estimator, prefix, flag", [("entropy_shaping", "entropy/", False),
                                                      ("vppo", "vppo/", PERTURB_FLAG)])
def test_legacy_trainer_carries_entropy_and_aug_log_probs(estimator, prefix, flag):
    from verl.trainer.ppo import ray_trainer

    import vgpo_verl.plugin.trainer_wiring as wiring

    trainer = object.__new__(ray_trainer.RayPPOTrainer)
    trainer.config = make_config(estimator)
    trainer.actor_rollout_wg = FakeLegacyWorkerGroup()
    batch = legacy_batch()
    old_log_prob, _ = trainer._compute_old_log_prob(batch)
    assert trainer.actor_rollout_wg.calls == [flag]
    old_log_prob.batch.pop("entropys")  # what the legacy fit loop does before the union
    batch = batch.union(old_log_prob)
    batch = ray_trainer.compute_advantage(batch, adv_estimator=estimator, num_repeat=2, config=trainer.config.algorithm)
    assert not any(k.startswith(wiring.INPUT_PREFIX) for k in batch.batch.keys())
    metrics = ray_trainer.compute_data_metrics(batch=batch, use_critic=False)
    assert any(k.startswith(prefix) for k in metrics), metrics


def test_per_sample_flags_arrive_nested_or_dense_and_responses_pad_to_the_batch_width():
    """TransferQueue may hand back a field whose samples all have shape (1,) as (B, 1) dense or nested."""
    import vgpo_verl.plugin.trainer_wiring as wiring

    rows = [torch.tensor([True]), torch.tensor([False]), torch.tensor([True])]
    assert wiring._per_sample_flags(torch.nested.as_nested_tensor(rows, layout=torch.jagged)).tolist() == [True, False, True]
    assert wiring._per_sample_flags(torch.stack(rows)).tolist() == [True, False, True]
    with pytest.raises(RuntimeError, match="one value per sample"):  # a per-token layout is refused
        wiring._per_sample_flags(torch.nested.as_nested_tensor([torch.ones(3), torch.ones(2)], layout=torch.jagged))
    scores = torch.nested.as_nested_tensor([torch.tensor([1.0, 2.0]), torch.tensor([3.0])], layout=torch.jagged)
    torch.testing.assert_close(wiring._padded_response(scores, 4), torch.tensor([[1.0, 2.0, 0, 0], [3.0, 0, 0, 0]]))


# ------------------------------------------------------------------ our cost in verl's timing metrics


def test_verls_trainers_log_timings_through_the_wrapped_function():
    """Every fit loop calls compute_timing_metrics by the name it imported from metric_utils, which the
    plugin wrapped before any trainer module bound it."""
    from verl.experimental.separation import ray_trainer as separation
    from verl.trainer.ppo import metric_utils, ray_trainer
    from verl.trainer.ppo.v1 import trainer_base

    assert getattr(metric_utils.compute_timing_metrics, "_vgpo_wrapped", False)
    for module in (trainer_base, ray_trainer, separation):
        assert module.compute_timing_metrics is metric_utils.compute_timing_metrics, module.__name__


def logged_step(trainer, batch) -> dict:
    """The metrics verl's v1 fit loop logs for one step: the step's calls (run_steps), then verl's own
    `_compute_metrics` (data, timing and throughput metrics) with timing_raw {"step": STEP_SECONDS}."""
    batch, metrics = run_steps(trainer, batch)
    trainer._compute_metrics(batch, metrics, {"step": STEP_SECONDS, "adv": 0.1}, global_steps=1, epoch=0)
    return metrics


@pytest.mark.parametrize("estimator, engine_seconds", [
    ("vgpo", {"timing_s/vgpo_score": 0.5}),  # the mean over ranks of SCORE_SECONDS
    ("vppo", {"timing_s/vppo_aug_forward": 1.5}),  # of AUG_FORWARD_SECONDS
    ("entropy_shaping", {}),  # no flagged pass: the driver's seconds only
])
def test_v1_step_logs_our_seconds_next_to_verls_timings(v1, driver_clock, estimator, engine_seconds):
    make_trainer, batch, _ = v1
    trainer = make_trainer(estimator)
    trainer.global_steps = 1
    metrics = logged_step(trainer, batch)
    assert metrics["timing_s/step"] == STEP_SECONDS and metrics["timing_s/adv"] == 0.1  # verl's own stay
    ours = {k: v for k, v in metrics.items() if k.startswith(("timing_s/vgpo", "timing_s/vppo"))}
    # the driver's two blocks, 1 s each: fetching the estimator's inputs, then the estimator's own part
    assert ours == pytest.approx({**engine_seconds, "timing_s/vgpo_weights": 2.0})
    assert metrics["perf/our_share_of_step"] == pytest.approx(sum(ours.values()) / STEP_SECONDS)
    assert any(k.startswith(estimator.split("_")[0] + "/") for k in metrics)  # the method's metrics too
    # the tally was emptied with the step's metrics: the next step starts from nothing
    metrics = {}
    trainer._compute_metrics(batch, metrics, {"step": STEP_SECONDS}, global_steps=2, epoch=0)
    assert not [k for k in metrics if k.startswith(("timing_s/vgpo", "timing_s/vppo", "perf/our_share"))]


def test_grpo_step_logs_no_timing_of_ours(v1, driver_clock):
    make_trainer, batch, _ = v1
    metrics = logged_step(make_trainer("grpo"), batch)
    assert "timing_s/step" in metrics
    assert not [k for k in metrics if "vgpo" in k or "vppo" in k or k == "perf/our_share_of_step"]


def test_legacy_step_logs_our_seconds(driver_clock):
    """The legacy fit loop's calls in order: old log-prob, advantage, ray_trainer.compute_timing_metrics."""
    from verl.trainer.ppo import ray_trainer

    for estimator, engine_key in (("vgpo", "timing_s/vgpo_score"), ("vppo", "timing_s/vppo_aug_forward")):
        trainer = object.__new__(ray_trainer.RayPPOTrainer)
        trainer.config = make_config(estimator)
        trainer.actor_rollout_wg = FakeLegacyWorkerGroup()
        trainer.global_steps = 1
        batch = legacy_batch()
        old_log_prob, _ = trainer._compute_old_log_prob(batch)
        old_log_prob.batch.pop("entropys")
        batch = ray_trainer.compute_advantage(batch.union(old_log_prob), adv_estimator=estimator, num_repeat=2,
                                              config=trainer.config.algorithm)
        metrics = ray_trainer.compute_timing_metrics(batch=batch, timing_raw={"step": STEP_SECONDS})
        engine_seconds = statistics.mean(SCORE_SECONDS if estimator == "vgpo" else AUG_FORWARD_SECONDS)
        # the estimator's own block only (no TransferQueue fetch in the legacy trainer): 1 s
        assert {k: metrics.get(k) for k in (engine_key, "timing_s/vgpo_weights")} == pytest.approx(
            {engine_key: engine_seconds, "timing_s/vgpo_weights": 1.0}), metrics
        assert metrics["perf/our_share_of_step"] == pytest.approx((engine_seconds + 1.0) / STEP_SECONDS)
