"""`python -m vgpo_verl.demo` (`make demo`): VGPO trains a tiny vision-language model on this CPU.

Builds the tiny Qwen2.5-VL, its warm start (minutes of supervised fine-tuning, so rewards vary) and
the shapes task if missing (under .cache/demo in the repo), runs verl's `main_ppo` with
`algorithm.adv_estimator=vgpo` from the warm start for 2 steps plus one validation, shows its
progress, and ends with a summary: per step the reward, verl's advantage range, the `vgpo/` and
`rollout_corr/` metrics; wall time, peak memory and where the logs are (verl's jsonl, W&B offline,
TensorBoard), and the run's one-page report (report.png, vgpo_verl.report). Exit code: verl's, or 1 if
the run did not produce what the summary needs.

`--steps N --run-dir DIR`: N steps, a checkpoint after each into DIR; the same command with a larger
N continues from the last checkpoint, trains only the missing steps and says `resumed from step K`
(vgpo_verl.demo.continuing).

`--learn`: VGPO and DAPO from the same warm start for vgpo_verl.demo.learn.STEPS steps each, with
validation; writes learning_curve_tiny.{json,png} (see vgpo_verl.demo.learn).

`--mechanism`: visual forgetting in miniature, VGPO vs DAPO over seeds on the shapes "describe"
task; writes mechanism_tiny.{json,png} (see vgpo_verl.demo.mechanism and docs/mechanism.md).
"""

from __future__ import annotations

import pathlib
import re
import signal
import sys
import time

from vgpo_verl import cli
from vgpo_verl.demo import run as demo_run
from vgpo_verl.demo.memory import PeakMemory
from vgpo_verl.demo.summary import read_metrics, render_summary

# Lines of verl's output worth showing live (the full log goes to train.log).
PROGRESS = re.compile(
    r"Training Progress|step:\d|val-core|Error|Traceback|Exception|Started a local Ray|vllm_async_server"
)
NOISE = re.compile(r"Warning|warnings.warn|'truncation'")
PROG = "python -m vgpo_verl.demo"


def _parser() -> cli.ArgumentParser:
    p = cli.ArgumentParser(prog=PROG, description=__doc__.splitlines()[0])
    p.add_argument("--cache-dir", type=pathlib.Path, default=demo_run.DEFAULT_CACHE,
                   help="where the tiny model, the data and the run directories go (default: %(default)s)")
    p.add_argument("--estimator", default="vgpo", help="algorithm.adv_estimator (default: %(default)s)")
    p.add_argument("--steps", type=cli.int_at_least(1), default=demo_run.STEPS, help="training steps (default: %(default)s)")
    p.add_argument("--run-dir", type=pathlib.Path, default=None,
                   help="checkpoint after every step into this directory; run again with it and a larger "
                        "--steps to continue from the last checkpoint (vgpo_verl.demo.continuing)")
    p.add_argument("--verbose", action="store_true", help="echo all of verl's output, not just progress")
    p.add_argument("--learn", action="store_true",
                   help="VGPO vs DAPO learning curves from the warm start (about 25 min on 2 cores)")
    p.add_argument("--mechanism", action="store_true",
                   help="VGPO vs DAPO over 3 seeds on a task that reasons before it answers, with the "
                        "forgetting curves (about 70 min on 2 cores)")
    p.add_argument("--out", type=pathlib.Path, default=None,
                   help="--learn, --mechanism: where their .json and .png go (default: the cache directory)")
    p.add_argument("extra", nargs="*", help="extra Hydra overrides passed to main_ppo")
    return p


def _exit_on_sigterm(signum, frame):
    raise SystemExit(128 + signum)  # unwinds through run_verl, which ends the run's processes


