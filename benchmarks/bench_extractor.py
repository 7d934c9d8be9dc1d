"""Cost of VGPO's visual scoring in the old-log-prob forward: scored vs plain, same model and batch.

Two modes, both timing the two arms interleaved (plain, scored, scored, plain, ...) so machine noise
hits both alike; the ratio (median over rounds of scored/plain) is printed last: of wall time on
CUDA, of this process's CPU time on CPU (wall time on a shared CPU host is printed too).

- `--mode verl` (default on CPU): verl's real FSDP2 engine (gloo, world size 1, the CPU platform of
  vgpo_verl.cpu) resolved through verl's EngineRegistry, i.e. vgpo_verl.plugin.engine's subclass;
  `engine.infer_batch` on the same batch with and without the `vgpo_score` flag. Engine and batch
  (v1 trainer layout) come from vgpo_verl.doctor.verl_run, the builders of the engine tests and
  the doctor, so the benchmark feeds the engine what the tested worker does; the hook's time is the engine's own
  `timing_s/vgpo_score` (vgpo_verl.plugin.timing), the figure a training run logs.
- `--mode hf` (verl-free: torch + transformers only): a random Qwen2.5-VL forward plus verl's
  log-prob computation (log_softmax + gather), with and without vgpo_verl.methods.scoring's hook.
  On CUDA it also reports the extra peak memory (torch.cuda.max_memory_allocated).
  `--preset 7b --device cuda --dtype bf16` is the Qwen2.5-VL-7B shape (random weights, no download).

    python benchmarks/bench_extractor.py                                   # CPU, verl engine
    python benchmarks/bench_extractor.py --mode hf                         # CPU, verl-free
    python benchmarks/bench_extractor.py --mode hf --preset 7b --device cuda --dtype bf16
    python benchmarks/bench_extractor.py --quick                           # tiny shapes, 2 rounds: a smoke run
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import tempfile
import time

import torch

from vgpo_verl.doctor.tiny_models import Sample, position_ids, synthetic_sample
from vgpo_verl.plugin.timing import SCORE, TIMING_PREFIX, PassTimer

IMAGE_TOKEN_OFFSET = 10  # visual/special token ids sit just below the vocabulary's end

PRESETS = {
    # --quick: a smoke run in seconds, not a measurement
    "tiny": dict(hidden=64, layers=2, heads=4, kv_heads=2, intermediate=128, vocab=1024,
                 vision_depth=1, vision_hidden=32, vision_heads=2, patch=14, grid=4),
    # hidden >= 256, >= 4 layers; with --samples 8 and the default lengths: > 2k tokens per batch
    "small": dict(hidden=256, layers=4, heads=4, kv_heads=2, intermediate=704, vocab=32768,
                  vision_depth=2, vision_hidden=128, vision_heads=4, patch=14, grid=16),
    # Qwen2.5-VL-7B-Instruct's shape
    "7b": dict(hidden=3584, layers=28, heads=28, kv_heads=4, intermediate=18944, vocab=152064,
               vision_depth=32, vision_hidden=1280, vision_heads=16, patch=14, grid=28),
}


def build_config(preset: dict):
    import transformers

    vocab = preset["vocab"]
    head_dim = preset["hidden"] // preset["heads"]
    half = head_dim // 2
    text = dict(vocab_size=vocab, hidden_size=preset["hidden"], intermediate_size=preset["intermediate"],
                num_hidden_layers=preset["layers"], num_attention_heads=preset["heads"],
                num_key_value_heads=preset["kv_heads"], max_position_embeddings=32768, tie_word_embeddings=False,
                rope_parameters={"rope_type": "default", "rope_theta": 1e6,
                                 "mrope_section": [half - 2 * (half * 3 // 8), half * 3 // 8, half * 3 // 8]})
    vision = dict(depth=preset["vision_depth"], hidden_size=preset["vision_hidden"], num_heads=preset["vision_heads"],
                  intermediate_size=preset["vision_hidden"] * 27 // 10, out_hidden_size=preset["hidden"],
                  patch_size=preset["patch"], temporal_patch_size=2, spatial_merge_size=2,
                  fullatt_block_indexes=[preset["vision_depth"] - 1], window_size=preset["patch"] * 8)
    return transformers.Qwen2_5_VLConfig(
        text_config=text, vision_config=vision, image_token_id=vocab - IMAGE_TOKEN_OFFSET,
        video_token_id=vocab - IMAGE_TOKEN_OFFSET + 1, vision_start_token_id=vocab - IMAGE_TOKEN_OFFSET + 2,
        vision_end_token_id=vocab - IMAGE_TOKEN_OFFSET + 3,
    )


def make_samples(config, preset: dict, count: int, text_len: int, seed: int = 0) -> list[Sample]:
    """`count` samples of the family's layout (vgpo_verl.doctor.tiny_models.synthetic_sample): one image of
    grid x grid patches, text_len + i text tokens for sample i, the last text_len // 2 the response."""
    generator = torch.Generator().manual_seed(seed)
    grid = (1, preset["grid"], preset["grid"])
    response = text_len // 2
    # synthetic_sample adds 2 text tokens after the image; lengths differ by a token: verl's batches are ragged
    return [synthetic_sample(config, generator, images=1, grid=grid, prompt_text=text_len - 2 - response + index,
                             response_len=response) for index in range(count)]


