"""Numerical deviation lab: metrics, accumulation-order emulation, determinism checks, sweeps."""
