"""Data: the checksum-verified IDX files and tfds, the input pipelines, on-device augmentation."""
