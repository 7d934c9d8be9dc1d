"""Visual focus scoring from one layer's hidden states: pure torch, no verl import.

For every token n of a packed batch of S sequences, s_n = cos(h_n, mu_seq(n)), where mu is the mean
hidden state over the visual placeholder positions of n's own sequence (spec section 1). Used by the
verl engine (vgpo_verl.plugin.engine) inside the forward pass verl already runs, and by
benchmarks/bench_extractor.py on a bare torch + transformers machine.

Memory: the captured layer output is reduced to scores inside the forward hook, before lm_head
allocates the logits; the cosine runs over chunks of `chunk_tokens` rows, so the extra memory is
one (chunk_tokens x hidden) float32 buffer plus (S x hidden) prototypes, never a copy of every layer
(no `output_hidden_states=True`).
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.distributed as dist

DEFAULT_CHUNK_TOKENS = 8192

# Names under which scoring is requested and its results travel in verl's batches (shared by
# vgpo_verl.plugin.engine and vgpo_verl.plugin.trainer_wiring; plain strings, so the driver need not import the engine).
SCORE_FLAG = "vgpo_score"  # non-tensor bool: score this forward-only pass
LAYER_KEY = "vgpo_layer"  # non-tensor int: which layer (see resolve_layer)
CHUNK_KEY = "vgpo_chunk_tokens"  # non-tensor int: rows per float32 work chunk
SCORE_KEY = "vgpo_visual_score"  # model output, nested (bsz, response_len) float32 (see vgpo_verl.plugin.engine)
HAS_VISUAL_KEY = "vgpo_has_visual"  # model output, nested (bsz, 1) bool: one flag per sample

# Module paths that wrap a module without changing what it computes (FSDP1, activation checkpointing,
# torch.compile); stripped from names when looking for the text decoder.
_WRAPPER_PARTS = ("_fsdp_wrapped_module", "_checkpoint_wrapped_module", "_orig_mod")


def visual_token_ids(model_config) -> list[int]:
    """Ids of the visual placeholder tokens (`image_token_id`, `video_token_id`) named by an HF config.

    Returns [] for a config without either (a text-only model): no sequence then has a visual token.
    """
    ids = []
    for key in ("image_token_id", "video_token_id"):
        value = getattr(model_config, key, None)
        if value is not None:
            ids.append(int(value))
    return ids


def visual_mask_of(input_ids: torch.Tensor, token_ids: list[int]) -> torch.Tensor:
    """(same shape as input_ids) bool: True at visual placeholder tokens."""
    if not token_ids:
        return torch.zeros_like(input_ids, dtype=torch.bool)
    return torch.isin(input_ids, torch.tensor(token_ids, device=input_ids.device, dtype=input_ids.dtype))


def segment_ids_from_cu_seqlens(cu_seqlens: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """(P,) long: the sequence of each packed position; positions at or past cu_seqlens[-1] get S.

    Args:
        cu_seqlens: (S+1,) long, sequence boundaries (cu_seqlens[0] == 0).
        positions: (P,) long, global packed positions (e.g. one Ulysses rank's slice, padding included).
    """
    return torch.searchsorted(cu_seqlens[1:].to(positions.device), positions, right=True)


def padded_segment_ids(lengths: torch.Tensor, max_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Segments of a right-padded (S, max_len) batch flattened row-major.

    Returns:
        segment_ids: (S * max_len,) long, the row of each valid position and S for padding.
        valid: (S, max_len) bool.
    """
    num_seqs = lengths.shape[0]
    valid = torch.arange(max_len, device=lengths.device) < lengths.unsqueeze(1)
    rows = torch.arange(num_seqs, device=lengths.device).unsqueeze(1).expand(-1, max_len)
    return torch.where(valid, rows, torch.full_like(rows, num_seqs)).reshape(-1), valid


def response_slice(
    values: torch.Tensor, cu_seqlens: torch.Tensor, response_lengths: torch.Tensor, shift: int = 0
) -> torch.Tensor:
    """Nested (S, j) jagged: each packed sequence's response part of a per-token tensor.

    Sequence i keeps values[end_i - R_i - shift : end_i - shift] (end_i = cu_seqlens[i + 1], R_i its
    response length): shift=0 for values at each token's own position (VGPO's scores: response token
    y_t gets the value computed at y_t), shift=1 for verl's log-prob layout, where slot j holds token
    j + 1 (the slice verl's `response_from_nested` / `no_padding_2_padding` take).

    Args:
        values: (N,) per-token values of S packed sequences.
        cu_seqlens: (S+1,) long, cu_seqlens[0] == 0 and cu_seqlens[-1] == N.
        response_lengths: (S,) long; each sequence must hold R_i + shift tokens.
    """
    cu_seqlens = cu_seqlens.to(values.device).long()
    response_lengths = response_lengths.to(values.device).long()
    lengths = cu_seqlens.diff()
    if bool((response_lengths + shift > lengths).any()):
        raise ValueError(f"response lengths {response_lengths.tolist()} (+{shift}) exceed sequence lengths "
                         f"{lengths.tolist()}")
    seq = torch.repeat_interleave(torch.arange(lengths.numel(), device=values.device), lengths,
                                  output_size=values.shape[0])
    end = cu_seqlens[1:][seq] - shift  # (N,) each token's sequence end, moved by the layout's shift
    position = torch.arange(values.shape[0], device=values.device)
    keep = (position >= end - response_lengths[seq]) & (position < end)
    offsets = torch.nn.functional.pad(response_lengths.cumsum(0), (1, 0))
    return torch.nested.nested_tensor_from_jagged(values[keep], offsets)


def score_outputs(similarity: torch.Tensor, has_visual: torch.Tensor, cu_seqlens: torch.Tensor,
                  response_lengths: torch.Tensor) -> dict[str, torch.Tensor]:
    """What the engine adds to verl's model output for S scored sequences (see vgpo_verl.plugin.engine).

    Args:
        similarity: (N,) float32 packed cos(h_n, mu) of every token.
        has_visual: (S,) bool.
        cu_seqlens: (S+1,) long; response_lengths: (S,) long.

    Returns:
        SCORE_KEY: nested (S, R_i) float32, entry t = the score at response token y_t's own position.
        HAS_VISUAL_KEY: (S, 1) bool, one flag per sample (verl rebuilds per-sample rows, never 0-d).
    """
    return {SCORE_KEY: response_slice(similarity, cu_seqlens, response_lengths, shift=0),
            HAS_VISUAL_KEY: has_visual.unsqueeze(1)}


def visual_prototypes(
    hidden: torch.Tensor,
    segment_ids: torch.Tensor,
    visual_mask: torch.Tensor,
    num_segments: int,
    chunk_tokens: int = DEFAULT_CHUNK_TOKENS,
    group: dist.ProcessGroup | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sequence mean hidden state over its visual positions.

    Args:
        hidden: (N, H) any float dtype. Rows may be one shard of the sequences (Ulysses): then `group`
            is the process group holding the other shards, and sums/counts are all-reduced over it.
        segment_ids: (N,) long in [0, num_segments]; num_segments marks rows outside every sequence.
        visual_mask: (N,) bool.
        num_segments: S.

    Returns:
        mu: (S, H) float32, zeros for a sequence without visual tokens.
        has_visual: (S,) bool.
    """
    hidden_size = hidden.shape[-1]
    sums = torch.zeros(num_segments + 1, hidden_size, dtype=torch.float32, device=hidden.device)
    counts = torch.zeros(num_segments + 1, dtype=torch.float32, device=hidden.device)
    # Non-visual rows are routed to the spare segment S instead of being gathered out, so every
    # chunk does one fixed-shape index_add (no data-dependent copy of the visual rows).
    target = torch.where(visual_mask, segment_ids, torch.full_like(segment_ids, num_segments))
    for start in range(0, hidden.shape[0], chunk_tokens):
        rows = slice(start, start + chunk_tokens)
        sums.index_add_(0, target[rows], hidden[rows].float())
    counts.index_add_(0, target, torch.ones_like(target, dtype=torch.float32))
    sums, counts = sums[:num_segments], counts[:num_segments]
    if group is not None:
        dist.all_reduce(sums, group=group)
        dist.all_reduce(counts, group=group)
    has_visual = counts > 0
    mu = sums / counts.clamp(min=1).unsqueeze(-1)
    return mu, has_visual


def cosine_to_prototypes(
    hidden: torch.Tensor,
    segment_ids: torch.Tensor,
    prototypes: torch.Tensor,
    chunk_tokens: int = DEFAULT_CHUNK_TOKENS,
    eps: float = 1e-8,
) -> torch.Tensor:
    """(N,) float32: cos(hidden_n, prototypes[segment_ids_n]); 0 for a zero prototype or a row outside
    every sequence (segment id == S).

    The dot products come from one (chunk, S) matmul per chunk rather than gathering a (chunk, H)
    copy of the prototypes: S (sequences per micro-batch) is small next to H.
    """
    with torch.autocast(device_type=hidden.device.type, enabled=False):  # the hook may run under autocast
        return _cosine_chunks(hidden, segment_ids, prototypes, chunk_tokens, eps)


def _cosine_chunks(hidden, segment_ids, prototypes, chunk_tokens, eps):
    # The spare zero row S absorbs rows outside every sequence.
    prototypes = torch.cat([prototypes, prototypes.new_zeros(1, prototypes.shape[1])])
    proto_norm = prototypes.norm(dim=-1)  # (S+1,)
    out = torch.empty(hidden.shape[0], dtype=torch.float32, device=hidden.device)
    for start in range(0, hidden.shape[0], chunk_tokens):
        rows = slice(start, start + chunk_tokens)
        h = hidden[rows].float()  # (C, H): the one bounded extra buffer
        seg = segment_ids[rows].unsqueeze(-1)  # (C, 1)
        dots = (h @ prototypes.T).gather(1, seg).squeeze(-1)  # (C,)
        norms = h.norm(dim=-1) * proto_norm[seg.squeeze(-1)]
        out[rows] = dots / norms.clamp(min=eps)
        del h
    return out


def visual_similarity(
    hidden: torch.Tensor,
    cu_seqlens: torch.Tensor,
    visual_mask: torch.Tensor,
    chunk_tokens: int = DEFAULT_CHUNK_TOKENS,
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos(h_n, mu_seq(n)) for every token of a packed batch.

    Args:
        hidden: (N, H) hidden states of S packed sequences (any float dtype).
        cu_seqlens: (S+1,) long, cu_seqlens[0] == 0 and cu_seqlens[-1] == N.
        visual_mask: (N,) bool, True at visual placeholder tokens.
        chunk_tokens: rows per chunk of the float32 work buffer.

    Returns:
        similarity: (N,) float32 (0 for every token of a sequence without visual tokens).
        has_visual: (S,) bool.
    """
    if hidden.dim() != 2:
        raise ValueError(f"hidden must be (N, H), got shape {tuple(hidden.shape)}")
    n_tokens = hidden.shape[0]
    if visual_mask.shape != (n_tokens,):
        raise ValueError(f"visual_mask must be ({n_tokens},) like hidden's rows, got {tuple(visual_mask.shape)}")
    if cu_seqlens.dim() != 1 or int(cu_seqlens[0]) != 0 or int(cu_seqlens[-1]) != n_tokens:
        raise ValueError(
            f"cu_seqlens must be (S+1,) from 0 to N={n_tokens}, got {cu_seqlens.tolist()[:4]}... "
            f"ending at {int(cu_seqlens[-1]) if cu_seqlens.numel() else None}"
        )
    num_segments = cu_seqlens.numel() - 1
    positions = torch.arange(n_tokens, device=hidden.device)
    segment_ids = segment_ids_from_cu_seqlens(cu_seqlens, positions)
    mu, has_visual = visual_prototypes(hidden, segment_ids, visual_mask.to(hidden.device), num_segments, chunk_tokens)
    return cosine_to_prototypes(hidden, segment_ids, mu, chunk_tokens), has_visual


# What `layer` means, said once for VGPOConfig.layer, the analysis CLI and resolve_layer.
LAYER_HELP = ("which output is scored, a Python index into [decoder layer 0, ..., decoder layer n-1, final norm]: "
              "-1 = the final norm's output (lm_head's input), -2 = the last decoder layer's output (before "
              "the norm), k >= 0 = decoder layer k")


def find_text_decoder(model: torch.nn.Module) -> tuple[str, torch.nn.Module] | None:
    """(name, module) of the text decoder: a module with a `layers` ModuleList and a `norm`, the one
    named `language_model` if there is one (VLMs), else the first (`model` of a text-only LM).

    Module names are searched through wrappers that leave the computation alone (FSDP1, activation
    checkpointing, torch.compile) and PEFT's (`base_model.model.`); None if there is no such module.
    """
    found = None
    for name, module in model.named_modules():
        has_stack = isinstance(getattr(module, "layers", None), torch.nn.ModuleList) and hasattr(module, "norm")
        if not has_stack:
            continue
        parts = [p for p in name.split(".") if p not in _WRAPPER_PARTS]
        if parts and parts[-1] == "language_model":
            return name, module
        if found is None:
            found = (name, module)
    return found


def layer_range(num_decoder_layers: int) -> range:
    """The `layer` values a decoder of n layers has: -(n+1)..n (LAYER_HELP), the one range every check uses."""
    return range(-(num_decoder_layers + 1), num_decoder_layers + 1)


def layer_range_text(num_decoder_layers: int) -> str:
    allowed = layer_range(num_decoder_layers)
    return f"{allowed[0]}..{allowed[-1]}"


def scoreable_outputs(decoder: torch.nn.Module) -> list[torch.nn.Module]:
    """[decoder layer 0, ..., decoder layer n-1, final norm]: the modules `layer` indexes."""
    return [*decoder.layers, decoder.norm]


def resolve_layer(model: torch.nn.Module, layer: int = -1) -> torch.nn.Module:
    """The module whose output is scored: `scoreable_outputs(decoder)[layer]` (see LAYER_HELP).

    On a decoder of n layers: -1 = the final norm (its output is what lm_head reads), -2 = decoder
    layer n-1 (the last layer's output before the final norm), -(n+1) = layer 0; k in [0, n) =
    decoder layer k, k = n = the final norm.

    Works on every family in vgpo_verl.plugin.families (the decoder is `model.language_model`), text-only
    causal LMs (`model.model`), and on FSDP1/FSDP2/checkpoint/PEFT-wrapped copies of them.
    """
    found = find_text_decoder(model)
    if found is None:
        raise ValueError(
            f"no text decoder (a module with `layers` and `norm`) found in {type(model).__name__}; "
            "VGPO scoring supports the families of vgpo_verl.plugin.families and HF causal LMs"
        )
    outputs = scoreable_outputs(found[1])
    if layer not in layer_range(len(found[1].layers)):
        raise ValueError(f"VGPO layer={layer} is out of range for a decoder with {len(found[1].layers)} layers: "
                         f"allowed {layer_range_text(len(found[1].layers))} ({LAYER_HELP})")
    return outputs[layer]


class HiddenStateCapture:
    """Context manager: a forward hook on one layer for the duration of the block.

    Without `on_capture`, `cap.hidden` holds the (detached) layer output of the last forward.
    With `on_capture`, the hook calls `on_capture(hidden)` during the forward and keeps only its
    result in `cap.result`: the activation is not retained past the layer, so e.g. lm_head's
    logits never coexist with a held copy of it.

    Args:
        model: an HF model (possibly FSDP-wrapped).
        layer: see `resolve_layer` (-1: final norm output = lm_head input; -2: last decoder layer).
        on_capture: optional callable (hidden tensor as the layer returned it) -> anything.
    """

    def __init__(self, model: torch.nn.Module, layer: int = -1, on_capture: Callable | None = None):
        self.module = resolve_layer(model, layer)
        self.on_capture = on_capture
        self.hidden: torch.Tensor | None = None
        self.result = None
        self.calls = 0
        self._handle = None

    def _hook(self, module, args, output):
        hidden = output[0] if isinstance(output, tuple) else output
        hidden = hidden.detach()
        self.calls += 1
        if self.on_capture is None:
            self.hidden = hidden
        else:
            self.result = self.on_capture(hidden)

    def __enter__(self) -> "HiddenStateCapture":
        self._handle = self.module.register_forward_hook(self._hook)
        return self

    def __exit__(self, *exc) -> None:
        self._handle.remove()
        self._handle = None
