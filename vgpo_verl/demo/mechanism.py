"""`python -m vgpo_verl.demo --mechanism`: visual forgetting in miniature, VGPO vs DAPO over seeds.

The design (docs/mechanism.md) in code. Task: shapes_data's "describe" (one large shape; the
response names the shape and its need, and gives the colour only after 36 tokens, so the rewarded
token has to look back at the image late in the response). Warm start: the demo's colour warm start
fine-tuned on that response (vgpo_verl.demo.warm_start, its answer token hedged as the colour one).
Arms: verl's `main_ppo` with `algorithm.adv_estimator=vgpo` (VGPOConfig's defaults, the paper's)
and `grpo` (DAPO: the knobs of vgpo_verl.demo.learn), from that one warm start, SEEDS each. Seed s
of both arms shuffles the training prompts with `data.seed=s` and samples every response slot with
its own vLLM seed derived from `rollout.seed=s` (vgpo_verl.plugin.rollout_seeds), so at step 1 both arms
draw the same rollouts from the same policy, and later ones from the same random numbers.

Measures, per arm and seed: validation accuracy before training and every TEST_FREQ steps
(VAL_PROMPTS prompts x VAL_RESPONSES responses sampled at temperature 1, as --learn); after the
runs, `vgpo_verl.analyze` (greedy responses to ANALYSIS_PROMPTS further held-out prompts, the
actor's scoring core) on the warm start and every final checkpoint: the mean raw visual
similarity in FOCUS_BINS bins of relative response position and its late/early ratio.

Writes `mechanism_tiny.json` (the schema of issue 21: seeds, arms.{vgpo,dapo}.{val_step, val_acc,
late_early_ratio, focus_by_position}, warm_start.{late_early_ratio, focus_by_position}, settings)
and `mechanism_tiny.png` (accuracy with a 95 % interval over seeds; the forgetting curves).
"""

from __future__ import annotations

import json
import math
import pathlib
import platform
import subprocess
import sys
import time
from collections import Counter

from vgpo_verl.methods.vgpo import FOCUS_BINS
from vgpo_verl.demo import learn
from vgpo_verl.demo import run as demo_run
from vgpo_verl.demo.summary import read_metrics

TASK = "describe"
ARMS = learn.ARMS  # arm -> algorithm.adv_estimator: vgpo, and DAPO's grpo
SEEDS = (0, 1, 2)
# Sizes shrunk from the design's 8 x 8 per step and 64 x 4 per validation by a timing trial (2 steps
# per arm, wall time only): a step of 64 responses took 1.7-2.2 min here, a validation of 256
# responses 2.3-2.4 min, the start of each run 3.5 min: 6 runs at the designed sizes need 3 hours.
# The first full run (12 steps, validation every 6) took 102 min with the warm start built, so 8 steps
# and prompts padded to 48 tokens instead of the demo's 128 (-12 % per step): see docs/mechanism.md.
STEPS = 8
TEST_FREQ = 4
BATCH_PROMPTS = 4
RESPONSES_PER_PROMPT = 4
TRAIN_PROMPTS = STEPS * BATCH_PROMPTS  # one epoch, each seed in its own order
VAL_PROMPTS = 96
VAL_RESPONSES = 1
ANALYSIS_PROMPTS = 64
LR = learn.LR
MAX_RESPONSE_TOKENS = 64  # the reference response is 39 tokens; room for drift
MAX_PROMPT_TOKENS = 48  # the describe prompt is 45 tokens (16 of them the image's); verl pads every row to this
ANALYSIS_DATA_SEED = 1  # shapes_data seed of the analysis prompts (the runs' data use seed 0)
TINY_PIXELS = (56 * 56, 112 * 112)  # the tiny model's image processor range (vgpo_verl.demo.tiny_model)
LIVE_FOCUS_KEY = "vgpo/focus_by_position/bin_{}"
JSON_NAME, PLOT_NAME = "mechanism_tiny.json", "mechanism_tiny.png"
COMMAND = "python -m vgpo_verl.demo --mechanism --out docs"


