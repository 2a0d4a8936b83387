"""Storage: the run directory and its atomic files, Orbax checkpoints, scalars, the JAX cache."""
