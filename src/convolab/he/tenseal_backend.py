"""Real CKKS through TenSEAL's low-level Microsoft SEAL bindings (``tenseal.sealapi``).

TenSEAL's high-level ``CKKSVector`` has no public rotation and replicates short vectors, so
this backend drives SEAL directly: ``CKKSEncoder`` encodes exact slot layouts,
``Evaluator.rotate_vector`` rotates with Galois keys, ``multiply_plain`` and
``rescale_to_next`` give PMult and rescale. Parameters: ring dimension ``N = 2 * slots``,
coefficient modulus ``[60] + [scale_bits] * depth + [60]`` bits (the first prime holds the
result, the last is the key-switching special prime) or any ``modulus_bits`` list of that
shape, scale ``2**scale_bits``, 128-bit security (SEAL refuses parameters below it:
``depth = 2`` needs ``N >= 2**13``). SEAL's security table stops at ``N = 2**15`` (881
bits); at ``N = 2**16`` this backend accepts at most twice that, 1762 bits (the bit count
LWE allows at a fixed security level grows about linearly with ``N``), and tells SEAL not to
check. No bootstrapping: SEAL has none.

A Galois key is generated the first time a rotation step is used (one key per step, so each
counted rotation is exactly one key switch); the time spent is accumulated in
``keygen_seconds`` so that callers can leave it out of evaluation latency. SEAL computes the
Galois element of a step ``r`` as ``3**(r mod slots) mod 2N``; TenSEAL's bindings take Galois
elements, not steps.
"""

from __future__ import annotations

import time

import numpy as np

from ..errors import ConvError
from .backend import Backend, Ciphertext


