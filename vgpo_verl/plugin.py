"""verl plugin entry point (`verl.plugins` group): `import verl` imports this module in every process.

It only installs post-import hooks: each piece of glue is imported when the verl module it hooks
is imported, so a process that never imports the trainer or the FSDP engine (rollout servers,
reward workers) loads none of our code. verl logs entry-point failures at DEBUG level only, so
every failure here is logged at WARNING, naming what failed.
"""

from __future__ import annotations

import importlib
import importlib.abc
import logging
import sys

logger = logging.getLogger("vgpo_verl")

# verl module -> glue to run right after that module has been imported ("module:function").
POST_IMPORT_HOOKS: dict[str, str] = {
    "verl.trainer.ppo.core_algos": "vgpo_verl.estimator:register",
    "verl.workers.engine.fsdp.transformer_impl": "vgpo_verl.engine:register",
    "verl.trainer.ppo.v1.trainer_base": "vgpo_verl.trainer_wiring:install_v1",
    "verl.trainer.ppo.ray_trainer": "vgpo_verl.trainer_wiring:install_legacy",
}

_ran: set[str] = set()


def _run_hook(verl_module: str) -> None:
    target = POST_IMPORT_HOOKS[verl_module]
    if target in _ran:
        return
    _ran.add(target)
    module_name, func_name = target.split(":")
    try:
        getattr(importlib.import_module(module_name), func_name)()
    except Exception:
        logger.warning(
            "vgpo-verl: %s failed after %s was imported; VGPO is NOT available in this process "
            "(pid-local). Reinstall with `make install` or check the traceback:",
            target,
            verl_module,
            exc_info=True,
        )


class _HookedLoader(importlib.abc.Loader):
    """Delegates to the real loader, then runs the hook once the module body has executed."""

    def __init__(self, loader: importlib.abc.Loader, name: str):
        self._loader = loader
        self._name = name

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module):
        self._loader.exec_module(module)
        _run_hook(self._name)

    def __getattr__(self, attr):  # get_source, get_filename, ... for tracebacks and inspect
        return getattr(self._loader, attr)


class _PostImportFinder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path, target=None):
        if fullname not in POST_IMPORT_HOOKS:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                if spec.loader is not None:
                    spec.loader = _HookedLoader(spec.loader, fullname)
                return spec
        return None


def install() -> None:
    """Hook every module in POST_IMPORT_HOOKS; modules imported already are handled at once."""
    if not any(isinstance(f, _PostImportFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, _PostImportFinder())
    for verl_module in POST_IMPORT_HOOKS:
        if verl_module in sys.modules:
            _run_hook(verl_module)


try:
    install()
except Exception:  # verl would hide this at DEBUG level
    logger.warning("vgpo-verl: installing the verl plugin failed; VGPO is NOT available", exc_info=True)
