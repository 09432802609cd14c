"""Semi-synthetic hyperspectral scenes: real Indian Pines layout, real spectra, linear mixing.

``make_scene(layout="indian_pines" | "fields", seed=...)`` returns a `Scene`: a reflectance
cube ``(H, W, B)`` float32, a label map (0 = unlabelled, 1..16 the Indian Pines classes), the
field map and the wavelengths.

How a pixel is made (all random draws from ``numpy.random.default_rng(seed)``):

1. Layout. ``"indian_pines"``: the real ground truth (145 x 145, shipped in ``data/``); a field
   is a connected component of one class; the unlabelled pixels are cut into Voronoi cells,
   each given a random class recipe (unsurveyed fields, roads and farmsteads).
   ``"fields"``: a 145 x 145 grid of rectangular fields (recursive random cuts), roads of
   unlabelled pixels between them, each class on at least two fields.
2. Spectra. From the `earthlib` package (MIT; 7,261 spectra, 180 bands 400-2450 nm with the
   water-vapour bands 1360-1450 nm and 1800-1950 nm already removed): PROSAIL canopies with
   their LAI, chlorophyll and dry matter in their names, ICRAF-ISRIC soils, litter / residue,
   bark and wood, urban materials. Without earthlib (``library="synthetic"`` or earthlib not
   installed) the same groups are generated on the same band grid from analytic shapes
   (chlorophyll / red edge / leaf water for canopies, a rising soil curve with a clay feature,
   cellulose for residue, flat or sloped urban materials): the documented fallback, simpler
   spectra, the same pipeline.
3. Class recipes (June 1992, early season: corn and soybean at a few percent of cover): each
   class has mean fractions of canopy, residue, soil and built material and a window of
   canopy parameters (LAI, chlorophyll, leaf mass); tillage classes differ in residue cover.
4. Field variation: each field draws its own soil (from a scene pool of similar soils), its own
   canopy spectra from its class window, its own residue spectrum and an offset of its
   fractions. Pixel variation: smooth (Gaussian-filtered) and white perturbations of the
   fractions, a Dirichlet mix of the field's canopies, soil brightness (moisture).
5. Sensor: illumination gain (smooth over the scene and per pixel), mixing at field borders
   by a Gaussian point-spread function, band-dependent noise (lower SNR in the blue and past
   1800 nm, as AVIRIS).

``noise`` and ``jitter`` scale the pixel-level randomness; the defaults are tuned so that a
pixel-wise RBF SVM with 15 labels per class sits at 50-70 % overall accuracy (see
docs/graph.md), as on the real Indian Pines cube.
"""

from __future__ import annotations

import csv
import importlib.util
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from ..errors import ConvError

DATA = Path(__file__).parent / "data"

CLASS_NAMES = (
    "Alfalfa", "Corn-notill", "Corn-mintill", "Corn", "Grass-pasture", "Grass-trees",
    "Grass-pasture-mowed", "Hay-windrowed", "Oats", "Soybean-notill", "Soybean-mintill",
    "Soybean-clean", "Wheat", "Woods", "Buildings-Grass-Trees-Drives", "Stone-Steel-Towers",
)

