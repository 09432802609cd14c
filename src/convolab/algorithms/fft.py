"""``fft``: overlap-save FFT convolution with the channel sum done as a complex GEMM per frequency.

Formula. The padded input is cut into overlapping tiles of Th x Tw pixels whose top-left corners
are (th, tw) = (Th - Rd + 1, Tw - Sd + 1) apart (Rd, Sd: the dilated kernel). For a tile ``x_c``
of channel c the circular cross-correlation with the (zero-filled, dilated) kernel ``w_kc`` is
exact on its first th x tw positions (overlap-save), and in the frequency domain it is a
product::

    Y_k[f] = sum_c  X_c[f] * conj(W_kc[f]) / (Th Tw),     y_k = DFT^-1_unscaled(Y_k)

so for every frequency f the channel reduction is one complex matrix product
``Y[f] (Kg x P) = Wf[f] (Kg x Cg) @ X[f] (Cg x P)`` over the P tiles (per group). The transform
size follows the kernel, not the image: (Th, Tw) is picked by a cost model from the 5-smooth
FFT lengths (`choose_tile`); e.g. 64 x 56 x 56 with 7 x 7 gets 25 x 25 transforms (9 tiles per
image), 16 x 224 x 224 with 11 x 11 gets 48 x 125 (12 tiles). `prepare` takes ``tile=`` and
``chunk=`` to force a tiling.

Layout. The overlapping tiles of a chunk are a strided view (Th, Tw, C, images, tile rows,
tile columns) of the input -- of a zero-extended copy of the rows the chunk reads when there is
padding -- so no tile is copied: ``scipy.fft.rfft2`` over the two leading axes (pocketfft,
``workers`` threads, (channel, tile) as SIMD lanes) reads it directly and returns the spectra as
(Th, Tw//2+1, C, P) = (F, groups, Cg, P), the GEMM operand, with no transposition;
``numpy.matmul`` (BLAS cgemm / zgemm, one call per frequency and group) multiplies by the
prepared (F, groups, Kg, Cg) filter spectra; the unscaled inverse (the 1/(Th Tw) sits in the
filter spectra) runs down the columns in place, then along only the th rows that hold valid
outputs, giving (th, Tw, K, P) tiles whose first tw columns ``scatter`` copies into the NCHW
output. Depthwise-like layers (Cg == 1) use a broadcast complex multiply instead of the GEMM.
Chunks of whole images or of tile rows keep the workspace near `CHUNK_BYTES`. The transposed
product (P x Cg) @ (Cg x Kg) measured 0.67-1.3x as fast on this machine's OpenBLAS, depending on
the shape, and would need the tiles transposed: not used.

Filter transform (``prepare``): dilate the kernel with zeros (any dilation works), take its real 2D
DFT at (Th, Tw) in float64, conjugate, divide by Th Tw, round once to the compute dtype.

Cost. ``multiplies`` = complex GEMM products x 4 (cgemm's 4 real products per complex one) +
an estimate of the FFT multiplications: a complex length-m FFT counted as 2 m log2 m real
multiplications and a real one as m log2 m (radix-2 count), so a real 2D transform of Th x Tw costs
``Th Tw log2 Tw + 2 Th (Tw//2+1) log2 Th``, and every call does (C + K) P of them. The filter
transform (done once in ``prepare``) is not counted.

Error. See `error_bound`: normwise stable, error ~ u log2(Th Tw) times norms, not componentwise.

Determinism. pocketfft gives every 1D transform to one thread, and our threads split only
independent outputs (channels, frequencies), so a result is bit-identical for any ``WORKERS`` and
any BLAS thread count on one machine (tested for 1, 2, 3 threads). The complex GEMM goes through
OpenBLAS, whose kernel -- and so the summation order -- is chosen by the CPU's SIMD width: with
OPENBLAS_CORETYPE set to SkylakeX, Haswell and Sandybridge the outputs differ in the last bits
(measured), as ``im2col``'s do. Hence ``deterministic=False``. The tiles of all images in a
chunk are the columns of one complex GEMM, and the BLAS computes columns at some positions with
other kernels (the N remainder): an image's outputs then depend, in the last bits, on its
position in the batch (94 of 1620 outputs differ by 1-2 ulps on an Intel Xeon, some on AMD Zen 4;
none on Zen 5). Hence ``batch_invariant=False``; one GEMM per image would fix it at the price of
small GEMMs.

Sources: overlap-save (T. G. Stockham, "High-speed convolution and correlation", AFIPS 1966;
Oppenheim & Schafer, *Discrete-Time Signal Processing*, ch. 8); FFT convolution for CNNs
(Mathieu, Henaff, LeCun, "Fast training of convolutional networks through FFTs", ICLR 2014;
Vasilache et al., "Fast convolutional nets with fbfft", ICLR 2015); FFT error analysis
(Higham, *Accuracy and Stability of Numerical Algorithms*, 2nd ed., sec. 24.1).

Size: one algorithm; the tile chooser, its error bound and the run are tied by the `Tiling`
they share.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np

from .._parallel import blas_one_thread, run_threads, worker_count
from ..errors import ConvError
from ..registry import UNIT_ROUNDOFF, Algorithm, gamma, register, summation_bound
from ..spec import ConvSpec
from ._common import padded_bytes

#: pocketfft threads (``scipy.fft`` ``workers``); None: the CPUs this process may run on
WORKERS: int | None = None

#: target peak workspace of one chunk of tiles (bytes); a chunk holds at least `MIN_CHUNK` tiles
CHUNK_BYTES = 8 << 20
MIN_CHUNK = 16

#: largest transform side the tile chooser considers, and the largest prepared filter spectra
#: (bytes) it accepts unless even the smallest tile exceeds it
MAX_SIDE = 256
MAX_FILTER_BYTES = 256 << 20

#: cost-model constants (seconds), fitted on the 2-core AMD EPYC (Zen 5) workplace machine;
#: only their ratios matter for the choice
_COST = {
    "fft": 0.15e-9,  # per point per log2(points), one forward or inverse real 2D transform
    "fft_point": 1.0e-9,  # per point of a transform (copies in and out of the lanes)
    "fft_call": 30e-9,  # per transform
    "pad": 0.5e-9,  # per element of the zero-extended input copy
    "scatter": 1.3e-9,  # per output element scattered out of the tiles
    "flop": 1 / 150e9,  # complex GEMM, per real flop (8 per complex multiply-add)
    "byte": 1 / 25e9,  # per byte of filter spectra streamed per chunk
    "call": 0.3e-6,  # per small matrix product (numpy loops over frequencies x groups)
    "ew": 2.0e-9,  # per complex product of the depthwise broadcast multiply
}

#: data assumption of `error_bound`: rms(x) <= KAPPA * mean|x| over a tile (dense activations)
KAPPA = 4.0

#: the tile chooser keeps `error_bound` within this multiple of direct convolution's worst-case
#: summation bound when some tile allows it (the bound grows like sqrt(Th Tw)), so that the
#: chooser's default error budget (64x, `convolab.select`) admits ``fft``
MAX_ERROR_FACTOR = 32.0


def _workers() -> int:
    if WORKERS is not None:
        return max(1, int(WORKERS))
    return worker_count()


def _supports(spec: ConvSpec) -> str | None:
    if spec.stride != (1, 1):
        return (
            f"stride {spec.stride[0]}x{spec.stride[1]} is not 1: the FFT computes every output "
            f"position, so a strided convolution would discard most of the work"
        )
    return None


# ---------------------------------------------------------------------------------- tiling
@dataclass(frozen=True)
class Tiling:
    """Transform size (Th, Tw), output tile (th, tw), tile grid and chunk of one convolution.

    Attributes
    ----------
    Th, Tw : int
        FFT size; the input tile.
    th, tw : int
        Output tile: ``Th - dilated_R + 1``, ``Tw - dilated_S + 1``.
    nth, ntw : int
        Tiles per image vertically and horizontally.
    tiles : int
        N * nth * ntw, all tiles of a call.
    chunk : int
        Most tiles transformed and multiplied together: whole images when an image has at
        most that many tiles, else whole rows of tiles of one image.
    """

    Th: int
    Tw: int
    th: int
    tw: int
    nth: int
    ntw: int
    tiles: int
    chunk: int

    @property
    def Twf(self) -> int:
        """Columns of the real-FFT half spectrum."""
        return self.Tw // 2 + 1

    @property
    def F(self) -> int:
        """Frequencies per spectrum: Th * (Tw // 2 + 1)."""
        return self.Th * self.Twf

    @property
    def n(self) -> int:
        return self.Th * self.Tw

    @property
    def per_image(self) -> int:
        return self.nth * self.ntw

    def chunk_list(self, N: int) -> list[tuple[int, int, int, int]]:
        """Chunks as (first image, end image, first tile row, end tile row), in tile order."""
        if self.chunk >= self.per_image:
            k = self.chunk // self.per_image
            return [(n, min(N, n + k), 0, self.nth) for n in range(0, N, k)]
        k = self.chunk // self.ntw
        return [(n, n + 1, r, min(self.nth, r + k)) for n in range(N) for r in range(0, self.nth, k)]

    @property
    def chunks(self) -> int:
        N = self.tiles // self.per_image
        if self.chunk >= self.per_image:
            return -(-N // (self.chunk // self.per_image))
        return N * -(-self.nth // (self.chunk // self.ntw))


def _in_place(spec: ConvSpec, Th: int, Tw: int, nth: int, ntw: int) -> bool:
    """True when the tiles are a strided view of the input itself (no padding to add)."""
    th, tw = Th - spec.dilated_R + 1, Tw - spec.dilated_S + 1
    return not any(spec.padding) and nth * th + Th - th <= spec.H and ntw * tw + Tw - tw <= spec.W


def _chunk_bytes(spec: ConvSpec, Th: int, Tw: int, chunk: int) -> int:
    """Peak workspace of a chunk of ``chunk`` tiles (see `fft_workspace_bytes`)."""
    isz = spec.compute_dtype.itemsize
    th, tw, nth, ntw = _grid(spec, Th, Tw)
    F = Th * (Tw // 2 + 1)
    if chunk >= nth * ntw:
        images, rows = chunk // (nth * ntw), nth
    else:
        images, rows = 1, chunk // ntw
    hb, wb = rows * th + Th - th, ntw * tw + Tw - tw  # the input block the tiles read
    xp = 0 if _in_place(spec, Th, Tw, nth, ntw) else images * spec.C * hb * wb * isz
    xf, yf = 2 * F * spec.C * chunk * isz, 2 * F * spec.K * chunk * isz
    yt = th * Tw * spec.K * chunk * isz
    return max(xp + xf, xf + yf, yf + yt)


def _chunk(spec: ConvSpec, Th: int, Tw: int, tiles: int) -> int:
    th, tw, nth, ntw = _grid(spec, Th, Tw)
    per_tile = _chunk_bytes(spec, Th, Tw, nth * ntw) / (nth * ntw)
    chunk = max(1, min(tiles, max(MIN_CHUNK, int(CHUNK_BYTES // per_tile))))
    return _round_chunk(chunk, tiles, nth, ntw)


def _grid(spec: ConvSpec, Th: int, Tw: int) -> tuple[int, int, int, int]:
    th, tw = Th - spec.dilated_R + 1, Tw - spec.dilated_S + 1
    return th, tw, -(-spec.OH // th), -(-spec.OW // tw)


def _filter_bytes(spec: ConvSpec, Th: int, Tw: int) -> int:
    return Th * (Tw // 2 + 1) * spec.K * spec.Cg * 2 * spec.compute_dtype.itemsize


def _cost(spec: ConvSpec, Th: int, Tw: int) -> float:
    """Modelled seconds of one call with transform size (Th, Tw)."""
    th, tw, nth, ntw = _grid(spec, Th, Tw)
    tiles = spec.N * nth * ntw
    chunk = _chunk(spec, Th, Tw, tiles)
    chunks = -(-tiles // chunk)
    n, F = Th * Tw, Th * (Tw // 2 + 1)
    G, Kg, Cg = spec.groups, spec.Kg, spec.Cg
    c = _COST
    per_fft = c["fft_call"] + c["fft_point"] * n + c["fft"] * n * math.log2(max(n, 2))
    t = per_fft * (spec.C + spec.K) * tiles
    if not _in_place(spec, Th, Tw, nth, ntw):
        t += c["pad"] * spec.N * spec.C * (nth * th + Th - th) * (ntw * tw + Tw - tw)
    t += c["scatter"] * tiles * th * tw * spec.K
    if Cg == 1:
        t += c["ew"] * F * spec.K * tiles
    else:
        # small products run below BLAS speed: efficiency ramps up with each matrix side
        eff = min(1.0, chunk / 4) * min(1.0, Kg / 16) * min(1.0, Cg / 16)
        flops = 8.0 * F * G * Kg * Cg * tiles
        t += max(c["flop"] * flops / max(eff, 0.05), c["byte"] * _filter_bytes(spec, Th, Tw) * chunks)
        t += c["call"] * F * G * chunks
    return t


def next_fast_len(n: int) -> int:
    """The least 5-smooth integer (2^a 3^b 5^c) >= ``n`` >= 1: what
    ``scipy.fft.next_fast_len(n, real=True)`` returns, without importing ``scipy.fft`` (about
    50 ms of a fresh process's first plan, which ranks fft on every layer)."""
    m = n
    while True:
        k = m
        for p in (2, 3, 5):
            while k % p == 0:
                k //= p
        if k == 1:
            return m
        m += 1


def _lengths(lo: int, hi: int) -> list[int]:
    """The 5-smooth lengths from ``lo`` up to the first one >= ``hi``."""
    out, m = [], lo
    while not out or out[-1] < hi:
        out.append(next_fast_len(m))
        m = out[-1] + 1
    return out


@functools.lru_cache(maxsize=256)
def choose_tile(spec: ConvSpec) -> tuple[int, int]:
    """The transform size (Th, Tw) the cost model picks for ``spec``.

    Parameters
    ----------
    spec : ConvSpec

    Returns
    -------
    (int, int)
        Th >= dilated R and Tw >= dilated S.

    Notes
    -----
    Candidates are the 5-smooth lengths (`next_fast_len`) from the dilated kernel size up to
    the first one covering the padded image (at most `MAX_SIDE`).
    Filter spectra over `MAX_FILTER_BYTES` are refused unless nothing smaller exists, and so
    are tiles whose float32 `error_bound` exceeds `MAX_ERROR_FACTOR` times the summation bound
    of direct convolution, unless every tile does. The model (`_COST`) adds the transforms (a
    per-transform and a per-point cost plus n log2 n), the zero-extended input copy, the output
    copy and the complex GEMM (compute-bound, or bound by streaming the filter spectra when
    there are few tiles), so it trades the overlap and the partial edge tiles of small
    transforms against the bigger spectra of large ones.
    """
    Rd, Sd = spec.dilated_R, spec.dilated_S
    hs = _lengths(Rd, max(Rd, min(spec.padded_H, MAX_SIDE)))
    ws = _lengths(Sd, max(Sd, min(spec.padded_W, MAX_SIDE)))
    budget = MAX_ERROR_FACTOR * summation_bound(spec, np.float32)
    ranked = sorted((_cost(spec, Th, Tw), Th, Tw) for Th in hs for Tw in ws)
    for rule in (
        lambda Th, Tw: _filter_bytes(spec, Th, Tw) <= MAX_FILTER_BYTES
        and _bound(spec, np.float32, Th * Tw) <= budget,
        lambda Th, Tw: _filter_bytes(spec, Th, Tw) <= MAX_FILTER_BYTES,
    ):
        for _, Th, Tw in ranked:
            if rule(Th, Tw):
                return Th, Tw
    return min(((Th, Tw) for _, Th, Tw in ranked), key=lambda t: _filter_bytes(spec, *t))


def tiling(spec: ConvSpec, tile=None, chunk=None) -> Tiling:
    """The `Tiling` of ``spec``.

    Parameters
    ----------
    spec : ConvSpec
    tile : int or (int, int), optional
        Transform size (Th, Tw); default `choose_tile`.
    chunk : int, optional
        Tiles per chunk; default: as many as fit `CHUNK_BYTES`, at least `MIN_CHUNK`.

    Returns
    -------
    Tiling

    Raises
    ------
    ConvError
        ``tile`` smaller than the dilated kernel, or a ``chunk`` < 1.
    """
    if tile is None:
        Th, Tw = choose_tile(spec)
    else:
        try:
            Th, Tw = (tile, tile) if np.ndim(tile) == 0 else tuple(tile)
            Th, Tw = int(Th), int(Tw)
        except (TypeError, ValueError):
            raise ConvError(f"tile must be an int or a pair of ints, got {tile!r}") from None
        if Th < spec.dilated_R or Tw < spec.dilated_S:
            raise ConvError(
                f"tile {Th}x{Tw} is smaller than the dilated kernel "
                f"{spec.dilated_R}x{spec.dilated_S}"
            )
    th, tw, nth, ntw = _grid(spec, Th, Tw)
    tiles = spec.N * nth * ntw
    if chunk is None:
        chunk = _chunk(spec, Th, Tw, tiles)
    elif int(chunk) < 1:
        raise ConvError(f"chunk must be >= 1, got {chunk!r}")
    return Tiling(Th, Tw, th, tw, nth, ntw, tiles, _round_chunk(int(chunk), tiles, nth, ntw))


def _round_chunk(chunk: int, tiles: int, nth: int, ntw: int) -> int:
    """Round down to whole images, or to whole rows of tiles (at least one)."""
    chunk = min(chunk, tiles)
    if chunk >= nth * ntw:
        return chunk - chunk % (nth * ntw)
    return max(1, chunk // ntw) * ntw


# ---------------------------------------------------------------------------------- costs
def fft_workspace_bytes(spec: ConvSpec, tile=None, chunk=None) -> int:
    """Peak bytes the FFT path allocates in one call: the largest chunk's arrays alive at once.

    Per chunk of ``pc`` tiles: the zero-extended input block its tiles read (images x C x
    (rows th + Rd - 1) x (ntw tw + Sd - 1) reals; none when the input needs no padding and the
    tiles fit inside it), the tile spectra ``F C pc`` complex, the product spectra ``F K pc``
    complex (inverse-transformed down the columns in place) and the valid rows of the output
    tiles ``th Tw K pc`` reals. Each is freed once the next exists, so the peak is the largest
    adjacent pair. pocketfft's own per-thread scratch (a few transform lengths, outside the
    NumPy heap) is not counted.
    """
    t = tiling(spec, tile, chunk)
    return _chunk_bytes(spec, t.Th, t.Tw, t.chunk)


def workspace_bytes(spec: ConvSpec, tile=None, chunk=None) -> int:
    """Bytes allocated per call: `fft_workspace_bytes`, or the zero-padded input copy of the
    ``direct`` path taken by inputs or filters with a NaN or Inf, whichever is larger."""
    return max(fft_workspace_bytes(spec, tile, chunk), padded_bytes(spec))


def _fft_mults(Th: int, Tw: int) -> float:
    lg = math.log2
    return Th * Tw * (lg(Tw) if Tw > 1 else 0) + 2 * Th * (Tw // 2 + 1) * (lg(Th) if Th > 1 else 0)


def multiplies(spec: ConvSpec, tile=None) -> int:
    """Real multiplications of one call.

    ``4 F K (C/groups) P`` for the complex products (cgemm's four real products each) plus
    ``(C + K) P (Th Tw log2 Tw + 2 F log2 Th)`` for the transforms (radix-2 estimate, see the
    module docstring), with ``F = Th (Tw//2 + 1)`` and P tiles; the filter transform of
    `prepare` is not counted.
    """
    t = tiling(spec, tile)
    gemm = 4 * t.F * spec.K * spec.Cg * t.tiles
    return int(round(gemm + (spec.C + spec.K) * t.tiles * _fft_mults(t.Th, t.Tw)))


def error_bound(spec: ConvSpec, dtype, tile=None) -> float:
    """Bound on the normwise error ``max|y_hat - y| / max(|x| (*) |w|)`` of ``fft``.

    Derivation (first order in the unit roundoff u of the compute dtype). For one output tile
    of n = Th Tw points and output channel k: pocketfft's computed transform of x_c satisfies
    ``||dX_c||_2 <= eta ||X_c||_2`` with ``eta = 7 u (log2 n + 1)`` (Higham, ASNA 24.1: log2 n
    butterfly levels each within ``u + gamma_4 (sqrt 2 + u)``, plus the real-FFT split);
    the filter spectra are rounded once (u) and bounded by ``|W_kc[f]| <= ||w_kc||_1 / n``; the
    complex products and the sum over the Cg channels add ``sqrt 2 gamma_{2 Cg}``; the unscaled
    inverse transform adds eta again. Summing, with ``||DFT||_2 = sqrt n``::

        ||dy_k||_2 <= (2 eta + sqrt2 gamma_{2Cg} + u) * sum_c ||x_c,tile||_2 ||w_kc||_1

    The FFT is normwise, not componentwise, stable: ``max|dy|`` is bounded by norms over the whole
    tile, not by ``|x| (*) |w|`` at that output. To state it against the normwise scale
    ``M = max(|x| (*) |w|)`` we assume dense data, ``sum_c ||x_c,tile||_2 ||w_kc||_1 <=
    KAPPA sqrt(n) M``, which holds when a tile's rms is at most KAPPA = 4 times its mean absolute
    value (Gaussian 1.25, ReLU of a Gaussian 1.77, ReLU with 90 % zeros 3.95). Then::

        error <= KAPPA sqrt(n) (2 eta + sqrt2 gamma_{2 Cg} + u)

    It does not hold for adversarial data (a lone spike whose kernel taps all fall outside the
    valid outputs makes M zero while the FFT still rounds). Measured errors on dense random data
    are 0.5-5 u, far below the bound (see tests/test_fft.py). float16 inputs compute in float32
    and add one final rounding to float16.
    """
    return _bound(spec, dtype, tiling(spec, tile).n)


def _bound(spec: ConvSpec, dtype, n: int) -> float:
    """`error_bound` for transforms of n points."""
    dtype = np.dtype(dtype)
    compute = np.dtype(np.float64) if dtype == np.float64 else np.dtype(np.float32)
    u = UNIT_ROUNDOFF[compute]
    eta = 7 * u * (math.log2(n) + 1)
    gemm = math.sqrt(2) * gamma(2 * spec.Cg, u) + u
    bound = KAPPA * math.sqrt(n) * (2 * eta + gemm)
    if dtype == np.float16:
        bound = (1 + bound) * (1 + UNIT_ROUNDOFF[dtype]) - 1
    return bound


# ---------------------------------------------------------------------------------- run
@dataclass(frozen=True)
class Prepared:
    """What ``prepare`` keeps: the tiling, the filter spectra and the tile coordinates."""

    spec: ConvSpec
    tiling: Tiling
    wf: np.ndarray  # (F, groups, Kg, Cg) complex: conj(DFT(w_dilated)) / (Th Tw)
    tn: np.ndarray  # image of each tile
    oi0: np.ndarray  # top output row of each tile
    oj0: np.ndarray  # left output column of each tile
    w: np.ndarray  # the filters, for the ``direct`` path taken by non-finite data
    finite_w: bool  # False: non-finite filters, every call goes through ``direct``


def prepare(spec: ConvSpec, w: np.ndarray, tile=None, chunk=None) -> Prepared:
    """Transform the filters once: dilate, real 2D DFT at the tile size, conjugate, scale.

    Parameters
    ----------
    spec : ConvSpec
    w : numpy.ndarray, shape (K, C/groups, R, S)
    tile : int or (int, int), optional
        Transform size (Th, Tw); default `choose_tile`. Must cover the dilated kernel.
    chunk : int, optional
        Tiles per chunk; default from `CHUNK_BYTES`.
    """
    import scipy.fft as sfft

    t = tiling(spec, tile, chunk)
    dh, dw = spec.dilation
    wd = np.zeros((spec.K, spec.Cg, spec.dilated_R, spec.dilated_S), dtype=np.float64)
    wd[:, :, ::dh, ::dw] = w
    spectra = sfft.rfft2(wd, s=(t.Th, t.Tw), workers=_workers())  # (K, Cg, Th, Twf)
    spectra = np.conj(spectra) / t.n
    ctype = np.result_type(spec.compute_dtype, np.complex64)
    wf = spectra.transpose(2, 3, 0, 1).reshape(t.F, spec.groups, spec.Kg, spec.Cg)
    wf = np.ascontiguousarray(wf, dtype=ctype)
    p = np.arange(t.tiles, dtype=np.int64)
    tn, r = np.divmod(p, t.nth * t.ntw)
    ti, tj = np.divmod(r, t.ntw)
    return Prepared(spec, t, wf, tn, ti * t.th, tj * t.tw, w, bool(np.isfinite(w).all()))


def _map(fn, ranges, *args) -> None:
    """Run ``fn(*args, lo, hi)`` for every range, on the worker threads when there are several."""
    run_threads(lambda r: fn(*args, *r), ranges)


def _products(wf, xf, yf, f0, f1) -> None:
    """``yf[f] = wf[f] @ xf[f]`` (per group) for frequencies f0 <= f < f1."""
    if xf.shape[2] == 1:  # Cg == 1: (Kg, 1) * (1, pc) is a broadcast product, no GEMM
        np.multiply(wf[f0:f1], xf[f0:f1], out=yf[f0:f1])
    else:
        np.matmul(wf[f0:f1], xf[f0:f1], out=yf[f0:f1])


def _split(n: int, parts: int) -> list[tuple[int, int]]:
    parts = max(1, min(parts, n))
    return [(i * n // parts, (i + 1) * n // parts) for i in range(parts)]


def _tiles_view(x: np.ndarray, spec: ConvSpec, t: Tiling, in_place: bool, n0, n1, r0, r1):
    """The chunk's tiles as a (Th, Tw, C, images, rows, ntw) strided view (no copy of the tiles).

    Tiles overlap, so they are a view with strides (row, column, channel, image, th rows,
    tw columns) into the input -- or, when padding is needed, into a zero-extended copy of the
    block of input rows the chunk reads.
    """
    from numpy.lib.stride_tricks import as_strided

    hb, wb = (r1 - r0) * t.th + t.Th - t.th, t.ntw * t.tw + t.Tw - t.tw
    if in_place:
        block = x[n0:n1, :, r0 * t.th :]
    else:
        pl, _, pt, _ = spec.padding
        block = np.zeros((n1 - n0, spec.C, hb, wb), dtype=x.dtype)
        top = r0 * t.th - pt  # input row at block row 0
        d0, d1 = max(0, -top), min(hb, spec.H - top)
        if d1 > d0:
            block[:, :, d0:d1, pl : pl + spec.W] = x[n0:n1, :, top + d0 : top + d1]
    sn, sc, sh, sw = block.strides
    return as_strided(
        block,
        shape=(t.Th, t.Tw, spec.C, n1 - n0, r1 - r0, t.ntw),
        strides=(sh, sw, sc, sn, t.th * sh, t.tw * sw),
        writeable=False,
    )


def run(prep: Prepared, x: np.ndarray, out: np.ndarray) -> None:
    """Convolve ``x`` (compute dtype, C-contiguous NCHW) into ``out`` chunk by chunk.

    Threads: pocketfft runs the transforms on ``workers`` threads; the output copies (split by
    output channel) and the per-frequency products (split by frequency, BLAS held to one thread) run on
    this module's Python threads. Every thread writes its own part of the arrays, so the result
    does not depend on the thread count.
    """
    import contextlib

    import scipy.fft as sfft

    from ..kernels._fft import all_finite, scatter_tiles

    spec, t = prep.spec, prep.tiling
    if not (prep.finite_w and all_finite(x)):
        # a NaN or Inf would spread over its whole tile (and every output channel) in the
        # frequency domain; the direct loops propagate it exactly as the reference does
        from ..registry import get

        direct = get("direct")
        direct.run(direct.prepare(spec, prep.w), x, out)
        return
    G, Kg, Cg = spec.groups, spec.Kg, spec.Cg
    workers = _workers()
    ctype = prep.wf.dtype
    in_place = _in_place(spec, t.Th, t.Tw, t.nth, t.ntw)
    blas = blas_one_thread() if workers > 1 and Cg > 1 else contextlib.nullcontext()
    p0 = 0
    with blas:
        for n0, n1, r0, r1 in t.chunk_list(spec.N):
            pc = (n1 - n0) * (r1 - r0) * t.ntw
            p1 = p0 + pc
            tiles = _tiles_view(x, spec, t, in_place, n0, n1, r0, r1)
            xf = sfft.rfft2(tiles, axes=(0, 1), workers=workers).reshape(t.F, G, Cg, pc)
            del tiles
            yf = np.empty((t.F, G, Kg, pc), dtype=ctype)
            _map(_products, _split(t.F, workers), prep.wf, xf, yf)
            del xf
            # inverse: complex pass down the columns in place, then the real pass along only
            # the th rows that hold valid outputs (the others are wrapped-around garbage)
            yc = sfft.ifft(yf.reshape(t.Th, t.Twf, spec.K, pc), axis=0, norm="forward",
                           overwrite_x=True, workers=workers)
            yt = sfft.irfft(yc[: t.th], n=t.Tw, axis=1, norm="forward", workers=workers)
            del yc, yf
            tn, oi0, oj0 = prep.tn[p0:p1], prep.oi0[p0:p1], prep.oj0[p0:p1]
            _map(scatter_tiles, _split(spec.K, workers), yt, out, tn, oi0, oj0, t.th, t.tw)
            del yt
            p0 = p1


register(
    Algorithm(
        name="fft",
        supports=_supports,
        prepare=prepare,
        run=run,
        workspace_bytes=workspace_bytes,
        multiplies=multiplies,
        deterministic=False,
        batch_invariant=False,
        error_bound=error_bound,
        summary="overlap-save real FFTs (pocketfft) + one complex GEMM per frequency; stride 1",
        features={
            "workspace": "per chunk of pc tiles: max(block + 2F·C·pc, 2F·(C+K)·pc, "
            "2F·K·pc + th·Tw·K·pc) reals, F = Th·(Tw/2+1), block = the zero-extended input "
            "rows the chunk reads (0 without padding)",
            "multiplies": "4·F·K·(C/g)·P + (C+K)·P·(Th·Tw·log2 Tw + 2F·log2 Th), "
            "P = N·⌈OH/th⌉·⌈OW/tw⌉ tiles",
        },
    )
)
