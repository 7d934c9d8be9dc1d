"""verl platform "cpu": run verl's FSDP engine, Ray workers and vLLM rollouts on a machine without a GPU.

verl 0.9 asks a platform object (`verl.plugin.platform.get_platform()`) for everything device-specific:
the torch device module, the collective backend, the Ray resource. This module provides one for CPUs.
Registered and selected only by `vgpo_verl.cpu.enable()` (VERL_PLATFORM=cpu); GPU users never see it.

Ray still schedules verl's workers on "GPU" resources (verl reads their accelerator ids), so
`enable()` gives Ray one logical GPU; nothing runs on it.
"""

from __future__ import annotations

import os
import types
from contextlib import contextmanager
from typing import Any

import torch

from verl.plugin.platform.platform_base import PlatformBase
from verl.plugin.platform.platform_manager import PlatformRegistry

PLATFORM_NAME = "cpu"


def _process_rss_bytes() -> int:
    """Resident memory of this process (what "device memory" means on a CPU)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _meminfo_bytes(key: str) -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"/proc/meminfo has no {key!r} line")


def _noop(*args, **kwargs) -> None:
    return None


def _cpu_device_module() -> types.ModuleType:
    """`torch.cpu` plus the functions verl calls on the device module that `torch.cpu` lacks.

    A separate module object (torch.cpu itself is left untouched): memory queries report this
    process's resident memory and the machine's RAM; cache and RNG calls map to their CPU meaning.
    """
    module = types.ModuleType("vgpo_verl.cpu.device_module", "torch.cpu with verl's memory/RNG API")
    module.__dict__.update({k: v for k, v in vars(torch.cpu).items() if not k.startswith("__")})
    extras = {
        "empty_cache": _noop,
        "ipc_collect": _noop,
        "reset_peak_memory_stats": _noop,
        "set_per_process_memory_fraction": _noop,
        "memory_allocated": lambda device=None: _process_rss_bytes(),
        "memory_reserved": lambda device=None: _process_rss_bytes(),
        "max_memory_allocated": lambda device=None: _process_rss_bytes(),
        "max_memory_reserved": lambda device=None: _process_rss_bytes(),
        "memory_stats": lambda device=None: {},
        "mem_get_info": lambda device=None: (_meminfo_bytes("MemAvailable"), _meminfo_bytes("MemTotal")),
        "get_device_name": lambda device=None: "CPU",
        "manual_seed": torch.manual_seed,
        "manual_seed_all": torch.manual_seed,
        "get_rng_state": lambda device=None: torch.get_rng_state(),
        "set_rng_state": lambda state, device=None: torch.set_rng_state(state),
    }
    for name, fn in extras.items():
        if not hasattr(module, name):
            setattr(module, name, fn)
    return module


class PlatformCPU(PlatformBase):
    """CPU platform: device "cpu", collective backend gloo, one logical Ray GPU per worker."""

    _device_module: types.ModuleType | None = None

    @property
    def device_name(self) -> str:
        return "cpu"

    @property
    def vendor_name(self) -> str:
        return "cpu"

    @property
    def device_module(self) -> types.ModuleType:
        if PlatformCPU._device_module is None:
            PlatformCPU._device_module = _cpu_device_module()
        return PlatformCPU._device_module

    def is_available(self) -> bool:
        return True

    def is_platform_available(self, use_smi_check=False) -> bool:
        # Never auto-detected: a GPU machine must not end up here by probing. Only VERL_PLATFORM=cpu.
        return False

    def current_device(self) -> str:
        # verl passes this straight to `.to(...)` / `device=`: an index would mean "accelerator 0",
        # which torch refuses on a machine without one. "cpu" is what those calls need.
        return "cpu"

    def device_count(self) -> int:
        return 1

    def set_device(self, device_index: int) -> None:
        return None

    def synchronize(self, device_index=None) -> None:
        return None

    def manual_seed(self, seed: int) -> None:
        torch.manual_seed(seed)

    def manual_seed_all(self, seed: int) -> None:
        torch.manual_seed(seed)

    def set_allocator_settings(self, settings: str) -> None:
        return None

    def empty_cache(self) -> None:
        return None

    def get_device_capability(self, device_index: int = 0):
        return None, None

    def communication_backend_name(self) -> str:
        return "gloo"

    def visible_devices_envvar(self) -> str:
        # Ray sets this for actors holding a (logical) GPU; verl reads the rank's device from it.
        return "CUDA_VISIBLE_DEVICES"

    @contextmanager
    def nvtx_range(self, msg: str):
        yield

    def profiler_start(self) -> None:
        return None

    def profiler_stop(self) -> None:
        return None

    def ray_resource_name(self) -> str:
        return "GPU"

    def ray_resource_options(self, num_gpus: float) -> dict[str, Any]:
        return {"num_gpus": num_gpus}

    def ray_noset_envvars(self) -> list[str]:
        return ["RAY_EXPERIMENTAL_NOSET_CUDA_VISIBLE_DEVICES"]

    def is_ipc_supported(self) -> bool:
        return False

    def rollout_env_vars(self) -> dict[str, str]:
        # vLLM's CPU backend: KV cache size in GiB (its default, 4, is too much next to the actor here).
        return {
            "VLLM_TARGET_DEVICE": "cpu",
            "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "1"),
        }

    def cudart(self) -> Any:
        return None


def register() -> None:
    """Add "cpu" to verl's platform registry (idempotent)."""
    if PlatformRegistry.get(PLATFORM_NAME) is not PlatformCPU:
        PlatformRegistry.register(platform=PLATFORM_NAME)(PlatformCPU)
