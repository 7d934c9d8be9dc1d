"""Run a function right after a given module is imported (or at once if it already is).

The one post-import mechanism of the package: the verl plugin (vgpo_verl.plugin) hooks its glue
onto verl modules with it, and the CPU platform (vgpo_verl.cpu) acts inside processes that verl,
Ray and vLLM start, at the moment a library module loads and before anyone binds names from it.
Stdlib only: the plugin imports it in every process that imports verl.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys
from collections.abc import Callable

_callbacks: dict[str, list[Callable]] = {}
_contexts: dict[str, Callable] = {}


class _AfterExecLoader(importlib.abc.Loader):
    def __init__(self, loader, name: str):
        self._loader = loader
        self._name = name

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module):
        context = _contexts.pop(self._name, None)
        if context is None:
            self._loader.exec_module(module)
        else:
            with context():
                self._loader.exec_module(module)
        _run(self._name, module)

    def __getattr__(self, attr):  # get_source, get_filename, ... for tracebacks and inspect
        return getattr(self._loader, attr)


class _AfterImportFinder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path, target=None):
        if fullname not in _callbacks and fullname not in _contexts:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                if spec.loader is not None and not isinstance(spec.loader, _AfterExecLoader):
                    spec.loader = _AfterExecLoader(spec.loader, fullname)
                return spec
        return None


def _run(name: str, module) -> None:
    for callback in _callbacks.pop(name, []):
        callback(module)


def _install_finder() -> None:
    if not any(isinstance(f, _AfterImportFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, _AfterImportFinder())


def while_importing(name: str, context: Callable) -> None:
    """Execute module `name`'s body inside `with context():` (no effect if it is imported already)."""
    _install_finder()
    if name not in sys.modules:
        _contexts[name] = context


def when_imported(name: str, callback: Callable) -> None:
    """Call `callback(module)` once, right after module `name` has executed (now if already imported).

    Exceptions propagate into the importing code on purpose: a half-applied CPU platform must fail
    loudly where it is used, not later with a confusing error.
    """
    _install_finder()
    module = sys.modules.get(name)
    if module is not None:
        callback(module)
        return
    _callbacks.setdefault(name, []).append(callback)
