"""The demo's verl run: `python -m verl.trainer.main_ppo` on the tiny Qwen2.5-VL and the shapes task.

Everything is real: Ray, vLLM (the CPU build) for rollouts and validation, verl's FSDP2 actor, the
VGPO estimator fed by the actor's own hidden states. Only the sizes are tiny, so it fits two CPU
cores: 4 prompts x 4 responses per step, 2 steps, one validation pass over 4 prompts.
(`--steps` and `--run-dir` change the number of steps and checkpoint every one: vgpo_verl.demo.continuing.)

The run lives in its own process group and every process it starts carries a run id in its
environment; `stop_leftovers()` ends exactly those, so nothing of it outlives the demo.
"""

from __future__ import annotations

import json
import os
import pathlib
import signal
import subprocess
import sys
import time
import uuid

from vgpo_verl.demo import watchdog

REPO = pathlib.Path(__file__).resolve().parents[2]
DEFAULT_CACHE = REPO / ".cache" / "demo"
RUN_ID_VAR = "VGPO_DEMO_RUN_ID"

TRAIN_PROMPTS = 8
VAL_PROMPTS = 4
BATCH_PROMPTS = 4
RESPONSES_PER_PROMPT = 4
STEPS = 2
MAX_PROMPT_TOKENS = 128  # chat template + question (~30) + 16 image tokens
MAX_RESPONSE_TOKENS = 32
LOGGERS = ("console", "file", "wandb", "tensorboard")
CHART_EVERY = 1
WANDB_FOLDER = "wandb"  # under the run directory: W&B's offline runs (wandb/offline-run-*)
TENSORBOARD_FOLDER = "tensorboard"


