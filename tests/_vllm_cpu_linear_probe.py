"""Child-process probe for tests/test_vllm_cpu_linear.py: which weight do vLLM's CPU linears compute
with, on this CPU and on the CPUs whose ISA checks it is made to claim?

Runs in an environment made by `vgpo_verl.cpu.environment()` and does not call enable(): the
start-up hook alone must install the patch, as in vLLM's EngineCore. For each ISA claim (this CPU
as is; AVX-512-BF16; AMX), dtype (bf16, fp32) and vLLM layer method (UnquantizedLinearMethod, which
calls the dispatch with remove_weight=True; UnquantizedEmbeddingMethod, the LM head's, with
remove_weight=False) it builds a layer, runs vLLM's process_weights_after_loading, then writes new
values into `layer.weight` in place, as a weight_loader does during verl's sync, and classifies
the next forward:
  "follows"      the output is F.linear with the new weight;
  "stale"        the output is still the old weight's (a packed copy is in use: the silent trap);
  "dropped"      `layer.weight` was replaced by a Parameter without weight_loader (sync would fail);
  "raised: ..."  vLLM's dispatch itself failed (claimed AMX on a build without its kernel);
  "packed: ..."  under a claimed ISA, the forward would call this packed kernel (named, not run:
                 the CPU may lack the instructions).
It does this with the patched dispatch and, as the control, with vLLM's original one.
Prints one line FACTS=<json>.
"""

import contextlib
import json
import sys
from unittest import mock

import torch

ISA_CLAIMS = {
    "native": {},
    "avx512_bf16": {"_is_avx512_bf16_supported": True},
    "amx": {"_is_avx512_bf16_supported": True, "_is_amx_tile_supported": True, "_is_amx_fp16_supported": True},
}
N, K = 64, 64  # 8 KiB in bf16: small enough for vLLM's AMX sgl-kernel route


def _loader(param, loaded):
    param.data.copy_(loaded)


# vLLM's packed-kernel calls, as named inside the cpu_linear it builds
PACKED_KERNELS = ("weight_packed_linear_cpu", "onednn_mm", "zentorch_linear_unary")


def classify(method_cls, dtype, native: bool) -> str:
    from vllm.model_executor.utils import set_weight_attrs

    gen = torch.Generator().manual_seed(0)
    start, synced = (torch.randn(N, K, generator=gen).to(dtype) for _ in range(2))
    x = torch.randn(3, K, generator=gen).to(dtype)
    layer = torch.nn.Module()
    layer.weight = torch.nn.Parameter(start.clone(), requires_grad=False)
    set_weight_attrs(layer.weight, {"weight_loader": _loader})
    method = method_cls()
    try:
        method.process_weights_after_loading(layer)
    except Exception as err:  # noqa: BLE001 - the probe reports what vLLM did, whatever it was
        return f"raised: {type(err).__name__}"
    weight = layer.weight
    if weight.numel() == 0 or not hasattr(weight, "weight_loader"):
        return "dropped"
    kernels = [n for n in getattr(getattr(layer.cpu_linear, "__code__", None), "co_names", ()) if n in PACKED_KERNELS]
    if kernels and not native:
        # a kernel chosen for an ISA this CPU may lack (AMX tiles): name it rather than run it
        return "packed: " + ",".join(kernels)
    weight.weight_loader(weight, synced)
    out = method.apply(layer, x)
    if torch.allclose(out.float(), torch.nn.functional.linear(x, synced).float(), atol=1e-2, rtol=1e-2):
        return "follows"
    if torch.allclose(out.float(), torch.nn.functional.linear(x, start).float(), atol=1e-2, rtol=1e-2):
        return "stale"
    return "other"


def main() -> None:
    from vllm.model_executor.layers import utils
    from vllm.model_executor.layers.linear import UnquantizedLinearMethod
    from vllm.model_executor.layers.vocab_parallel_embedding import UnquantizedEmbeddingMethod

    patched = utils.dispatch_cpu_unquantized_gemm
    facts = {
        "patched": getattr(patched, "_vgpo_keeps_synced_weight", False),
        "cpu": {name: bool(getattr(torch.cpu, name)()) for name in
                ("_is_avx512_supported", "_is_avx512_bf16_supported", "_is_amx_tile_supported")
                if hasattr(torch.cpu, name)},
        "results": {},
    }
    original = getattr(patched, "vllm_original", patched)
    for which, dispatch in (("patched", patched), ("vllm_original", original)):
        for claim, answers in ISA_CLAIMS.items():
            with contextlib.ExitStack() as claims:
                claims.enter_context(mock.patch.object(utils, "dispatch_cpu_unquantized_gemm", dispatch))
                for name, answer in answers.items():
                    claims.enter_context(mock.patch.object(torch.cpu, name, lambda answer=answer: answer))
                for method_cls in (UnquantizedLinearMethod, UnquantizedEmbeddingMethod):
                    for dtype in (torch.bfloat16, torch.float32):
                        key = f"{which}/{claim}/{method_cls.__name__}/{str(dtype)[6:]}"
                        facts["results"][key] = classify(method_cls, dtype, native=not answers)
    print("FACTS=" + json.dumps(facts), flush=True)


if __name__ == "__main__":
    sys.exit(main())
