"""The CPU this process runs on: its model name and the vector units that decide which kernels win.

``cpu_model()`` names it for every recorded measurement (``AMD EPYC (AVX-512)``: the model name
alone can hide which chip it is, since ``AMD EPYC`` names CPUs with AVX2 only and CPUs with
AVX-512). ``fused_pool_pays()`` is the rule the layers' ``"auto"`` follows on CPU; the per-CPU
measurements behind it are written by ``experiments/bench/kernels.py``.
"""

from __future__ import annotations

import contextlib
import functools
import os
import platform
from pathlib import Path

# The vector units that decide which kernels are fastest, as /proc/cpuinfo's flags name them.
INSTRUCTION_SETS = (("amx_tile", "AVX-512 + AMX"), ("avx512f", "AVX-512"), ("avx2", "AVX2"))


@functools.cache
def _first_cpu_fields() -> dict[str, str]:
    """The first CPU's ``key: value`` lines of /proc/cpuinfo (empty where there is none)."""
    fields: dict[str, str] = {}
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            fields.setdefault(key.strip(), value.strip())
    return fields


def cpu_flags() -> frozenset[str]:
    """The instruction-set flags of the first CPU (``avx2``, ``avx512f``, ...)."""
    return frozenset(_first_cpu_fields().get("flags", "").split())


def vector_units() -> str | None:
    """The widest vector units: ``AVX-512 + AMX``, ``AVX-512``, ``AVX2`` or None."""
    flags = cpu_flags()
    return next((label for flag, label in INSTRUCTION_SETS if flag in flags), None)


def cpu_model() -> str:
    """The CPU's model name and widest vector units: ``AMD EPYC (AVX-512)``."""
    name = _first_cpu_fields().get("model name") or platform.processor() or "unknown CPU"
    widest = vector_units()
    return f"{name} ({widest})" if widest else name


def machine_name() -> str:
    """The CPU (see :func:`cpu_model`) and the cores this process may use."""
    return f"{cpu_model()}, {len(os.sched_getaffinity(0))} cores"


def fused_pool_pays() -> bool:
    """Whether a convolution fused with its max-pool beats the two layers on this CPU.

    It does where the CPU has AVX-512 (its wider matmuls favour the fused layer's one larger
    product); on AVX2-only CPUs the two layers one after the other are faster.
    """
    return "avx512f" in cpu_flags()