def mechanism_overrides(seed: int, run_dir: pathlib.Path) -> list[str]:
    """What one run changes on top of the --learn run's overrides (vgpo_verl.demo.learn)."""
    actor = "actor_rollout_ref.actor"
    rollout = "actor_rollout_ref.rollout"
    return [
        f"data.max_prompt_length={MAX_PROMPT_TOKENS}",
        f"data.max_response_length={MAX_RESPONSE_TOKENS}",
        f"{rollout}.max_model_len={MAX_PROMPT_TOKENS + MAX_RESPONSE_TOKENS}",
        f"data.val_batch_size={VAL_PROMPTS}",
        f"{rollout}.val_kwargs.n={VAL_RESPONSES}",
        f"{rollout}.max_num_seqs={max(BATCH_PROMPTS * RESPONSES_PER_PROMPT, VAL_PROMPTS * VAL_RESPONSES)}",
        f"data.train_batch_size={BATCH_PROMPTS}",
        f"{actor}.ppo_mini_batch_size={BATCH_PROMPTS}",
        f"{rollout}.n={RESPONSES_PER_PROMPT}",
        f"{actor}.optim.lr={LR}",
        # seed s: its own prompt order and sampling seeds, the same in both arms
        "data.shuffle=true",
        f"data.seed={seed}",
        f"{rollout}.seed={seed}",
        f"+{rollout}.custom.seed_per_sample=true",
        f"trainer.total_training_steps={STEPS}",
        f"trainer.test_freq={TEST_FREQ}",
        # the final policy as a Hugging Face checkpoint, for vgpo_verl.analyze; nothing else saved
        f"trainer.save_freq={STEPS}",
        f"trainer.default_local_dir={run_dir / 'checkpoints'}",
        f"{actor}.checkpoint.save_contents=[hf_model]",
        # rollouts and validation responses as JSONL, to check that both arms drew the same
        f"trainer.rollout_data_dir={run_dir / 'rollouts'}",
        f"trainer.validation_data_dir={run_dir / 'validation'}",
        "trainer.experiment_name=tiny_qwen2_5_vl_shapes_mechanism",
    ]


def final_checkpoint(run_dir: pathlib.Path, processor_from: pathlib.Path) -> pathlib.Path:
    """The run's last Hugging Face checkpoint, with the warm start's tokenizer and processor files
    (verl saves the weights and config only)."""
    import shutil

    path = run_dir / "checkpoints" / f"global_step_{STEPS}" / "actor" / "huggingface"
    if not (path / "config.json").exists():
        raise FileNotFoundError(f"{run_dir}: no final checkpoint at {path}; see {run_dir / 'train.log'}")
    for item in processor_from.iterdir():
        if item.is_file() and not item.name.startswith(("model", "config.json", "generation_config.json",
                                                        "warm_start.json")) and not (path / item.name).exists():
            shutil.copy2(item, path / item.name)
    return path


def live_focus(metrics: dict[int, dict[str, float]]) -> dict[str, list]:
    """The VGPO arm's live forgetting curve per training step (empty for DAPO: no scores there)."""
    steps = sorted(s for s, values in metrics.items() if LIVE_FOCUS_KEY.format(0) in values)
    return {"step": steps, "focus_by_position": [[metrics[s].get(LIVE_FOCUS_KEY.format(k), math.nan)
                                                  for k in range(FOCUS_BINS)] for s in steps]}


def generations(path: pathlib.Path) -> Counter:
    """(ground truth, response) multiset of one verl generations dump (verl sorts it by random uids)."""
    if not path.exists():
        return Counter()
    return Counter((r["gts"], r["output"]) for r in map(json.loads, path.read_text().splitlines()) if r)


def shared_fraction(a: Counter, b: Counter) -> float:
    """Share of `a`'s responses that `b` also drew (multiset intersection / size); NaN if `a` is empty."""
    total = sum(a.values())
    return sum((a & b).values()) / total if total else math.nan


