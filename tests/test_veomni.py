"""VGPO and VPPO through verl's real VeOmni engine (VeOmni's own MoE model implementations) on two CPU
gloo ranks, tiny Qwen3-VL-MoE (padded and packed), Qwen3.5-MoE and Qwen2.5-VL (packed), against plain
transformers; the backing of docs/models.md's VeOmni column.

VeOmni is installed beside the test venv (`make install`: `pip install --no-deps --target .venv/veomni`,
docs/models.md#veomni says why not into it) and put on the path of the spawned ranks only: importing it
patches transformers' attention process-wide, which the rest of the suite does not expect.
"""

import contextlib
import sys
from pathlib import Path

import pytest
import torch

from _engine_utils import run_engine
from test_families import family_batch, max_delta, perturb_flags, references, response

VEOMNI_DIR = Path(sys.prefix) / "veomni"
SCORE = {"vgpo_score": True}


@contextlib.contextmanager
def veomni_on_path():
    """VeOmni importable in the ranks spawned inside (spawn hands its children the parent's sys.path)."""
    assert (VEOMNI_DIR / "veomni").is_dir(), f"{VEOMNI_DIR} holds no veomni package: run `make install`"
    sys.path.insert(0, str(VEOMNI_DIR))
    try:
        yield
    finally:
        sys.path.remove(str(VEOMNI_DIR))


RUNS = {"qwen3_vl_moe": ("padded", "packed"),
        "qwen3_5_moe": ("packed",),  # VeOmni's Qwen3.5 layers assert packed boundaries: padded is refused (preflight)
        "qwen2_5_vl": ("packed",)}  # dense; VeOmni's Qwen2.5-VL needs the masks (without, it all-gathers over all ranks)


def veomni_runs(family):
    both = {**SCORE, **perturb_flags(family)}
    layouts = {"padded": {"remove_padding": False},
               "packed": {"remove_padding": True, "dynamic_bsz": True, "max_token_len": 64}}  # several micro-batches
    return [{"name": run, "backend": "veomni", **layouts[run], "flags": both} for run in RUNS[family]]


@pytest.fixture(scope="module")
def veomni_family(tmp_path_factory):
    """family -> its VeOmni engine results and references, each family run once."""
    cache = {}

    def get(name):
        if name not in cache:
            base = tmp_path_factory.mktemp(f"veomni_{name}")
            model, samples = family_batch(name, base / "model")
            model.save_pretrained(base / "model", save_original_format=False)  # fused experts: see test below
            with veomni_on_path():
                results = run_engine(str(base / "model"), samples, veomni_runs(name), str(base / "results.pt"),
                                     world_size=2)
            cache[name] = {"samples": samples, "results": results, "refs": references(name, model, samples)}
        return cache[name]
    return get


ATOL = 1e-5


@pytest.mark.parametrize("family, run", [(f, r) for f, runs in RUNS.items() for r in runs])
def test_veomni_scores_perturbed_log_probs_and_entropy_equal_plain_transformers(veomni_family, family, run):
    """VeOmni's own model code (eager experts, sdpa, the torch linear-attention kernels of
    vgpo_verl.cpu.veomni_kernels), FSDP2 over 2 ranks, fp32: every output within ATOL of plain transformers
    (measured: at most 7.3e-7 on Qwen3-VL-MoE)."""
    family_results = veomni_family(family)
    result, refs, samples = family_results["results"][run], family_results["refs"], family_results["samples"]
    assert result["engine_class"] == "VGPOVeOmniEngineWithLMHead"
    assert result["scored_modules"] == ["model.language_model.norm"]
    outputs = result["outputs"]
    deltas = {key: max_delta(outputs, refs, samples, key, ref_key, sliced=key != "entropy")
              for key, ref_key in (("vgpo_visual_score", "scores"), ("vppo_aug_log_probs", "perturbed"),
                                   ("entropy", "entropy"))}
    deltas["log_probs"] = max(float((out[:-1].double() - ref["log_probs"]).abs().max())
                              for out, ref in zip(outputs["log_probs"], refs))
    print(run, deltas)
    assert max(deltas.values()) < ATOL, deltas
    assert [h.tolist() for h in outputs["vgpo_has_visual"]] == [[True], [False], [True], [True]]


