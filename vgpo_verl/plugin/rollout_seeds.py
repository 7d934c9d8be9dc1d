"""Per-sample sampling seeds for verl's agent-loop rollouts, so that two runs can draw the same samples.

verl hands vLLM one engine seed (`actor_rollout_ref.rollout.seed`), but the requests of a batch then
share the engine's random generator in whatever order they arrive and are batched, so two runs with
the same seed and the same policy sample different responses. verl's `rollout.full_determinism`
gives every request the same seed instead, which makes the n responses to one prompt identical (no
GRPO group left). With

    +actor_rollout_ref.rollout.custom.seed_per_sample=true

each request carries its own vLLM seed (`SamplingParams.seed`, a generator of its own), derived from
`rollout.seed`, whether it is a validation or a training request, the trainer's global step, the
prompt's dataset index (`extra_info.index`) and the response's slot among the prompt's n (the
`session_id` the v1 trainer's agent loop gives each of them, verl/trainer/ppo/v1/agent_loop_tq.py;
in the legacy agent loop, the sample's rank among the batch's samples of its prompt): two runs with one
`rollout.seed` and one policy sample the same responses to the same prompt at the same step, whatever
the request order; another `rollout.seed` samples others. Only floating-point differences between
batch compositions can still flip a near-tied token.

The legacy slot is counted over the whole batch, before verl's AgentLoopManager cuts it into one chunk
per agent-loop worker (`DataProto.chunk`): the `rollout_n` of verl's trajectory info restarts at 0 in
each chunk, so a prompt whose samples straddle two chunks would reuse seeds (identical responses).

Hooks `AgentLoopManager.generate_sequences` (the slot column `vgpo_rollout_slot`, added like verl adds
its own per-sample `priority`) and `AgentLoopWorker._run_agent_loop` (verl/experimental/agent_loop/
agent_loop.py; the v1 trainer's AgentLoopWorkerTQ inherits it), which receives each sample's sampling
parameters, its trajectory info ({step, sample_index, rollout_n, validate}), its non-tensor columns and,
from the v1 agent loop, its `session_id`; without the knob both wrappers call the originals with
nothing changed.
"""

from __future__ import annotations

import functools
import hashlib

import numpy as np

KNOB = "seed_per_sample"  # key of actor_rollout_ref.rollout.custom
SLOT_KEY = "vgpo_rollout_slot"  # non-tensor column: the sample's rank among its prompt's samples
_WRAPPED = "_vgpo_wrapped"


def sample_seed(base_seed: int, validate: bool, step: int, sample_index, rollout_n: int) -> int:
    """A 63-bit vLLM seed for one response slot, the same for the same arguments in any process."""
    key = f"{int(base_seed)}|{'val' if validate else 'train'}|{int(step)}|{sample_index}|{int(rollout_n)}"
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "little") >> 1


def enabled(rollout_config) -> bool:
    """Whether `rollout.custom.seed_per_sample` is on; a value other than true/false is an error."""
    custom = getattr(rollout_config, "custom", None) or {}
    value = custom.get(KNOB, False)
    if not isinstance(value, bool):
        raise ValueError(f"actor_rollout_ref.rollout.custom.{KNOB}={value!r}: must be true or false")
    return value


def slots_within_prompts(index) -> np.ndarray:
    """(B,) int64: each sample's rank among the samples of the same prompt id, in batch order.

    index: (B,) the batch's `index` column (verl's extra_info.index, one id per prompt)."""
    _, codes = np.unique(np.asarray(index), return_inverse=True)
    codes = codes.reshape(-1)
    order = np.argsort(codes, kind="stable")  # each prompt's samples together, in batch order
    sorted_codes = codes[order]
    first = np.r_[0, np.flatnonzero(np.diff(sorted_codes)) + 1]  # where each prompt's run starts
    run_start = np.repeat(first, np.diff(np.r_[first, len(codes)]))
    slots = np.empty(len(codes), dtype=np.int64)
    slots[order] = np.arange(len(codes)) - run_start
    return slots


def seeded(sampling_params: dict, rollout_config, trajectory: dict, session_id: int | None,
           batch_slot: int | None = None) -> dict:
    """`sampling_params` with this sample's `seed` added (a copy: the original is shared by the
    prompt's n samples). The slot is `session_id` when the agent loop gives one (v1: the n samples
    of a prompt share one trajectory info, rollout_n 0), else the slot counted over the whole batch
    (`batch_slot`, from SLOT_KEY), else the trajectory's rollout_n (a batch that did not come through
    the manager)."""
    slot = session_id if session_id is not None else batch_slot if batch_slot is not None else trajectory["rollout_n"]
    seed = sample_seed(rollout_config.seed, trajectory["validate"], trajectory["step"], trajectory["sample_index"], slot)
    return {**sampling_params, "seed": seed}


def install() -> None:
    """Wrap AgentLoopManager.generate_sequences and AgentLoopWorker._run_agent_loop (once per process)."""
    from verl.experimental.agent_loop.agent_loop import AgentLoopManager, AgentLoopWorker

    if not getattr(AgentLoopManager.generate_sequences, _WRAPPED, False):
        AgentLoopManager.generate_sequences = _with_slots(AgentLoopManager.generate_sequences)
    original = AgentLoopWorker._run_agent_loop
    if getattr(original, _WRAPPED, False):
        return

    @functools.wraps(original)
    async def _run_agent_loop(self, sampling_params, trajectory, *args, **kwargs):
        batch_slot = kwargs.pop(SLOT_KEY, None)  # ours: no agent loop is handed it
        if enabled(self.rollout_config):
            sampling_params = seeded(sampling_params, self.rollout_config, trajectory, kwargs.get("session_id"),
                                     None if batch_slot is None else int(batch_slot))
        return await original(self, sampling_params, trajectory, *args, **kwargs)

    setattr(_run_agent_loop, _WRAPPED, True)
    AgentLoopWorker._run_agent_loop = _run_agent_loop


def _with_slots(original):
    """The manager's generate_sequences, first adding SLOT_KEY over the whole batch when the knob is on
    (what it returns, a result or an awaitable, is the original's)."""
    @functools.wraps(original)
    def generate_sequences(self, prompts, *args, **kwargs):
        if enabled(self.rollout_config):
            index = prompts.non_tensor_batch.get("index", np.arange(len(prompts)))
            prompts.non_tensor_batch[SLOT_KEY] = slots_within_prompts(index)
        return original(self, prompts, *args, **kwargs)

    setattr(generate_sequences, _WRAPPED, True)
    return generate_sequences