def t_quantile(p: float, df: int) -> float:
    """Student's t quantile (no scipy here): bisection on the CDF, Simpson's rule on the density."""
    norm = math.exp(math.lgamma((df + 1) / 2) - math.lgamma(df / 2)) / math.sqrt(df * math.pi)

    def cdf(x: float, n: int = 2000) -> float:
        h = x / n
        f = [norm * (1 + (i * h) ** 2 / df) ** (-(df + 1) / 2) for i in range(n + 1)]
        return 0.5 + h / 3 * (f[0] + f[-1] + 4 * sum(f[1:-1:2]) + 2 * sum(f[2:-1:2]))

    lo, hi = 0.0, 1000.0
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if cdf(mid) < p else (lo, mid)
    return (lo + hi) / 2


def mean_interval(values: list[float]) -> tuple[float, float]:
    """(mean, half-width of its 95 % t interval) over seeds; half-width NaN for one value."""
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, math.nan
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    return mean, t_quantile(0.975, n - 1) * sd / math.sqrt(n)


def detectable_gap(vgpo: list[float], dapo: list[float]) -> dict:
    """Paired by seed: the VGPO - DAPO difference, its 95 % interval, and the smallest true gap a
    two-sided paired t-test at 5 % would detect with 80 % power given the seeds' spread
    ((t_.975 + t_.80) * sd / sqrt(n), df = n - 1)."""
    diffs = [a - b for a, b in zip(vgpo, dapo)]
    n = len(diffs)
    mean, half = mean_interval(diffs)
    sd = math.sqrt(sum((d - mean) ** 2 for d in diffs) / (n - 1)) if n > 1 else math.nan
    mde = (t_quantile(0.975, n - 1) + t_quantile(0.8, n - 1)) * sd / math.sqrt(n) if n > 1 else math.nan
    return {"differences": diffs, "mean": mean, "ci95_half_width": half, "sd": sd, "detectable_gap_80pct_power": mde}


def analyze_checkpoints(checkpoints: dict[str, pathlib.Path], data: pathlib.Path, out: pathlib.Path) -> dict:
    """`python -m vgpo_verl.analyze` on every checkpoint (one child process: it turns on the CPU
    vision path); returns label -> {focus_by_position, late_early_ratio} of the raw similarity."""
    out.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "vgpo_verl.analyze", "--cpu", "--backend", "transformers", "--dtype", "float32",
           "--data", str(data), "--out", str(out), "--max-samples", str(ANALYSIS_PROMPTS), "--bins", str(FOCUS_BINS),
           "--max-new-tokens", str(MAX_RESPONSE_TOKENS), "--max-model-len", str(MAX_PROMPT_TOKENS + MAX_RESPONSE_TOKENS),
           "--min-pixels", str(TINY_PIXELS[0]), "--max-pixels", str(TINY_PIXELS[1]), "--batch-size", "16"]
    for label, path in checkpoints.items():
        cmd += ["--checkpoint", f"{label}={path}"]
    with open(out / "analyze.log", "w") as log:
        proc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        raise RuntimeError(f"vgpo_verl.analyze exited {proc.returncode}; see {out / 'analyze.log'}")
    summaries = json.loads((out / "visual_forgetting.json").read_text())["checkpoints"]
    return {label: {"focus_by_position": s["similarity"]["mean"], "late_early_ratio": s["late_early_ratio"]["similarity"],
                    "n_responses": s["n_responses"]} for label, s in summaries.items()}


def machine() -> str:
    """CPU model and core count, for the figure and the settings."""
    import os

    model = platform.processor() or "unknown CPU"
    cpuinfo = pathlib.Path("/proc/cpuinfo")
    if cpuinfo.exists():
        names = [line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines() if line.startswith("model name")]
        model = names[0] if names else model
    return f"{model}, {len(os.sched_getaffinity(0))} cores"


def build_result(runs: dict[str, dict[int, dict]], analysis: dict, settings: dict) -> dict:
    """The issue's schema from per-arm, per-seed run records and the analysis summaries."""
    arms = {}
    for arm, by_seed in runs.items():
        seeds = sorted(by_seed)
        steps = {tuple(by_seed[s]["val_step"]) for s in seeds}
        if len(steps) != 1:
            raise RuntimeError(f"{arm}: the seeds validated at different steps {sorted(steps)}; see their train.log")
        arms[arm] = {"val_step": list(steps.pop()),
                     "val_acc": [by_seed[s]["val_acc"] for s in seeds],
                     "late_early_ratio": [analysis[f"{arm}_seed{s}"]["late_early_ratio"] for s in seeds],
                     "focus_by_position": [analysis[f"{arm}_seed{s}"]["focus_by_position"] for s in seeds]}
    warm = analysis["warm_start"]
    return {"seeds": sorted(next(iter(runs.values()))), "arms": arms,
            "warm_start": {"late_early_ratio": warm["late_early_ratio"], "focus_by_position": warm["focus_by_position"]},
            "settings": settings}


