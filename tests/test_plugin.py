"""The verl.plugins entry point: registration in a fresh process, cheap loading, loud failures."""

import os
import subprocess
import sys


def _run(code, **env):
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          cwd="/", env={**os.environ, **env})  # cwd=/: nothing of ours on the path by accident


def test_plain_import_verl_registers_vgpo_and_loads_nothing_heavy():
    proc = _run(
        "import sys, verl\n"
        "assert 'vgpo_verl.plugin' in sys.modules, 'entry point not loaded'\n"
        "heavy = [m for m in ('vgpo_verl.methods.vgpo', 'vgpo_verl.plugin.estimator', 'vgpo_verl.plugin.engine', 'vgpo_verl.plugin.scoring_engine', 'vgpo_verl.methods.scoring',"
        " 'vgpo_verl.plugin.trainer_wiring') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
        "from verl.trainer.ppo.core_algos import get_adv_estimator_fn\n"
        "print(get_adv_estimator_fn('vgpo').__module__)\n"
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().splitlines()[-1] == "vgpo_verl.plugin.estimator"


def test_external_lib_fallback_when_entry_points_are_disabled():
    proc = _run(
        "import verl\n"
        "from verl.trainer.ppo import core_algos\n"
        "assert 'vgpo' not in core_algos.ADV_ESTIMATOR_REGISTRY\n"
        "import vgpo_verl\n"  # what actor_rollout_ref.model.external_lib=vgpo_verl does
        "print(core_algos.get_adv_estimator_fn('vgpo').__name__)\n",
        VERL_USE_EXTERNAL_PLUGINS="none",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().splitlines()[-1] == "compute_vgpo_advantage"


def test_a_failing_hook_is_logged_as_a_warning_naming_what_failed():
    proc = _run(
        "from vgpo_verl import plugin\n"
        "plugin.POST_IMPORT_HOOKS['colorsys'] = 'vgpo_verl.no_such_module:register'\n"
        "plugin.install()\n"
        "import colorsys\n"
        "print('imported', colorsys.__name__)\n"
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "imported colorsys" in proc.stdout  # the hooked module itself still imports
    assert "vgpo-verl: vgpo_verl.no_such_module:register failed after colorsys was imported" in proc.stderr
    assert "VGPO is NOT available" in proc.stderr
