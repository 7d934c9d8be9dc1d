"""Reading a method's `algorithm.<key>` block into its config dataclass (VGPO, entropy shaping, VPPO)."""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping


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