def report(result: dict) -> str:
    """The experiment's outcome as text: accuracy and forgetting per arm and seed, the paired gap."""
    settings = result["settings"]
    lines = [f"[mechanism] seeds {result['seeds']}; validation at steps {result['arms']['vgpo']['val_step']}"]
    warm = result["warm_start"]
    lines.append(f"[mechanism] warm start: focus_by_position {' '.join(f'{v:.3f}' for v in warm['focus_by_position'])}, "
                 f"late/early {warm['late_early_ratio']:.3f}")
    for arm, data in result["arms"].items():
        final, half = mean_interval([acc[-1] for acc in data["val_acc"]])
        lines.append(f"[mechanism] {arm}: final validation accuracy {final:.3f} +- {half:.3f} (95 %), late/early "
                     f"{' '.join(f'{r:.3f}' for r in data['late_early_ratio'])}")
        for seed, acc, focus in zip(result["seeds"], data["val_acc"], data["focus_by_position"]):
            lines.append(f"[mechanism]   seed {seed}: accuracy {' '.join(f'{a:.3f}' for a in acc)}; "
                         f"focus_by_position {' '.join(f'{v:.3f}' for v in focus)}")
    gap = settings.get("final_val_acc_gap")
    if gap:
        lines.append(f"[mechanism] VGPO - DAPO final accuracy, paired by seed: {gap['mean']:+.3f} +- "
                     f"{gap['ci95_half_width']:.3f} (95 %); these seeds detect a true gap of "
                     f"{gap['detectable_gap_80pct_power']:.3f} with 80 % power")
    same = settings.get("same_rollouts_at_step_0")
    if same:
        lines.append("[mechanism] same rollouts at step 0: " + "; ".join(
            f"{k.replace('_', ' ')} {' '.join(f'{v:.3f}' for v in values)}" for k, values in same.items()))
    return "\n".join(lines)


