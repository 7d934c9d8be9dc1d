"""setup.py's install story for a GPU cluster agrees with the verl it builds on and with the README.

The `gpu` extra must take the rollout stack verl itself pins (its extras, at the verl version this
package is written against) instead of ranges of its own; the README must install the package the
way a cluster user can (from a clone: it is not on PyPI).
"""

from __future__ import annotations

import ast
import importlib.metadata
import pathlib
import re

from packaging.requirements import Requirement

REPO = pathlib.Path(__file__).resolve().parents[1]


def _extras_require() -> dict[str, list[str]]:
    tree = ast.parse((REPO / "setup.py").read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.keyword) and node.arg == "extras_require":
            return ast.literal_eval(node.value)
    raise AssertionError("setup.py has no extras_require")


def test_gpu_extra_is_verls_own_pinned_stack():
    gpu = [Requirement(r) for r in _extras_require()["gpu"]]
    assert [r.name for r in gpu] == ["verl"], "the gpu extra should only name verl's own extras"
    verl = importlib.metadata.distribution("verl")
    provided = set(verl.metadata.get_all("Provides-Extra"))
    assert gpu[0].extras and gpu[0].extras <= provided, (gpu[0].extras, sorted(provided))
    assert "vllm" in gpu[0].extras  # verl's tested torch / vllm / transformers pins
    assert "fsdp" in gpu[0].extras  # flash-attn and flash-linear-attention, which packed Qwen3.5 needs
    assert any(r.startswith("flash-linear-attention==") and 'extra == "fsdp"' in r for r in verl.requires)
    assert str(gpu[0].specifier) == f"=={verl.version}", "pin the verl whose extras were read"
    pinned = [r for r in verl.requires if 'extra == "vllm"' in r and r.startswith("vllm")]
    assert pinned and "==" in pinned[0], pinned  # verl's vllm extra really pins a version


def test_readme_installs_from_a_clone_with_the_gpu_extra():
    readme = (REPO / "README.md").read_text()
    gpu_section = readme.split("## On a GPU cluster", 1)[1].split("\n## ", 1)[0]
    assert not re.search(r"pip install \"?vgpo-verl\[", gpu_section), "vgpo-verl is not on PyPI"
    assert 'pip install -e ".[gpu]"' in gpu_section