class TenSEALBackend(Backend):
    """CKKS on SEAL via ``tenseal.sealapi``.

    Parameters
    ----------
    slots : int
        Slots per ciphertext; the ring dimension is ``2 * slots`` (``2**12`` to ``2**15``
        slots are typical).
    depth : int
        Number of rescales the modulus chain allows (2 covers every convolution schedule).
    scale_bits : int
        log2 of the CKKS scale and the bit size of the rescaling primes.
    modulus_bits : list of int, optional
        The whole chain: first prime, ``depth`` rescaling primes, special prime (overrides
        ``depth``).

    Raises
    ------
    ConvError
        If TenSEAL is not installed or SEAL rejects the parameters (e.g. too small a ring
        for 128-bit security).
    """

    name = "tenseal"

    def __init__(self, slots: int = 2**13, depth: int = 2, scale_bits: int = 40,
                 modulus_bits: list | None = None):
        if modulus_bits is not None:
            modulus_bits = [int(b) for b in modulus_bits]
            if len(modulus_bits) < 3:
                raise ConvError(f"modulus_bits needs at least 3 primes, got {modulus_bits!r}")
            depth = len(modulus_bits) - 2
        super().__init__(slots, levels=int(depth))
        try:
            import tenseal.sealapi as sealapi
        except ImportError as e:  # pragma: no cover - depends on the environment
            raise ConvError(
                "backend='tenseal' needs TenSEAL: pip install 'convolab[he]'"
            ) from e
        self._s = sealapi
        self.depth = int(depth)
        self.scale = float(2.0**scale_bits)
        N = 2 * self.slots
        params = sealapi.EncryptionParameters(sealapi.SCHEME_TYPE.CKKS)
        params.set_poly_modulus_degree(N)
        bits = modulus_bits or [60] + [int(scale_bits)] * self.depth + [60]
        try:
            params.set_coeff_modulus(sealapi.CoeffModulus.Create(N, bits))
        except Exception as e:
            raise ConvError(f"SEAL rejects slots={slots}, depth={depth}: {e}") from None
        sec = sealapi.SEC_LEVEL_TYPE.TC128
        if N == 2**16:
            if sum(bits) > 2 * 881:
                raise ConvError(
                    f"slots={slots} (N=2^16) with a {sum(bits)}-bit modulus exceeds the "
                    "1762 bits this backend allows at N=2^16 for 128-bit security"
                )
            sec = sealapi.SEC_LEVEL_TYPE.NONE
        ctx = sealapi.SEALContext(params, True, sec)
        if not ctx.parameters_set():
            raise ConvError(
                f"SEAL rejects slots={slots} (N={N}) with a {sum(bits)}-bit modulus "
                f"(depth={depth}): {ctx.parameters_error_message()}"
            )
        self._ctx = ctx
        keygen = sealapi.KeyGenerator(ctx)
        self._keygen = keygen
        public = sealapi.PublicKey()
        keygen.create_public_key(public)
        self._relin = sealapi.RelinKeys()
        keygen.create_relin_keys(self._relin)
        self._encoder = sealapi.CKKSEncoder(ctx)
        self._encryptor = sealapi.Encryptor(ctx, public)
        self._decryptor = sealapi.Decryptor(ctx, keygen.secret_key())
        self._evaluator = sealapi.Evaluator(ctx)
        self._galois: dict[int, object] = {}
        self.N = N
        self.coeff_bits = bits

    def describe(self) -> str:
        return (
            f"tenseal (SEAL CKKS), N=2^{self.N.bit_length() - 1}, {self.slots} slots, "
            f"modulus {'+'.join(map(str, self.coeff_bits))} bits, scale 2^{int(np.log2(self.scale))}"
        )

    def _galois_key(self, step: int):
        key = self._galois.get(step)
        if key is None:
            t0 = time.perf_counter()
            key = self._s.GaloisKeys()
            self._keygen.create_galois_keys([pow(3, step, 2 * self.N)], key)
            self._galois[step] = key
            self.keygen_seconds += time.perf_counter() - t0
        return key

    def _encrypt(self, v):
        pt = self._s.Plaintext()
        self._encoder.encode(v.tolist(), self.scale, pt)
        return Ciphertext(self._new(self._encryptor.encrypt, pt))

    def _decrypt(self, ct):
        pt = self._s.Plaintext()
        self._decryptor.decrypt(ct.data, pt)
        return np.array(self._encoder.decode_double(pt), dtype=np.float64)

    def _encode(self, v, like, for_add):
        if not for_add and not v.any():
            raise ConvError(
                "an all-zero plaintext would make the product transparent; skip the product"
            )
        pt = self._s.Plaintext()
        scale = like.data.scale if for_add else self.scale
        self._encoder.encode(v.tolist(), like.data.parms_id(), scale, pt)
        return pt

    def _new(self, op, *args, what: str = "SEAL", where: str = ""):
        """A new SEAL ciphertext ``out`` written by ``op(*args, out)``; SEAL's refusal
        (ValueError) raised as `ConvError` ``f"{what}: {error}{where}"``."""
        out = self._s.Ciphertext()
        try:
            op(*args, out)
        except ValueError as e:  # e.g. "scale out of bounds" once the chain is used up
            raise ConvError(f"{what}: {e}{where}") from None
        return out

    def _aligned(self, a, b):
        """Modulus-switch the higher-level of two ciphertexts down to the other's level."""
        if a.level == b.level:
            return a.data, b.data
        if a.level < b.level:
            return self._new(self._evaluator.mod_switch_to, a.data, b.data.parms_id()), b.data
        return a.data, self._new(self._evaluator.mod_switch_to, b.data, a.data.parms_id())

    def _add(self, a, b):
        out = self._new(self._evaluator.add, *self._aligned(a, b),
                        what="SEAL cannot add these ciphertexts")
        return Ciphertext(out, max(a.level, b.level), a.pending)

    def _add_plain(self, ct, pt):
        return Ciphertext(self._new(self._evaluator.add_plain, ct.data, pt), ct.level, ct.pending)

    def _multiply_plain(self, ct, pt):
        out = self._new(self._evaluator.multiply_plain, ct.data, pt,
                        where=f" (level {ct.level} of depth={self.depth})")
        return Ciphertext(out, ct.level, True)

    def _multiply(self, a, b):
        out = self._new(self._evaluator.multiply, *self._aligned(a, b),
                        where=f" (levels {a.level}, {b.level} of depth={self.depth})")
        self._evaluator.relinearize_inplace(out, self._relin)
        return Ciphertext(out, max(a.level, b.level), True)

    def _rotate(self, ct, step):
        out = self._new(self._evaluator.rotate_vector, ct.data, step, self._galois_key(step))
        return Ciphertext(out, ct.level, ct.pending)

    def _rescale(self, ct):
        return Ciphertext(self._new(self._evaluator.rescale_to_next, ct.data), ct.level + 1, False)


