"""flaxmnist: pure-functional JAX/Flax training of MNIST-family classifiers.

``flaxmnist.train_and_evaluate(config, workdir)`` trains a run, ``flaxmnist.load_run(workdir)``
reloads one; the CLI is ``python -m flaxmnist.train``.
"""

__version__ = "0.1.0"


def __getattr__(name: str):
    # Lazy, so `import flaxmnist` (and `python -m flaxmnist.train --help`) stays light.
    if name == "load_run":
        from flaxmnist.evaluation.loading import load_run

        return load_run
    if name == "train_and_evaluate":
        from flaxmnist.training.loop import train_and_evaluate

        return train_and_evaluate
    raise AttributeError(f"module 'flaxmnist' has no attribute {name!r}")
