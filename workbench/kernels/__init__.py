"""Triton kernels with pure-torch references, shipped as ``workbench.kernels``.

This package imports nothing from the rest of the workbench, so kernels can be tested and
benchmarked on their own (on the CPU with ``TRITON_INTERPRET=1``).

Modules: :mod:`.gemm` (the tiled GEMM and its global-read counter: the teaching example the others
refer to), :mod:`.sparse` (sparse dictionary encode/decode), :mod:`.wkv` (RWKV-4's WKV),
:mod:`.selective_scan` (Mamba's selective scan),
:mod:`.mlstm` (the xLSTM's mLSTM, chunkwise), :mod:`.linear_scan` (the plain-torch scans both build on),
:mod:`.dispatch` (one dispatcher per
operation; callers use ``workbench.kernels.dispatch`` and never a kernel directly). Nothing is imported
here, so ``import workbench.kernels`` stays cheap and does not fix Triton's interpreter mode early.
"""