@cli.command(PROG)
def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    out_dir = None if args.out is None else cli.output_folder("--out", args.out)
    if args.run_dir is not None and (args.learn or args.mechanism):
        raise cli.UsageError("--run-dir continues the demo's run; --learn and --mechanism run their own",
                             "drop one of them")
    if args.learn and args.mechanism:
        raise cli.UsageError("--learn and --mechanism are two experiments", "run one at a time")
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    started = time.monotonic()
    cache = args.cache_dir.resolve()
    resumed_from, checkpoints = 0, []
    if args.run_dir is not None:
        from vgpo_verl.demo import continuing

        run_dir, checkpoint_dir, resumed_from = continuing.prepare(args.run_dir.resolve(), args.estimator)
        if resumed_from >= args.steps:
            print(f"[demo] {checkpoint_dir} is at step {resumed_from}: nothing to train for --steps {args.steps}",
                  flush=True)
            return 0
        checkpoints = continuing.checkpoint_overrides(checkpoint_dir)
        print(f"[demo] checkpoints after every step: {checkpoint_dir}"
              + (f"; resuming from step {resumed_from}" if resumed_from else ""), flush=True)

    print(f"[demo] preparing the tiny Qwen2.5-VL and the shapes task under {cache}", flush=True)
    from vgpo_verl.demo.shapes_data import DEFAULT_TASK, make_dataset
    from vgpo_verl.demo.tiny_model import build_tiny_vlm
    from vgpo_verl.demo.warm_start import build_warm_start

    model_dir = build_warm_start(build_tiny_vlm(cache / "tiny_qwen2_5_vl"), cache / "warm_start")

    def echo(line: str) -> None:
        if args.verbose or (PROGRESS.search(line) and not NOISE.search(line)):
            print("  | " + line.rstrip()[:300], flush=True)

    if args.mechanism:
        from vgpo_verl.demo.mechanism import run_mechanism

        run_mechanism(cache, model_dir, out_dir or cache, extra=args.extra, echo=echo)
        print(f"[mechanism] done in {(time.monotonic() - started) / 60:.1f} min; results in {out_dir or cache}", flush=True)
        return 0

    if args.learn:
        from vgpo_verl.demo.learn import run_learn

        result = run_learn(cache, model_dir, out_dir or cache, extra=args.extra, echo=echo)
        print(f"[learn] done in {(time.monotonic() - started) / 60:.1f} min; curves in {out_dir or cache}", flush=True)
        return max(result[arm]["exit_code"] for arm in ("vgpo", "dapo"))

    data_dir = cache / f"shapes_{DEFAULT_TASK}"
    train, val = data_dir / "train.parquet", data_dir / "val.parquet"
    if not (train.exists() and val.exists()):
        train, val = make_dataset(data_dir, demo_run.TRAIN_PROMPTS, demo_run.VAL_PROMPTS, seed=0)

    if args.run_dir is None:
        run_dir = cache / "runs" / time.strftime("%Y%m%d-%H%M%S")
    run_dir.mkdir(parents=True, exist_ok=True)
    overrides = demo_run.overrides(model_dir, train, val, args.estimator, steps=args.steps) + checkpoints + list(args.extra)
    print(f"[demo] running verl main_ppo (adv_estimator={args.estimator}, steps {resumed_from + 1}-{args.steps} "
          f"+ validation); full log: {run_dir / 'train.log'}", flush=True)

    with PeakMemory(demo_run.RUN_ID_VAR) as memory:
        code, _run_id = demo_run.run_verl(run_dir, overrides, echo=echo, on_start=memory.watch)
    wall_s = time.monotonic() - started

    metrics = read_metrics(run_dir / "metrics.jsonl")
    text, complete = render_summary(
        metrics, steps=args.steps, estimator=args.estimator, exit_code=code, wall_s=wall_s,
        peak_memory_bytes=memory.peak_bytes, run_dir=run_dir, resumed_from=resumed_from,
        page=_report_page(run_dir) if metrics else None,
    )
    print(text, flush=True)
    if code != 0:
        return code
    return 0 if complete else 1


def _report_page(run_dir: pathlib.Path) -> pathlib.Path | None:
    """The run's page (python -m vgpo_verl.report) next to its metrics.jsonl; None if it logged no step."""
    from vgpo_verl.report import report

    try:
        return report(run_dir / "metrics.jsonl")
    except cli.UsageError:
        return None


if __name__ == "__main__":
    sys.exit(main())
