"""Cost of the comparison methods in the old-log-prob pass: entropy shaping and VPPO vs plain.

Three arms timed interleaved on the same model and batch (each round alternates the order), the
ratios (median over rounds of arm/plain, paired within the round) printed side by side: of this
process's CPU time on CPU, of wall time on CUDA (wall time on a shared CPU host is printed too).

- plain: the pass verl runs anyway (log-probs and entropy), then verl's GRPO advantage;
- entropy_shaping: the same pass (no flag: verl's entropy is reused), then the shaped advantage;
- vppo: the pass with the `vppo_perturb` flag (one more forward, images' patches blackened), then
  VPPO's advantage.

Modes as in bench_extractor.py: `--mode verl` (default, CPU) runs verl's real FSDP2 engine as
resolved by verl's EngineRegistry (vgpo_verl.plugin.engine's subclass), `engine.infer_batch` with and
without the flag; `--mode hf` (verl-free) a transformers Qwen2.5-VL forward plus verl's log-prob and
entropy math, the perturbed arm running vgpo_verl.methods.perturb then one more forward.

    python benchmarks/bench_methods.py                                   # CPU, verl engine
    python benchmarks/bench_methods.py --mode hf --preset 7b --device cuda --dtype bf16
    python benchmarks/bench_methods.py --quick                           # tiny shapes, 2 rounds: a smoke run
"""

from __future__ import annotations

import pathlib
import statistics
import sys

import numpy as np
import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from bench_extractor import (  # noqa: E402
    benchmark_parser, cpu_verl_engine, interleaved, position_ids, random_hf_model, run_benchmark,
)

from vgpo_verl.plugin.timing import AUG_FORWARD, TIMING_PREFIX  # noqa: E402

ARMS = ("plain", "entropy_shaping", "vppo")
CLIP_MEAN, CLIP_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)


def advantage_inputs(log_probs: torch.Tensor, n_per_prompt: int = 4):
    """Rewards, mask and uids for a batch whose (B, T) log-probs are given (every token valid)."""
    batch, length = log_probs.shape
    rewards = torch.zeros(batch, length)
    rewards[:, -1] = (torch.arange(batch) % 2).float()
    uid = np.array([f"p{i // n_per_prompt}" for i in range(batch)], dtype=object)
    return rewards, torch.ones(batch, length), uid


def advantage(arm: str, log_probs: torch.Tensor, entropy: torch.Tensor, aug_log_probs: torch.Tensor | None):
    """The arm's estimator on (B, T) tensors, as the trainer calls it."""
    from verl.trainer.ppo.core_algos import compute_grpo_outcome_advantage

    from vgpo_verl.plugin.estimator import compute_entropy_shaped_advantage, compute_vppo_advantage

    rewards, mask, uid = advantage_inputs(log_probs)
    if arm == "plain":
        return compute_grpo_outcome_advantage(rewards, mask, uid)[0]
    if arm == "entropy_shaping":
        return compute_entropy_shaped_advantage(rewards, mask, uid, entropy=entropy)[0]
    return compute_vppo_advantage(rewards, mask, uid, aug_log_probs=aug_log_probs, old_log_probs=log_probs)[0]


def report(times: dict, device: str, aug_forward_seconds: list[float] | None = None) -> None:
    clock = "wall" if device.startswith("cuda") else "cpu"
    for name in ("wall", "cpu"):
        medians = "  ".join(f"{arm} {statistics.median(times[name][arm]) * 1e3:8.1f} ms" for arm in ARMS)
        print(f"{name:4s} time medians over {len(times[name]['plain'])} rounds: {medians}")
    if aug_forward_seconds:
        print(f"VPPO's extra forward ({TIMING_PREFIX + AUG_FORWARD}, the engine's own timing): median "
              f"{statistics.median(aug_forward_seconds) * 1e3:.1f} ms per pass")
    ratios = {arm: statistics.median(a / p for a, p in zip(times[clock][arm], times[clock]["plain"])) for arm in ARMS[1:]}
    print(f"overhead ratios vs plain ({clock} time, median of paired rounds): "
          + "   ".join(f"{arm} {ratio:.3f}x" for arm, ratio in ratios.items()))


