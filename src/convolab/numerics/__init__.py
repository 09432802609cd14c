"""The numerical deviation lab: why the same convolution gives different bits, and how much.

Submodules (imported on demand, so ``import convolab`` stays light):

- `convolab.numerics.metrics`: equivalence classes by bytes, remaining mantissa bits, ULP
  distance, errors against float64, L0 and L2.
- `convolab.numerics.orders`: a direct convolution whose accumulation order is explicit
  (sequential, pairwise, SIMD lanes, thread/channel chunks, loop order, exact FMA), to
  reproduce and name the classes real platforms produce.
- `convolab.numerics.determinism`: bitwise classes of convolab (threads x Numba CPU target)
  and PyTorch (threads x oneDNN ISA), one subprocess per configuration.
- `convolab.numerics.deviations`: the isolated-layer sweep behind ``convolab deviations sweep``.
- `convolab.numerics.propagation`: deviations through EfficientNet-Lite0 on real photographs,
  ``convolab deviations network``.

Source: Schlögl, Hofer, Böhme, "Causes and Effects of Unanticipated Numerical Deviations in
Neural Network Inference Frameworks", NeurIPS 2023.
"""