# class -> fractions (canopy, residue, soil, built), canopy window (LAI, CHL, LMA), residue kind,
# built kind. June 1992: corn and soybean emerging (low LAI), tillage = residue cover.
_CORN = ((0.5, 2.0), (25.0, 45.0), (0.005, 0.012))
_SOY = ((0.5, 2.0), (35.0, 55.0), (0.008, 0.016))
RECIPES = {
    1: ((0.75, 0.05, 0.20, 0.0), ((2.5, 5.0), (40.0, 60.0), (0.005, 0.012)), "litter", None),
    2: ((0.15, 0.40, 0.45, 0.0), _CORN, "litter", None),
    3: ((0.15, 0.22, 0.63, 0.0), _CORN, "litter", None),
    4: ((0.18, 0.06, 0.76, 0.0), _CORN, "litter", None),
    5: ((0.70, 0.15, 0.15, 0.0), ((1.5, 3.5), (25.0, 45.0), (0.005, 0.012)), "litter", None),
    6: ((0.85, 0.10, 0.05, 0.0), ((3.0, 7.0), (30.0, 55.0), (0.010, 0.020)), "wood", None),
    7: ((0.50, 0.30, 0.20, 0.0), ((1.0, 2.5), (25.0, 45.0), (0.005, 0.012)), "litter", None),
    8: ((0.30, 0.55, 0.15, 0.0), ((1.0, 3.0), (10.0, 25.0), (0.005, 0.015)), "litter", None),
    9: ((0.60, 0.10, 0.30, 0.0), ((2.0, 4.0), (20.0, 40.0), (0.005, 0.012)), "litter", None),
    10: ((0.12, 0.42, 0.46, 0.0), _SOY, "litter", None),
    11: ((0.12, 0.24, 0.64, 0.0), _SOY, "litter", None),
    12: ((0.14, 0.06, 0.80, 0.0), _SOY, "litter", None),
    13: ((0.80, 0.10, 0.10, 0.0), ((2.5, 5.0), (10.0, 25.0), (0.008, 0.016)), "litter", None),
    14: ((0.92, 0.05, 0.03, 0.0), ((5.0, 10.0), (35.0, 60.0), (0.015, 0.025)), "wood", None),
    15: ((0.40, 0.05, 0.15, 0.40), ((2.0, 6.0), (30.0, 55.0), (0.008, 0.020)), "litter", "built"),
    16: ((0.10, 0.00, 0.20, 0.70), ((1.0, 3.0), (25.0, 45.0), (0.005, 0.012)), "litter", "stone"),
}
_BUILT = ("asphalt", "road", "parking_lot", "sidewalk", "comp_shingle", "driveway", "concrete_tile")
_STONE = ("metal", "gravel", "concrete_tile", "bridge")


@dataclass
class Scene:
    """A hyperspectral scene.

    Attributes
    ----------
    cube : (H, W, B) float32 reflectance
    labels : (H, W) int32, 0 = unlabelled, classes 1..n_classes
    fields : (H, W) int32 field index (each field has one class recipe)
    wavelengths : (B,) float64, micrometres
    class_names : tuple of str
    layout, library : str
    seed : int
    """

    cube: np.ndarray
    labels: np.ndarray
    fields: np.ndarray
    wavelengths: np.ndarray
    class_names: tuple
    layout: str
    library: str
    seed: int

    @property
    def n_classes(self) -> int:
        return len(self.class_names)


# -- the shipped real data ----------------------------------------------------------------------

def indian_pines_gt() -> np.ndarray:
    """The real Indian Pines ground truth: (145, 145) int32, 0 = unlabelled, classes 1-16."""
    from scipy.io import loadmat

    return loadmat(DATA / "Indian_pines_gt.mat")["indian_pines_gt"].astype(np.int32)


def indian_pines_segments() -> np.ndarray:
    """The real scene's 4 nested superpixel maps (2048, 1024, 512, 256 segments): (4, 145, 145)."""
    from scipy.io import loadmat

    return loadmat(DATA / "segmentmapsindian.mat")["segmentmaps"].astype(np.int32)


# -- spectral libraries ------------------------------------------------------------------------

@dataclass
class Library:
    """Spectra by group: ``spectra[group]`` (n, B); canopy parameters (n, 3) = LAI, CHL, LMA."""

    wavelengths: np.ndarray
    spectra: dict
    canopy_params: np.ndarray
    name: str


_PARAM = re.compile(r"LAI-([0-9.e+]+)-LMA-([0-9.e+]+)-CHL-([0-9.e+]+)")
_cache: dict = {}


def earthlib_available() -> bool:
    return importlib.util.find_spec("earthlib") is not None


