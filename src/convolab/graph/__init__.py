"""Multi-scale graph convolution for hyperspectral images (an MGRNet-like model).

NumPy-level names are here: the semi-synthetic scene (`make_scene`, on the real Indian Pines
layout with earthlib spectra), superpixel scales and their graphs (`build_scales`), the
deterministic propagation kernels (`normalized_adjacency`, `csr_matmul`, `segment_mean`,
`broadcast`), splits, metrics and the pixel-wise SVM baseline. The torch parts are imported
from their modules: `convolab.graph.model` (MGRNet and its ablations), `convolab.graph.autograd`
(the kernels as autograd functions), `convolab.graph.train` (fit / evaluate) and
`convolab.graph.infer` (a trained model's inference through `convolab.conv2d`). The command is
``convolab hsi`` (`convolab.commands.hsi`); docs/graph.md has the measured figures.
"""

from .metrics import average_accuracy, confusion, kappa, overall_accuracy, scores
from .propagate import CSR, Segments, broadcast, csr_matmul, normalized_adjacency, segment_mean, segment_sum
from .scene import CLASS_NAMES, Scene, indian_pines_gt, indian_pines_segments, make_scene
from .splits import disjoint_split, random_split
from .superpixels import SuperpixelScales, build_scales, khop, nest, pca, region_adjacency, slic
from .svm import fit_svm

__all__ = [
    "CLASS_NAMES",
    "CSR",
    "Scene",
    "Segments",
    "SuperpixelScales",
    "average_accuracy",
    "broadcast",
    "build_scales",
    "confusion",
    "csr_matmul",
    "disjoint_split",
    "fit_svm",
    "indian_pines_gt",
    "indian_pines_segments",
    "kappa",
    "khop",
    "make_scene",
    "nest",
    "normalized_adjacency",
    "overall_accuracy",
    "pca",
    "random_split",
    "region_adjacency",
    "scores",
    "segment_mean",
    "segment_sum",
    "slic",
]
