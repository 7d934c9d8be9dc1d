"""vgpo-verl: Visually-Guided Policy Optimization (arXiv 2604.09349) as a plugin for verl 0.9.x.

Three floors, each importing only the ones below it (.importlinter holds them, inside `make test`):
- `methods/`: the math in pure torch, readable next to the paper (no verl, Ray, vLLM, transformers);
- `plugin/`: the verl glue, the `verl.plugins` entry point and everything it hooks;
- tools on top: `demo/`, `doctor/`, `data/`, `evaluate/`, `cpu/`, `analyze`, `knobs`, `cli`, `reward`.
docs/internals.md maps every module.

Importing this package is cheap on purpose (verl imports our entry point in every process,
rollout servers included): the public API below is resolved lazily.
"""

__version__ = "0.1.0"

# Importing the package installs the verl hooks too, so `actor_rollout_ref.model.external_lib=vgpo_verl`
# works where entry points are disabled (VERL_USE_EXTERNAL_PLUGINS=none). Stdlib only: cheap.
from vgpo_verl import plugin as _plugin  # noqa: E402,F401

_LAZY = {
    "VGPOConfig": "vgpo_verl.methods.vgpo",
    "VGPOWeights": "vgpo_verl.methods.vgpo",
    "compute_vgpo_weights": "vgpo_verl.methods.vgpo",
    "compute_vgpo_weights_detailed": "vgpo_verl.methods.vgpo",
    "vgpo_metrics": "vgpo_verl.methods.vgpo",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'vgpo_verl' has no attribute {name!r}")
