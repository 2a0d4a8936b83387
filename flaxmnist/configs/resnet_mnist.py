"""`resnet` (308,746 params), MNIST: AdamW, warm-up + cosine, label smoothing, augmentation."""

from flaxmnist.configs.default import with_overrides

# The training recipe both ResNet presets share (resnet_fashion imports it).
RESNET_RECIPE = dict(
    optimizer="adamw",
    learning_rate=1e-3,
    schedule="warmup_cosine",
    warmup_epochs=1.0,
    loss="label_smoothing",
    loss_options="smoothing=0.1",
    batch_size=128,
)


def get_config():
    """The resnet_mnist preset: small shifts, rotations and zoom (no flips: digits)."""
    return with_overrides(
        **RESNET_RECIPE,
        model="resnet",
        num_epochs=30,
        augment=dict(rotation=10.0, translate=0.1, zoom=0.1),
    )