def random_hf_model(args, preset: dict):
    """(the preset's randomly initialised HF model on args.device in args.dtype, seed 0; its samples)."""
    import transformers

    config = build_config(preset)
    config._attn_implementation = "sdpa"
    torch.manual_seed(0)
    dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}[args.dtype]
    with torch.device(args.device):
        model = transformers.AutoModelForImageTextToText.from_config(config, dtype=dtype).eval()
    return model, make_samples(config, preset, args.samples, args.text_len)


def interleaved(arms: dict, repeats: int) -> dict[str, dict[str, list[float]]]:
    """Wall and process-CPU seconds per call of each arm, alternating the order each round (after one
    warm-up round). CPU time counts only this process's work, so on a shared machine it is far less
    disturbed by other processes than wall time (use --threads 1 so no thread spins while waiting)."""
    names = list(arms)
    for name in names:
        arms[name]()
    times = {clock: {name: [] for name in names} for clock in ("wall", "cpu")}
    for round_index in range(repeats):
        for name in names if round_index % 2 == 0 else names[::-1]:
            wall, cpu = time.perf_counter(), time.process_time()
            arms[name]()
            times["cpu"][name].append(time.process_time() - cpu)
            times["wall"][name].append(time.perf_counter() - wall)
    return times


def paired_ratio(times: dict[str, list[float]]) -> float:
    """Median over rounds of scored/plain for the two calls made back to back in that round."""
    return statistics.median(s / p for s, p in zip(times["scored"], times["plain"]))


def report(times: dict, hook_seconds: list[float], device: str, extra: str = "") -> None:
    """Per-arm medians, the hook's own time, then the ratio: on CUDA wall time (synchronised), on CPU
    process CPU time (wall time on a shared host is printed too, for comparison)."""
    for clock in ("wall", "cpu"):
        plain, scored = statistics.median(times[clock]["plain"]), statistics.median(times[clock]["scored"])
        print(f"{clock:4s} time: plain median {plain * 1e3:9.1f} ms, scored median {scored * 1e3:9.1f} ms "
              f"over {len(times[clock]['plain'])} rounds; paired ratio {paired_ratio(times[clock]):.4f}x")
    plain_wall = statistics.median(times["wall"]["plain"])
    hook = statistics.median(hook_seconds)
    print(f"scoring inside the hook ({TIMING_PREFIX + SCORE}): median {hook * 1e3:.2f} ms per forward "
          f"({100 * hook / plain_wall:.3f}% of plain)")
    if extra:
        print(extra)
    clock = "wall" if device.startswith("cuda") else "cpu"
    print(f"overhead ratio scored/plain ({clock} time, median of paired rounds): {paired_ratio(times[clock]):.4f}x")


