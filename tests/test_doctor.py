"""`python -m vgpo_verl.doctor` / `vgpo-doctor`: usage errors in one line with exit 2, a refused family
with exit 1, a passing tiny family with LoRA (exit 0), and a checkpoint whose image processor does not fit
its vision tower (exit 1, every other check still reported)."""

import ast
import os
import pathlib
import subprocess
import sys

import pytest

from _cli_utils import usage_error

from vgpo_verl import doctor
from vgpo_verl.doctor.tiny_models import tiny_model

REPO = pathlib.Path(__file__).resolve().parents[1]


def run_doctor(*argv, timeout=300, env=None):
    """`python -m vgpo_verl.doctor argv` in a child process; env["PYTHONPATH"] goes after the repository's."""
    extra = (env or {}).get("PYTHONPATH", "")
    env = {**os.environ, **(env or {}),
           "PYTHONPATH": os.pathsep.join(p for p in [str(REPO), extra, os.environ.get("PYTHONPATH", "")] if p)}
    return subprocess.run([sys.executable, "-m", "vgpo_verl.doctor", *argv], capture_output=True, text=True,
                          timeout=timeout, env=env, cwd=REPO)


@pytest.mark.parametrize("argv, flag", [
    (["--tiny", "llava"], "--tiny"),
    (["--model", "/no/such/checkpoint"], "--model /no/such/checkpoint"),
    (["--tiny", "qwen3_vl", "--methods", "vgpo,grpo"], "--methods"),
    (["--tiny", "qwen3_vl", "--lora-rank", "-8"], "--lora-rank"),
    (["--tiny", "qwen3_vl", "--lora-rank", "eight"], "--lora-rank"),
    (["--tiny", "qwen3_vl", "--model", "/tmp"], "--model"),
    ([], "--model --tiny"),
    (["--tiny", "qwen3_vl", "--methods", ","], "--methods empty not among"),
    (["--tiny", "qwen3_vl", "--engine", "veomni"], "--engine veomni: the veomni package is not installed"),
    (["--tiny", "qwen3_vl", "--engine", "megatron"], "--engine"),
])
def test_a_usage_error_is_one_line_naming_the_flag_and_exit_2(capsys, argv, flag):
    line = usage_error(capsys, doctor.main, *argv)
    assert line.startswith("python -m vgpo_verl.doctor: error: ") and flag in line, line  # vgpo-doctor: test_cli


def test_the_console_script_and_module_entry_give_the_same_one_line_error():
    tree = ast.parse((REPO / "setup.py").read_text())
    scripts = next(ast.literal_eval(n.value) for n in ast.walk(tree) if isinstance(n, ast.keyword)
                   and n.arg == "entry_points")["console_scripts"]
    assert "vgpo-doctor = vgpo_verl.doctor:main" in scripts
    result = run_doctor("--tiny", "llava")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [result.stderr.strip()] and "--tiny" in result.stderr


def test_a_refused_family_fails_with_the_reason(capsys):
    assert doctor.main(["--tiny", "glm4v"]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("refused: model_type=glm4v: verl 0.9.1 cannot run GLM-4V")
    assert lines[-1].startswith("glm4v: FAILED (1 of 1 checks: refused at start-up")


def test_tiny_family_with_lora_passes_every_check():
    """Qwen3.5 (hybrid linear attention) through verl's LoRA path: scores, VPPO, entropy, padded and packed."""
    result = run_doctor("--tiny", "qwen3_5", "--lora-rank", "8")
    lines = result.stdout.splitlines()
    assert result.returncode == 0, result.stdout + result.stderr[-3000:]
    assert "visual token ids: image 250, video 251" in lines
    assert "scored module (vgpo, layer -1): base_model.model.model.language_model.norm" in lines
    for layout in ("padded", "packed"):
        (line,) = [x for x in lines if x.startswith(f"{layout}: max |engine - reference|")]
        assert "score" in line and "entropy" in line and "without the adapter it would differ by" in line
    assert lines[-1].startswith("qwen3_5: ok (") and "max |delta score|" in lines[-1]


def test_a_checkpoint_whose_processor_does_not_fit_its_vision_tower_fails(tmp_path):
    """A Qwen2.5-VL checkpoint (14-px patches) shipped with a 16-px image processor: that check fails,
    the doctor still runs and reports the rest, and shows the scoring memory of the model's hidden size."""
    import transformers

    tiny_model("qwen2_5_vl").save_pretrained(tmp_path)
    transformers.Qwen2VLImageProcessorPil(patch_size=16, image_mean=[0.5] * 3, image_std=[0.5] * 3).save_pretrained(tmp_path)
    result = run_doctor("--model", str(tmp_path), "--methods", "vgpo,vppo")
    lines = result.stdout.splitlines()
    assert result.returncode == 1, result.stdout + result.stderr[-3000:]
    assert "pixel normalisation (the checkpoint's preprocessor_config.json): mean (0.5, 0.5, 0.5), std (0.5, 0.5, 0.5)" in lines
    assert any(x.startswith("packed: max |engine - reference|: log-prob") for x in lines)
    assert "scoring memory at hidden size 64: 2 MiB for one 8192-token float32 chunk" in result.stdout
    assert lines[-1].startswith(f"{tmp_path}: FAILED (1 of ")
    assert "the image processor cuts 16-px patches, the vision tower reads 14-px" in lines[-1]


_SCORES_DIFFER = "qwen3_vl: FAILED (1 of 3 checks: padded: vgpo scores differ"


@pytest.mark.parametrize("shift, verdict", [(0.0, "qwen3_vl: ok (3 checks"), (5e-3, _SCORES_DIFFER),
                                            (1.5e-4, _SCORES_DIFFER), (0.5e-4, "qwen3_vl: ok (3 checks")])
def test_engine_scores_off_the_reference_make_the_doctor_say_failed(monkeypatch, capsys, shift, verdict):
    """The comparison and the verdict, on outputs of known difference (the engine runs in the slow tests):
    scores shifted by 5e-3, or just above the CPU tolerance of 1e-4, fail; unshifted or just below, they pass."""
    import types

    import torch

    from vgpo_verl.doctor.checks import Doctor
    from vgpo_verl.methods.scoring import HAS_VISUAL_KEY, SCORE_KEY

    reference = types.SimpleNamespace(log_probs=torch.linspace(-2, -1, 5).double(),
                                      scores=torch.linspace(-1, 1, 8).double(), has_visual=True)
    sample = types.SimpleNamespace(response_len=3)
    outputs = {"log_probs": [torch.cat([reference.log_probs, torch.zeros(1)]).float()],
               SCORE_KEY: [(reference.scores[-3:] + shift).float()], HAS_VISUAL_KEY: [torch.tensor([True])]}

    def run(self):
        self._compare("padded", outputs, [sample], [reference])

    monkeypatch.setattr(Doctor, "run", run)
    status = doctor.main(["--tiny", "qwen3_vl", "--methods", "vgpo"])
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith(verdict), last
    assert status == (1 if verdict == _SCORES_DIFFER else 0)
