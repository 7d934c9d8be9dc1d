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
