"""`convolab.highdim`'s image filters on chunked dask images, bit-identical to one process.

Layout: images ``(H, W)`` or ``(H, W, C)`` channel-last (scikit-image's convention, as
`convolab.highdim.bilateral_filter`), chunked along H and W, channels whole. Each chunk is one
output block; its task reads the chunk plus a halo of ``radius`` pixels on every side (clipped
at the image border, where the one-process filter has no padding either) and keeps the chunk's
own pixels. The radius is the filter's support:

* ``method="exact"``: the window of `convolab.highdim.exact.exact_bilateral`,
  ``ceil(sqrt(2 CUTOFF) sigma_spatial)`` pixels (weights beyond it are below ``e^-CUTOFF``).
  Each output sums its window in raster order relative to itself, so blocks give the same bits.
* ``method="permutohedral"``: the lattice's *reach* `lattice_reach` (in standard deviations,
  times ``sigma_spatial``): a point can influence another only through a vertex of its own
  simplex (at most a simplex diameter away), the blur (one step along each of the d + 1 lattice
  directions) and a vertex of the other's simplex. For d = 3 (grey bilateral) that is 4.9
  standard deviations, for d = 5 (colour) 6.0.

**The lattice at chunk borders.** The permutohedral lattice is anchored at the feature
positions' minimum corner (`convolab.highdim.permutohedral`: positions minus their column
minimum, then scaled): filtering a block on its own would put the lattice somewhere else in
every block, and the blocks would disagree with the one-process filter -- and with each other
at their seams -- by the lattice's shift variance, an error the size of the lattice's own
approximation error against the exact filter. Each block therefore adds ``d`` sentinel points
with zero values that pin the minimum corner to the whole image's (pixel row and column 0 and
the guide's minimum, computed once over the image before the graph is built): sentinel ``k``
has coordinate ``k`` at the image's minimum and every other coordinate a reach past the
block's maximum, so its splats land on lattice vertices no pixel of the block's core can
reach. With the same lattice, the halo holding every point within reach, and splats summed in
the pixels' raster order (a block keeps the whole image's order), each core pixel sees the
same lattice values as in one process: the result is bit-identical, at chunk borders as
anywhere. The bilateral grid (``method="grid"``) is anchored the same way but is a dense grid
over the positions' bounding box; a pinned corner would make every block's grid as large as
the whole image's, so it is not offered here.

Cost: one pass over the guide for its minimum (permutohedral only) and, per block, the
one-process filter on ``(h + 2 r)(w + 2 r)`` pixels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import dask.array as da
import numpy as np
from dask.base import tokenize
from dask.highlevelgraph import HighLevelGraph

from ..errors import ConvError
from ..highdim import gaussian_filter as _points_filter
from ..highdim.exact import CUTOFF, exact_bilateral
from ..highdim.filters import as_float_image, check_sigma
from ..highdim.permutohedral import LATTICE_SCALE
from ..highdim.permutohedral import MAX_D as LATTICE_MAX_D
from .cluster import check_task_bytes, task_budget
from .conv import check_input
from .halo import Block, centred_blocks, out_chunks, piece

#: the methods a dask image filter offers
METHODS = ("permutohedral", "exact")


def lattice_reach(d: int) -> float:
    """Largest feature-space distance (in standard deviations) over which the permutohedral
    lattice's splat / blur / slice can carry anything from one point to another.

    The lattice is A*_d scaled by d + 1 on the hyperplane sum = 0 of R^(d+1), positions scaled
    by ``LATTICE_SCALE (d + 1)`` (an isometry up to that factor). Two vertices of one simplex
    differ by a remainder-r vector of squared length ``r (d + 1 - r)(d + 1)``, largest at
    ``r = floor((d + 1) / 2)``; the blur moves by ``sum_k s_k (1 - (d + 1) e_k)`` with
    ``s_k in {-1, 0, 1}``, of squared length ``(d + 1)((d + 1) m - S^2)`` for m non-zero
    steps summing to S, largest at ``m = d + 1``, ``|S| = (d + 1) mod 2``. Reach = (two
    simplex diameters + the blur's reach) / the scale.
    """
    d1 = d + 1
    r = d1 // 2
    diameter = math.sqrt(r * (d1 - r) * d1)
    blur = math.sqrt(d1 * (d1 * d1 - d1 % 2))
    return (2 * diameter + blur) / (LATTICE_SCALE * d1)


def halo_radius(method: str, d: int, sigma_spatial: float) -> int:
    """Pixels of halo a block needs on each side for ``method`` with feature dimension ``d``."""
    if method == "exact":
        return int(math.ceil(math.sqrt(2.0 * CUTOFF) * sigma_spatial))
    # + 1: rounding in the embedding cannot move a point by a pixel
    return int(math.ceil(lattice_reach(d) * sigma_spatial)) + 1


@dataclass(frozen=True)
class _FilterConfig:
    method: str
    sigma_spatial: float
    sigma_color: float  # the guide's divisor (1.0 for features given in standard deviations)
    d: int
    reach: float  # in standard deviations: how far the sentinels keep away
    origin: tuple | None  # the guide's minimum / sigma_color per channel (permutohedral)
    has_guide: bool
    image: bool  # scikit-image's convention (unsigned integers scaled to [0, 1]) or plain values


def _gather2(grid) -> np.ndarray:
    """Rows of image pieces (each side by side along axis 1) -> one image."""
    if len(grid) == 1 and len(grid[0]) == 1:
        return grid[0][0]
    return np.concatenate([np.concatenate(row, axis=1) for row in grid], axis=0)


def _positions(cfg: _FilterConfig, feats, y0: int, x0: int) -> np.ndarray:
    """Feature positions of a block whose top-left pixel is (y0, x0), as the one-process filter
    computes them (pixel coordinates of the whole image)."""
    h, w = feats.shape[:2]
    pos = np.empty((h, w, cfg.d), dtype=np.float64)
    pos[..., 0] = np.arange(y0, y0 + h, dtype=np.float64)[:, None] / cfg.sigma_spatial
    pos[..., 1] = np.arange(x0, x0 + w, dtype=np.float64)[None, :] / cfg.sigma_spatial
    pos[..., 2:] = feats.astype(np.float64) / cfg.sigma_color
    return pos


def _sentinels(cfg: _FilterConfig, pos: np.ndarray) -> np.ndarray:
    """``d`` positions pinning the lattice's minimum corner to the whole image's (module notes)."""
    d = cfg.d
    lo = np.array([0.0, 0.0, *cfg.origin], dtype=np.float64)
    far = pos.reshape(-1, d).max(axis=0) + cfg.reach + 1.0
    s = np.tile(far, (d, 1))
    s[np.arange(d), np.arange(d)] = lo
    return s


def filter_block(cfg: _FilterConfig, image: np.ndarray, guide: np.ndarray | None, y0: int, x0: int,
                 anchored: bool = True) -> np.ndarray:
    """The one-process filter of a block (with its halo) whose top-left pixel is (y0, x0) of the
    whole image; all of the block's pixels filtered (the caller keeps the core).

    ``anchored=False`` leaves out the sentinels (permutohedral): the lattice then sits at the
    block's own minimum corner (for the tests of what that does; see the module notes).
    """
    img = _to_float(image, cfg.image)
    dtype = np.dtype(np.float32) if img.dtype == np.float32 else np.dtype(np.float64)
    h, w = img.shape[:2]
    vals = img.reshape(h, w, -1)
    feats = (_to_float(guide, cfg.image) if cfg.has_guide else np.empty((h, w, 0))).reshape(h, w, -1)
    if cfg.method == "exact":
        out = exact_bilateral(vals, feats.astype(np.float64) / cfg.sigma_color, cfg.sigma_spatial)
        return out.astype(dtype, copy=False).reshape(img.shape)
    pos = _positions(cfg, feats, y0, x0).reshape(h * w, cfg.d)
    v = np.ascontiguousarray(vals.reshape(h * w, -1), dtype=dtype)
    if anchored:
        pos = np.concatenate([pos, _sentinels(cfg, pos)])
        v = np.concatenate([v, np.zeros((cfg.d, v.shape[1]), dtype=dtype)])
    out = _points_filter(v, pos, method="permutohedral")[: h * w]
    return out.astype(dtype, copy=False).reshape(img.shape)


def _filter_task(cfg: _FilterConfig, img_grid, guide_grid, y0: int, x0: int, core: tuple) -> np.ndarray:
    image = _gather2(img_grid)
    guide = _gather2(guide_grid) if guide_grid is not None else None
    out = filter_block(cfg, image, guide, y0, x0)
    (r0, r1), (c0, c1) = core
    return out[r0:r1, c0:c1]


def _image(x, what: str):
    check_input(x, what)
    if x.ndim not in (2, 3):
        raise ConvError(f"{what} must be (H, W) grey or (H, W, C) channel-last; got shape {x.shape}")
    if x.ndim == 3 and len(x.chunks[2]) != 1:
        raise ConvError(
            f"{what} is chunked along its channels (chunks {x.chunks[2]}); the filter needs a "
            f"pixel's channels together: {what} = {what}.rechunk({{2: -1}})"
        )
    if 0 in x.shape:
        raise ConvError(f"{what} is empty: shape {x.shape}")
    return x


def _to_float(a, image: bool) -> np.ndarray:
    """Pixels as the one-process filter takes them: scikit-image's convention for images
    (`convolab.highdim.filters.as_float_image`), values as they are for `gaussian_filter`."""
    return as_float_image(a) if image else np.asarray(a)


def _out_dtype(dtype, image: bool) -> np.dtype:
    """float32 for float32 data (images: float16 too), float64 otherwise."""
    return np.dtype(np.float32) if _to_float(np.zeros(1, dtype), image).dtype == np.float32 else np.dtype(np.float64)


def _as_float(x, image: bool):
    return x.map_blocks(_to_float, image, dtype=_out_dtype(x.dtype, image))


def _block_bytes(cfg: _FilterConfig, h: int, w: int, c: int) -> int:
    """Estimated bytes of one block's filter: the pixels, positions and the lattice (sized for
    about one lattice point per pixel: image features touch fewer)."""
    n, d1 = h * w, cfg.d + 1
    if cfg.method == "exact":
        return n * 8 * (2 * c + cfg.d + 2)
    per_point = 8 * cfg.d + 13 * d1 + 16 + 4 * cfg.d + 2 * 8 * (c + 1) + 8 * d1 + 8 * (c + 1)
    return n * per_point


def _filter(image, guide, sigma_spatial, sigma_color, method, memory_limit, radius=None, convention=True):
    """The graph: one task per chunk of ``image`` (module notes). ``guide`` None: positions are
    the pixel coordinates alone (d = 2)."""
    image = _image(image, "image")
    if guide is not None:
        guide = _image(guide, "guide")
        if guide.shape[:2] != image.shape[:2]:
            raise ConvError(
                f"guide must have the image's height and width {image.shape[:2]}; got {guide.shape[:2]}"
            )
        chunks = image.chunks[:2] + ((guide.shape[2],) if guide.ndim == 3 else ())
        if guide.chunks != chunks:
            guide = guide.rechunk(chunks)
    if method == "grid":
        raise ConvError(
            "method 'grid' is not offered on dask images: the bilateral grid is dense over the "
            "positions' bounding box, and pinning every block to the image's corner makes each "
            "block's grid as large as the whole image's; use 'permutohedral' or 'exact'"
        )
    if method not in METHODS:
        raise ConvError(f"unknown method {method!r}; choose from {', '.join(METHODS)}")
    ss = check_sigma(sigma_spatial, "sigma_spatial")
    g = 0 if guide is None else (guide.shape[2] if guide.ndim == 3 else 1)
    d = 2 + g
    if method == "permutohedral" and d > LATTICE_MAX_D:
        raise ConvError(
            f"method 'permutohedral' supports feature dimension d <= {LATTICE_MAX_D}; these data "
            f"have d = {d} (use method='exact')"
        )
    gf = None if guide is None else _as_float(guide, convention)
    if guide is not None and sigma_color is None:
        sigma_color = float(da.std(gf).compute())
        if sigma_color == 0:
            raise ConvError("sigma_color=None takes the guide's standard deviation, which is 0")
    sr = 1.0 if guide is None else check_sigma(sigma_color, "sigma_color")
    origin = None
    if method == "permutohedral" and guide is not None:
        mins = da.min(gf.reshape(gf.shape[0], gf.shape[1], -1), axis=(0, 1)).compute()
        origin = tuple(float(m) / sr for m in np.asarray(mins, dtype=np.float64))
    elif method == "permutohedral":
        origin = ()
    r = halo_radius(method, d, ss) if radius is None else int(radius)
    cfg = _FilterConfig(method, ss, sr, d, lattice_reach(d), origin, guide is not None, convention)
    bhs = centred_blocks(image.chunks[0], r)
    bws = centred_blocks(image.chunks[1], r)
    c = image.shape[2] if image.ndim == 3 else 1
    h = max(b.rows[1] - b.rows[0] for b in bhs)
    w = max(b.rows[1] - b.rows[0] for b in bws)
    need = _block_bytes(cfg, h, w, c + g)
    check_task_bytes(need, task_budget(memory_limit), f"a block of {h}x{w} pixels (chunk and halo {r})",
                     "rechunk the image to smaller chunks along H and W, e.g. "
                     f"image.rechunk({{0: {max(1, (max(image.chunks[0]) + 1) // 2)}, "
                     f"1: {max(1, (max(image.chunks[1]) + 1) // 2)}}})")
    name = f"convolab-{method}-filter-{tokenize(image.name, None if guide is None else guide.name, cfg, r)}"
    dsk = {}
    for p, bh in enumerate(bhs):
        for q, bw in enumerate(bws):
            img_grid = _grid(dsk, name, image, bh, bw)
            guide_grid = None if guide is None else _grid(dsk, f"{name}-guide", guide, bh, bw)
            core = ((bh.out[0] - bh.rows[0], bh.out[1] - bh.rows[0]),
                    (bw.out[0] - bw.rows[0], bw.out[1] - bw.rows[0]))
            idx = (p, q) + ((0,) if image.ndim == 3 else ())
            dsk[(name, *idx)] = (_filter_task, cfg, img_grid, guide_grid, bh.rows[0], bw.rows[0], core)
    deps = [image] if guide is None else [image, guide]
    graph = HighLevelGraph.from_collections(name, dsk, dependencies=deps)
    chunks = (out_chunks(bhs), out_chunks(bws)) + (((c,),) if image.ndim == 3 else ())
    dt = _out_dtype(image.dtype, convention)
    return da.Array(graph, name, chunks, meta=np.empty((0,) * image.ndim, dtype=dt))


def _grid(dsk: dict, name: str, x, bh: Block, bw: Block):
    """The pieces of ``x`` block (bh, bw) reads, as rows of keys (`halo.piece`)."""
    rows = []
    for jh, r0, r1 in bh.pieces:
        row = []
        for jw, c0, c1 in bw.pieces:
            key = (x.name, jh, jw) + ((0,) if x.ndim == 3 else ())
            row.append(piece(dsk, name, key, 0, ((r0, r1), (c0, c1)),
                             (x.chunks[0][jh], x.chunks[1][jw])))
        rows.append(row)
    return rows


def joint_bilateral_filter(image, guide, sigma_spatial: float, sigma_color: float | None,
                           method: str = "permutohedral", *, memory_limit: int | None = None):
    """`convolab.highdim.joint_bilateral_filter` of a chunked dask image, lazily.

    Parameters
    ----------
    image : dask.array.Array, shape (H, W) or (H, W, C)
        Chunked along H and W as you like; the channels one chunk.
    guide : dask.array.Array, shape (H, W) or (H, W, G)
        Rechunked to the image's chunks if need be.
    sigma_spatial, sigma_color
        As `convolab.highdim.joint_bilateral_filter`; ``sigma_color=None`` takes the guide's
        standard deviation computed by Dask (a chunked sum: it can differ from NumPy's in the
        last bits, so pass it for bit-identical results).
    method : {"permutohedral", "exact"}
    memory_limit : int, optional
        Bytes one task may use (default: from the distributed workers, see
        `convolab.dask.cluster.task_budget`).

    Returns
    -------
    dask.array.Array
        Shape and chunks of ``image``; float32 for a float32 image, float64 otherwise.

    Notes
    -----
    Bit-identical to the one-process filter of the whole image for both methods, the lattice
    pinned to the image's corner in every block (module notes). With the permutohedral lattice
    the guide's minimum is computed (one pass over the guide) when this is called.
    """
    if guide is None:
        raise ConvError("guide must be a dask image (use bilateral_filter for guide = image)")
    return _filter(image, guide, sigma_spatial, sigma_color, method, memory_limit)


def bilateral_filter(image, sigma_spatial: float, sigma_color: float | None,
                     method: str = "permutohedral", *, memory_limit: int | None = None):
    """`convolab.highdim.bilateral_filter` of a chunked dask image: `joint_bilateral_filter`
    with the image as its own guide."""
    return _filter(image, image, sigma_spatial, sigma_color, method, memory_limit)


def gaussian_filter(values, features=None, sigma_spatial: float = 1.0, method: str = "permutohedral",
                    *, memory_limit: int | None = None):
    """`convolab.highdim.gaussian_filter` on an image grid: the points are the pixels, at
    positions ``(y / sigma_spatial, x / sigma_spatial, features)``.

    Parameters
    ----------
    values : dask.array.Array, shape (H, W) or (H, W, C)
    features : dask.array.Array, shape (H, W) or (H, W, F), optional
        Further feature coordinates, already in units of their standard deviations; None: a
        purely spatial Gaussian (d = 2).
    sigma_spatial : float
        Spatial standard deviation in pixels.
    method : {"permutohedral", "exact"}
        ``"exact"`` sums each pixel's window out to weights ``e^-CUTOFF``
        (`convolab.highdim.exact.exact_bilateral`), equal to the all-pairs sum of
        ``convolab.highdim.gaussian_filter(..., method="exact")`` to float64 rounding.

    Returns
    -------
    dask.array.Array
        Shape and chunks of ``values``. With the permutohedral lattice, bit-identical to
        ``convolab.highdim.gaussian_filter(values.reshape(H * W, -1), positions)`` with the
        positions above (module notes).
    """
    return _filter(values, features, sigma_spatial, 1.0, method, memory_limit, convention=False)
