"""The floors of vgpo_verl, held by import-linter's contracts (.importlinter) and by the public names.

- `lint-imports` keeps every contract on the real tree: methods is pure torch and stands alone, tools sit
  on the verl glue, the glue on the math, no import cycle anywhere;
- a planted violation of each contract fails it, and the failure names the offending import, so the
  next person learns the rule from the message;
- every module at the top of the package is on a floor of the contracts (a new tool cannot slip past
  them), and the top holds only `__init__`, `cli`, `reward` and tools;
- the public names survive the re-layout: each `python -m vgpo_verl.<tool>` and `vgpo-*` console script
  answers `--help`, the `verl.plugins` entry point, `pkg://vgpo_verl.reward` and the lazy API import.
"""

from __future__ import annotations

import configparser
import importlib
import importlib.metadata
import importlib.util
import os
import pkgutil
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import vgpo_verl

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / ".importlinter"
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")
FLOORS = ("methods", "plugin")
# What may sit at the top of vgpo_verl besides the floors and the tool packages.
TOP_MODULES = {"cli", "reward", "knobs", "analyze"}
TOOL_PACKAGES = {"demo", "doctor", "data", "evaluate", "cpu", "report"}


def _lint(package_parent: Path) -> subprocess.CompletedProcess:
    """lint-imports with the project's contracts, on the vgpo_verl found first under package_parent."""
    env = {**os.environ, "PYTHONPATH": str(package_parent)}
    return subprocess.run([str(LINT_IMPORTS), str(CONFIG), "--no-cache", "--no-logo"],
                          cwd=package_parent, env=env, capture_output=True, text=True, timeout=300)


def _contracts() -> configparser.ConfigParser:
    parser = configparser.ConfigParser()
    parser.read(CONFIG)
    return parser


def _lines(value: str) -> list[str]:
    return [line.strip() for line in value.splitlines() if line.strip()]


def test_every_contract_is_kept_on_the_tree():
    proc = _lint(REPO)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    contracts = [section for section in _contracts().sections() if section.startswith("importlinter:contract:")]
    assert len(contracts) == 4
    assert f"Contracts: {len(contracts)} kept, 0 broken." in proc.stdout


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """A copy of vgpo_verl with one violation of each contract planted in it, and lint-imports' verdict."""
    root = tmp_path_factory.mktemp("planted")
    package = root / "vgpo_verl"
    shutil.copytree(Path(vgpo_verl.__file__).parent, package, ignore=shutil.ignore_patterns("__pycache__"))

    def plant(relative: str, line: str) -> None:
        path = package / relative
        path.write_text(path.read_text() + f"\n{line}\n")

    plant("methods/perturb.py", "import transformers")
    plant("methods/vppo.py", "from vgpo_verl.plugin import timing")
    plant("plugin/dump.py", "from vgpo_verl.demo import summary")
    # the circle this re-layout removed: model_check read preflight's config reader, preflight its check
    plant("plugin/config_value.py", "from vgpo_verl.plugin import preflight")
    return _lint(root)


def test_a_planted_violation_of_each_contract_is_named(planted):
    out = " ".join(planted.stdout.split())  # lint-imports wraps its lines at 80 columns
    assert planted.returncode == 1, planted.stdout + planted.stderr
    assert "Contracts: 0 kept, 4 broken." in out
    assert "vgpo_verl.methods.perturb -> transformers" in out
    assert "vgpo_verl.methods.vppo -> vgpo_verl.plugin.timing" in out
    assert "vgpo_verl.plugin.dump -> vgpo_verl.demo.summary" in out
    assert "No cycles are allowed in vgpo_verl.plugin." in out and "- .config_value -> .preflight" in out
    # each broken contract says what to do, from its guidance in .importlinter
    assert "Move what needs the library into vgpo_verl.plugin" in out and "Break the cycle" in out


# What the math may import beyond the standard library (methods/__init__.py says so).
METHODS_MAY_IMPORT = {"torch", "numpy"}
# Our stack's heavy libraries: none may reach the math, not even through importlib (which no static
# contract sees).
STACK = ("verl", "ray", "vllm", "transformers", "tensordict", "transfer_queue", "omegaconf", "hydra", "datasets",
         "pandas", "pyarrow", "PIL", "mathruler", "math_verify", "matplotlib")


