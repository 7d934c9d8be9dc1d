"""One read of a dotted key (`algorithm.vgpo.layer`) from verl's config, shared by the start-up checks."""

from __future__ import annotations

from typing import Any


def config_value(config: Any, dotted: str, default: Any = None) -> Any:
    """config.a.b.c for dicts / DictConfigs; `default` where a level is missing or None."""
    node = config
    for part in dotted.split("."):
        if node is None:
            return default
        try:
            node = node.get(part, None)
        except AttributeError:
            node = getattr(node, part, None)
    return default if node is None else node
