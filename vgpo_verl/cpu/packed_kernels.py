"""flash-attn and flash-linear-attention do not exist on CPU: plain-torch kernels under verl's
remove-padding (packed) paths, so verl's own packing, segmenting and Ulysses code runs around them.

Attention. verl 0.9.1 runs packed sequences and Ulysses SP through flash-attn in two ways:
- Qwen2-VL / Qwen2.5-VL and GLM-4V: verl's own attention forward (`verl.models.transformers.qwen2_vl`
  / `glm4v`) calls `flash_attn_varlen_func` on segments cut where the position ids restart, or
  transformers' `_flash_attention_forward` for a single sequence;
- every other family (Qwen3-VL, Qwen3-VL-MoE, Qwen3.5, Qwen3.5-MoE): transformers' flash-attention
  integration, whose `_flash_attention_forward` verl replaces with its Ulysses all-to-all wrapper
  (`monkey_patch._ulysses_flash_attention_forward`), which then calls the real kernel.

`install()` swaps only the kernels (the names those modules call) for the torch ones below; verl's
code around them (segmenting, Ulysses all-to-all, input slicing) runs unchanged. The
transformers-integration families reach it through the attention implementation CPU_ATTENTION
(registered by `install()`): transformers' flash-attention forward under a name without "flash",
so transformers neither looks for flash-attn nor for a hub kernel. Give it to verl's engine as
`override_config={"attn_implementation": CPU_ATTENTION}` when remove padding is on.

Linear attention (Qwen3.5's gated delta rule). verl's packed forward (`qwen3_5_gated_delta_net_forward`)
hands `cu_seqlens` to the layer's `chunk_gated_delta_rule` whenever that function accepts keyword
arguments. Without flash-linear-attention that is transformers' `torch_chunk_gated_delta_rule`, which
accepts `**kwargs` and ignores them: the packed sequences then run as one, each sample's recurrent
state flowing into the next (a verl 0.9.1 defect on any machine without fla, seen here as 5e-5 score
errors on a tiny random model). `varlen_chunk_gated_delta_rule` runs the torch rule per sequence, as
fla's varlen kernel does. VeOmni's Qwen3.5 layers also need fla's varlen causal conv1d:
`varlen_causal_conv1d` (registered in VeOmni's kernel registry by vgpo_verl.cpu.veomni_kernels).

Cost: one (heads, T, T) attention matrix per packed micro-batch of T tokens; for checks and tiny
models, not for training at length. CPU only: the GPU path keeps flash-attn.
"""

from __future__ import annotations

import torch

CPU_ATTENTION = "vgpo_cpu_varlen"


def _attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, allowed: torch.Tensor, scale) -> torch.Tensor:
    """q (B, T, Hq, D), k / v (B, T, Hk, D), allowed (B, T, T) bool -> (B, T, Hq, D)."""
    out = torch.nn.functional.scaled_dot_product_attention(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=allowed[:, None], scale=scale,
        enable_gqa=q.shape[2] != k.shape[2],
    )
    return out.transpose(1, 2)


def _allowed(segment: torch.Tensor, causal: bool) -> torch.Tensor:
    """segment (B, T) long -> (B, T, T) bool: same segment, and key position <= query position if causal."""
    allowed = segment[:, :, None] == segment[:, None, :]
    if causal:
        positions = torch.arange(segment.shape[1], device=segment.device)
        allowed &= positions[None, :] <= positions[:, None]
    return allowed


def varlen_attention(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q=None, max_seqlen_k=None, dropout_p=0.0,
                     softmax_scale=None, causal=True, **unused):
    """`flash_attn_varlen_func` in torch: q (T, Hq, D), k / v (T, Hk, D), segments cut at cu_seqlens (S+1,)."""
    if not torch.equal(cu_seqlens_q, cu_seqlens_k):
        raise NotImplementedError("torch varlen attention: queries and keys must share their segments")
    positions = torch.arange(q.shape[0], device=q.device)
    segment = torch.searchsorted(cu_seqlens_q[1:].long().to(q.device), positions, right=True)
    return _attend(q[None], k[None], v[None], _allowed(segment[None], causal), softmax_scale)[0]


def flash_attention_forward(query, key, value, attention_mask, query_length=None, is_causal=True, dropout=0.0,
                            position_ids=None, softmax_scale=None, sliding_window=None, softcap=None,
                            cu_seq_lens_q=None, cu_seq_lens_k=None, **unused):
    """transformers' `_flash_attention_forward` in torch: q (B, T, Hq, D), k / v (B, T, Hk, D) -> (B, T, Hq, D).

    Segments as flash-attn finds them: `cu_seq_lens_q` if given (vision towers); else, with no
    attention mask and one row, a new sequence wherever the (text) position ids restart at 0
    (verl's packed batch); else each row is one sequence, `attention_mask` (B, T) marking its keys.
    """
    if sliding_window is not None or softcap is not None:
        raise NotImplementedError("torch varlen attention: sliding windows and softcapping are not implemented")
    batch, length = query.shape[:2]
    if cu_seq_lens_q is not None:
        return varlen_attention(query[0], key[0], value[0], cu_seq_lens_q, cu_seq_lens_k if cu_seq_lens_k is not None
                                else cu_seq_lens_q, softmax_scale=softmax_scale, causal=is_causal)[None]
    if attention_mask is None and position_ids is not None and batch == 1:
        text_positions = position_ids[0] if position_ids.dim() == 3 else position_ids  # (1, T)
        segment = (text_positions == 0).long().cumsum(-1)
        return _attend(query, key, value, _allowed(segment, is_causal), softmax_scale)
    allowed = _allowed(torch.zeros(batch, length, dtype=torch.long, device=query.device), is_causal)
    if attention_mask is not None:
        allowed = allowed & attention_mask.bool()[:, None, :]
    return _attend(query, key, value, allowed, softmax_scale)