def run_hf(args, preset: dict) -> None:
    from vgpo_verl.methods.perturb import blacken_patches

    model, samples = random_hf_model(args, preset)
    device, dtype = model.device, model.dtype
    length = min(len(s.input_ids) for s in samples)  # same length: no padding needed
    input_ids = torch.stack([s.input_ids[:length] for s in samples]).to(device)
    positions = torch.stack([position_ids(model, s)[:, :length] for s in samples], dim=1).to(device)
    pixels = torch.cat([s.pixel_values for s in samples]).to(device, dtype)
    grid = torch.cat([s.image_grid_thw for s in samples]).to(device)
    print(f"verl-free: Qwen2.5-VL {args.preset} shape, {args.dtype} on {device}, batch {len(samples)} x {length}")

    def log_probs_and_entropy(pixel_values, with_entropy: bool):
        logits = model(input_ids=input_ids, position_ids=positions, pixel_values=pixel_values,
                       image_grid_thw=grid, use_cache=False).logits.float()
        log_softmax = torch.log_softmax(logits, dim=-1)
        log_probs = log_softmax.gather(-1, torch.roll(input_ids, -1, dims=1).unsqueeze(-1)).squeeze(-1)
        entropy = -(log_softmax.exp() * log_softmax).sum(-1) if with_entropy else None
        return log_probs, entropy

    def arm(name: str):
        @torch.no_grad()
        def run():
            log_probs, entropy = log_probs_and_entropy(pixels, True)
            aug = None
            if name == "vppo":
                aug, _ = log_probs_and_entropy(blacken_patches(pixels, grid, 1, 0.5, CLIP_MEAN, CLIP_STD)[0], False)
                aug = aug.cpu()
            advantage(name, log_probs.cpu(), entropy.cpu(), aug)
            if device.type == "cuda":
                torch.cuda.synchronize()
        return run

    report(interleaved({name: arm(name) for name in ARMS}, args.repeats), args.device)


def run_verl(args, preset: dict) -> None:
    from verl.workers.utils.padding import response_from_nested

    from vgpo_verl.methods.perturb import AUG_LOG_PROBS_KEY

    aug_forward_seconds = []
    with cpu_verl_engine(preset, args.samples, args.text_len) as (engine, _, samples, infer):
        print(f"verl engine {type(engine).__name__} (fsdp2, gloo, CPU), Qwen2.5-VL {args.preset} shape, "
              f"{len(samples)} samples, {sum(len(s.input_ids) for s in samples)} tokens, one micro-batch, padded")
        response_mask = torch.nested.as_nested_tensor(
            [torch.ones(s.response_len, dtype=torch.long) for s in samples], layout=torch.jagged)

        def arm(name: str):
            flags = {}
            if name == "vppo":
                flags = {"vppo_perturb": True, "vppo_black_prob": 0.5, "vppo_seed": 1,
                         "vppo_image_mean": CLIP_MEAN, "vppo_image_std": CLIP_STD}

            def run():
                output = infer(**flags)
                model_output = output["model_output"]
                assert (AUG_LOG_PROBS_KEY in model_output) == (name == "vppo")

                def response(key):  # as verl's trainer slices its own full-sequence outputs
                    return torch.nested.to_padded_tensor(response_from_nested(model_output[key], response_mask), 0.0)

                aug = None
                if name == "vppo":  # the engine's output is response-aligned already
                    aug = torch.nested.to_padded_tensor(model_output[AUG_LOG_PROBS_KEY], 0.0)
                    aug_forward_seconds.append(output["metrics"][TIMING_PREFIX + AUG_FORWARD])
                advantage(name, response("log_probs").float(), response("entropy").float(), aug)
            return run

        times = interleaved({name: arm(name) for name in ARMS}, args.repeats)
    report(times, "cpu", aug_forward_seconds[1:])  # without the warm-up call


def main(argv=None) -> None:
    run_benchmark(benchmark_parser(__doc__.split("\n")[0], repeats=6).parse_args(argv), run_verl, run_hf)


if __name__ == "__main__":
    main()
