"""The CKKS backend interface and the exact ``simulated`` backend.

A backend holds ``slots`` complex-free real slots per ciphertext (CKKS with ring dimension
``2 * slots``) and offers the operations every schedule in `convolab.he` is written in:
``encode``, ``encrypt``, ``decrypt``, ``add``, ``add_plain``, ``multiply_plain`` (PMult),
``multiply`` (ciphertext x ciphertext, CMult), ``rotate`` (and ``rotate_many``, a group of
rotations of one ciphertext that a library with hoisting shares the key-switching
decomposition of), ``rescale`` and ``bootstrap``. Rotation follows SEAL/OpenFHE:
``rotate(v, r)[i] = v[(i + r) mod slots]`` (a positive step rotates left).

Levels. A backend made with ``levels=L`` encrypts fresh ciphertexts with ``L`` rescales
left; ``ct.level`` counts the rescales a ciphertext went through, so ``L - ct.level`` are
left (its *remaining level*: a ciphertext at remaining level ``r`` is held modulo ``r + 1``
primes). A rescale with none left raises `ConvError`. ``bootstrap`` refreshes a ciphertext
to ``usable`` remaining levels (the levels a bootstrapped ciphertext has for the network;
its own levels are not modelled). ``levels=None`` (the default of ``simulated``) means
unlimited and no bootstrapping.

Every backend counts what it executes in a `Counts` record: key-switching rotations (a
step of 0 is free and not counted), hoisted rotations, PMults, CMults, rescales, additions,
encodings and bootstraps, and -- for the latency model (`convolab.he.latency`) -- the same
operations keyed by ``(category, layer, operation, remaining level)`` in ``by_level``
(``section`` sets the category and layer). The rules of CKKS are enforced on all backends
alike, so a schedule that runs on ``simulated`` also runs on a real CKKS library: a
ciphertext multiplied once must be rescaled before it is multiplied again, and only
ciphertexts in the same scale state can be added.

``SimulatedBackend`` keeps each ciphertext as a float64 slot vector: arithmetic is exact up
to float64 rounding (no encryption noise), which makes it the oracle for the packings and the
source of the operation counts. The model of computation is the one of CKKS (Cheon, Kim,
Kim, Song, ASIACRYPT 2017); see `convolab.he` for the schedules built on it.
"""

from __future__ import annotations

import hashlib
import time
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np

from ..errors import ConvError

#: the operations a backend counts, in the order reports print them
OPERATIONS = ("rotation", "hoisted", "pmult", "cmult", "rescale", "add", "encode", "bootstrap")


@dataclass
class Counts:
    """Operations a backend has executed.

    Attributes
    ----------
    rotations : int
        Slot rotations with a non-zero step (each one a key switch), hoisted ones excluded.
    hoisted : int
        Rotations done as the second or later member of a hoisted group (`Backend.rotate_many`):
        they share the first one's key-switching decomposition.
    pmults : int
        Ciphertext x plaintext multiplications.
    cmults : int
        Ciphertext x ciphertext multiplications (each followed by relinearisation).
    rescales : int
        Rescale operations.
    adds : int
        Ciphertext + ciphertext and ciphertext + plaintext additions.
    encodes : int
        Plaintexts encoded.
    bootstraps : int
        Ciphertexts bootstrapped.
    by_level : collections.Counter
        ``(category, layer, operation, level) -> count`` with ``operation`` one of
        `OPERATIONS` and ``level`` the remaining level of the operand (None on a backend
        without a level limit); for ``"bootstrap"`` the level is the number of slots the
        bootstrapped data occupies.
    """

    rotations: int = 0
    pmults: int = 0
    cmults: int = 0
    rescales: int = 0
    adds: int = 0
    hoisted: int = 0
    encodes: int = 0
    bootstraps: int = 0
    by_level: Counter = field(default_factory=Counter)

    _FIELDS = ("rotations", "pmults", "cmults", "rescales", "adds", "hoisted", "encodes", "bootstraps")

    def copy(self) -> Counts:
        c = Counts(*(getattr(self, f) for f in self._FIELDS))
        c.by_level = Counter(self.by_level)
        return c

    def __sub__(self, other: Counts) -> Counts:
        c = Counts(*(getattr(self, f) - getattr(other, f) for f in self._FIELDS))
        c.by_level = self.by_level - other.by_level
        return c


#: Counts attribute per operation name
_ATTR = {"rotation": "rotations", "hoisted": "hoisted", "pmult": "pmults", "cmult": "cmults",
         "rescale": "rescales", "add": "adds", "encode": "encodes", "bootstrap": "bootstraps"}


