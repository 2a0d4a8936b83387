"""The examples in the public API's docstrings run and print what they show."""

import doctest

import pytest

from flaxmnist import losses, models
from flaxmnist.training import step_functions


@pytest.mark.parametrize(
    "function",
    [losses.register, losses.get_loss, models.create_model, step_functions.make_step_functions],
    ids=lambda f: f.__qualname__,
)
def test_docstring_example_runs_as_written(function):
    assert ">>>" in function.__doc__
    finder = doctest.DocTestFinder(recurse=False)
    runner = doctest.DocTestRunner(optionflags=doctest.NORMALIZE_WHITESPACE)
    for test in finder.find(function, globs={}):
        runner.run(test)
    assert runner.summarize(verbose=False).failed == 0


def test_top_level_api_names_the_library_functions():
    import flaxmnist
    from flaxmnist.evaluation.loading import load_run
    from flaxmnist.training.loop import train_and_evaluate

    assert flaxmnist.load_run is load_run
    assert flaxmnist.train_and_evaluate is train_and_evaluate
