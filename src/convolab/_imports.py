"""Import hooks (bottom layer, standard library only): run code right after a module is
imported, whoever imports it.

convolab uses this to set things up in other packages only once they are loaded, so that
``import convolab`` loads neither Numba nor SciPy: its Numba cache locators go in when
``numba.core.caching`` is imported (`convolab.kernels`), and the SciPy BLAS module loaded
without its package (`convolab._machine.load_scipy_blas`) is attached to ``scipy.linalg`` if
that package is imported later.
"""

from __future__ import annotations

import importlib.machinery
import sys
import threading

_lock = threading.Lock()
#: module name -> callbacks waiting for its import
_waiting: dict[str, list] = {}


class _Loader:
    """Wraps a module's loader: runs it, then the callbacks. Everything else is the inner
    loader's (resource readers, ``get_data``...)."""

    def __init__(self, inner, callbacks):
        self._inner = inner
        self._callbacks = callbacks

    def __getattr__(self, attr):
        return getattr(self._inner, attr)

    def create_module(self, spec):
        return self._inner.create_module(spec)

    def exec_module(self, module):
        self._inner.exec_module(module)
        for callback in self._callbacks:
            callback(module)


class _Finder:
    """Meta-path finder that wraps the loader of the modules in `_waiting`."""

    def find_spec(self, name, path=None, target=None):
        with _lock:
            callbacks = _waiting.pop(name, None)
            if not _waiting and self in sys.meta_path:
                sys.meta_path.remove(self)
        if callbacks is None:
            return None
        spec = None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(name, path, target)
            if spec is not None:
                break
        if spec is None:
            spec = importlib.machinery.PathFinder.find_spec(name, path, target)
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            # not something we can wrap: run the callbacks once it is there, if ever
            with _lock:
                _waiting.setdefault(name, []).extend(callbacks)
                if self not in sys.meta_path:
                    sys.meta_path.insert(0, self)
            return spec
        spec.loader = _Loader(spec.loader, callbacks)
        return spec


_finder = _Finder()


def after_import(name: str, callback) -> None:
    """Call ``callback(module)`` once module ``name`` is imported: now, if it already is,
    else right after it is (by anyone). Each callback runs once."""
    module = sys.modules.get(name)
    if module is not None:
        callback(module)
        return
    with _lock:
        _waiting.setdefault(name, []).append(callback)
        if _finder not in sys.meta_path:
            sys.meta_path.insert(0, _finder)
