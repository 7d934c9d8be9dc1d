"""Cost of the whole VGPO weighting vs one torch.sort of the same (B, T) tensor, measured side by side.

Target (issue 2): at most 3x for 4096 responses x 2048 tokens. Runs interleaved rounds and compares
medians, so a noisy machine slows both sides alike. The ratio is printed last.

    python benchmarks/bench_weights.py [--batch 4096] [--length 2048] [--rounds 5] [--device cpu]
    python benchmarks/bench_weights.py --quick     # (64, 128), 2 rounds: a smoke run, not a measurement
"""

import argparse
import statistics
import time

import numpy as np
import torch

from vgpo_verl.methods.vgpo import VGPOConfig, compute_vgpo_weights

QUICK = dict(batch=64, length=128, rounds=2)

def _timed(fn, device):
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=4096)
    parser.add_argument("--length", type=int, default=2048)
    parser.add_argument("--group-size", type=int, default=8, help="responses per prompt (rollout.n)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--quick", action="store_true",
                        help=f"a smoke run in seconds, not a measurement: {QUICK} (overrides those options)")
    args = parser.parse_args()
    if args.quick:
        vars(args).update(QUICK)
        print(f"--quick: {QUICK}; a smoke run, not a measurement")

    gen = torch.Generator().manual_seed(0)
    similarity = (torch.rand(args.batch, args.length, generator=gen) * 2 - 1).to(args.device)
    lengths = torch.randint(1, args.length + 1, (args.batch,), generator=gen)
    mask = (torch.arange(args.length)[None] < lengths[:, None]).to(args.device)
    uid = np.repeat(np.array([f"uid-{i}" for i in range(args.batch // args.group_size + 1)], dtype=object),
                    args.group_size)[: args.batch]
    config = VGPOConfig()

    def weighting():
        compute_vgpo_weights(similarity, mask, uid, config)

    def sort():
        torch.sort(similarity, dim=1)

    weighting(), sort()  # warm-up
    t_weights, t_sort = [], []
    for _ in range(args.rounds):
        t_weights.append(_timed(weighting, args.device))
        t_sort.append(_timed(sort, args.device))
    w, s = statistics.median(t_weights), statistics.median(t_sort)
    print(f"shape ({args.batch}, {args.length}) on {args.device}, {torch.get_num_threads()} threads, "
          f"median of {args.rounds} interleaved rounds")
    print(f"torch.sort       : {s * 1e3:9.1f} ms")
    print(f"VGPO weighting   : {w * 1e3:9.1f} ms")
    print(f"ratio weighting/sort: {w / s:.2f}x (target <= 3x)")


if __name__ == "__main__":
    main()
