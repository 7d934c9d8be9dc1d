"""The knobs of our methods: one config dataclass each (VGPOConfig, EntropyShapingConfig, VPPOConfig),
every field with its default and a one-line help (`knob(...)`), read from `algorithm.<key>`.

The docs' knob tables are generated from these dataclasses (`python -m vgpo_verl.knobs`).
"""

from __future__ import annotations

import dataclasses
import importlib
from typing import Any, Mapping

# algorithm.<key> -> the dataclass holding its knobs ("module:class", imported on use: the dataclass
# modules import this one)
CONFIG_CLASSES = {
    "vgpo": "vgpo_verl.methods.vgpo:VGPOConfig",
    "entropy_shaping": "vgpo_verl.methods.entropy_shaping:EntropyShapingConfig",
    "vppo": "vgpo_verl.methods.vppo:VPPOConfig",
}


def knob(default: Any, help: str) -> Any:
    """A dataclass field with its default and the one-line help the docs' tables show."""
    return dataclasses.field(default=default, metadata={"help": help})


def config_class(key: str) -> type:
    """The config dataclass of `algorithm.<key>`."""
    module, name = CONFIG_CLASSES[key].split(":")
    return getattr(importlib.import_module(module), name)


def knob_values(config_class: type, mapping: Mapping[str, Any] | None, key: str,
                passthrough: tuple[str, ...] = ()) -> dict[str, Any]:
    """The keys of `algorithm.<key>` (a dict or an OmegaConf DictConfig; None = all defaults) as keyword
    arguments of `config_class`. Unknown keys are a ValueError naming them and what is allowed;
    `passthrough` keys are allowed and left out (they belong to someone else, e.g. the trainer)."""
    if mapping is None:
        return {}
    known = {f.name for f in dataclasses.fields(config_class)}
    values = {str(k): mapping[k] for k in mapping.keys() if str(k) not in passthrough}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"algorithm.{key}: unknown key(s) {unknown}; allowed: {sorted(known | set(passthrough))}")
    return values
