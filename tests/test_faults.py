"""The fault matrix's quick trials (``tests/drills/faults.py --quick``), one test per scenario.

One drill serves every scenario, as in ``faults.py --quick``: the reference runs and the warm
cache are made once.
"""

import pytest
from drills.fault_drill import Drill
from drills.fault_scenarios import SCENARIOS
from helpers import run_script


@pytest.fixture(scope="module")
def drill(tmp_path_factory):
    return Drill(tmp_path_factory.mktemp("faults"), seed=0)


@pytest.mark.slow
@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_every_quick_trial_of_the_fault_matrix_survives(scenario, drill):
    row = SCENARIOS[scenario](drill, True)
    if row.trials == 0:
        pytest.skip("; ".join(row.notes))  # disk-full trials need a tmpfs mount (root)
    assert row.failures == []
    assert (row.survived, row.data_lost) == (row.trials, 0)


@pytest.mark.slow
def test_a_bad_flag_is_one_line_and_exit_2():
    result = run_script("tests/drills/faults.py", "--quick", "--only=kill9,nope")
    assert result.returncode == 2
    assert result.stderr == (
        f"error: --only: unknown scenarios nope; valid: {', '.join(SCENARIOS)}\n"
    )
