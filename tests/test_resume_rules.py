"""What a resumed run may change: nothing that changes what its steps compute."""

from __future__ import annotations

from pathlib import Path

import chex
import jax
import pytest

import flaxmnist
from flaxmnist import optimizers
from flaxmnist.configs import default
from flaxmnist.errors import FlaxmnistError
from flaxmnist.training import loop


def files_of(run: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(run)): p.read_bytes()
        for p in sorted(run.rglob("*"))
        if p.is_file() and p.name != ".lock"
    }


@pytest.mark.parametrize(
    ("schedule", "steps", "differs"),
    [
        ("constant", 40, False),
        ("exponential", 40, False),
        ("step", 40, False),
        ("cosine", 40, True),
        ("cosine", 1, False),  # step 0 has the full rate under any horizon
        ("warmup_cosine", 10, False),  # still warming up: the warm-up does not span the run
        ("warmup_cosine", 40, True),
    ],
)
def test_schedule_differs_exactly_where_the_schedule_spans_num_epochs(schedule, steps, differs):
    config = default.get_config()
    config.update(schedule=schedule, num_epochs=2, warmup_epochs=1.0, lr_decay_epochs=1.0)
    assert optimizers.schedule_differs(config, 3, steps_per_epoch=20, steps=steps) is differs


@pytest.mark.slow
def test_a_new_num_epochs_under_a_cosine_schedule_is_refused_and_changes_nothing(
    tiny_config, tmp_path
):
    tiny_config.schedule = "cosine"
    loop.train_and_evaluate(tiny_config, tmp_path / "run")
    before = files_of(tmp_path / "run")
    tiny_config.num_epochs = 3
    with pytest.raises(FlaxmnistError, match="cosine schedule spans num_epochs") as refused:
        loop.train_and_evaluate(tiny_config, tmp_path / "run")
    assert "\n" not in str(refused.value) and "keep num_epochs=2" in str(refused.value)
    assert files_of(tmp_path / "run") == before


@pytest.mark.slow
def test_another_input_pipeline_is_refused(tiny_config, tmp_path):
    tiny_config.num_epochs = 1
    loop.train_and_evaluate(tiny_config, tmp_path / "run")
    tiny_config.update(num_epochs=2, input_pipeline="grain")
    with pytest.raises(FlaxmnistError, match="input_pipeline: 'device' -> 'grain'"):
        loop.train_and_evaluate(tiny_config, tmp_path / "run")


@pytest.mark.slow
def test_other_chunks_per_epoch_and_more_epochs_end_bitwise_equal_and_fewer_are_refused(
    tiny_config, tmp_path
):
    """14 steps an epoch: 4 chunks in the uninterrupted run, 5 and then 3 in the resumed one.

    Then fewer epochs than the run has trained: refused, nothing changed.
    """
    tiny_config.update(num_epochs=3, chunks_per_epoch=4)
    loop.train_and_evaluate(tiny_config, tmp_path / "whole")
    tiny_config.update(num_epochs=1, chunks_per_epoch=5)
    loop.train_and_evaluate(tiny_config, tmp_path / "pieces")
    tiny_config.update(num_epochs=3, chunks_per_epoch=3)
    metrics = loop.train_and_evaluate(tiny_config, tmp_path / "pieces")
    assert metrics["steps"] == 42
    whole, pieces = (flaxmnist.load_run(tmp_path / name) for name in ("whole", "pieces"))
    leaves = (jax.tree_util.tree_leaves(run.state) for run in (pieces, whole))
    chex.assert_trees_all_equal(*leaves)  # parameters, optimizer state and step
    assert (tmp_path / "pieces" / "steps.csv").read_text() == (
        tmp_path / "whole" / "steps.csv"
    ).read_text()
    before = files_of(tmp_path / "pieces")
    tiny_config.num_epochs = 2
    with pytest.raises(FlaxmnistError, match="has trained 42 steps, past the end of num_epochs=2"):
        loop.train_and_evaluate(tiny_config, tmp_path / "pieces")
    assert files_of(tmp_path / "pieces") == before


@pytest.mark.slow
def test_a_run_resumed_on_a_cpu_with_other_kernels_finishes_equal_within_rounding(
    tiny_config, tmp_path, monkeypatch, capsys
):
    """An AVX-512 CPU runs the fused conv + pool, an AVX2 one the two layers: same values.

    The first epoch on one (simulated) CPU type, the second on the other, against both epochs
    on the first: the resumed run ends within float rounding, not bitwise.
    """
    from flaxmnist import cpu

    def on(flags: str) -> None:
        monkeypatch.setattr(cpu, "cpu_flags", lambda: frozenset(flags.split()))

    on("avx2 avx512f")
    assert cpu.fused_pool_pays()
    loop.train_and_evaluate(tiny_config, tmp_path / "whole")
    tiny_config.num_epochs = 1
    loop.train_and_evaluate(tiny_config, tmp_path / "moved")
    on("avx2")
    assert not cpu.fused_pool_pays()
    tiny_config.num_epochs = 2
    capsys.readouterr()
    metrics = loop.train_and_evaluate(tiny_config, tmp_path / "moved")
    assert "after epoch 1 (step 14)" in capsys.readouterr().out  # resumed, not started again
    assert metrics["steps"] == 2 * 14 and metrics["epochs_completed"] == 2
    moved, whole = (flaxmnist.load_run(tmp_path / name) for name in ("moved", "whole"))
    chex.assert_trees_all_close(moved.state.params, whole.state.params, atol=1e-4)
    moved_leaves, whole_leaves = (jax.tree_util.tree_leaves(r.state.params) for r in (moved, whole))
    pairs = zip(moved_leaves, whole_leaves, strict=True)
    assert any((a != b).any() for a, b in pairs)  # other kernels: not bitwise
