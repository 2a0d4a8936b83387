"""The fault matrix's quick trials (``experiments/faults.py --quick``), one test per scenario."""

import pytest
from helpers import load_experiment

faults = load_experiment("faults")


@pytest.mark.slow
@pytest.mark.parametrize("scenario", list(faults.SCENARIOS))
def test_every_quick_trial_of_the_fault_matrix_survives(scenario, tmp_path):
    (row,) = faults.run_scenarios([scenario], quick=True, seed=0, root=tmp_path)
    if row.trials == 0:
        pytest.skip("; ".join(row.notes))  # disk-full trials need a tmpfs mount (root)
    assert row.failures == []
    assert (row.survived, row.data_lost) == (row.trials, 0)
