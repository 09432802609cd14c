"""Exact (`fractions.Fraction`) transform matrices of the fast convolution algorithms.

- `cook_toom`: Winograd F(m, r) from interpolation points (Lavin & Gray 2016);
- `symbolic_fourier`: SFC-N(m, r), symbolic-Fourier convolution (He et al., ICML 2024), in its
  nested (separable) and native 2D forms;
- `forms`: the common 1D / 2D bilinear-algorithm records and exact checks.

The fast engine that runs any of them is `convolab.algorithms.bilinear`.
"""

from .cook_toom import cook_toom, winograd_2d
from .forms import Bilinear1D, Bilinear2D
from .symbolic_fourier import sfc_1d, sfc_2d

__all__ = ["Bilinear1D", "Bilinear2D", "cook_toom", "sfc_1d", "sfc_2d", "winograd_2d"]
