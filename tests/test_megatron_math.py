"""docs/megatron.md's score math, on gloo ranks: hidden states sharded as Megatron shards them give the
scores of the unsharded computation (vgpo_verl.methods.scoring, the functions the FSDP engine calls).

Layouts of a packed (THD) micro-batch of several sequences, 4 ranks:
- sequence parallel (TP 4 + SP): the final norm's output is cut along the tokens into 4 contiguous shards;
- context parallel (CP 4): each sequence, padded to a multiple of 2*CP, is cut into 2*CP chunks and rank r
  holds chunks r and 2*CP-1-r (Megatron's load-balanced split);
- both (CP 2 x TP 2 with SP): the CP split, then each rank's part cut in 2 along the tokens.
Every rank sums its visual rows and counts them per sequence, the sums and counts are all-reduced over the
ranks that hold parts of the same sequences, and each rank scores its own tokens against the prototypes.

Hidden states on a grid of 1/8 steps make every float32 sum exact whatever its order, so the sharded scores
equal the unsharded ones bit for bit; with Gaussian hidden states they agree to float32 rounding (1e-6).
"""

import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from vgpo_verl.methods.scoring import (cosine_to_prototypes, segment_ids_from_cu_seqlens, visual_prototypes,
                                       visual_similarity)

WORLD = 4
LENGTHS = [24, 40, 16]  # three packed sequences, each a multiple of 2 * CP for CP up to 4
HIDDEN = 32


def micro_batch(exact: bool, seed: int = 0):
    """(hidden (N, H), cu_seqlens (S+1,), visual_mask (N,)): each sequence starts with a few image tokens."""
    generator = torch.Generator().manual_seed(seed)
    n_tokens = sum(LENGTHS)
    hidden = torch.randn(n_tokens, HIDDEN, generator=generator)
    if exact:
        hidden = torch.randint(-16, 17, (n_tokens, HIDDEN), generator=generator).float() / 8
    cu_seqlens = torch.tensor([0, *torch.tensor(LENGTHS).cumsum(0).tolist()])
    visual_mask = torch.zeros(n_tokens, dtype=torch.bool)
    for start, visual in zip(cu_seqlens[:-1].tolist(), (5, 9, 0)):  # the third sequence has no image
        visual_mask[start + 1: start + 1 + visual] = True
    return hidden, cu_seqlens, visual_mask


def rows_held(layout: str, rank: int, cu_seqlens: torch.Tensor) -> torch.Tensor:
    """The token rows (into the packed batch) that `rank` holds under `layout`."""
    n_tokens = int(cu_seqlens[-1])
    if layout == "sp":
        return torch.arange(n_tokens).chunk(WORLD)[rank]
    cp, sp_rank, sp = (WORLD, 0, 1) if layout == "cp" else (2, rank % 2, 2)
    cp_rank = rank if layout == "cp" else rank // 2
    held = []
    for start, end in zip(cu_seqlens[:-1].tolist(), cu_seqlens[1:].tolist()):
        chunks = torch.arange(start, end).chunk(2 * cp)
        held += [chunks[cp_rank], chunks[2 * cp - 1 - cp_rank]]
    mine = torch.cat(held)
    return mine.chunk(sp)[sp_rank]


def _rank_scores(rank: int, port: int, out: dict) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD)
    try:
        for exact in (True, False):
            hidden, cu_seqlens, visual_mask = micro_batch(exact)
            segment_ids = segment_ids_from_cu_seqlens(cu_seqlens, torch.arange(hidden.shape[0]))
            for layout in ("sp", "cp", "cp x sp"):
                rows = rows_held(layout, rank, cu_seqlens)
                prototypes, has_visual = visual_prototypes(hidden[rows], segment_ids[rows], visual_mask[rows],
                                                           len(LENGTHS), group=dist.group.WORLD)
                scores = cosine_to_prototypes(hidden[rows], segment_ids[rows], prototypes)
                gathered = [None] * WORLD
                dist.all_gather_object(gathered, (rows, scores, has_visual))
                if rank == 0:
                    full = torch.empty(hidden.shape[0])
                    for held, part, _ in gathered:
                        full[held] = part
                    out[(exact, layout)] = (full, [flags for _, _, flags in gathered])
    finally:
        dist.destroy_process_group()


def sharded_scores() -> dict:
    """{(exact, layout): (the scores gathered back into batch order, each rank's has_visual)}."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with mp.Manager() as manager:
        out = manager.dict()
        mp.spawn(_rank_scores, args=(port, out), nprocs=WORLD, join=True)
        return dict(out)


def test_every_rank_holds_each_token_once():
    _, cu_seqlens, _ = micro_batch(exact=True)
    for layout in ("sp", "cp", "cp x sp"):
        held = torch.cat([rows_held(layout, rank, cu_seqlens) for rank in range(WORLD)])
        assert sorted(held.tolist()) == list(range(int(cu_seqlens[-1]))), layout


def test_sharded_scores_equal_the_unsharded_ones():
    sharded = sharded_scores()
    assert len(sharded) == 6
    for (exact, layout), (scores, has_visual) in sharded.items():
        hidden, cu_seqlens, visual_mask = micro_batch(exact)
        expected, expected_has_visual = visual_similarity(hidden, cu_seqlens, visual_mask)
        if exact:
            assert torch.equal(scores, expected), layout
        else:
            torch.testing.assert_close(scores, expected, rtol=0, atol=1e-6, msg=layout)
        assert all(torch.equal(flags, expected_has_visual) for flags in has_visual), layout
        assert expected_has_visual.tolist() == [True, True, False] and expected.abs().max() > 0.1
