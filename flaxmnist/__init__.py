"""flaxmnist: pure-functional JAX/Flax training of MNIST-family classifiers.

``flaxmnist.load_run(workdir)`` reloads a trained run; the CLI is ``python -m flaxmnist.train``.
"""

__version__ = "0.1.0"


def __getattr__(name: str):
    # Lazy, so `import flaxmnist` (and `python -m flaxmnist.train --help`) stays light.
    if name == "load_run":
        from flaxmnist.evaluation.loading import load_run

        return load_run
    raise AttributeError(f"module 'flaxmnist' has no attribute {name!r}")
