"""Start-up hook of CPU runs: `vgpo_verl.cpu.enable()` puts this directory first on PYTHONPATH, so
every Python process of the run (Ray workers, the vLLM server and its engine-core and
model-inspection subprocesses) installs the CPU platform hooks before any library loads.

It does nothing unless VGPO_CPU_PLATFORM=1, and then hands over to a `sitecustomize` further down
the path if there is one (this file shadows it).
"""

import os
import sys


def _chain_shadowed_sitecustomize() -> None:
    import importlib.util

    here = os.path.dirname(os.path.abspath(__file__))
    for entry in sys.path:
        if os.path.abspath(entry or ".") == here:
            continue
        candidate = os.path.join(entry or ".", "sitecustomize.py")
        if os.path.isfile(candidate):
            spec = importlib.util.spec_from_file_location("_vgpo_shadowed_sitecustomize", candidate)
            spec.loader.exec_module(importlib.util.module_from_spec(spec))
            return


if os.environ.get("VGPO_CPU_PLATFORM") == "1":
    from vgpo_verl.cpu import boot

    boot.install()
_chain_shadowed_sitecustomize()