def test_the_math_imports_only_torch_numpy_and_the_standard_library():
    """An allow-list, where the contract can only forbid names: every import statement of vgpo_verl.methods,
    in functions too, as import-linter's own graph (grimp) reads them."""
    import grimp

    graph = grimp.build_graph("vgpo_verl", include_external_packages=True, cache_dir=None)
    imported = {m for module in graph.find_descendants("vgpo_verl.methods") | {"vgpo_verl.methods"}
                for m in graph.find_modules_directly_imported_by(module)}
    outside = {m.split(".")[0] for m in imported if not m.startswith("vgpo_verl.methods")}
    assert outside - METHODS_MAY_IMPORT - set(sys.stdlib_module_names) == set()
    forbidden = set(_lines(_contracts()["importlinter:contract:methods-is-pure-torch"]["forbidden_modules"]))
    assert forbidden == set(STACK), "the contract forbids the whole stack by name"


def test_the_math_runs_with_the_whole_stack_unimportable():
    code = "import sys\n" + "".join(f"sys.modules[{name!r}] = None\n" for name in STACK) + (
        "import importlib, pkgutil, torch\n"
        "import vgpo_verl.methods as methods\n"
        "for info in pkgutil.iter_modules(methods.__path__):\n"
        "    importlib.import_module(f'vgpo_verl.methods.{info.name}')\n"
        "from vgpo_verl.methods.vgpo import VGPOConfig, compute_vgpo_weights\n"
        "w = compute_vgpo_weights(torch.rand(4, 6), torch.ones(4, 6), ['a', 'a', 'b', 'b'], VGPOConfig())\n"
        "print(tuple(w[0].shape))\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().splitlines()[-1].startswith("(4, 6)")


def test_every_top_level_module_is_on_a_floor():
    top = {info.name for info in pkgutil.iter_modules(vgpo_verl.__path__)}
    packages = {info.name for info in pkgutil.iter_modules(vgpo_verl.__path__) if info.ispkg}
    assert top - set(FLOORS) - packages <= TOP_MODULES, "the top of vgpo_verl holds __init__, cli, reward and tools"
    assert packages - set(FLOORS) <= TOOL_PACKAGES, f"a new package: put it on a floor of .importlinter ({packages})"
    contracts = _contracts()
    tools = {name.strip() for name in _lines(contracts["importlinter:contract:floors"]["layers"])[0].split(":")}
    forbidden = set(_lines(contracts["importlinter:contract:methods-stands-alone"]["forbidden_modules"]))
    others = {f"vgpo_verl.{name}" for name in top - {"methods"}}
    assert others - {"vgpo_verl.plugin"} == tools, "every tool module is on the top floor of the layers contract"
    assert others == forbidden, "methods is forbidden every other module of vgpo_verl"


@pytest.mark.parametrize("module", ["demo", "doctor", "data", "evaluate", "analyze", "knobs", "report"])
def test_each_tool_answers_help_as_a_module(module):
    proc = subprocess.run([sys.executable, "-m", f"vgpo_verl.{module}", "--help"], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.startswith("usage: "), proc.stdout[:200]


def _console_scripts() -> dict[str, str]:
    scripts = importlib.metadata.distribution("vgpo-verl").entry_points.select(group="console_scripts")
    return {script.name: script.value for script in scripts}


def test_each_console_script_answers_help():
    scripts = _console_scripts()
    assert set(scripts) == {"vgpo-analyze", "vgpo-evaluate", "vgpo-data", "vgpo-doctor"}
    for name in scripts:
        proc = subprocess.run([str(Path(sys.executable).with_name(name)), "--help"], capture_output=True, text=True,
                              timeout=300)
        assert proc.returncode == 0, (name, proc.stderr[-2000:])
        assert proc.stdout.startswith("usage: "), (name, proc.stdout[:200])


def test_the_library_names_resolve():
    (plugin,) = importlib.metadata.entry_points(group="verl.plugins", name="vgpo")
    assert plugin.value == "vgpo_verl.plugin"
    hooks = importlib.import_module(plugin.value).POST_IMPORT_HOOKS
    targets = [t for value in hooks.values() for t in ((value,) if isinstance(value, str) else value)]
    for target in targets:  # a module renamed without its hook would only warn, in every process
        module, function = target.split(":")
        assert re.search(rf"^def {function}\(", importlib.util.find_spec(module).loader.get_source(module), re.M), \
            target
    reward = importlib.import_module("vgpo_verl.reward")  # reward.custom_reward_function.path=pkg://vgpo_verl.reward
    assert reward.compute_score("x", "\\boxed{2}", "2") == 1.0
    from vgpo_verl import VGPOConfig, compute_vgpo_weights  # the package's lazy API

    assert VGPOConfig().layer == -1 and callable(compute_vgpo_weights)
