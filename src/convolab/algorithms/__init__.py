"""Built-in algorithms; importing this package registers them (one module per algorithm)."""

from . import bilinear, direct, fft, im2col, im2win  # noqa: F401
