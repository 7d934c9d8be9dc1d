"""Per-sample rollout seeds (vgpo_verl.plugin.rollout_seeds): which seed each sample gets, and the verl hook."""

import asyncio
import types

import pytest

from vgpo_verl.plugin.rollout_seeds import sample_seed


def test_each_response_slot_gets_its_own_reproducible_seed():
    slots = [(seed, validate, step, index, n) for seed in (0, 1) for validate in (False, True)
             for step in (0, 1, 7) for index in (0, 3, "a3") for n in range(8)]
    seeds = [sample_seed(*slot) for slot in slots]
    assert len(set(seeds)) == len(slots)  # no two slots share a seed
    assert seeds == [sample_seed(*slot) for slot in slots]  # and each is the same every time
    assert all(0 <= s < 2**63 for s in seeds)  # fits torch.Generator.manual_seed


def _worker(custom, seed=5):
    return types.SimpleNamespace(rollout_config=types.SimpleNamespace(custom=custom, seed=seed))


def test_the_hook_adds_the_seed_only_when_asked(monkeypatch):
    from verl.experimental.agent_loop.agent_loop import AgentLoopWorker

    from vgpo_verl.plugin import rollout_seeds

    received = []

    async def original(self, sampling_params, trajectory, *, agent_name, **kwargs):
        received.append(sampling_params)
        return agent_name

    monkeypatch.setattr(AgentLoopWorker, "_run_agent_loop", original)
    rollout_seeds.install()
    trajectory = {"step": 3, "sample_index": 11, "rollout_n": 2, "validate": False}
    params = {"temperature": 1.0}
    run = AgentLoopWorker._run_agent_loop
    on = _worker({"seed_per_sample": True})
    # the legacy agent loop: one call per response, its slot in the trajectory's rollout_n
    assert asyncio.run(run(on, params, trajectory, agent_name="single")) == "single"
    asyncio.run(run(_worker(None), params, trajectory, agent_name="single"))
    asyncio.run(run(_worker({"seed_per_sample": False}), params, trajectory, agent_name="single"))
    assert received == [{"temperature": 1.0, "seed": sample_seed(5, False, 3, 11, 2)}, params, params]
    # the v1 agent loop (AgentLoopWorkerTQ._run_prompt): the prompt's n calls share one trajectory
    # info (rollout_n 0) and pass trajectory by keyword; the slot is their session_id
    received.clear()
    v1 = {**trajectory, "rollout_n": 0}
    for session in range(3):
        asyncio.run(run(on, params, trajectory=v1, agent_name="single", session_id=session))
    assert [r["seed"] for r in received] == [sample_seed(5, False, 3, 11, s) for s in range(3)]
    assert params == {"temperature": 1.0}  # the caller's dict, shared by the prompt's samples, is untouched

    rollout_seeds.install()  # a second install does not wrap twice
    assert AgentLoopWorker._run_agent_loop is run
    with pytest.raises(ValueError, match=r"rollout.custom.seed_per_sample='yes': must be true or false"):
        asyncio.run(run(_worker({"seed_per_sample": "yes"}), params, trajectory, agent_name="single"))


@pytest.mark.parametrize("workers", [1, 3, 8])
def test_a_prompts_samples_get_distinct_seeds_however_verl_cuts_the_batch(monkeypatch, workers):
    """The legacy agent loop as verl runs it: AgentLoopManager cuts the batch with DataProto.chunk, one chunk
    per worker, and each worker numbers rollout_n afresh (get_trajectory_info). 6 prompts x n=4 over 8
    workers once gave a prompt 2-3 distinct seeds among its 4 samples; the slot is now counted over the batch."""
    import numpy as np
    from verl import DataProto
    from verl.experimental.agent_loop.agent_loop import AgentLoopManager, AgentLoopWorker, get_trajectory_info

    from vgpo_verl.plugin import rollout_seeds

    received = []

    async def run_agent_loop(self, sampling_params, trajectory, *, agent_name, **kwargs):
        assert rollout_seeds.SLOT_KEY not in kwargs  # no agent loop is handed our column
        received.append((trajectory["sample_index"], sampling_params["seed"]))

    def generate_sequences(self, prompts):  # verl's dispatch, without Ray
        for chunk in prompts.chunk(workers):
            index = chunk.non_tensor_batch["index"].tolist()
            for i, trajectory in enumerate(asyncio.run(get_trajectory_info(3, index, False))):
                kwargs = {key: value[i] for key, value in chunk.non_tensor_batch.items()}
                asyncio.run(AgentLoopWorker._run_agent_loop(self, {"temperature": 1.0}, trajectory, **kwargs))

    monkeypatch.setattr(AgentLoopWorker, "_run_agent_loop", run_agent_loop)
    monkeypatch.setattr(AgentLoopManager, "generate_sequences", generate_sequences)
    rollout_seeds.install()
    index = np.repeat(np.arange(100, 106), 4).astype(object)  # 6 prompts x n=4, as the trainer repeats them
    batch = DataProto.from_dict(non_tensors={"index": index, "agent_name": np.array(["single"] * 24, dtype=object)})
    AgentLoopManager.generate_sequences(_worker({"seed_per_sample": True}), batch)
    seeds = {}
    for prompt, seed in received:
        seeds.setdefault(prompt, []).append(seed)
    assert sorted(seeds) == list(range(100, 106))
    for prompt, drawn in seeds.items():  # each prompt: its 4 slots' seeds, whatever the cut
        assert drawn == [sample_seed(5, False, 3, prompt, slot) for slot in range(4)]


def test_slots_count_each_prompts_samples_in_batch_order_whatever_the_order_of_prompts():
    """A batch whose prompts interleave (verl's balance_batch reorders rows): slot k is the k-th sample of
    its prompt in batch order, so the same batch gives the same slots every time."""
    from vgpo_verl.plugin.rollout_seeds import slots_within_prompts

    import random

    index = [random.Random(k).choice("abcdefg") for k in range(300)]  # past the sizes numpy sorts by insertion
    expected, seen = [], {}
    for prompt in index:
        expected.append(seen.get(prompt, 0))
        seen[prompt] = expected[-1] + 1
    assert slots_within_prompts(index).tolist() == expected
    assert slots_within_prompts([7, 7, 3, 7, 3]).tolist() == [0, 1, 0, 2, 1]
