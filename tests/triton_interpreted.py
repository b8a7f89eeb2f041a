"""Shared by the kernel tests: Triton runs in its CPU interpreter.

``triton.jit`` reads ``TRITON_INTERPRET`` when triton is first imported, so importing this module sets it
before anything imports triton. When another test module imported triton first (a whole-suite run),
:data:`IN_PROCESS` is false: the Triton-backend tests (parametrised with :data:`TRITON`) skip in-process
and each kernel test file reruns them with :func:`run_triton_tests_in_child` (``-k triton``) in a child
process with the interpreter on; either way they run.
"""

import os
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest
import torch

from workbench.kernels import gemm

IN_PROCESS = gemm.interpreted() or torch.cuda.is_available()
TRITON = pytest.param("triton", marks=pytest.mark.skipif(
    not IN_PROCESS, reason="triton was imported before TRITON_INTERPRET=1; run in a child process instead"))
in_child_only = pytest.mark.skipif(IN_PROCESS, reason="the Triton tests ran in this process")


def run_triton_tests_in_child(test_file: str, n_tests: int) -> None:
    """Run ``test_file``'s Triton tests (``-k triton``) in a child process with the interpreter on;
    all ``n_tests`` must pass and none may skip."""
    env = {**os.environ, "TRITON_INTERPRET": "1", "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "pytest", "-q", "-o", "addopts=", "-p", "no:cacheprovider", test_file, "-k",
               "triton"]
    done = subprocess.run(command, env=env, cwd=Path(__file__).parents[1], capture_output=True, text=True,
                          timeout=600, check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert f"{n_tests} passed" in done.stdout and "skipped" not in done.stdout, done.stdout[-1000:]
