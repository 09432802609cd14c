"""High-dimensional Gaussian filtering by splat / blur / slice, and bilateral image filters.

``gaussian_filter(values, positions, method=...)`` filters values ``(n, c)`` at feature
positions ``(n, d)`` with a normalised unit Gaussian: exactly (brute force), on the
permutohedral lattice (Adams, Baek & Davis, Eurographics 2010; any d <= 16, O(d^2 n)) or on the
bilateral grid (Paris & Durand 2006, Chen et al. 2007; d <= 4). ``bilateral_filter`` and
``joint_bilateral_filter`` apply it to grey and colour images (scikit-image conventions).
``convolab.highdim.learned`` fits splat / blur / slice operators to other kernels in the spirit
of AccNet (Dai et al., NeurIPS 2018). The benchmark is ``convolab bilateral-bench``.
"""

from .filters import METHODS, bilateral_filter, gaussian_filter, joint_bilateral_filter
from .learned import LearnedSBS, fit_sbs
from .permutohedral import PermutohedralLattice

__all__ = [
    "METHODS",
    "LearnedSBS",
    "PermutohedralLattice",
    "bilateral_filter",
    "fit_sbs",
    "gaussian_filter",
    "joint_bilateral_filter",
]
