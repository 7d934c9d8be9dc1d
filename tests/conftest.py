import os
import sys

import pytest

# Test helpers (the slow reference, fixtures) live next to the tests.
sys.path.insert(0, os.path.dirname(__file__))

from _demo_cache import DEMO_ASSETS  # noqa: E402


@pytest.fixture(scope="session")
def demo_assets(tmp_path_factory):
    """The demo's tiny Qwen2.5-VL and its warm start, built once per session with the functions the
    demo itself calls (the warm start is minutes of CPU; every demo run of the suite starts from it)."""
    from vgpo_verl.demo.tiny_model import build_tiny_vlm
    from vgpo_verl.demo.warm_start import build_warm_start

    base = tmp_path_factory.mktemp("demo_assets")
    build_warm_start(build_tiny_vlm(base / DEMO_ASSETS[0]), base / DEMO_ASSETS[1])
    return base


@pytest.fixture(scope="session")
def checkpointed_demo(demo_assets, tmp_path_factory):
    """`python -m vgpo_verl.demo --run-dir RUN` as a user starts it (vgpo, 2 steps, a checkpoint after
    each) with the dump on: the run tests/test_demo.py checks, and whose step-1 checkpoint
    tests/test_demo_methods.py resumes with the other estimators. (cache, run dir, process, leftovers)."""
    from _demo_cache import run_demo, seeded_demo_cache

    cache = seeded_demo_cache(demo_assets, tmp_path_factory.mktemp("demo"))
    run_dir = cache / "run"
    proc, leftovers = run_demo(cache, "--run-dir", str(run_dir), f"+algorithm.vgpo.dump_dir={run_dir / 'dump'}")
    return cache, run_dir, proc, leftovers