class Backend:
    """Interface of a CKKS backend; see the module docstring.

    Subclasses implement the ``_``-prefixed primitives; the public methods count operations,
    enforce the scale and level rules and track depth. Ciphertext objects expose ``level``
    (rescales applied) and ``pending`` (multiplied, not yet rescaled).

    Attributes
    ----------
    slots : int
        Slots per ciphertext (a power of two).
    levels : int or None
        Rescales a fresh ciphertext allows (None: unlimited).
    usable : int or None
        Remaining levels of a bootstrapped ciphertext.
    counts : Counts
        Operations executed so far.
    encode_seconds : float
        Wall time spent encoding plaintexts.
    keygen_seconds : float
        Wall time spent generating rotation keys on demand.
    cache_plaintexts : bool
        When True, `encode` keeps every plaintext it makes, keyed by its values, level and
        use, and hands the same plaintext back without encoding (and without counting an
        encoding) the next time: a schedule run twice then runs with its weights encoded
        beforehand.
    """

    name = "abstract"

    def __init__(self, slots: int, levels: int | None = None, usable: int | None = None):
        if not isinstance(slots, int | np.integer) or slots < 1 or slots & (slots - 1):
            raise ConvError(f"slots must be a power of two, got slots={slots!r}")
        if levels is not None and (not isinstance(levels, int | np.integer) or levels < 1):
            raise ConvError(f"levels must be a positive integer or None, got levels={levels!r}")
        if usable is not None and (levels is None or not 1 <= usable <= levels):
            raise ConvError(f"usable={usable!r} must lie in 1..levels (levels={levels!r})")
        self.slots = int(slots)
        self.levels = None if levels is None else int(levels)
        self.usable = self.levels if usable is None else int(usable)
        self.counts = Counts()
        self.encode_seconds = 0.0
        self.keygen_seconds = 0.0
        self.cache_plaintexts = False
        self._plain_cache: dict = {}
        self._section = ("other", "")

    # -- bookkeeping ---------------------------------------------------------------------
    def remaining(self, ct) -> int | None:
        """Rescales ``ct`` has left (None without a level limit)."""
        return None if self.levels is None else self.levels - ct.level

    @contextmanager
    def section(self, category: str, layer: str = ""):
        """Count the operations run inside under ``(category, layer)`` in ``counts.by_level``."""
        old = self._section
        self._section = (category, layer)
        try:
            yield
        finally:
            self._section = old

    def _count(self, op: str, level) -> None:
        attr = _ATTR[op]
        setattr(self.counts, attr, getattr(self.counts, attr) + 1)
        self.counts.by_level[(*self._section, op, level)] += 1

    # -- public operations --------------------------------------------------------------
    def encrypt(self, values) -> object:
        """Encrypt a real slot vector of length ``slots`` (level 0: all levels left)."""
        return self._encrypt(self._check_vector(values))

    def decrypt(self, ct) -> np.ndarray:
        """Decrypt to a float64 slot vector."""
        return self._decrypt(ct)

    def encode(self, values, like, for_add: bool = False) -> object:
        """Encode a slot vector as a plaintext for ``like``.

        With ``for_add=False`` the plaintext can multiply ``like`` (`multiply_plain`); with
        ``for_add=True`` it can be added to it (`add_plain`: same level and scale).
        """
        v = self._check_vector(values)
        key = None
        if self.cache_plaintexts:
            key = (hashlib.blake2b(v.tobytes(), digest_size=16).digest(), like.level,
                   bool(for_add), bool(getattr(like, "pending", False)))
            if key in self._plain_cache:
                return self._plain_cache[key]
        t0 = time.perf_counter()
        pt = self._encode(v, like, for_add)
        self.encode_seconds += time.perf_counter() - t0
        self._count("encode", self.remaining(like))
        if key is not None:
            self._plain_cache[key] = pt
        return pt

    def add(self, a, b):
        """Slot-wise sum of two ciphertexts in the same scale state."""
        if a.pending != b.pending:
            raise ConvError("cannot add a rescaled and a not-yet-rescaled ciphertext")
        self._count("add", self.remaining(a if a.level >= b.level else b))
        return self._add(a, b)

    def add_plain(self, ct, pt):
        """Slot-wise sum of a ciphertext and a plaintext encoded for it."""
        self._count("add", self.remaining(ct))
        return self._add_plain(ct, pt)

    def multiply_plain(self, ct, pt):
        """Slot-wise product with a plaintext (one PMult); rescale before multiplying again."""
        if ct.pending:
            raise ConvError("multiply_plain of a ciphertext that has not been rescaled")
        self._count("pmult", self.remaining(ct))
        return self._multiply_plain(ct, pt)

    def multiply(self, a, b):
        """Slot-wise product of two ciphertexts (one CMult, relinearised)."""
        if a.pending or b.pending:
            raise ConvError("multiply of a ciphertext that has not been rescaled")
        self._count("cmult", self.remaining(a if a.level >= b.level else b))
        return self._multiply(a, b)

    def rotate(self, ct, step: int):
        """``rotate(v, r)[i] = v[(i + r) mod slots]``; a step of 0 returns ``ct`` uncounted."""
        step = int(step) % self.slots
        if step == 0:
            return ct
        self._count("rotation", self.remaining(ct))
        return self._rotate(ct, step)

    def rotate_many(self, ct, steps, hoist: bool = True) -> dict:
        """Rotations of one ciphertext by several steps: ``{step: rotated}``.

        With ``hoist=True`` the first non-zero step counts as a rotation and the others as
        hoisted rotations (Halevi and Shoup, CRYPTO 2018: the key-switching decomposition of
        ``ct`` is computed once for the group). A backend without hoisting (SEAL) executes
        them as ordinary rotations; the counts say what a hoisting library would do.
        """
        out, first = {}, True
        for s in steps:
            s = int(s)
            if s in out:
                continue
            r = s % self.slots
            if r == 0:
                out[s] = ct
                continue
            if hoist and not first:
                self._count("hoisted", self.remaining(ct))
                out[s] = self._rotate(ct, r)
            else:
                out[s] = self.rotate(ct, r)
            first = False
        return out

    def rescale(self, ct):
        """Divide out the scale of one multiplication: one level of depth."""
        if not ct.pending:
            raise ConvError("rescale of a ciphertext that was not multiplied")
        if self.levels is not None and ct.level >= self.levels:
            raise ConvError(
                f"out of levels: a ciphertext at level {ct.level} of levels={self.levels} "
                "cannot be rescaled (bootstrap it earlier)"
            )
        self._count("rescale", self.remaining(ct))
        return self._rescale(ct)

    def bootstrap(self, ct, data_slots: int | None = None):
        """Refresh ``ct`` to ``usable`` remaining levels (one ciphertext-bootstrap).

        ``data_slots`` is the number of slots the data repeats with (sparse bootstrapping;
        default all slots): it keys the count so that the latency model can price it.
        """
        if self.levels is None:
            raise ConvError("bootstrap needs a backend with a level limit (levels=...)")
        if ct.pending:
            raise ConvError("bootstrap of a ciphertext that has not been rescaled")
        self._count("bootstrap", int(data_slots or self.slots))
        return self._bootstrap(ct)

    # -- helpers -------------------------------------------------------------------------
    def _check_vector(self, values) -> np.ndarray:
        v = np.asarray(values, dtype=np.float64)
        if v.shape != (self.slots,):
            raise ConvError(f"slot vector must have shape ({self.slots},), got {v.shape}")
        return v

    def _bootstrap(self, ct):
        raise ConvError(f"the {self.name} backend has no CKKS bootstrapping")

    def describe(self) -> str:
        """A short description (backend name and parameters)."""
        lv = "" if self.levels is None else f", {self.levels} levels ({self.usable} after bootstrapping)"
        return f"{self.name}, {self.slots} slots{lv}"


