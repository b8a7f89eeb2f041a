"""Triton kernels with pure-torch references, shipped as ``workbench.kernels``.

This package imports nothing from the rest of the workbench, so kernels can be tested and
benchmarked on their own (on the CPU with ``TRITON_INTERPRET=1``).
"""