def overrides(model_dir: pathlib.Path, train: pathlib.Path, val: pathlib.Path, estimator: str,
              steps: int = STEPS) -> list[str]:
    """Hydra overrides of verl's ppo_trainer config for the CPU demo (each choice says why)."""
    actor = "actor_rollout_ref.actor"
    rollout = "actor_rollout_ref.rollout"
    return [
        f"algorithm.adv_estimator={estimator}",
        # data: the shapes task; no dataloader worker processes (each costs ~0.75 GB)
        f"data.train_files={train}",
        f"data.val_files={val}",
        "data.image_key=images",
        f"data.train_batch_size={BATCH_PROMPTS}",
        f"data.val_batch_size={VAL_PROMPTS}",
        f"data.max_prompt_length={MAX_PROMPT_TOKENS}",
        f"data.max_response_length={MAX_RESPONSE_TOKENS}",
        "data.dataloader_num_workers=0",
        "data.filter_overlong_prompts=false",
        "data.shuffle=false",
        # model: no flash-attn on CPU -> sdpa and padded (not packed) sequences
        f"actor_rollout_ref.model.path={model_dir}",
        "actor_rollout_ref.model.use_remove_padding=false",
        "actor_rollout_ref.model.enable_gradient_checkpointing=false",
        "+actor_rollout_ref.model.override_config.attn_implementation=sdpa",
        # actor: FSDP2 (FSDP1 wants an accelerator); no torch.compile (minutes on CPU); no KL -> no ref model
        f"{actor}.strategy=fsdp2",
        f"{actor}.use_torch_compile=false",
        f"{actor}.fsdp_config.use_torch_compile=false",
        f"{actor}.ppo_mini_batch_size={BATCH_PROMPTS}",
        f"{actor}.ppo_micro_batch_size_per_gpu={BATCH_PROMPTS * RESPONSES_PER_PROMPT}",
        f"{actor}.use_kl_loss=false",
        f"{actor}.optim.lr=1e-5",
        # fp32 compute: without AVX-512 bf16, CPU bf16 matmuls take torch's slow reference path
        f"+{actor}.fsdp_config.mixed_precision={{param_dtype:fp32,reduce_dtype:fp32,buffer_dtype:fp32}}",
        # rollout: vLLM CPU, eager, small context; no sleep mode / cache freeing (CUDA-only features)
        f"{rollout}.name=vllm",
        f"{rollout}.n={RESPONSES_PER_PROMPT}",
        f"{rollout}.tensor_model_parallel_size=1",
        f"{rollout}.log_prob_micro_batch_size_per_gpu={BATCH_PROMPTS * RESPONSES_PER_PROMPT}",
        f"{rollout}.enforce_eager=true",
        # fp32 like the actor (no bf16 rounding between rollout and actor log-probs; bf16 matmuls are
        # the slow path without AVX-512-BF16). vLLM would pack fp32 linears into oneDNN on any x86 CPU;
        # vgpo_verl.cpu.vllm_linear keeps them on the synced weights, so the demo runs that path everywhere
        f"{rollout}.dtype=float32",
        f"+{rollout}.engine_kwargs.vllm.skip_mm_profiling=true",
        # images rescaled/normalized by the HF processor, not by vLLM's `visual.input_norm` buffers:
        # verl starts vLLM on dummy weights (load_format=dummy), which turns those buffers into noise
        # too, and its weight sync sends only the actor's state dict, which has no such buffers, so
        # every image would reach vLLM's vision tower as ~0 (rollout/actor log-probs then disagree)
        f"+{rollout}.engine_kwargs.vllm.mm_device_do_normalize=false",
        # one model process fewer to start (each imports vLLM: ~30 s here): no worker process for TP=1
        f"+{rollout}.engine_kwargs.vllm.distributed_executor_backend=uni",
        f"{rollout}.max_model_len={MAX_PROMPT_TOKENS + MAX_RESPONSE_TOKENS}",
        f"{rollout}.max_num_batched_tokens=512",
        f"{rollout}.max_num_seqs={BATCH_PROMPTS * RESPONSES_PER_PROMPT}",
        f"{rollout}.free_cache_engine=false",
        f"+{rollout}.enable_sleep_mode=false",
        f"{rollout}.agent.num_workers=1",
        f"+{rollout}.engine_kwargs.vllm.limit_mm_per_prompt='{{\"image\":1,\"video\":0}}'",
        # reward: boxed-answer accuracy (vgpo_verl.reward), one reward worker
        "reward.num_workers=1",
        "reward.custom_reward_function.path=pkg://vgpo_verl.reward",
        "reward.custom_reward_function.name=compute_score",
        # TransferQueue: one storage unit instead of 8 actors
        "transfer_queue.backend.SimpleStorage.num_data_storage_units=1",
        "+ray_kwargs.ray_init.include_dashboard=false",
        # trainer: one CPU "GPU", `steps` steps (as many epochs as they take: verl's loop also ends when
        # the epochs run out), validation after the last one; metrics to the console, a jsonl (the
        # summary and the report page read it), W&B offline and TensorBoard (run_environment's folders)
        "trainer.device=cpu",
        "trainer.nnodes=1",
        "trainer.n_gpus_per_node=1",
        f"trainer.total_training_steps={steps}",
        f"trainer.total_epochs={-(-steps * BATCH_PROMPTS // TRAIN_PROMPTS)}",
        "trainer.val_before_train=false",
        f"trainer.test_freq={steps}",
        "trainer.save_freq=-1",
        f"trainer.logger=[{','.join(LOGGERS)}]",
        "trainer.project_name=vgpo_demo",
        f"trainer.experiment_name=tiny_qwen2_5_vl_shapes_{estimator}",
        # the forgetting chart (vgpo_verl.plugin.tracking) at every step: the demo has only a few
        *([f"+algorithm.vgpo.focus_chart_every={CHART_EVERY}"] if estimator == "vgpo" else []),
    ]


