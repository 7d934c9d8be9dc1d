"""Demo cache directories for tests that run the demo: one model and warm start per session (conftest)."""

import pathlib

DEMO_ASSETS = ("tiny_qwen2_5_vl", "warm_start")  # the directories vgpo_verl.demo builds under --cache-dir


def seeded_demo_cache(assets: pathlib.Path, cache: pathlib.Path) -> pathlib.Path:
    """`cache` as a demo --cache-dir of its own (data, runs) whose model and warm start are `assets`'."""
    cache.mkdir(parents=True, exist_ok=True)
    for name in DEMO_ASSETS:
        (cache / name).symlink_to(assets / name, target_is_directory=True)
    return cache