class Ciphertext:
    """A backend's ciphertext: its ``data`` (the exact slot vector for the simulated backend, a
    SEAL ciphertext for TenSEAL), its level (rescales applied) and scale state (``pending``:
    multiplied, not yet rescaled)."""

    __slots__ = ("data", "level", "pending")

    def __init__(self, data, level: int = 0, pending: bool = False):
        self.data = data
        self.level = level
        self.pending = pending


class SimulatedBackend(Backend):
    """Exact float64 slot vectors with CKKS's operation rules and operation counting.

    Parameters
    ----------
    slots : int
        Slots per ciphertext (a power of two), e.g. ``2**15`` for ring dimension ``2**16``.
    levels : int, optional
        Rescales a fresh ciphertext allows; None (default) for unlimited.
    usable : int, optional
        Remaining levels after `Backend.bootstrap` (default ``levels``).

    Notes
    -----
    No noise and no modulus: results equal the plaintext computation up to float64
    rounding, and a bootstrap returns the same values at ``usable`` remaining levels.
    Adding ciphertexts of different levels is allowed (a real backend modulus-switches the
    higher one down); the result takes the larger level.
    """

    name = "simulated"

    def _encrypt(self, v):
        return Ciphertext(v.copy())

    def _decrypt(self, ct):
        return ct.data.copy()

    def _encode(self, v, like, for_add):
        return v

    def _add(self, a, b):
        return Ciphertext(a.data + b.data, max(a.level, b.level), a.pending)

    def _add_plain(self, ct, pt):
        return Ciphertext(ct.data + pt, ct.level, ct.pending)

    def _multiply_plain(self, ct, pt):
        return Ciphertext(ct.data * pt, ct.level, True)

    def _multiply(self, a, b):
        return Ciphertext(a.data * b.data, max(a.level, b.level), True)

    def _rotate(self, ct, step):
        return Ciphertext(np.roll(ct.data, -step), ct.level, ct.pending)

    def _rescale(self, ct):
        return Ciphertext(ct.data, ct.level + 1, False)

    def _bootstrap(self, ct):
        return Ciphertext(ct.data.copy(), self.levels - self.usable, False)
