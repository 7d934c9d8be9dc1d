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
the legacy agent loop's `rollout_n`): two runs with one `rollout.seed` and one policy sample the same responses to the same
prompt at the same step, whatever the request order; another `rollout.seed` samples others. Only
floating-point differences between batch compositions can still flip a near-tied token.

Hooks `AgentLoopWorker._run_agent_loop` (verl/experimental/agent_loop/agent_loop.py; the v1
trainer's AgentLoopWorkerTQ inherits it), which receives each sample's sampling parameters, its
trajectory info ({step, sample_index, rollout_n, validate}) and, from the v1 agent loop, its
`session_id`; without the knob the wrapper calls the original with nothing changed.
"""

from __future__ import annotations

import functools
import hashlib

KNOB = "seed_per_sample"  # key of actor_rollout_ref.rollout.custom
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


def seeded(sampling_params: dict, rollout_config, trajectory: dict, session_id: int | None) -> dict:
    """`sampling_params` with this sample's `seed` added (a copy: the original is shared by the
    prompt's n samples). The slot is `session_id` when the agent loop gives one (v1: the n samples
    of a prompt share one trajectory info, rollout_n 0), else the trajectory's rollout_n."""
    slot = trajectory["rollout_n"] if session_id is None else session_id
    seed = sample_seed(rollout_config.seed, trajectory["validate"], trajectory["step"], trajectory["sample_index"], slot)
    return {**sampling_params, "seed": seed}


def install() -> None:
    """Wrap AgentLoopWorker._run_agent_loop (once per process)."""
    from verl.experimental.agent_loop.agent_loop import AgentLoopWorker

    original = AgentLoopWorker._run_agent_loop
    if getattr(original, _WRAPPED, False):
        return

    @functools.wraps(original)
    async def _run_agent_loop(self, sampling_params, trajectory, *args, **kwargs):
        if enabled(self.rollout_config):
            sampling_params = seeded(sampling_params, self.rollout_config, trajectory, kwargs.get("session_id"))
        return await original(self, sampling_params, trajectory, *args, **kwargs)

    setattr(_run_agent_loop, _WRAPPED, True)
    AgentLoopWorker._run_agent_loop = _run_agent_loop