def varlen_chunk_gated_delta_rule(query, key, value, g, beta, cu_seqlens=None, cu_seqlens_cpu=None, **kwargs):
    """fla's `chunk_gated_delta_rule` with `cu_seqlens`, in torch: transformers' torch rule on each packed
    sequence alone. query / key (1, T, H, Dk), value (1, T, H, Dv), g / beta (1, T, H); returns
    ((1, T, H, Dv), None) (verl asks for no final state in packed passes)."""
    from transformers.models.qwen3_5.modeling_qwen3_5 import torch_chunk_gated_delta_rule

    if cu_seqlens is None:
        return torch_chunk_gated_delta_rule(query, key, value, g, beta, **kwargs)
    if kwargs.get("initial_state") is not None or kwargs.get("output_final_state"):
        raise NotImplementedError("torch varlen gated delta rule: packed sequences carry no recurrent state")
    bounds = (cu_seqlens_cpu if cu_seqlens_cpu is not None else cu_seqlens).tolist()
    outputs = [  # one call per sequence: the rule is recurrent, sequences must not share a state
        torch_chunk_gated_delta_rule(query[:, a:b], key[:, a:b], value[:, a:b], g[:, a:b], beta[:, a:b], **kwargs)[0]
        for a, b in zip(bounds[:-1], bounds[1:])
    ]
    return torch.cat(outputs, dim=1), None


def varlen_causal_conv1d(x, weight, bias=None, activation=None, cu_seqlens=None, **unused):
    """fla's `causal_conv1d` with `cu_seqlens`, in torch (VeOmni's Qwen3.5 pre-mixer slot): x (B, T, D),
    weight (D, K), bias (D,) or None, cu_seqlens (S+1,) or None (each row one sequence); returns
    ((B, T, D), None). Output t is sum_j weight[:, j] * x[t - K + 1 + j] over positions of t's own
    sequence only (a packed sequence must not see the one before it), then the activation."""
    length, width = x.shape[1], weight.shape[-1]
    windows = torch.nn.functional.pad(x, (0, 0, width - 1, 0)).unfold(1, width, 1)  # (B, T, D, K)
    positions = torch.arange(length, device=x.device)
    starts = torch.zeros_like(positions)
    if cu_seqlens is not None:
        bounds = cu_seqlens.long().to(x.device)
        starts = bounds[torch.searchsorted(bounds[1:], positions, right=True)]
    source = positions[:, None] - width + 1 + torch.arange(width, device=x.device)  # (T, K)
    out = torch.einsum("btdk,dk,tk->btd", windows, weight, (source >= starts[:, None]).to(x.dtype))
    if bias is not None:
        out = out + bias
    if activation in ("silu", "swish"):
        out = torch.nn.functional.silu(out)
    elif activation is not None:
        raise NotImplementedError(f"torch causal conv1d: activation {activation!r}")
    return out, None


def _keep_dtype(query, key, value, target_dtype=None):
    """verl casts to bf16 for flash-attn; the torch kernel runs in the model's dtype."""
    return query, key, value


def install() -> None:
    """Point verl's and transformers' flash-attention and flash-linear-attention call sites at the torch
    kernels and register CPU_ATTENTION. Idempotent; call it in the process that builds verl's engine,
    before building it."""
    import transformers.integrations.flash_attention as hf_flash
    from transformers.masking_utils import AttentionMaskInterface, flash_attention_mask
    from transformers.modeling_utils import AttentionInterface

    import transformers.models.qwen3_5.modeling_qwen3_5 as qwen3_5
    import transformers.models.qwen3_5_moe.modeling_qwen3_5_moe as qwen3_5_moe

    import verl.models.transformers.glm4v as verl_glm4v
    import verl.models.transformers.monkey_patch as verl_monkey_patch
    import verl.models.transformers.qwen2_vl as verl_qwen2_vl

    for module in (verl_qwen2_vl, verl_glm4v):  # verl's own attention forwards
        module.flash_attn_varlen_func = varlen_attention
        module._flash_attention_forward = flash_attention_forward
        module.fa_peft_integration_check = _keep_dtype
        module._flash_supports_window_size = False
        module._flash_supports_deterministic = False
        module._flash_use_top_left_mask = False
    # the kernel under verl's Ulysses wrapper, and under transformers' integration before verl wraps it
    verl_monkey_patch._flash_attention_forward = flash_attention_forward
    if not getattr(hf_flash._flash_attention_forward, "__module__", "").startswith("verl."):
        hf_flash._flash_attention_forward = flash_attention_forward
    AttentionInterface.register(CPU_ATTENTION, hf_flash.flash_attention_forward)
    for module in (qwen3_5, qwen3_5_moe):  # read when a layer is built: install before building the model
        if module.chunk_gated_delta_rule is None:  # no fla
            module.chunk_gated_delta_rule = varlen_chunk_gated_delta_rule
    AttentionMaskInterface.register(CPU_ATTENTION, flash_attention_mask)
