"""`python -m vgpo_verl.doctor` (console script `vgpo-doctor`): check a model before a cluster run.

    vgpo-doctor --model PATH [--device cpu|cuda] [--engine fsdp2|veomni] [--lora-rank R] [--methods ...]
    vgpo-doctor --tiny FAMILY [--engine ...] [--lora-rank R] [--methods ...]   (FAMILY: see vgpo_verl.plugin.families)

In this one process, through verl's real actor engine (the one our plugin registers, FSDP2, world
size 1; with --engine veomni verl's VeOmni engine, on CPU over 2 spawned gloo ranks since VeOmni
materialises its model through FSDP2), on synthetic prompts laid out like the family's processor output (one image, text only, two
images, a video): the padded and the packed (remove-padding, dynamic batch) layouts, each method's
extra outputs compared with a plain-transformers recomputation of the same model (vgpo_verl.doctor.reference,
run before verl patches the model classes). With --lora-rank, a random non-zero adapter goes through
verl's LoRA path (`lora_adapter_path`); the reference is the merged model, and VPPO's perturbed
log-probs must differ from the base model's. With --tiny, a random model of the family is built
offline first.

Output: the visual token ids, the scored module's name, per layout max |delta| against the reference
(scores, log-probs, entropy), VPPO's perturbed log-prob gap; for --model the extra memory of one
scoring chunk at the model's hidden size. The last line is `<family or path>: ok (...)` or
`<family or path>: FAILED (...)`. Exit status: 0 every check passed; 1 a check failed or the model is
refused; 2 a usage error (one line naming the flag).

Its modules: `checks` (the checks above), `verl_run` (verl's engine built in this process),
`reference` (the plain-transformers recomputation), `tiny_models` (tiny random models of every family
and synthetic prompts laid out like their processors'). A tool: may import vgpo_verl.plugin,
vgpo_verl.methods, vgpo_verl.cpu, verl and transformers.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import sys
import tempfile
import time
import traceback

from vgpo_verl import cli
from vgpo_verl.plugin.families import FAMILIES

METHODS = ("vgpo", "vppo", "entropy_shaping")
ENGINES = ("fsdp2", "veomni")
VEOMNI_INSTALL = ("pip install --no-deps veomni==0.1.12 (docs/models.md, VeOmni); in a clone after `make install` "
                  "it is in .venv/veomni: PYTHONPATH=.venv/veomni")
PROG = cli.prog("vgpo_verl.doctor", "vgpo-doctor")


def build_parser() -> argparse.ArgumentParser:
    parser = cli.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--model", metavar="PATH", help="a local Hugging Face checkpoint directory")
    which.add_argument("--tiny", metavar="FAMILY", choices=FAMILIES, help=f"a tiny random model: {', '.join(FAMILIES)}")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--engine", default="fsdp2", choices=ENGINES,
                        help="verl's actor engine: fsdp2 (model_engine=dp) or veomni (model_engine=veomni)")
    parser.add_argument("--lora-rank", type=cli.int_at_least(0), default=0, help="LoRA rank through verl's LoRA path (0: full model)")
    parser.add_argument("--methods", default=",".join(METHODS), help=f"comma-separated subset of {','.join(METHODS)}")
    return parser


def parse_args(argv) -> argparse.Namespace:
    """The checked arguments; UsageError naming the flag otherwise."""
    args = build_parser().parse_args(argv)
    args.methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = sorted(set(args.methods) - set(METHODS))
    if unknown or not args.methods:
        raise cli.UsageError(f"--methods {unknown or 'empty'} not among {','.join(METHODS)}",
                             f"give a comma-separated subset of {','.join(METHODS)}")
    if args.model is not None:
        folder = cli.existing_path("--model", args.model, "pass a Hugging Face checkpoint folder", kind="folder")
        if not (folder / "config.json").is_file():
            raise cli.UsageError(f"--model {args.model} has no config.json",
                                 "pass a Hugging Face checkpoint folder (for verl's actor shards: "
                                 "python -m verl.model_merger merge --backend fsdp ...)")
        args.model = str(folder.resolve())
    if args.engine == "veomni":
        import importlib.util

        if importlib.util.find_spec("veomni") is None:
            raise cli.UsageError("--engine veomni: the veomni package is not installed", VEOMNI_INSTALL)
        if args.lora_rank:
            raise cli.UsageError(f"--lora-rank {args.lora_rank} with --engine veomni: LoRA through verl's VeOmni "
                                 "engine is not checked here", "use --engine fsdp2 for LoRA, or --lora-rank 0")
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise cli.UsageError("--device cuda: no CUDA device is visible", "run on a GPU machine or use --device cpu")
    return args


@cli.command(PROG)
def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    from vgpo_verl.doctor.checks import Doctor

    name = args.tiny or args.model
    start = time.monotonic()
    verl_output = io.StringIO()  # verl prints its monkey patches; shown only if something breaks
    with tempfile.TemporaryDirectory(prefix="vgpo-doctor-") as workdir:
        doctor = Doctor(args, workdir, out=sys.stdout)
        try:
            with contextlib.redirect_stdout(verl_output):
                doctor.run()
        except Exception as error:  # noqa: BLE001  (report any failure as the last line, with its traceback)
            sys.stderr.write(verl_output.getvalue())
            traceback.print_exc()
            first_line = next((line.strip() for line in str(error).splitlines() if line.strip()), "")
            doctor.check(False, f"{type(error).__name__}: {first_line}")
    seconds = time.monotonic() - start
    if doctor.failures:
        print(f"{name}: FAILED ({len(doctor.failures)} of {doctor.checks} checks: "
              f"{'; '.join(doctor.failures)}; {seconds:.0f} s)")
        return 1
    print(f"{name}: ok ({doctor.checks} checks, {doctor.summary()}, {seconds:.0f} s)")
    return 0
