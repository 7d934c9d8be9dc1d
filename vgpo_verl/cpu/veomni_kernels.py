"""VeOmni's Qwen3.5 linear-attention kernel slots on CPU: the torch kernels of
vgpo_verl.cpu.packed_kernels registered in VeOmni's kernel registry under KERNEL, for any device.

VeOmni (0.1.12) binds Qwen3.5's `causal_conv1d` and `chunk_gated_delta_rule` slots to flash-linear-
attention's GPU kernels, or leaves them "eager", where its packed (varlen) path raises: the eager
conv has no varlen form and transformers' torch delta rule ignores `cu_seqlens`. Select them with
`causal_conv1d_implementation=KERNEL` and `chunk_gated_delta_rule_implementation=KERNEL` in verl's
VeOmniEngineConfig (`actor_rollout_ref.actor.veomni.*`). CPU checks and tiny models only.
"""

from __future__ import annotations

KERNEL = "vgpo_torch"


def install() -> None:
    """Register both kernels (idempotent); call before building VeOmni's model."""
    from veomni.ops.kernel_registry import KERNEL_REGISTRY, HardwareRequirement, KernelSpec

    from vgpo_verl.cpu import packed_kernels

    for op_name, kernel in (("causal_conv1d", packed_kernels.varlen_causal_conv1d),
                            ("chunk_gated_delta_rule", packed_kernels.varlen_chunk_gated_delta_rule)):
        KERNEL_REGISTRY.register(KernelSpec(
            name=KERNEL, op_name=op_name, variant="standard", factory=lambda kernel=kernel: kernel,
            hardware=HardwareRequirement(device_type="any"), description=f"vgpo-verl's torch {op_name} (CPU)",
        ), force=True)