# ---------------------------------------------------------------- verl-free mode


def run_hf(args, preset: dict) -> None:
    """transformers forward + verl's log-prob math, with and without the scoring hook."""
    from vgpo_verl.methods.scoring import (
        HiddenStateCapture,
        cosine_to_prototypes,
        padded_segment_ids,
        visual_prototypes,
        visual_token_ids,
    )

    model, samples = random_hf_model(args, preset)
    device, dtype, config = model.device, model.dtype, model.config
    lengths = torch.tensor([len(s.input_ids) for s in samples], device=device)
    max_len = int(lengths.max())
    input_ids = torch.zeros(len(samples), max_len, dtype=torch.long, device=device)
    positions = torch.zeros(4, len(samples), max_len, dtype=torch.long, device=device)
    for row, sample in enumerate(samples):
        input_ids[row, : lengths[row]] = sample.input_ids.to(device)
        positions[:, row, : lengths[row]] = position_ids(model, sample).to(device)
    segment_ids, valid = padded_segment_ids(lengths, max_len)
    visual = torch.isin(input_ids, torch.tensor(visual_token_ids(config), device=device)).reshape(-1)
    inputs = dict(input_ids=input_ids, attention_mask=valid.long(), position_ids=positions,
                  pixel_values=torch.cat([s.pixel_values for s in samples]).to(device, dtype),
                  image_grid_thw=torch.cat([s.image_grid_thw for s in samples]).to(device))
    print(f"verl-free: Qwen2.5-VL {args.preset} shape, {sum(p.numel() for p in model.parameters()) / 1e9:.2f}B params, "
          f"{args.dtype} on {device}, batch {len(samples)} x {max_len} ({int(lengths.sum())} tokens)")

    hook_seconds = []

    def score(hidden):
        flat = hidden.reshape(-1, hidden.shape[-1])
        mu, has_visual = visual_prototypes(flat, segment_ids, visual, len(samples), args.chunk_tokens)
        return cosine_to_prototypes(flat, segment_ids, mu, args.chunk_tokens)[valid.reshape(-1)], has_visual

    def log_prob_forward():
        logits = model(**inputs, use_cache=False).logits
        labels = torch.roll(input_ids, -1, dims=1)
        log_probs = torch.log_softmax(logits.float(), dim=-1).gather(-1, labels.unsqueeze(-1)).squeeze(-1)
        return log_probs[valid]

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    def plain():
        with torch.no_grad():
            log_prob_forward()
        sync()

    def scored():
        timer = PassTimer(cuda_events=device.type == "cuda")  # the engine's timer: CUDA events, read after
        with torch.no_grad(), HiddenStateCapture(model, on_capture=timer.wrap(SCORE, score)) as capture:
            log_prob_forward()
        assert capture.result[0].shape == (int(lengths.sum()),)
        hook_seconds.append(timer.seconds()[SCORE])
        sync()

    times = interleaved({"plain": plain, "scored": scored}, args.repeats)
    del hook_seconds[0]  # the warm-up call
    extra = ""
    if device.type == "cuda":
        peaks = {}
        for name, arm in (("plain", plain), ("scored", scored)):
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
            arm()
            peaks[name] = torch.cuda.max_memory_allocated()
        extra = (f"peak memory: plain {peaks['plain'] / 2**30:.3f} GiB, scored {peaks['scored'] / 2**30:.3f} GiB, "
                 f"extra {(peaks['scored'] - peaks['plain']) / 2**20:.1f} MiB")
    report(times, hook_seconds[: args.repeats], args.device, extra)


# ---------------------------------------------------------------- verl engine mode


