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


class KnobErrors(ValueError):
    """Every problem of one config block at once (a user fixes them in one go); str(): one per line."""

    def __init__(self, problems: list[str]):
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))


def raise_problems(problems: list[str | None]) -> None:
    """Raise KnobErrors with the problems found (None entries are checks that passed)."""
    found = [problem for problem in problems if problem]
    if found:
        raise KnobErrors(found)


def from_knobs(config_class: type, mapping: Mapping[str, Any] | None, key: str,
               passthrough: tuple[str, ...] = ()) -> Any:
    """`config_class` built from `algorithm.<key>` (a dict or an OmegaConf DictConfig; None = all defaults).

    KnobErrors lists every problem at once: unknown keys (naming what is allowed) and every bad value
    of the known ones. `passthrough` keys are allowed and left out (they belong to someone else, e.g.
    the trainer)."""
    if mapping is None:
        return config_class()
    known = {f.name for f in dataclasses.fields(config_class)}
    values = {str(k): mapping[k] for k in mapping.keys() if str(k) not in passthrough}
    unknown = sorted(set(values) - known)
    problems = [f"algorithm.{key}: unknown key(s) {unknown}; allowed: {sorted(known | set(passthrough))}"
                ] if unknown else []
    try:
        config = config_class(**{name: value for name, value in values.items() if name in known})
    except KnobErrors as error:
        problems += error.problems
    raise_problems(problems)
    return config
