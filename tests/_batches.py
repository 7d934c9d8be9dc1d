"""A random batch of prompt groups with one outcome reward per response, for the estimator tests."""

import numpy as np
import torch


def grouped_outcome_batch(seed: int = 0, prompts: int = 3, n: int = 4, length: int = 10):
    """(rewards (B, T), response_mask (B, T) float, uid (B,) object array, generator), B = prompts * n.

    Responses have random lengths in [1, length]; each gets a 0/1 reward on its last token. The
    generator is returned, already advanced, for the caller's own per-token inputs.
    """
    gen = torch.Generator().manual_seed(seed)
    batch = prompts * n
    lengths = torch.randint(1, length + 1, (batch,), generator=gen)
    mask = (torch.arange(length)[None] < lengths[:, None]).float()
    rewards = torch.zeros(batch, length)
    rewards[torch.arange(batch), lengths - 1] = torch.randint(0, 2, (batch,), generator=gen).float()
    uid = np.repeat(np.array([f"prompt-{i}" for i in range(prompts)], dtype=object), n)
    return rewards, mask, uid, gen