#: operations `measure_operations` times (seconds per operation, per remaining level)
TIMED_OPERATIONS = ("rotation", "pmult", "cmult", "rescale", "add", "encode", "transform")


def measure_operations(be: TenSEALBackend, levels=None, repeat: int = 3, seed: int = 0,
                       progress=None) -> dict:
    """Time SEAL's operations on ``be`` at each remaining level: seconds per operation.

    A fresh ciphertext is switched down to each level ``r`` (default all, ``be.depth`` down to
    0) and each operation is timed there; the levels are swept ``repeat`` times (so that a
    busy spell of the machine hits one sample of many levels, not all samples of one) and the
    fastest time of each is kept: ``rotation`` (``rotate_vector`` by one slot, key already
    generated), ``pmult`` (``multiply_plain`` with a plaintext encoded beforehand, outside the
    timed region), ``cmult`` (``multiply`` + ``relinearize``), ``rescale`` (of a product at
    ``r``; these three not at level 0, where a product could not be rescaled), ``add``,
    ``encode`` (a slot vector already converted to a list) and ``transform`` (one forward or
    inverse NTT of one polynomial modulo one prime: ``transform_from_ntt`` +
    ``transform_to_ntt`` of the ciphertext divided by ``4 (r + 1)``).

    Returns
    -------
    dict
        ``{operation: {level: seconds}}``.
    """
    s, ev = be._s, be._evaluator
    rng = np.random.default_rng(seed)
    values = rng.uniform(-1, 1, be.slots).tolist()
    top = be.encrypt(np.asarray(values))
    gk = be._galois_key(1)
    levels = list(range(be.depth, -1, -1)) if levels is None else sorted(set(levels), reverse=True)
    for r in levels:
        if not 0 <= r <= be.depth:
            raise ConvError(f"level {r} outside 0..{be.depth} of this backend")
    out: dict = {op: {} for op in TIMED_OPERATIONS}
    state = {}
    for r in levels:
        ct = s.Ciphertext()
        ev.mod_switch_to(top.data, top.data.parms_id(), ct)
        for _ in range(be.depth - r):
            ev.mod_switch_to_next_inplace(ct)
        pt = s.Plaintext()
        be._encoder.encode(values, ct.parms_id(), be.scale, pt)
        prod = s.Ciphertext()
        if r > 0:
            ev.multiply_plain(ct, pt, prod)
        state[r] = (ct, pt, prod)

    def keep(op, r, fn, *fargs):
        t0 = time.perf_counter()
        fn(*fargs)
        dt = time.perf_counter() - t0
        out[op][r] = min(dt, out[op].get(r, dt))

    def cmult(ct, res):
        ev.multiply(ct, ct, res)
        ev.relinearize_inplace(res, be._relin)

    def ntt(ct):
        ev.transform_from_ntt_inplace(ct)
        ev.transform_to_ntt_inplace(ct)

    res, pt2 = s.Ciphertext(), s.Plaintext()
    for rep in range(max(1, repeat)):
        for r in levels:
            ct, pt, prod = state[r]
            keep("rotation", r, ev.rotate_vector, ct, 1, gk, res)
            keep("add", r, ev.add, ct, ct, res)
            keep("encode", r, be._encoder.encode, values, ct.parms_id(), be.scale, pt2)
            if r > 0:  # a product at level 0 could not be rescaled: SEAL refuses it
                keep("pmult", r, ev.multiply_plain, ct, pt, res)
                keep("cmult", r, cmult, ct, res)
                keep("rescale", r, ev.rescale_to_next, prod, res)
            keep("transform", r, ntt, ct)
        if progress is not None:
            progress(rep)
    for r in out["transform"]:
        out["transform"][r] /= 4 * (r + 1)
    return out
