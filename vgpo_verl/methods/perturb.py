"""VPPO's image perturbation on the actor's pixel tensors: random patches set to black. Pure torch.

VPPO (huaixuheqing/VPPO-RL, `verl/workers/perc_utils.py`, `random_patch_blackening`) blackens each
14-px square of the PIL image with probability p = 0.5 before processing. Here the same happens
after the HF processor, on what the actor's vision tower reads: every family of
vgpo_verl.plugin.families gives `pixel_values` (N, C*T*P*P), one row per P-px vision patch (P = 14 for
Qwen2/2.5-VL, 16 for Qwen3-VL and Qwen3.5; T = 2 temporal frames per image patch; values
channel-major, normalised by the processor's mean/std; tests/test_families.py checks each family's
processor), and `image_grid_thw` (n_images, 3) with t*h*w rows per image (videos likewise with
`pixel_values_videos` / `video_grid_thw`). Blackening a patch sets its row to the normalised value
of black, (0 - mean_c) / std_c for channel c. The difference from the fork: squares are cut in the
resized image the model sees, not in the original image (the same 14 px once the processor resized).

Which patches go black is a pure function of (seed, the image's content, the patch's index in its
image): a counter-based integer hash, vectorised over all patches, identical on any device and for
any packing, micro-batch cut or order of samples, so the n responses of one prompt see one and the
same perturbed image, as when the fork perturbs the prompt's image once.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

# Names under which the perturbed pass is requested and its result travels in verl's batches
# (shared by vgpo_verl.plugin.engine and vgpo_verl.plugin.trainer_wiring through vgpo_verl.plugin.method_table).
PERTURB_FLAG = "vppo_perturb"  # non-tensor bool: add a forward on the perturbed images
PROB_KEY = "vppo_black_prob"  # non-tensor float: probability p that a patch goes black
SEED_KEY = "vppo_seed"  # non-tensor int: this step's seed
MEAN_KEY = "vppo_image_mean"  # non-tensor tuple[float] (a list would be per-sample data); absent: the processor's
STD_KEY = "vppo_image_std"  # non-tensor tuple[float]; absent: the processor's
AUG_LOG_PROBS_KEY = "vppo_aug_log_probs"  # model output, nested (bsz, response_len), like verl's old_log_probs

_MASK31 = (1 << 31) - 1
# odd 31-bit multipliers; every product of two 31-bit values fits in int64
_M1, _M2 = 0x2C1B3C6D, 0x297A2D39


def _mix(x: torch.Tensor) -> torch.Tensor:
    """Integer hash of int64 values in [0, 2^31): two multiply / xor-shift rounds, result in [0, 2^31)."""
    x = x & _MASK31
    x = ((x ^ (x >> 16)) * _M1) & _MASK31
    x = ((x ^ (x >> 15)) * _M2) & _MASK31
    return x ^ (x >> 16)


def step_seed(seed: int, step: int) -> int:
    """The seed of one training step: new patches every step, reproducible from (seed, step)."""
    return int(_mix(_mix(torch.tensor(int(seed) & _MASK31)) ^ (int(step) & _MASK31)))


def image_fingerprints(pixel_values: torch.Tensor, rows_per_image: torch.Tensor) -> torch.Tensor:
    """(n_images,) int64 in [0, 2^31): an exact, order-independent checksum of each image's pixels.

    The float bits are read as integers and summed (integer sums do not depend on the summation
    order, unlike float sums), so an image gives the same fingerprint in any batch layout.
    """
    bits = pixel_values.detach().float().contiguous().view(torch.int32).long() & _MASK31  # (N, D)
    row_sums = _mix(bits.sum(dim=1) & _MASK31)  # (N,)
    image_of_row = torch.repeat_interleave(torch.arange(rows_per_image.numel(), device=bits.device),
                                           rows_per_image.to(bits.device))
    sums = torch.zeros(rows_per_image.numel(), dtype=torch.long, device=bits.device).index_add_(0, image_of_row, row_sums)
    return sums & _MASK31


def black_patch_mask(pixel_values: torch.Tensor, grid_thw: torch.Tensor, seed: int, prob: float) -> torch.Tensor:
    """(N,) bool: which patch rows of `pixel_values` go black.

    Args:
        pixel_values: (N, D) the processor's patch rows for all images of a batch, image after image.
        grid_thw: (n_images, 3) long, each image's (t, h, w) in patches; sum of t*h*w is N.
        seed: this step's seed.
        prob: probability that a patch goes black.
    """
    rows_per_image = grid_thw.long().prod(dim=1)
    if int(rows_per_image.sum()) != pixel_values.shape[0]:
        raise ValueError(f"grid_thw covers {int(rows_per_image.sum())} patch rows but pixel_values has "
                         f"{pixel_values.shape[0]}: the grids do not belong to these pixels")
    device = pixel_values.device
    rows_per_image = rows_per_image.to(device)
    starts = torch.cumsum(rows_per_image, 0) - rows_per_image
    image_of_row = torch.repeat_interleave(torch.arange(rows_per_image.numel(), device=device), rows_per_image)
    index_in_image = torch.arange(pixel_values.shape[0], device=device) - starts[image_of_row]
    image_key = _mix(image_fingerprints(pixel_values, rows_per_image) ^ (int(seed) & _MASK31))  # (n_images,)
    u = _mix(image_key[image_of_row] ^ _mix(index_in_image)).double() / float(1 << 31)  # uniform in [0, 1)
    return u < prob


def black_row(row_dim: int, image_mean: Sequence[float], image_std: Sequence[float], dtype, device) -> torch.Tensor:
    """(D,) the normalised value of a black patch: channel-major rows, D / C values per channel."""
    channels = len(image_mean)
    if len(image_std) != channels or row_dim % channels:
        raise ValueError(f"image_mean {list(image_mean)} / image_std {list(image_std)} do not fit patch rows of "
                         f"{row_dim} values (channel-major, equal share per channel)")
    black = (0.0 - torch.tensor(image_mean, dtype=torch.float64)) / torch.tensor(image_std, dtype=torch.float64)
    return black.repeat_interleave(row_dim // channels).to(dtype=dtype, device=device)


def blacken_patches(pixel_values: torch.Tensor, grid_thw: torch.Tensor, seed: int, prob: float,
                    image_mean: Sequence[float], image_std: Sequence[float]) -> tuple[torch.Tensor, torch.Tensor]:
    """A copy of `pixel_values` (N, D) with the rows of `black_patch_mask` set to black; and that (N,) mask."""
    mask = black_patch_mask(pixel_values, grid_thw, seed, prob)
    black = black_row(pixel_values.shape[1], image_mean, image_std, pixel_values.dtype, pixel_values.device)
    return torch.where(mask[:, None], black[None, :], pixel_values), mask
