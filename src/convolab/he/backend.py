"""The CKKS backend interface and the exact ``simulated`` backend.

A backend holds ``slots`` complex-free real slots per ciphertext (CKKS with ring dimension
``2 * slots``) and offers the operations every schedule in `convolab.he` is written in:
``encode``, ``encrypt``, ``decrypt``, ``add``, ``add_plain``, ``multiply_plain`` (PMult),
``multiply`` (ciphertext x ciphertext, CMult), ``rotate`` and ``rescale``. Rotation follows
SEAL/OpenFHE: ``rotate(v, r)[i] = v[(i + r) mod slots]`` (a positive step rotates left).

Every backend counts what it executes in a `Counts` record: key-switching rotations (a step
of 0 is free and not counted), PMults, CMults, and tracks the multiplicative depth of each
ciphertext (the number of rescales it went through). The rules of CKKS are enforced on all
backends alike, so a schedule that runs on ``simulated`` also runs on a real CKKS library:
a ciphertext multiplied once must be rescaled before it is multiplied again, and only
ciphertexts in the same scale state can be added.

``SimulatedBackend`` keeps each ciphertext as a float64 slot vector: arithmetic is exact up
to float64 rounding (no encryption noise), which makes it the oracle for the packings and the
source of the operation counts. The model of computation is the one of CKKS (Cheon, Kim,
Kim, Song, ASIACRYPT 2017); see `convolab.he` for the schedules built on it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from ..errors import ConvError


@dataclass
class Counts:
    """Operations a backend has executed.

    Attributes
    ----------
    rotations : int
        Slot rotations with a non-zero step (each one a key switch).
    pmults : int
        Ciphertext x plaintext multiplications.
    cmults : int
        Ciphertext x ciphertext multiplications (each followed by relinearisation).
    rescales : int
        Rescale operations.
    """

    rotations: int = 0
    pmults: int = 0
    cmults: int = 0
    rescales: int = 0

    def copy(self) -> Counts:
        return Counts(self.rotations, self.pmults, self.cmults, self.rescales)

    def __sub__(self, other: Counts) -> Counts:
        return Counts(
            self.rotations - other.rotations,
            self.pmults - other.pmults,
            self.cmults - other.cmults,
            self.rescales - other.rescales,
        )


class Backend:
    """Interface of a CKKS backend; see the module docstring.

    Subclasses implement the ``_``-prefixed primitives; the public methods count operations,
    enforce the scale rules and track depth. Ciphertext objects expose ``level`` (rescales
    applied) and ``pending`` (multiplied, not yet rescaled).

    Attributes
    ----------
    slots : int
        Slots per ciphertext (a power of two).
    counts : Counts
        Operations executed so far.
    encode_seconds : float
        Wall time spent encoding plaintexts.
    keygen_seconds : float
        Wall time spent generating rotation keys on demand.
    """

    name = "abstract"

    def __init__(self, slots: int):
        if not isinstance(slots, int | np.integer) or slots < 1 or slots & (slots - 1):
            raise ConvError(f"slots must be a power of two, got slots={slots!r}")
        self.slots = int(slots)
        self.counts = Counts()
        self.encode_seconds = 0.0
        self.keygen_seconds = 0.0

    # -- public operations --------------------------------------------------------------
    def encrypt(self, values) -> object:
        """Encrypt a real slot vector of length ``slots`` (level 0)."""
        return self._encrypt(self._check_vector(values))

    def decrypt(self, ct) -> np.ndarray:
        """Decrypt to a float64 slot vector."""
        return self._decrypt(ct)

    def encode(self, values, like, for_add: bool = False) -> object:
        """Encode a slot vector as a plaintext for ``like``.

        With ``for_add=False`` the plaintext can multiply ``like`` (`multiply_plain`); with
        ``for_add=True`` it can be added to it (`add_plain`: same level and scale).
        """
        t0 = time.perf_counter()
        pt = self._encode(self._check_vector(values), like, for_add)
        self.encode_seconds += time.perf_counter() - t0
        return pt

    def add(self, a, b):
        """Slot-wise sum of two ciphertexts in the same scale state."""
        if a.pending != b.pending:
            raise ConvError("cannot add a rescaled and a not-yet-rescaled ciphertext")
        return self._add(a, b)

    def add_plain(self, ct, pt):
        """Slot-wise sum of a ciphertext and a plaintext encoded for it."""
        return self._add_plain(ct, pt)

    def multiply_plain(self, ct, pt):
        """Slot-wise product with a plaintext (one PMult); rescale before multiplying again."""
        if ct.pending:
            raise ConvError("multiply_plain of a ciphertext that has not been rescaled")
        self.counts.pmults += 1
        return self._multiply_plain(ct, pt)

    def multiply(self, a, b):
        """Slot-wise product of two ciphertexts (one CMult, relinearised)."""
        if a.pending or b.pending:
            raise ConvError("multiply of a ciphertext that has not been rescaled")
        self.counts.cmults += 1
        return self._multiply(a, b)

    def rotate(self, ct, step: int):
        """``rotate(v, r)[i] = v[(i + r) mod slots]``; a step of 0 returns ``ct`` uncounted."""
        step = int(step) % self.slots
        if step == 0:
            return ct
        self.counts.rotations += 1
        return self._rotate(ct, step)

    def rescale(self, ct):
        """Divide out the scale of one multiplication: one level of depth."""
        if not ct.pending:
            raise ConvError("rescale of a ciphertext that was not multiplied")
        self.counts.rescales += 1
        return self._rescale(ct)

    # -- helpers -------------------------------------------------------------------------
    def _check_vector(self, values) -> np.ndarray:
        v = np.asarray(values, dtype=np.float64)
        if v.shape != (self.slots,):
            raise ConvError(f"slot vector must have shape ({self.slots},), got {v.shape}")
        return v

    def describe(self) -> str:
        """A short description (backend name and parameters)."""
        return f"{self.name}, {self.slots} slots"


class SimCiphertext:
    """A simulated ciphertext: the exact slot vector, its level and scale state."""

    __slots__ = ("data", "level", "pending")

    def __init__(self, data: np.ndarray, level: int = 0, pending: bool = False):
        self.data = data
        self.level = level
        self.pending = pending


class SimulatedBackend(Backend):
    """Exact float64 slot vectors with CKKS's operation rules and operation counting.

    Parameters
    ----------
    slots : int
        Slots per ciphertext (a power of two), e.g. ``2**15`` for ring dimension ``2**16``.

    Notes
    -----
    No noise and no modulus: results equal the plaintext computation up to float64
    rounding. Adding ciphertexts of different levels is allowed (a real backend has to
    modulus-switch the higher one down and match the scales, e.g. by multiplying by a
    constant); the result takes the larger level.
    """

    name = "simulated"

    def _encrypt(self, v):
        return SimCiphertext(v.copy())

    def _decrypt(self, ct):
        return ct.data.copy()

    def _encode(self, v, like, for_add):
        return v

    def _add(self, a, b):
        return SimCiphertext(a.data + b.data, max(a.level, b.level), a.pending)

    def _add_plain(self, ct, pt):
        return SimCiphertext(ct.data + pt, ct.level, ct.pending)

    def _multiply_plain(self, ct, pt):
        return SimCiphertext(ct.data * pt, ct.level, True)

    def _multiply(self, a, b):
        return SimCiphertext(a.data * b.data, max(a.level, b.level), True)

    def _rotate(self, ct, step):
        return SimCiphertext(np.roll(ct.data, -step), ct.level, ct.pending)

    def _rescale(self, ct):
        return SimCiphertext(ct.data, ct.level + 1, False)


def get_backend(backend, slots: int | None = None, **options) -> Backend:
    """A backend from its name (``"simulated"`` or ``"tenseal"``) or an existing instance.

    Parameters
    ----------
    backend : str or Backend
        Name or instance. An instance is returned as is (``slots`` must then match or be None).
    slots : int, optional
        Slots per ciphertext. Defaults: ``2**15`` for simulated, ``2**13`` for tenseal.
    **options
        Passed to the backend's constructor (e.g. ``depth`` for tenseal).
    """
    if isinstance(backend, Backend):
        if options:
            raise ConvError(f"backend options {sorted(options)} cannot change an existing backend")
        if slots is not None and slots != backend.slots:
            raise ConvError(f"slots={slots} does not match the given backend's {backend.slots}")
        return backend
    if backend == "simulated":
        return SimulatedBackend(2**15 if slots is None else slots)
    if backend == "tenseal":
        from .tenseal_backend import TenSEALBackend

        return TenSEALBackend(2**13 if slots is None else slots, **options)
    raise ConvError(f"unknown backend {backend!r}; choose 'simulated' or 'tenseal'")
