"""Cold start (tools/cold_start.py): what a fresh process with warm caches loads on its first
convolution, and that the shortcuts taken to get there change no result."""

from __future__ import annotations

import os
import subprocess
import sys

_FIRST_CALL = """
import sys
import numpy as np
import convolab
from numba.core.registry import cpu_target
x = np.random.default_rng(0).standard_normal((1, 64, 20, 20), dtype=np.float32)
w = np.random.default_rng(1).standard_normal((64, 64, 3, 3), dtype=np.float32)
ys = [convolab.conv2d(x, w, padding=1, algorithm=a) for a in ("winograd_f2x3", "direct")]
from convolab import reference
ref = reference.conv2d(x.astype(np.float64), w.astype(np.float64), padding=1)
err = max(float(np.abs(y - ref).max()) for y in ys)
# what the first calls left loaded: SciPy's BLAS without scipy.linalg, registries not filled
blas = sys.modules.get("scipy.linalg.cython_blas")
print(err, blas is not None, "scipy.linalg" in sys.modules, "numba.np.polynomial.polynomial_core" in sys.modules)

# a new function compiled afterwards gets the full registries
import numba
@numba.njit
def use_linalg(a):
    return np.linalg.norm(a @ a)
print(abs(use_linalg(np.eye(3)) - 3 ** 0.5) < 1e-12)

# scipy.linalg imported later carries the module already loaded, as a normal import would
import scipy.linalg
import scipy.linalg.cython_blas as cb
print(scipy.linalg.cython_blas is blas, cb is blas, float(scipy.linalg.det(np.eye(2))))
"""


def _fresh(code: str, cache_dir) -> list[str]:
    env = dict(os.environ, CONVOLAB_AUTO_TRIAL="0", CONVOLAB_CACHE_DIR=str(cache_dir))
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout.split("\n")


def test_first_call_of_a_fresh_process_loads_kernels_lightly_and_exactly(tmp_path):
    _fresh(_FIRST_CALL, tmp_path)  # fills Numba's cache if this checkout has not yet
    lines = _fresh(_FIRST_CALL, tmp_path)
    err, blas, linalg_pkg, registries = lines[0].split()
    assert float(err) < 1e-3
    assert blas == "True"
    assert linalg_pkg == "False"  # SciPy's BLAS loaded alone (`_machine.load_scipy_blas`)
    assert registries == "False"  # cached kernels loaded without Numba's lowering registries
    assert lines[1] == "True"
    assert lines[2] == "True True 1.0"


_IMPORT = """
import sys
import numpy as np
import convolab
print(sorted(m for m in ("numba", "scipy", "llvmlite") if m in sys.modules))
from convolab.kernels import _direct
from convolab.highdim import _kernels_lattice
print(sorted({type(f._cache._impl.locator).__name__.startswith("Convolab")
              for mod in (_direct, _kernels_lattice) for f in vars(mod).values()
              if hasattr(f, "_cache") and hasattr(f._cache, "_impl")}))
"""


def test_import_loads_no_numba_and_kernels_get_convolabs_cache_stamps(tmp_path):
    # `import convolab` stays light; Numba's cache locators are convolab's (stamps covering
    # every kernels/ source) for every kernel, installed when numba.core.caching is imported
    lines = _fresh(_IMPORT, tmp_path)
    assert lines[0] == "[]"
    assert lines[1] == "[True]"