@contextlib.contextmanager
def cpu_verl_engine(preset: dict, n_samples: int, text_len: int):
    """verl's real FSDP2 engine (this package's subclass, through verl's registry) on the CPU platform,
    over a random model of `preset`'s shape and `n_samples` image+text samples, fp32, padded (sdpa).

    Yields (engine, model, samples, infer): `infer(**flags)` runs one forward-only infer_batch of all
    samples in one micro-batch, entropy on, with the given non-tensor flags, and returns verl's
    output ({"model_output", "loss", "metrics"}).
    """
    import transformers

    from vgpo_verl.doctor.verl_run import build_batch, build_engine, infer_batch, init_process_group

    init_process_group("cpu")

    try:
        with tempfile.TemporaryDirectory() as model_dir:
            config = build_config(preset)
            torch.manual_seed(0)
            model = transformers.AutoModelForImageTextToText.from_config(config).eval()
            model.save_pretrained(model_dir)
            samples = make_samples(config, preset, n_samples, text_len)
            engine = build_engine(model_dir, remove_padding=False, sp=1)

            def infer(**flags):
                return infer_batch(engine, build_batch(model, samples, **flags), remove_padding=False,
                                   micro_batch_size=len(samples))

            yield engine, model, samples, infer
    finally:
        torch.distributed.destroy_process_group()


def run_verl(args, preset: dict) -> None:
    """verl's real FSDP2 engine (vgpo_verl.plugin.engine's subclass) on CPU, infer_batch with/without the flag."""
    hook_seconds = []
    with cpu_verl_engine(preset, args.samples, args.text_len) as (engine, model, samples, infer):
        n_tokens = sum(len(s.input_ids) for s in samples)
        print(f"verl engine {type(engine).__name__} (fsdp2, gloo, CPU), Qwen2.5-VL {args.preset} shape, "
              f"{sum(p.numel() for p in model.parameters()) / 1e6:.1f}M params, {len(samples)} samples, "
              f"{n_tokens} tokens, one micro-batch, padded inputs (sdpa)")

        def arm(flag: bool):
            def run():
                output = infer(vgpo_score=flag)
                assert ("vgpo_visual_score" in output["model_output"]) == flag
                if flag:
                    hook_seconds.append(output["metrics"][TIMING_PREFIX + SCORE])
            return run

        times = interleaved({"plain": arm(False), "scored": arm(True)}, args.repeats)
    report(times, hook_seconds[1:], "cpu")  # without the warm-up call


QUICK = dict(preset="tiny", samples=2, text_len=24, repeats=2)  # --quick: seconds, a smoke run


def benchmark_parser(description: str, repeats: int) -> argparse.ArgumentParser:
    """The options every old-log-prob-pass benchmark takes (mode, model shape, device, rounds)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--mode", choices=["verl", "hf"], default="verl")
    parser.add_argument("--preset", choices=sorted(PRESETS), default="small")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--text-len", type=int, default=200, help="text tokens per sample (plus the image's)")
    parser.add_argument("--repeats", type=int, default=repeats)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--quick", action="store_true",
                        help=f"a smoke run in seconds, not a measurement: {QUICK} (overrides those options)")
    return parser


def run_benchmark(args, run_verl, run_hf) -> None:
    """Apply --quick and --threads, refuse --mode verl off the CPU, and run the chosen mode."""
    if args.quick:
        vars(args).update(QUICK)
        print(f"--quick: {QUICK}; a smoke run, not a measurement")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.mode == "verl" and args.device != "cpu":
        sys.exit("--mode verl runs verl's engine on the CPU platform; on a GPU use --mode hf (verl-free)")
    (run_verl if args.mode == "verl" else run_hf)(args, PRESETS[args.preset])


def main(argv=None) -> None:
    parser = benchmark_parser(__doc__.split("\n")[0], repeats=10)
    parser.add_argument("--chunk-tokens", type=int, default=8192)
    run_benchmark(parser.parse_args(argv), run_verl, run_hf)


if __name__ == "__main__":
    main()
