"""vgpo_verl.cpu.seeded_sampling: vLLM's rewind of a seeded request's generator, done for CPU generators.

The runner below reproduces the two vLLM 0.30.0 methods the module wraps: `_sample` draws one
exponential row per request (with the request's generator where it has one, as vLLM's CPU sampler),
`_bookkeeping_sync` rewinds the generators of discarded requests by Philox offset, which a CPU
generator refuses. The installed vLLM's own class is checked to have what the module needs.
"""

import types

import numpy as np
import pytest
import torch

from vgpo_verl.cpu import seeded_sampling


def _runner_module():
    class GPUModelRunner:
        def __init__(self, seeds):
            self.input_batch = types.SimpleNamespace(
                generators={i: torch.Generator().manual_seed(s) for i, s in enumerate(seeds) if s is not None},
                num_reqs=len(seeds))
            self.discard_request_mask = types.SimpleNamespace(np=np.zeros(8, dtype=bool))

        def _sample(self, width):
            noise = torch.empty(self.input_batch.num_reqs, width).exponential_()
            for i, generator in self.input_batch.generators.items():
                noise[i].exponential_(generator=generator)
            return noise

        def _bookkeeping_sync(self):
            for i in np.nonzero(self.discard_request_mask.np[: self.input_batch.num_reqs])[0]:
                generator = self.input_batch.generators.get(int(i))
                if generator is not None:
                    generator.set_offset(generator.get_offset() - 4)  # CUDA only
            return "done"

    return types.SimpleNamespace(GPUModelRunner=GPUModelRunner)


def test_a_discarded_draw_is_rewound_so_the_seeded_stream_does_not_depend_on_the_split():
    module = _runner_module()
    with pytest.raises(RuntimeError, match="CPU Generator does not use offset"):  # vLLM as it is
        runner = module.GPUModelRunner([7, None])
        runner._sample(5)
        runner.discard_request_mask.np[0] = True
        runner._bookkeeping_sync()

    seeded_sampling.install(module)
    seeded_sampling.install(module)  # idempotent: one wrapper
    split = module.GPUModelRunner([7, None, 9])
    split._sample(5)
    split.discard_request_mask.np[:2] = True  # requests 0 and 1 were mid-prefill: their tokens are dropped
    assert split._bookkeeping_sync() == "done"
    assert set(split.input_batch.generators) == {0, 2}  # handed back after the call
    split.discard_request_mask.np[:] = False
    after_split = split._sample(5)

    whole = module.GPUModelRunner([7, None, 9])  # the same requests, no discarded step
    first = whole._sample(5)
    assert torch.equal(after_split[0], first[0])  # request 0 draws as if the discarded step never was
    assert torch.equal(after_split[2], whole._sample(5)[2])  # request 2 (kept) moved on as usual


def test_the_installed_vllm_has_what_the_rewind_needs():
    from vllm.v1.worker import gpu_model_runner  # the cpu extra installs vLLM
    assert hasattr(gpu_model_runner.GPUModelRunner, "_sample")
    assert hasattr(gpu_model_runner.GPUModelRunner, "_bookkeeping_sync")
    with pytest.raises(RuntimeError, match=r"lacks \['_bookkeeping_sync'\]"):
        seeded_sampling.install(types.SimpleNamespace(GPUModelRunner=type("GPUModelRunner", (), {"_sample": 1})))
