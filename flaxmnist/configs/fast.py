"""`fast`: the shortest wall time to >= 99.0 % MNIST test accuracy on a CPU.

`convnet_fast` (conv 16 → pool → BatchNorm, conv 32 → pool → BatchNorm, Dense 128 → BatchNorm,
108,970 params, BatchNorm momentum 0.9), all 60,000 training images (no validation pass), Adam
with betas 0.7 / 0.9 at an 8e-3 peak, a short warmup and cosine decay, batch 128, 2 epochs.
docs/models.md says how it was chosen (on a validation split) and what fresh seeds reach.
"""

from flaxmnist.configs.default import with_overrides


def get_config():
    """The fast preset."""
    return with_overrides(
        model="convnet_fast",
        batch_size=128,
        learning_rate=8e-3,
        adam_b1=0.7,
        adam_b2=0.9,
        schedule="warmup_cosine",
        warmup_epochs=0.2,
        num_epochs=2,
        validation_fraction=0.0,
    )