def run_environment(run_dir: pathlib.Path, run_id: str) -> dict[str, str]:
    """The CPU platform's variables, plus: every cache and log inside run_dir, offline, no telemetry."""
    from vgpo_verl.cpu import broken_companions, environment

    env = dict(os.environ)
    env.update(environment(hidden_modules=broken_companions()))
    cache = run_dir / "cache"
    env.update(
        {
            RUN_ID_VAR: run_id,
            "VERL_FILE_LOGGER_PATH": str(run_dir / "metrics.jsonl"),
            # W&B offline (nothing leaves the machine; `wandb sync` uploads it later), no console capture
            "WANDB_MODE": "offline",
            "WANDB_DIR": str(run_dir),
            "WANDB_CONSOLE": "off",
            "WANDB_SILENT": "true",
            "TENSORBOARD_DIR": str(run_dir / TENSORBOARD_FOLDER),
            "XDG_CACHE_HOME": str(cache),
            "VLLM_CACHE_ROOT": str(cache / "vllm"),
            "TRITON_CACHE_DIR": str(cache / "triton"),
            "TORCHINDUCTOR_CACHE_DIR": str(cache / "inductor"),
            "HF_HOME": str(cache / "huggingface"),
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
            "VLLM_NO_USAGE_STATS": "1",
            "DO_NOT_TRACK": "1",
            "RAY_USAGE_STATS_ENABLED": "0",
            "RAY_DEDUP_LOGS": "1",
            "TOKENIZERS_PARALLELISM": "false",
            "PYTHONUNBUFFERED": "1",
        }
    )
    return env


def pids_of_run(run_id: str) -> list[int]:
    """Processes whose environment carries this run's id (the demo's own tree, Ray's and vLLM's)."""
    marker = f"{RUN_ID_VAR}={run_id}".encode()
    pids = []
    for entry in pathlib.Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if marker in (entry / "environ").read_bytes().split(b"\0"):
                pids.append(int(entry.name))
        except OSError:  # gone, or not ours to read
            continue
    return pids


def stop_leftovers(run_id: str, grace_s: float = 10.0) -> list[int]:
    """End every process of this run still alive (SIGTERM, then SIGKILL); returns their pids."""
    pids = pids_of_run(run_id)
    for pid in pids:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and pids_of_run(run_id):
        time.sleep(0.5)
    for pid in pids_of_run(run_id):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return pids


def run_verl(run_dir: pathlib.Path, args: list[str], echo=None, on_start=None) -> tuple[int, str]:
    """Run main_ppo with `args` in run_dir; stream its output to run_dir/train.log and to `echo`.

    `on_start(run_id)` is called once the process is started (to watch its memory).
    A run whose Ray actor, vLLM engine or trainer died, or that went silent, is stopped at once
    (vgpo_verl.demo.watchdog), with its root-cause lines printed; its exit code is then non-zero.
    Returns (exit code, run id). Whatever way it ends, no process of the run is left behind.
    """
    run_id = uuid.uuid4().hex
    env = run_environment(run_dir, run_id)
    log_path = run_dir / "train.log"
    cmd = [sys.executable, "-m", "verl.trainer.main_ppo", *args]
    (run_dir / "command.json").write_text(json.dumps({"cmd": cmd, "cwd": str(run_dir)}, indent=2))
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            cmd, cwd=run_dir, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True
        )
        if on_start is not None:
            on_start(run_id)

        def on_line(line: str) -> None:
            log.write(line)
            log.flush()
            if echo is not None:
                echo(line)

        try:
            dog = watchdog.Watchdog()
            failure = watchdog.stream(proc.stdout, on_line, dog)
            if failure is not None:
                _end_group(proc)  # dead or stalled: nothing more will come of it
            code = proc.wait()
            if failure is None and code != 0:
                failure = dog.exit_failure(code)
            if failure is not None:
                print(failure.report(log_path), flush=True)
                code = code if code > 0 else 1  # ended by our signal: still a failure
        except BaseException:
            _end_group(proc)
            raise
        finally:
            stop_leftovers(run_id)
    return code, run_id


def _end_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=15)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
