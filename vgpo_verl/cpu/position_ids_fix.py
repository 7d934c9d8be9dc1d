"""Workaround for a verl 0.9.1 bug with Qwen-VL's 3-D (mrope) position ids in equal-length batches.

Not specific to CPUs; it shows on the demo because every response there runs to the length limit.

verl keeps each sample's position ids as a (rows, seq_len) tensor (rows = 4 for Qwen2/2.5-VL:
text, t, h, w) and stacks a batch into a jagged nested tensor. torch makes the *varying* dimension
the ragged one; when all samples have the same length nothing varies, and torch picks the first
component dimension, the rows. verl's `maybe_fix_3d_position_ids` then declares dimension 2 ragged
(it repairs a different problem, a ragged index lost in pickling), which leaves a tensor whose
offsets count rows but whose declared ragged axis is the sequence: the old-log-prob pass reads
scrambled position ids, and `update_actor` dies with "split_with_sizes expects split_sizes to sum
exactly to <seq_len> ... got [4, 4, ...]".

The fix wraps verl's function: a position-id tensor whose ragged axis runs over the rows (offsets
advancing by the row count, over the values' first axis) is rebuilt with the sequence axis ragged,
then verl's own repair runs as before. Tensors built correctly are left alone.
"""

from __future__ import annotations

import functools

import torch

MROPE_ROWS = (3, 4)  # Qwen2-VL-style (t, h, w) and verl's (text, t, h, w)


def rows_are_ragged(position_ids: torch.Tensor) -> bool:
    """True for a nested (B, rows, j) tensor stacked with the rows as its ragged axis."""
    if not (position_ids.is_nested and position_ids.dim() == 3):
        return False
    values, offsets = position_ids.values(), position_ids.offsets()
    if values.dim() != 2 or int(offsets[-1]) != values.shape[0]:
        return False
    steps = offsets.diff()
    return bool((steps == steps[0]).all()) and int(steps[0]) in MROPE_ROWS


def sequence_ragged(position_ids: torch.Tensor) -> torch.Tensor:
    """Rebuild a rows-ragged (B, rows, L) position-id tensor with the sequence axis ragged.

    values (B*rows, L) -> (rows, B*L), offsets 0, L, 2L, ..., B*L; the same per-sample tensors.
    """
    values, offsets = position_ids.values(), position_ids.offsets()
    batch = offsets.numel() - 1
    rows, seq_len = int(offsets[1] - offsets[0]), values.shape[1]
    packed = values.view(batch, rows, seq_len).permute(1, 0, 2).reshape(rows, batch * seq_len)
    seq_offsets = torch.arange(batch + 1, dtype=offsets.dtype, device=offsets.device) * seq_len
    return torch.nested.nested_tensor_from_jagged(packed, seq_offsets, jagged_dim=2)


def wrap(original):
    """verl's maybe_fix_3d_position_ids, first rebuilding a rows-ragged position_ids."""
    if getattr(original, "_vgpo_rows_ragged_fix", False):
        return original

    @functools.wraps(original)
    def maybe_fix_3d_position_ids(data):
        if "position_ids" in data.keys() and rows_are_ragged(data["position_ids"]):
            data["position_ids"] = sequence_ragged(data["position_ids"])
        return original(data)

    maybe_fix_3d_position_ids._vgpo_rows_ragged_fix = True
    return maybe_fix_3d_position_ids


def install(tensordict_utils) -> None:
    """Replace verl.utils.tensordict_utils.maybe_fix_3d_position_ids (before its users import it)."""
    tensordict_utils.maybe_fix_3d_position_ids = wrap(tensordict_utils.maybe_fix_3d_position_ids)
