"""ResNet-20 (CIFAR-10) on CKKS, executed end to end with levels and bootstraps: the
HyPHEN-style CA/RA network and the multiplexed baseline.

The network (He et al., CVPR 2016, CIFAR variant): a 3x3 stem 3 -> 16 on 32x32, then three
stages of three basic blocks (16, 32, 64 channels on 32x32, 16x16, 8x8; the first block of
stages 2 and 3 has stride 2), 19 convolutions, batch norm folded into the weights, option-A
shortcuts (every second pixel, zero channels added). The average pooling and the classifier
after the last block are not part of these plans.

HyPHEN-style (Kim et al., IEEE Access 2023, arXiv 2302.02407): the client sends the image
RA-packed; the stem is an RAConv (RA -> CA); in every block the first convolution is a CAConv
(CA -> RA), then the degree-2 activation (`activation.poly2`) on its Cout RA ciphertexts,
then an RAConv (RA -> CA) writing the CA layout chosen for that block's output (``distinct``
channels per ciphertext, 2D gap packing above the number of blocks); the block input is moved
into that layout for the residual add (`schedules.ca_relayout`: masks, plus rotations when the
layout changes; a stride-2 shortcut keeps every second pixel and appends the new channels as
zeros), and the activation follows the add. Levels: 1 per convolution, 2 per activation, 6
per block; the shortcut's level is spent on the residual branch, which has 3 to spare.

Baseline (Lee et al., ICML 2022) as its authors' ResNet-20 driver runs it (snu-ccl/FHE-MP-CNN,
``ResNet_cifar10_seal_sparse``): the image multiplexed with k = 1, t = 3 and 8 copies; each
convolution a multiplexed parallel convolution (2 levels, counting variant ``"authors"``);
each ReLU the composite approximation of degrees 15, 15, 27 (`activation.composite_relu`, 14
levels); the stride-2 shortcuts `schedules.mp_downsample` (1 level; channels placed at
``C/2 .. 3C/2 - 1`` as the authors' pretrained models pad).

Levels and bootstraps (`LevelBudget`): a bootstrapped ciphertext has ``usable = 16`` levels
for the network (the authors' parameters: 16 levels beside the 14 bootstrapping uses), a fresh
one ``fresh = 18`` (their driver mod-switches the image to 19 remaining levels, one of which
its stem spends on a scale fix that convolab folds into the weights; with 18 the baseline's
convolutions run at levels 2 -> 0 right before each bootstrap, as in their published log).
A ciphertext is bootstrapped where the next operation would otherwise run out of levels: the
baseline (one ciphertext) before any operation; the HyPHEN-style network only at CA tensors
(bootstrapping its RA tensors would cost one bootstrap per channel): with ``points="ca"``
at the stem output, each block input and each residual sum, when the levels left do not
reach the next such point; with ``points="block"`` only at block inputs, when the levels
left do not cover the whole block. A count of *ciphertext-bootstraps* is the number of
ciphertexts refreshed.

The runs execute on the simulated backend (random weights and image, fixed seed), check
every convolution's decrypted output against `convolab.reference.conv2d` of its decrypted
input, and the final feature map against the plaintext network with the same polynomial
activations. `convolab.he.costs` predicts the same operation counts from formulas (for the
planner's search) and the tests check both agree.

Size: the HyPHEN-style network and the baseline share the layer list, the level budget, the
bootstrap placement and one `Runner`; kept together, their counts are made the same way.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial

import numpy as np

from .. import reference
from ..errors import ConvError
from .activation import RELU_FIT, composite_depth, composite_relu, composite_relu_plain, poly2, poly2_plain, sign_polys
from .backend import SimulatedBackend
from .layout import Layout, make_layout, pack, unpack, with_distinct
from .schedules import EncTensor, add_tensors, ca_conv, ca_relayout, mp_conv, mp_downsample, ra_conv

#: levels a CA/RA convolution and the degree-2 activation consume
CONV_LEVELS, ACT_LEVELS = 1, 2
#: levels of a multiplexed convolution and of the downsampling shortcut
MP_LEVELS, DOWN_LEVELS = 2, 1
#: bootstrap placement policies of the HyPHEN-style network
POINTS = ("ca", "block")


@dataclass(frozen=True)
class ConvLayer:
    """One convolution of ResNet-20: name, channels, input size, stride, multiplexing k."""

    name: str
    cin: int
    cout: int
    size: int
    stride: int
    mp_gap: int

    @property
    def kind(self) -> str:
        """The layer type, e.g. ``32^2 16->32 s2``."""
        s = " s2" if self.stride == 2 else ""
        return f"{self.size}^2 {self.cin}->{self.cout}{s}"

    @property
    def block(self) -> str:
        """The residual block, e.g. ``layer2.0`` (``stem`` for the first convolution)."""
        return self.name.rsplit(".", 1)[0] if "." in self.name else "stem"


def resnet20_convs() -> list[ConvLayer]:
    """The 19 convolutions of CIFAR ResNet-20, in order."""
    layers = [ConvLayer("conv1", 3, 16, 32, 1, 1)]
    cin, size, k = 16, 32, 1
    for stage, cout in enumerate((16, 32, 64), start=1):
        for blk in range(3):
            stride = 2 if (stage > 1 and blk == 0) else 1
            layers.append(ConvLayer(f"layer{stage}.{blk}.conv1", cin, cout, size, stride, k))
            size //= stride
            k *= stride
            layers.append(ConvLayer(f"layer{stage}.{blk}.conv2", cout, cout, size, 1, k))
            cin = cout
    return layers


@dataclass(frozen=True)
class LevelBudget:
    """Levels of a fresh and of a bootstrapped ciphertext (see the module docstring)."""

    fresh: int = 18
    usable: int = 16

    def __post_init__(self):
        if not (isinstance(self.usable, int) and isinstance(self.fresh, int)) or self.usable < 3 \
                or self.fresh < 3:
            raise ConvError(f"levels must be integers >= 3, got fresh={self.fresh!r}, usable={self.usable!r}")


@dataclass
class LayerRecord:
    """One executed convolution: scheme, CA layout, levels, operations and exactness."""

    layer: ConvLayer
    scheme: str
    distinct: int | None
    level_in: int
    level_out: int
    rotations: int = 0
    hoisted: int = 0
    pmults: int = 0
    max_rel_error: float = float("nan")

    @property
    def levels(self) -> int:
        return self.level_in - self.level_out


@dataclass
class NetworkRun:
    """A ResNet-20 configuration run (or modelled, `convolab.he.costs`).

    Attributes
    ----------
    name : str
        The configuration.
    slots : int
    budget : LevelBudget
    records : list of LayerRecord
        One per convolution.
    by_level : collections.Counter
        ``(category, layer, operation, level) -> count`` for the whole network; categories
        ``conv``, ``activation``, ``shortcut`` and ``bootstrap``.
    bootstraps : list of (str, int, int)
        ``(where, ciphertexts, data slots)`` of each bootstrap point.
    max_rel_error : float
        Final feature map against the plaintext network (NaN when modelled).
    distinct : tuple or None
        CA layout of the stem output and of each block output (HyPHEN-style).
    """

    name: str
    slots: int
    budget: LevelBudget
    records: list = field(default_factory=list)
    by_level: object = None
    bootstraps: list = field(default_factory=list)
    max_rel_error: float = float("nan")
    distinct: tuple | None = None

    @property
    def ct_bootstraps(self) -> int:
        return sum(n for _, n, _ in self.bootstraps)

    def totals(self) -> dict:
        """Convolution totals: rotations (hoisted included), hoisted, PMults."""
        return dict(rotations=sum(r.rotations + r.hoisted for r in self.records),
                    hoisted=sum(r.hoisted for r in self.records),
                    pmults=sum(r.pmults for r in self.records))

    def count(self, op: str, category: str | None = None) -> int:
        """Operations of one kind, optionally in one category."""
        return sum(v for (cat, _, o, _), v in self.by_level.items()
                   if o == op and (category is None or cat == category))


def layer_counts(by_level, name: str) -> dict:
    """rotations / hoisted / pmults of the convolution ``name`` from a by_level Counter."""
    out = dict(rotations=0, hoisted=0, pmults=0)
    key = {"rotation": "rotations", "hoisted": "hoisted", "pmult": "pmults"}
    for (cat, layer, op, _), v in by_level.items():
        if cat == "conv" and layer == name and op in key:
            out[key[op]] += v
    return out


# ---- drivers (any executor: `Runner` here, `costs.Model` for the formulas) ---------------------
def _maybe_bootstrap(ex, t, need: int, where: str):
    if ex.remaining(t) < need:
        if ex.budget.usable < need:
            raise ConvError(f"{where} needs {need} levels but a bootstrap gives usable={ex.budget.usable}")
        t = ex.bootstrap(t, where)
    return t


def hyphen_stem(ex, distinct: int, points: str = "ca"):
    """The stem of the HyPHEN-style network: image (RA) -> RAConv -> CA with ``distinct``
    channels per ciphertext -> activation."""
    if points not in POINTS:
        raise ConvError(f"unknown bootstrap points {points!r}; choose from {POINTS}")
    y = ex.ra_conv(ex.image("RA"), 0, distinct)
    if points == "ca":
        y = _maybe_bootstrap(ex, y, ACT_LEVELS, "conv1 output")
    return ex.act(y, ex.layers[0].name)


def hyphen_block(ex, y, b: int, distinct: int, points: str = "ca"):
    """Residual block ``b`` (0..8) of the HyPHEN-style network on its CA input ``y``; the
    output has ``distinct`` channels per ciphertext."""
    L, i = ex.layers, 1 + 2 * b
    blk = L[i].block
    need = 2 * CONV_LEVELS + ACT_LEVELS if points == "ca" else 2 * CONV_LEVELS + 2 * ACT_LEVELS
    y = _maybe_bootstrap(ex, y, need, f"{blk} input")
    h = ex.act(ex.ca_conv(y, i), L[i].name)
    h = ex.ra_conv(h, i + 1, distinct)
    s = ex.add(h, ex.shortcut(y, ex.layout(h), L[i].stride == 2, blk), blk)
    if points == "ca":
        s = _maybe_bootstrap(ex, s, ACT_LEVELS, f"{blk} sum")
    return ex.act(s, L[i + 1].name)


def hyphen_forward(ex, distinct, points: str = "ca"):
    """Drive the HyPHEN-style network on an executor; ``distinct`` holds the CA layout of the
    stem output and of each of the 9 block outputs (10 entries)."""
    blocks = (len(ex.layers) - 1) // 2
    if len(distinct) != 1 + blocks:
        raise ConvError(f"distinct needs {1 + blocks} entries (stem + blocks), got {len(distinct)}")
    y = hyphen_stem(ex, distinct[0], points)
    for b in range(blocks):
        y = hyphen_block(ex, y, b, distinct[b + 1], points)
    return y


def baseline_forward(ex):
    """Drive the multiplexed baseline network on an executor."""
    L, relu = ex.layers, ex.relu_levels
    y = ex.mp_conv(_maybe_bootstrap(ex, ex.image("MP"), MP_LEVELS, "conv1 input"), 0)
    y = ex.relu(_maybe_bootstrap(ex, y, relu, "conv1 output"), L[0].name)
    for i in range(1, len(L), 2):
        blk = L[i].block
        y = _maybe_bootstrap(ex, y, MP_LEVELS, f"{blk} input")
        h = ex.mp_conv(y, i)
        h = ex.relu(_maybe_bootstrap(ex, h, relu, f"{L[i].name} output"), L[i].name)
        h = ex.mp_conv(_maybe_bootstrap(ex, h, MP_LEVELS, f"{L[i + 1].name} input"), i + 1)
        sc = ex.downsample(_maybe_bootstrap(ex, y, DOWN_LEVELS, f"{blk} shortcut"), blk) \
            if L[i].stride == 2 else y
        s = _maybe_bootstrap(ex, ex.add(h, sc, blk), relu, f"{blk} sum")
        y = ex.relu(s, L[i + 1].name)
    return y


# ---- plaintext networks ----------------------------------------------------------------------
def _shortcut_plain(y, cout, offset):
    sc = np.zeros((y.shape[0], cout, (y.shape[2] + 1) // 2, (y.shape[3] + 1) // 2))
    sc[:, offset : offset + y.shape[1]] = y[:, :, ::2, ::2]
    return sc


def forward_plain(image, weights, act, shortcut_offset=False, pre=None):
    """The plaintext network with activation ``act``; ``shortcut_offset`` places the shortcut's
    channels at ``C/2`` (the baseline) instead of 0; ``pre`` collects pre-activation maxima."""
    layers = resnet20_convs()

    def a(v):
        if pre is not None:
            pre.append(float(np.abs(v).max()))
        return act(v)

    y = a(reference.conv2d(image, weights[0], padding=1))
    for i in range(1, len(layers), 2):
        la = layers[i]
        h = a(reference.conv2d(y, weights[i], stride=la.stride, padding=1))
        h = reference.conv2d(h, weights[i + 1], padding=1)
        sc = _shortcut_plain(y, la.cout, la.cin // 2 if shortcut_offset else 0) if la.stride == 2 else y
        y = a(h + sc)
    return y


def random_network(seed: int = 0):
    """The image (1, 3, 32, 32) and the 19 weight tensors of the executed runs."""
    rng = np.random.default_rng(seed)
    layers = resnet20_convs()
    weights = [rng.normal(0, 0.5 / np.sqrt(9 * la.cin), (la.cout, la.cin, 3, 3)) for la in layers]
    return rng.uniform(-1, 1, (1, 3, 32, 32)), weights


def relu_bound(image, weights) -> float:
    """A power of two bounding every ReLU input of the baseline network with its composite
    ReLU (the authors scale by B = 40 for trained weights)."""
    bound = 1.0
    while True:
        pre: list = []
        act = partial(composite_relu_plain, polys=sign_polys(bound=bound))
        forward_plain(image, weights, act, True, pre)
        if max(pre) <= bound:
            return bound
        bound *= 2


# ---- the executing executor ------------------------------------------------------------------
class Runner:
    """Executes a network on a backend, one convolution at a time, checking each one."""

    def __init__(self, be, image, weights, budget: LevelBudget, hoist: bool = True,
                 polys=None, coeffs=RELU_FIT):
        self.be, self.image_data, self.weights = be, image, weights
        self.layers = resnet20_convs()
        self.budget, self.hoist, self.polys, self.coeffs = budget, hoist, polys, coeffs
        self.relu_levels = composite_depth(polys) if polys is not None else 0
        self.records: list[LayerRecord] = []
        self.bootstraps: list = []

    def remaining(self, t) -> int:
        return min(self.be.remaining(ct) for ct in t.cts if ct is not None)

    def layout(self, t) -> Layout:
        return t.layout

    def _decrypt(self, t):
        return unpack(t.layout, [None if ct is None else self.be.decrypt(ct) for ct in t.cts])

    def image(self, kind):
        S = self.be.slots
        if kind == "RA":
            lay = make_layout("RA", 3, 32, 32, S)
        else:
            lay = make_layout("MP", 3, 32, 32, S, 1, sub_blocks=3)
        return EncTensor(lay, [self.be.encrypt(v) for v in pack(lay, self.image_data[0])])

    def _conv(self, fn, t, i, scheme, m, **kw):
        la = self.layers[i]
        lvl = self.remaining(t)
        xin = self._decrypt(t)
        with self.be.section("conv", la.name):
            out = fn(self.be, t, self.weights[i], la.stride, **kw)
        ref = reference.conv2d(xin[None], self.weights[i], stride=la.stride, padding=1)[0]
        err = float(np.abs(self._decrypt(out) - ref).max() / max(np.abs(ref).max(), 1e-300))
        self.records.append(LayerRecord(la, scheme, m, lvl, self.remaining(out), max_rel_error=err))
        return out

    def ra_conv(self, t, i, distinct):
        return self._conv(ra_conv, t, i, "RA", distinct, distinct=distinct)

    def ca_conv(self, t, i):
        return self._conv(ca_conv, t, i, "CA", t.layout.distinct, hoist=self.hoist)

    def mp_conv(self, t, i):
        return self._conv(mp_conv, t, i, "MP", None, variant="authors")

    def act(self, t, name):
        with self.be.section("activation", name):
            return EncTensor(t.layout, [None if ct is None else poly2(self.be, ct, self.coeffs) for ct in t.cts])

    def relu(self, t, name):
        with self.be.section("activation", name):
            return EncTensor(t.layout, [None if ct is None else composite_relu(self.be, ct, self.polys)
                                        for ct in t.cts])

    def shortcut(self, y, out_lay, subsample, name):
        if y.layout == out_lay:
            return y
        with self.be.section("shortcut", name):
            return ca_relayout(self.be, y, out_lay, subsample)

    def downsample(self, y, name):
        with self.be.section("shortcut", name):
            return mp_downsample(self.be, y, "authors")

    def add(self, h, sc, name):
        with self.be.section("shortcut", name):
            return add_tensors(self.be, h, sc)

    def bootstrap(self, t, where):
        n = sum(ct is not None for ct in t.cts)
        self.bootstraps.append((where, n, t.layout.data_slots))
        with self.be.section("bootstrap", where):
            return EncTensor(t.layout, [None if ct is None else self.be.bootstrap(ct, t.layout.data_slots)
                                        for ct in t.cts])

    def finish(self, name, out, ref, distinct=None) -> NetworkRun:
        got = self._decrypt(out)
        err = float(np.abs(got - ref).max() / np.abs(ref).max())
        for r in self.records:
            r.rotations, r.hoisted, r.pmults = layer_counts(self.be.counts.by_level, r.layer.name).values()
        return NetworkRun(name, self.be.slots, self.budget, self.records, self.be.counts.by_level,
                          self.bootstraps, err, None if distinct is None else tuple(distinct))


def _backend(slots, budget):
    return SimulatedBackend(slots, levels=budget.fresh, usable=budget.usable)


def run_hyphen(distinct, slots: int = 2**15, budget: LevelBudget | None = None,
               points: str = "ca", hoist: bool = True, seed: int = 0, name: str | None = None) -> NetworkRun:
    """Execute the HyPHEN-style network on the simulated backend; see the module docstring.

    Parameters
    ----------
    distinct : int or sequence of 10 ints
        CA layout (channels per ciphertext) of the stem output and of each block output; an
        int for all (capped at each tensor's channel count).
    slots : int
        Slots per ciphertext.
    budget : LevelBudget, optional
        Fresh and usable levels (default 18 / 16).
    points : {"ca", "block"}
        Where bootstraps may go.
    hoist : bool
        Count the CAConv tap rotations as hoisted groups.
    seed : int
        Seed of the random image and weights (counts do not depend on it).
    """
    budget = budget or LevelBudget()
    distinct = expand_distinct(distinct)
    image, weights = random_network(seed)
    ex = Runner(_backend(slots, budget), image, weights, budget, hoist=hoist)
    out = hyphen_forward(ex, distinct, points)
    ref = forward_plain(image, weights, lambda v: poly2_plain(v, RELU_FIT))[0]
    return ex.finish(name or f"CA/RA m={'/'.join(map(str, sorted(set(distinct))))}", out, ref, distinct)


def run_baseline(slots: int = 2**15, budget: LevelBudget | None = None, seed: int = 0) -> NetworkRun:
    """Execute the multiplexed baseline as its authors' driver runs it (see the module
    docstring) on the simulated backend."""
    budget = budget or LevelBudget()
    image, weights = random_network(seed)
    polys = sign_polys(bound=relu_bound(image, weights))
    ex = Runner(_backend(slots, budget), image, weights, budget, polys=polys)
    out = baseline_forward(ex)
    ref = forward_plain(image, weights, lambda v: composite_relu_plain(v, polys), True)[0]
    return ex.finish("baseline (authors' counting)", out, ref)


def stage_channels() -> list[int]:
    """Channels of the stem output and of each block output."""
    L = resnet20_convs()
    return [L[0].cout] + [L[i].cout for i in range(1, len(L), 2)]


def expand_distinct(distinct) -> list[int]:
    """``distinct`` as 10 entries; an int applies to every tensor, capped at its channels."""
    chans = stage_channels()
    if isinstance(distinct, int | np.integer):
        return [min(int(distinct), 1 << (c - 1).bit_length()) for c in chans]
    distinct = [int(m) for m in distinct]
    if len(distinct) != len(chans):
        raise ConvError(f"distinct needs {len(chans)} entries (stem + 9 blocks), got {len(distinct)}")
    return distinct


def ca_layout(slots: int, stage_index: int, channels: int, distinct: int) -> Layout:
    """The CA layout of a ResNet-20 tensor: 32x32 grid, gap 2^stage_index."""
    g = 1 << stage_index
    base = Layout("CA", channels, 32 // g, 32 // g, g, 32, 32, slots)
    return with_distinct(base, distinct)


