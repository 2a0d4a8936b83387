"""The one channel for terminal output: lines above the progress bars, from the primary process.

Progress bars are tqdm's; every other line goes through :func:`say` (tqdm.write, so a line never
breaks a bar) and only the primary process of a multi-host run prints. Errors go to stderr through
:mod:`flaxmnist.errors`.
"""

from __future__ import annotations

import sys

import tqdm


def is_primary() -> bool:
    """Whether this is the process that prints and writes logs, figures and metrics (process 0).

    Before JAX is imported no multi-process run has started: this process is the only one (and a
    command's ``--help`` or flag error does not wait for JAX's import).
    """
    jax = sys.modules.get("jax")
    return jax is None or jax.process_index() == 0


def say(message: str) -> None:
    """Prints ``message`` above the progress bar, from the primary process only (flushed)."""
    if is_primary():
        tqdm.tqdm.write(message, file=sys.stdout)
        sys.stdout.flush()  # a line shows at once, through a pipe too


def warn(message: str) -> None:
    """Prints ``warning: message`` on stderr, above the progress bar, from the primary process."""
    if is_primary():
        tqdm.tqdm.write(f"warning: {message}", file=sys.stderr)
