"""Choosing a CKKS backend by name: ``"simulated"`` (`backend.SimulatedBackend`, exact float64)
or ``"tenseal"`` (`tenseal_backend.TenSEALBackend`, SEAL through TenSEAL; TenSEAL itself is
imported only when such a backend is made, so this module loads without the ``he`` extra)."""

from __future__ import annotations

from ..errors import ConvError
from .backend import Backend, SimulatedBackend
from .tenseal_backend import TenSEALBackend


def get_backend(backend, slots: int | None = None, **options) -> Backend:
    """A backend from its name (``"simulated"`` or ``"tenseal"``) or an existing instance.

    Parameters
    ----------
    backend : str or Backend
        Name or instance. An instance is returned as is (``slots`` must then match or be None).
    slots : int, optional
        Slots per ciphertext. Defaults: ``2**15`` for simulated, ``2**13`` for tenseal.
    **options
        Passed to the backend's constructor (``levels``/``usable`` for simulated, ``depth``
        and ``scale_bits`` for tenseal).
    """
    if isinstance(backend, Backend):
        if options:
            raise ConvError(f"backend options {sorted(options)} cannot change an existing backend")
        if slots is not None and slots != backend.slots:
            raise ConvError(f"slots={slots} does not match the given backend's {backend.slots}")
        return backend
    if backend == "simulated":
        return SimulatedBackend(2**15 if slots is None else slots, **options)
    if backend == "tenseal":
        return TenSEALBackend(2**13 if slots is None else slots, **options)
    raise ConvError(f"unknown backend {backend!r}; choose 'simulated' or 'tenseal'")