@pytest.mark.parametrize("module, engine_class, backends", [
    ("vgpo_verl.plugin.engine_veomni", "VGPOVeOmniEngineWithLMHead", ["veomni"]),
    ("vgpo_verl.plugin.engine", "VGPOFSDPEngineWithLMHead", ["fsdp", "fsdp2"]),
])
def test_importing_an_engine_module_directly_registers_it(module, engine_class, backends):
    """Imported first (before verl's engine package), the module's own hook fires before its class exists;
    its last line registers it."""
    import os
    import subprocess

    code = (f"import {module} as m\n"
            "from verl.workers.engine.base import EngineRegistry\n"
            "registry = EngineRegistry._engines['language_model']\n"
            f"print([b for b in {backends!r} if registry[b].get(('cuda', 'nvidia')) is m.{engine_class}])\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(VEOMNI_DIR)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().splitlines()[-1] == str(backends)
    assert "VGPO is NOT available" not in proc.stderr


# ------------------------------------------------------------------ the doctor


def test_a_failing_rank_names_its_error(tmp_path):
    """The doctor's last line names what failed in a rank, not torch's "Process 1 terminated" header."""
    from vgpo_verl.doctor import verl_run

    with pytest.raises(RuntimeError, match=r"^rank \d: FileNotFoundError: "):
        verl_run.run_layouts_on_ranks(2, str(tmp_path / "missing"), "/no/such/model", [], [], {})


def test_the_doctor_checks_qwen3_5_moe_through_verls_veomni_engine():
    """`vgpo-doctor --engine veomni` on CPU: 2 spawned gloo ranks, packed only for Qwen3.5 (said), every
    method against the reference; the tiny checkpoint saved with fused experts."""
    from test_doctor import run_doctor

    result = run_doctor("--tiny", "qwen3_5_moe", "--engine", "veomni", "--methods", "vgpo,vppo",
                        env={"PYTHONPATH": str(VEOMNI_DIR)})
    lines = result.stdout.splitlines()
    assert result.returncode == 0, result.stdout + result.stderr[-3000:]
    assert "cpu, verl's veomni engine, methods vgpo,vppo" in lines[0]
    assert "padded: not run (VeOmni's Qwen3.5 layers need packed sequences; refused at start-up)" in lines
    assert "scored module (vgpo, layer -1): model.language_model.norm" in lines
    assert [x.split(":")[0] for x in lines if "max |engine - reference|" in x] == ["packed"]
    assert lines[-1].startswith("qwen3_5_moe: ok (")


def test_the_doctor_refuses_a_checkpoint_with_one_tensor_per_expert_on_veomni(tmp_path, capsys, monkeypatch):
    from vgpo_verl import doctor
    from vgpo_verl.doctor.tiny_models import tiny_model

    tiny_model("qwen3_5_moe").save_pretrained(tmp_path)  # transformers 5 writes the hub's layout
    monkeypatch.syspath_prepend(str(VEOMNI_DIR))  # found, not imported: the refusal comes first
    assert doctor.main(["--model", str(tmp_path), "--engine", "veomni"]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith(f"refused: actor_rollout_ref.model.path={tmp_path}: its checkpoint stores one tensor "
                               "per expert"), lines
    assert lines[-1].startswith(f"{tmp_path}: FAILED (1 of 1 checks: refused at start-up")
    assert "veomni" not in sys.modules


def test_the_doctor_does_not_claim_lora_on_veomni(capsys, monkeypatch):
    from _cli_utils import usage_error
    from vgpo_verl import doctor

    monkeypatch.syspath_prepend(str(VEOMNI_DIR))
    line = usage_error(capsys, doctor.main, "--tiny", "qwen3_vl_moe", "--engine", "veomni", "--lora-rank", "8")
    assert "--lora-rank 8 with --engine veomni" in line, line


# ------------------------------------------------------------------ without VeOmni


def test_varlen_causal_conv1d_is_the_depthwise_conv_of_each_packed_sequence_alone():
    """The torch kernel behind VeOmni's Qwen3.5 conv slot: per sequence, transformers' eager path (a
    depthwise Conv1d padded K-1 on the left, then SiLU); a sequence never sees the one packed before it."""
    from vgpo_verl.cpu.packed_kernels import varlen_causal_conv1d

    generator = torch.Generator().manual_seed(0)
    lengths, dim, width = [5, 1, 9, 3], 6, 4
    x = torch.randn(1, sum(lengths), dim, generator=generator, dtype=torch.float64)
    weight, bias = torch.randn(dim, width, generator=generator, dtype=x.dtype), torch.randn(dim, dtype=x.dtype)
    cu_seqlens = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32)
    out, state = varlen_causal_conv1d(x=x, weight=weight, bias=bias, activation="silu", cu_seqlens=cu_seqlens,
                                      seq_idx=None, backend="triton")
    expected = torch.cat([
        torch.nn.functional.silu(torch.nn.functional.conv1d(seq.T[None], weight[:, None], bias, padding=width - 1,
                                                            groups=dim)[0, :, :seq.shape[0]].T)
        for seq in x[0].split(lengths)])
    assert state is None
    torch.testing.assert_close(out[0], expected, atol=1e-12, rtol=0)
    whole, _ = varlen_causal_conv1d(x=x, weight=weight, bias=bias, activation="silu")  # one sequence: leaks
    assert (whole[0] - expected).abs().max() > 1e-3