def plot(result: dict, path: pathlib.Path) -> None:
    """Left: validation accuracy per arm, mean over seeds with its 95 % interval (seeds thin).
    Right: the forgetting curves (analysis): warm start, and each arm's mean over seeds with its interval."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colours = {"vgpo": "tab:red", "dapo": "tab:blue"}

    def mean_with_band(ax, x, per_seed: list[list[float]], colour: str, label: str) -> None:
        """The mean over seeds as a line, its 95 % interval as a band."""
        mean, half = zip(*(mean_interval(list(v)) for v in zip(*per_seed)))
        ax.plot(x, mean, "o-", color=colour, label=label)
        ax.fill_between(x, [m - h for m, h in zip(mean, half)], [m + h for m, h in zip(mean, half)],
                        color=colour, alpha=0.15, lw=0)

    fig, (acc_ax, focus_ax) = plt.subplots(1, 2, figsize=(11, 4.4), dpi=120)
    for arm, data in result["arms"].items():
        for curve in data["val_acc"]:
            acc_ax.plot(data["val_step"], curve, "-", lw=0.7, alpha=0.35, color=colours[arm])
        mean_with_band(acc_ax, data["val_step"], data["val_acc"], colours[arm],
                       f"{arm.upper()} (mean of {len(data['val_acc'])} seeds)")
    acc_ax.set_xlabel("RL step")
    acc_ax.set_ylabel("validation accuracy (sampled, T = 1)")
    acc_ax.set_ylim(0, 1)
    acc_ax.grid(alpha=0.3)
    acc_ax.legend(fontsize=8, loc="lower right")
    acc_ax.set_title("accuracy, band: 95 % interval over seeds", fontsize=9)

    n_bins = len(result["warm_start"]["focus_by_position"])
    centres = [(i + 0.5) / n_bins for i in range(n_bins)]
    focus_ax.plot(centres, result["warm_start"]["focus_by_position"], "s--", color="black",
                  label=f"warm start (late/early {result['warm_start']['late_early_ratio']:.2f})")
    for arm, data in result["arms"].items():
        ratio = sum(data["late_early_ratio"]) / len(data["late_early_ratio"])
        mean_with_band(focus_ax, centres, data["focus_by_position"], colours[arm],
                       f"{arm.upper()} final (late/early {ratio:.2f})")
    focus_ax.set_xlabel("relative position in the response  t / (T - 1)")
    focus_ax.set_ylabel("mean visual similarity  cos(h_t, mean image h)")
    focus_ax.set_xlim(0, 1)
    focus_ax.grid(alpha=0.3)
    focus_ax.legend(fontsize=8)
    focus_ax.set_title("forgetting curve on held-out prompts (greedy responses)", fontsize=9)
    settings = result["settings"]
    fig.suptitle(f"tiny Qwen2.5-VL, shapes 'describe' task: VGPO vs DAPO from one warm start, "
                 f"{settings['steps']} steps x {settings['batch_prompts']} prompts x "
                 f"{settings['responses_per_prompt']} responses", fontsize=10)
    fig.text(0.01, 0.01, f"{settings['machine']}; `{settings['command']}`", fontsize=7, color="dimgray")
    fig.tight_layout(rect=(0, 0.03, 1, 0.95))
    fig.savefig(path)
    plt.close(fig)


def run_mechanism(cache: pathlib.Path, colour_warm_start: pathlib.Path, out_dir: pathlib.Path,
                  extra: list[str] = (), echo=None, seeds=SEEDS) -> dict:
    """The whole experiment; writes the JSON and the plot to out_dir and returns the result."""
    from vgpo_verl.demo.shapes_data import make_dataset
    from vgpo_verl.demo.warm_start import INFO_FILE, build_warm_start

    started = time.monotonic()
    warm_start = build_warm_start(colour_warm_start, cache / f"warm_start_{TASK}", task=TASK)
    warm_info = json.loads((warm_start / INFO_FILE).read_text())
    # written every time (a second): a cached file of another size would change which prompts train
    train, val = make_dataset(cache / f"shapes_{TASK}", TRAIN_PROMPTS, VAL_PROMPTS, seed=0, task=TASK)
    _, analysis_data = make_dataset(cache / f"shapes_{TASK}_analysis", 1, ANALYSIS_PROMPTS, seed=ANALYSIS_DATA_SEED,
                                    task=TASK)
    root = cache / "mechanism" / time.strftime("%Y%m%d-%H%M%S")
    runs: dict[str, dict[int, dict]] = {arm: {} for arm in ARMS}
    for seed in seeds:  # seed-major: a budget overrun still leaves complete pairs
        for arm, estimator in ARMS.items():
            run_dir = root / f"{arm}_seed{seed}"
            run_dir.mkdir(parents=True, exist_ok=True)
            overrides = learn.merge_overrides(demo_run.overrides(warm_start, train, val, estimator), learn.learn_overrides())
            overrides = learn.merge_overrides(learn.merge_overrides(overrides, mechanism_overrides(seed, run_dir)), list(extra))
            print(f"[mechanism] {arm} seed {seed} (adv_estimator={estimator}): {STEPS} steps, validation every "
                  f"{TEST_FREQ}; log {run_dir / 'train.log'}", flush=True)
            run_started = time.monotonic()
            code, _ = demo_run.run_verl(run_dir, overrides, echo=echo)
            if code != 0:
                raise RuntimeError(f"{arm} seed {seed}: verl exited {code}; see {run_dir / 'train.log'}")
            metrics = read_metrics(run_dir / "metrics.jsonl")
            curve = learn.curve(metrics)
            runs[arm][seed] = {"val_step": curve["step"], "val_acc": curve["val_acc"], "train_reward": curve["train_reward"],
                               "live": live_focus(metrics), "wall_s": round(time.monotonic() - run_started, 1),
                               "checkpoint": final_checkpoint(run_dir, warm_start), "dir": run_dir}
            print(f"[mechanism] {arm} seed {seed}: validation accuracy {curve['val_acc']} at steps {curve['step']}, "
                  f"{runs[arm][seed]['wall_s'] / 60:.1f} min", flush=True)
            for step, bins in zip(runs[arm][seed]["live"]["step"], runs[arm][seed]["live"]["focus_by_position"]):
                print(f"[mechanism]   step {step}: vgpo/focus_by_position " + " ".join(f"{b:.3f}" for b in bins), flush=True)

    print(f"[mechanism] analysing the warm start and {sum(map(len, runs.values()))} final checkpoints on "
          f"{ANALYSIS_PROMPTS} held-out prompts", flush=True)
    checkpoints = {"warm_start": warm_start}
    checkpoints.update({f"{arm}_seed{s}": record["checkpoint"] for arm, by_seed in runs.items() for s, record in by_seed.items()})
    analysis = analyze_checkpoints(checkpoints, analysis_data, root / "analysis")

    first_val = {(arm, s): generations(r["dir"] / "validation" / "0.jsonl") for arm, by_seed in runs.items() for s, r in by_seed.items()}
    first_train = {(arm, s): generations(r["dir"] / "rollouts" / "1.jsonl") for arm, by_seed in runs.items() for s, r in by_seed.items()}
    arm_a, arm_b = ARMS
    settings = {
        "task": TASK, "steps": STEPS, "test_freq": TEST_FREQ, "batch_prompts": BATCH_PROMPTS,
        "responses_per_prompt": RESPONSES_PER_PROMPT, "train_prompts": TRAIN_PROMPTS, "val_prompts": VAL_PROMPTS,
        "val_responses": VAL_RESPONSES, "val_temperature": 1.0, "lr": LR, "max_prompt_tokens": MAX_PROMPT_TOKENS,
        "max_response_tokens": MAX_RESPONSE_TOKENS,
        "vgpo": "VGPOConfig defaults (the paper's)", "dapo": "grpo advantages; clip 0.2/0.28, dual clip 3, token-mean, "
        "no KL, no entropy bonus (both arms)", "filter_groups": False,
        "analysis": {"prompts": ANALYSIS_PROMPTS, "data_seed": ANALYSIS_DATA_SEED, "decoding": "greedy",
                     "bins": FOCUS_BINS, "measure": "raw similarity s, late/early = mean of bins centred in the last "
                     "third / first third", "n_responses": {k: v["n_responses"] for k, v in analysis.items()}},
        "warm_start": {k: v for k, v in warm_info.items() if k not in ("history", "base")},
        "same_rollouts_at_step_0": {
            "validation_before_training_shared_across_arms": [shared_fraction(first_val[arm_a, s], first_val[arm_b, s]) for s in seeds],
            "validation_before_training_shared_across_seeds": [shared_fraction(first_val[arm_a, s], first_val[arm_a, t])
                                                               for s, t in zip(seeds, seeds[1:])],
            "first_training_rollouts_shared_across_arms": [shared_fraction(first_train[arm_a, s], first_train[arm_b, s]) for s in seeds],
        },
        "final_val_acc_gap": detectable_gap([runs[arm_a][s]["val_acc"][-1] for s in seeds],
                                            [runs[arm_b][s]["val_acc"][-1] for s in seeds]),
        "runs": {f"{arm}_seed{s}": {"wall_s": r["wall_s"], "train_reward": r["train_reward"], "live_focus_by_position": r["live"]}
                 for arm, by_seed in runs.items() for s, r in by_seed.items()},
        "extra_overrides": list(extra), "machine": machine(),
        "command": COMMAND,
        "wall_s": round(time.monotonic() - started, 1), "run_root": str(root),
    }
    result = build_result({arm: {s: {"val_step": r["val_step"], "val_acc": r["val_acc"]} for s, r in by_seed.items()}
                           for arm, by_seed in runs.items()}, analysis, settings)
    out_dir.mkdir(parents=True, exist_ok=True)
    from vgpo_verl.analyze import strict_json

    (out_dir / JSON_NAME).write_text(json.dumps(strict_json(result), indent=1, allow_nan=False) + "\n")
    plot(result, out_dir / PLOT_NAME)
    print(report(result), flush=True)
    return result