def load_earthlib() -> Library:
    """earthlib's spectra grouped for the scene (read from its data files, ENVI float32)."""
    if "earthlib" in _cache:
        return _cache["earthlib"]
    spec = importlib.util.find_spec("earthlib")
    if spec is None or spec.origin is None:
        raise ConvError("earthlib is not installed (pip install 'convolab[graph]'); use library='synthetic'")
    d = Path(spec.origin).parent / "data"
    with open(d / "spectra.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    hdr = (d / "spectra.sli.hdr").read_text()
    wl = np.array([float(v) for v in re.search(r"wavelength = \{([^}]*)\}", hdr).group(1).split(",")])
    data = np.fromfile(d / "spectra.sli", dtype="<f4").reshape(len(rows), wl.size).astype(np.float64)
    l3 = np.array([r["LEVEL_3"] for r in rows])
    l2 = np.array([r["LEVEL_2"] for r in rows])
    ok = np.isfinite(data).all(axis=1) & (data.min(axis=1) >= 0) & (data.max(axis=1) <= 1)
    canopy = (l3 == "canopy") & ok
    params = []
    for r in np.array(rows)[canopy]:
        m = _PARAM.search(r["NAME"])
        params.append([float(m.group(1)), float(m.group(3)), float(m.group(2))])
    groups = {
        "canopy": data[canopy],
        "soil": data[(l3 == "soil") & ok],
        "litter": data[np.isin(l3, ("litter", "npv")) & ok],
        "wood": data[np.isin(l3, ("wood", "bark")) & ok],
        "built": data[np.isin(l3, _BUILT) & (l2 == "built") & ok],
        "stone": data[np.isin(l3, _STONE) & ok],
    }
    lib = Library(wl, groups, np.array(params), "earthlib")
    _cache["earthlib"] = lib
    return lib


def synthetic_library(seed: int = 0) -> Library:
    """The fallback without earthlib: analytic spectra on earthlib's 180-band grid."""
    rng = np.random.default_rng(seed)
    wl = np.concatenate([np.arange(0.40, 1.355, 0.01), np.arange(1.46, 1.795, 0.01), np.arange(1.96, 2.455, 0.01)])

    def bump(c, w):
        return np.exp(-0.5 * ((wl - c) / w) ** 2)

    def wobble(n):  # smooth random multiplicative texture
        k = rng.normal(size=(n, wl.size))
        return 1 + 0.03 * ndimage.gaussian_filter1d(k, 6, axis=1) * 6

    n = 400
    lai = rng.uniform(0.5, 10, n)
    chl = rng.uniform(10, 60, n)
    lma = rng.uniform(0.005, 0.025, n)
    cover = 1 - np.exp(-0.5 * lai)[:, None]
    vis = 0.04 + 0.06 * bump(0.55, 0.03) * (1 - chl[:, None] / 80) - 0.03 * bump(0.67, 0.02) * chl[:, None] / 60
    edge = 0.5 + 0.5 * np.tanh((wl - (0.70 + 0.0006 * chl[:, None])) / 0.015)
    nir = (0.25 + 0.25 * cover) * (1 - 0.15 * bump(0.97, 0.03) - 0.25 * bump(1.2, 0.04))
    swir = (0.35 - 6 * lma[:, None]) * (1 - 0.5 * (wl > 1.4)) * (1 - 0.4 * (wl > 1.9))
    veg = np.where(wl < 1.3, vis * (1 - edge) + nir * edge, swir) * wobble(n)
    soil_n = 200
    b = rng.uniform(0.15, 0.35, soil_n)[:, None]
    soil = (0.05 + b * (1 - np.exp(-(wl - 0.35) / 0.5)) - 0.04 * rng.uniform(0, 1, (soil_n, 1)) * bump(2.2, 0.03))
    soil = soil * wobble(soil_n)
    lit_n = 40
    lit = (0.1 + 0.3 * (1 - np.exp(-(wl - 0.35) / 0.4))) * (1 - 0.3 * bump(2.1, 0.04))
    lit = lit * rng.uniform(0.7, 1.2, (lit_n, 1)) * wobble(lit_n)
    wood = lit[:20] * 0.6
    built = rng.uniform(0.05, 0.3, (40, 1)) + rng.uniform(-0.05, 0.1, (40, 1)) * (wl - 0.4)
    stone = rng.uniform(0.2, 0.5, (20, 1)) + rng.uniform(-0.05, 0.05, (20, 1)) * (wl - 0.4)
    groups = dict(canopy=veg, soil=soil, litter=lit, wood=wood, built=built * wobble(40), stone=stone * wobble(20))
    groups = {k: np.clip(v, 0.005, 0.95) for k, v in groups.items()}
    return Library(wl, groups, np.stack([lai, chl, lma], axis=1), "synthetic")


# -- layouts -----------------------------------------------------------------------------------

def _voronoi(mask, n_cells, rng):
    """Cut the True pixels of ``mask`` into ``n_cells`` Voronoi cells of random seeds."""
    ys, xs = np.nonzero(mask)
    pick = rng.choice(ys.size, size=min(n_cells, ys.size), replace=False)
    seeds = np.stack([ys[pick], xs[pick]], axis=1)
    d = (ys[:, None] - seeds[None, :, 0]) ** 2 + (xs[:, None] - seeds[None, :, 1]) ** 2
    out = np.full(mask.shape, -1, dtype=np.int64)
    out[ys, xs] = np.argmin(d, axis=1)
    return out


def _layout_indian_pines(rng):
    gt = indian_pines_gt()
    fields = np.zeros(gt.shape, dtype=np.int32)
    recipe = [1]  # field 0 holds no pixel
    nxt = 1
    for c in range(1, 17):
        lab, n = ndimage.label(gt == c, structure=np.ones((3, 3)))
        fields[lab > 0] = lab[lab > 0] + nxt - 1
        recipe += [c] * n
        nxt += n
    cells = _voronoi(gt == 0, 60, rng)
    weights = np.bincount(gt.ravel(), minlength=17)[1:16].astype(float)
    for k in range(int(cells.max()) + 1):
        m = cells == k
        if m.any():
            fields[m] = nxt
            recipe.append(int(rng.choice(np.arange(1, 16), p=weights / weights.sum())))
            nxt += 1
    return gt, fields, np.array(recipe)


def _layout_fields(rng, size=145):
    rects = [(0, size, 0, size)]
    while len(rects) < 48:
        i = int(np.argmax([(r[1] - r[0]) * (r[3] - r[2]) for r in rects]))
        y0, y1, x0, x1 = rects.pop(i)
        if (y1 - y0) >= (x1 - x0):
            cut = int(rng.integers(y0 + (y1 - y0) // 3, y1 - (y1 - y0) // 3 + 1))
            rects += [(y0, cut, x0, x1), (cut, y1, x0, x1)]
        else:
            cut = int(rng.integers(x0 + (x1 - x0) // 3, x1 - (x1 - x0) // 3 + 1))
            rects += [(y0, y1, x0, cut), (y0, y1, cut, x1)]
    classes = np.concatenate([rng.permutation(16) + 1 for _ in range(3)])
    gt = np.zeros((size, size), dtype=np.int32)
    fields = np.zeros((size, size), dtype=np.int32)
    recipe = [int(rng.integers(1, 16))]  # field 0: the roads' verges
    for k, (y0, y1, x0, x1) in enumerate(rects):
        gt[y0 + 1:y1 - 1, x0 + 1:x1 - 1] = classes[k]
        fields[y0 + 1:y1 - 1, x0 + 1:x1 - 1] = k + 1
        recipe.append(int(classes[k]))
    return gt, fields, np.array(recipe)


# -- the mixing model --------------------------------------------------------------------------

def _smooth(rng, shape, sigma):
    """Unit-variance Gaussian-filtered white noise."""
    z = ndimage.gaussian_filter(rng.normal(size=shape), sigma, mode="reflect")
    return z / max(float(z.std()), 1e-12)


def make_scene(layout: str = "indian_pines", seed: int = 0, library: str = "auto", noise: float = 1.0,
               jitter: float = 1.0) -> Scene:
    """A semi-synthetic hyperspectral scene (see the module docstring for the model).

    Parameters
    ----------
    layout : "indian_pines" or "fields"
    seed : int
    library : "auto" (earthlib if installed, else the synthetic fallback), "earthlib" or "synthetic"
    noise : float >= 0
        Scale of the sensor noise (1 = the tuned default).
    jitter : float >= 0
        Scale of the pixel-level fraction perturbations (1 = the tuned default).
    """
    if layout not in ("indian_pines", "fields"):
        raise ConvError(f"layout must be 'indian_pines' or 'fields', got {layout!r}")
    if library not in ("auto", "earthlib", "synthetic"):
        raise ConvError(f"library must be 'auto', 'earthlib' or 'synthetic', got {library!r}")
    for v, what in ((noise, "noise"), (jitter, "jitter")):
        if not (np.isfinite(v) and v >= 0):
            raise ConvError(f"{what} must be a finite number >= 0, got {v}")
    rng = np.random.default_rng(seed)
    lib = synthetic_library(seed) if library == "synthetic" or (library == "auto" and not earthlib_available()) \
        else load_earthlib()
    gt, fields, recipe = _layout_indian_pines(rng) if layout == "indian_pines" else _layout_fields(rng)
    h, w = gt.shape
    wl = lib.wavelengths
    nb = wl.size
    s = lib.spectra

    # a scene pool of similar soils (one region): 8 soils of middling brightness
    bright = s["soil"].mean(axis=1)
    lo, hi = np.quantile(bright, [0.3, 0.6])
    pool = np.flatnonzero((bright >= lo) & (bright <= hi))
    soils = s["soil"][rng.choice(pool, size=8, replace=False)]

    n_fields = int(fields.max()) + 1
    # per-field draws
    frac_field = np.zeros((n_fields, 4))
    canopy_sets = np.zeros((n_fields, 4, nb))
    soil_f = np.zeros((n_fields, nb))
    residue_f = np.zeros((n_fields, nb))
    built_f = np.zeros((n_fields, 2, nb))
    p = lib.canopy_params
    for f in range(n_fields):
        fr, (lai, chl, lma), res, built = RECIPES[int(recipe[f])]
        frac_field[f] = np.clip(np.array(fr) + rng.normal(0, 0.03, 4) * (np.array(fr) > 0), 0, None)
        ok = np.flatnonzero((p[:, 0] >= lai[0]) & (p[:, 0] <= lai[1]) & (p[:, 1] >= chl[0]) & (p[:, 1] <= chl[1])
                            & (p[:, 2] >= lma[0]) & (p[:, 2] <= lma[1]))
        if ok.size < 4:
            ok = np.argsort(np.abs(p[:, 0] - np.mean(lai)) / 10 + np.abs(p[:, 1] - np.mean(chl)) / 50)[:20]
        canopy_sets[f] = s["canopy"][rng.choice(ok, size=4, replace=ok.size < 4)]
        soil_f[f] = soils[rng.integers(len(soils))]
        residue_f[f] = s[res][rng.integers(len(s[res]))]
        if built is not None:
            built_f[f] = s[built][rng.choice(len(s[built]), size=2, replace=False)]

    # per-pixel fractions: field mean + smooth and white perturbations
    fr = frac_field[fields]  # (H, W, 4)
    pert = np.stack([0.12 * _smooth(rng, (h, w), 2.0) + 0.10 * rng.normal(size=(h, w)) for _ in range(4)], axis=-1)
    fr = np.clip(fr + jitter * pert * (fr > 0), 0, None)
    fr /= np.maximum(fr.sum(axis=-1, keepdims=True), 1e-9)
    mix = rng.dirichlet(np.ones(4), size=(h, w))  # canopy mix within the field's set
    canopy = np.einsum("hwk,hwkb->hwb", mix, canopy_sets[fields])
    moist = 1 + 0.16 * jitter * _smooth(rng, (h, w), 3.0)
    soil = soil_f[fields] * moist[..., None]
    bmix = rng.uniform(0, 1, (h, w, 1))
    built = bmix * built_f[fields, 0] + (1 - bmix) * built_f[fields, 1]
    refl = (fr[..., 0:1] * canopy + fr[..., 1:2] * residue_f[fields] + fr[..., 2:3] * soil + fr[..., 3:4] * built)

    # sensor: illumination gain, point-spread mixing at borders, band-dependent noise
    gain = 1 + 0.06 * _smooth(rng, (h, w), 20.0) + 0.04 * jitter * rng.normal(size=(h, w))
    refl = refl * gain[..., None]
    refl = ndimage.gaussian_filter(refl, sigma=(0.7, 0.7, 0), mode="reflect")
    snr_shape = 1 + 1.5 * (wl > 1.8) + 1.0 * (wl < 0.45) + 0.5 * ((wl > 1.3) & (wl < 1.8))
    refl = refl + noise * 0.012 * snr_shape * rng.normal(size=refl.shape)
    names = CLASS_NAMES
    return Scene(refl.astype(np.float32), gt.astype(np.int32), fields.astype(np.int32), wl.astype(np.float64),
                 names, layout, lib.name, int(seed))
