"""flaxmnist.cpu: the CPU's name and the kernel rule, from /proc/cpuinfo's fields."""

import pytest

from flaxmnist import cpu


@pytest.mark.parametrize(
    ("flags", "name", "fused"),
    [
        ("fpu avx2 avx512f amx_tile", "Intel Xeon (AVX-512 + AMX)", True),
        ("fpu avx2 avx512f", "Intel Xeon (AVX-512)", True),
        ("fpu sse4_2 avx2", "Intel Xeon (AVX2)", False),
        ("fpu sse4_2", "Intel Xeon", False),
    ],
)
def test_the_cpu_is_named_by_its_widest_vector_units_which_decide_the_pool(
    monkeypatch, flags, name, fused
):
    fields = {"model name": "Intel Xeon", "flags": flags}
    monkeypatch.setattr(cpu, "_first_cpu_fields", lambda: fields)
    assert cpu.cpu_model() == name
    assert cpu.fused_pool_pays() is fused
    assert cpu.machine_name().startswith(f"{name}, ")
