"""vLLM's CPU linears compute with the weight verl's sync writes, whatever kernels vLLM would pick for
this CPU's ISA (vgpo_verl.cpu.vllm_linear).

The ISA-dependent paths are exercised on any CPU by making torch's ISA checks answer "AVX-512-BF16"
or "AMX" inside the probe process; the oneDNN path runs for real everywhere (vLLM builds a oneDNN
handle for fp32 weights on any x86-64 CPU, AVX2-only included). vLLM's original dispatch is run
on the same cases as the control that shows these checks can fail: it drops the linear weight (the
'weight_loader' crash of issue 9) or computes the LM head from a stale packed copy (the silent trap).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import types

import pytest

from vgpo_verl.cpu import vllm_linear

PROBE = os.path.join(os.path.dirname(__file__), "_vllm_cpu_linear_probe.py")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def probe_facts() -> dict:
    from vgpo_verl import cpu

    env = {**os.environ, "PYTHONPATH": REPO}
    env.update(cpu.environment(cpu.broken_companions()))  # the start-up hook only: no enable() in the child
    proc = subprocess.run([sys.executable, PROBE], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    facts = json.loads([l for l in proc.stdout.splitlines() if l.startswith("FACTS=")][-1][len("FACTS="):])
    native = {k.split("/", 2)[2]: v for k, v in facts["results"].items() if k.startswith("vllm_original/native/")}
    print(f"\nthis CPU: {facts['cpu']}; vLLM's own dispatch here: {native}")
    return facts


def test_startup_hook_installs_the_patch_in_every_process(probe_facts):
    assert probe_facts["patched"], "the start-up hook did not replace dispatch_cpu_unquantized_gemm"


@pytest.mark.parametrize("claim", ["native", "avx512_bf16", "amx"])
def test_patched_linears_follow_the_synced_weight_on_every_isa(probe_facts, claim):
    ours = {k: v for k, v in probe_facts["results"].items() if k.startswith(f"patched/{claim}/")}
    assert len(ours) == 4, ours
    assert set(ours.values()) == {"follows"}, f"CPU {probe_facts['cpu']}, ISA claimed {claim}: {ours}"


@pytest.mark.parametrize("case", [
    "native/UnquantizedLinearMethod/float32",      # oneDNN handle, weight removed: sync cannot load
    "native/UnquantizedEmbeddingMethod/float32",   # oneDNN handle, weight kept: LM head stays stale
    "amx/UnquantizedLinearMethod/bfloat16",        # AMX sgl-kernel packing (issue 9's crash)
    "amx/UnquantizedEmbeddingMethod/bfloat16",
])
def test_vllm_original_dispatch_does_not_follow_the_synced_weight(probe_facts, case):
    """The control: without the patch these cases break sync or leave rollouts on old weights."""
    assert probe_facts["results"][f"vllm_original/{case}"] != "follows", probe_facts["results"]


def _fake_utils(dispatch):
    return types.SimpleNamespace(dispatch_cpu_unquantized_gemm=dispatch)


def test_a_vllm_without_the_dispatch_stops_the_run(monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", types.SimpleNamespace(__version__="0.99.0"))
    with pytest.raises(RuntimeError, match="no dispatch_cpu_unquantized_gemm"):
        vllm_linear.install(types.SimpleNamespace())


def test_a_changed_signature_stops_the_run(monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", types.SimpleNamespace(__version__="0.99.0"))
    with pytest.raises(RuntimeError, match="layer, remove_weight"):
        vllm_linear.install(_fake_utils(lambda layer, remove_weight, backend: None))


def test_an_unverified_version_is_patched_with_a_warning(monkeypatch, caplog):
    import torch

    monkeypatch.setitem(sys.modules, "vllm", types.SimpleNamespace(__version__="0.99.0+cpu"))
    calls = []
    utils = _fake_utils(lambda layer, remove_weight: calls.append(remove_weight))
    with caplog.at_level("WARNING", logger=vllm_linear.__name__):
        vllm_linear.install(utils)
        vllm_linear.install(utils)  # idempotent: wrapped once
    assert "verified with vllm-cpu 0.30.0 only" in caplog.text
    assert utils.dispatch_cpu_unquantized_gemm.vllm_original.__name__ == "<lambda>"

    layer = torch.nn.Module()
    layer.weight = torch.nn.Parameter(torch.ones(2, 3))
    weight = layer.weight
    utils.dispatch_cpu_unquantized_gemm(layer, True)
    assert layer.weight is weight and layer.cpu_linear is torch.nn.functional.linear and calls == []
    layer.weight = torch.nn.Parameter(torch.ones(2, 3, 4))  # not a linear: left to vLLM
    utils.dispatch_cpu_unquantized_gemm(layer, True)
    assert calls == [True]
