"""Convolution on homomorphically encrypted (CKKS) images.

HyPHEN's channel-aligned / replicated packings (CAConv: CA in, RA out; RAConv: RA in, CA out,
rotations moved to the output side; the replicated CA layout of ``distinct = m`` channels per
ciphertext and 2D gap packing; Kim et al., IEEE Access 2023, arXiv 2302.02407) and the
multiplexed parallel convolution baseline (Lee et al., ICML 2022) counted as its authors' code
runs, written against a small CKKS backend interface with two backends: ``simulated`` (exact
float64 slot vectors that count every operation by level, with levels and bootstrapping) and
``tenseal`` (real CKKS through SEAL, the ``he`` extra). `plan_resnet20` executes ResNet-20 on
CIFAR-10 both ways with levels and bootstraps, chooses each tensor's layout by modelled latency
(`choose_distinct`) and prices the plans (`latency`, with per-operation costs measured by
``convolab he-bench``).

>>> from convolab import he
>>> r = he.conv2d(x, w, scheme="ca", distinct=16, backend="simulated", slots=2**15)  # doctest: +SKIP
>>> r.output, r.rotations, r.pmults, r.depth                                         # doctest: +SKIP
"""

from .activation import RELU_FIT, composite_relu, eval_odd, poly2, sign_polys
from .backend import OPERATIONS, Backend, Counts, SimulatedBackend
from .backends import get_backend
from .conv import SCHEMES, HEConvResult, conv2d
from .latency import CostTable, latency
from .layout import Layout, make_layout, pack, unpack, with_distinct
from .network import ConvLayer, LayerRecord, LevelBudget, NetworkRun, resnet20_convs, run_baseline, run_hyphen
from .planner import ResNetPlan, choose_distinct, model_run, plan_resnet20
from .schedules import EncTensor, ca_conv, ca_relayout, mp_conv, mp_downsample, ra_conv

__all__ = [
    "OPERATIONS",
    "RELU_FIT",
    "SCHEMES",
    "Backend",
    "ConvLayer",
    "CostTable",
    "Counts",
    "EncTensor",
    "HEConvResult",
    "LayerRecord",
    "Layout",
    "LevelBudget",
    "NetworkRun",
    "ResNetPlan",
    "SimulatedBackend",
    "ca_conv",
    "ca_relayout",
    "choose_distinct",
    "composite_relu",
    "conv2d",
    "eval_odd",
    "get_backend",
    "latency",
    "make_layout",
    "model_run",
    "mp_conv",
    "mp_downsample",
    "pack",
    "plan_resnet20",
    "poly2",
    "ra_conv",
    "resnet20_convs",
    "run_baseline",
    "run_hyphen",
    "sign_polys",
    "unpack",
    "with_distinct",
]
