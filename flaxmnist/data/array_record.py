"""ArrayRecord copies of a tfds dataset's TFRecord files: what ``as_data_source`` and Grain read.

tfds writes TFRecord; :func:`add_array_record` copies every record as it is into ArrayRecord files
beside them and lists the format in the dataset's metadata, last. :func:`has_array_record` tells
whether a dataset has them. Why not tfds's own converter (``tfds convert_format``): it rewrites
``dataset_info.json`` in place and checks no record, so a kill can damage a dataset.
"""

from __future__ import annotations

import collections
import hashlib
import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

from flaxmnist.data import datasets
from flaxmnist.errors import DataError

ARRAY_RECORD = "array_record"  # tfds's name of the format as_data_source reads
READ_BATCH = 10_000  # TFRecord records read per call


def has_array_record(path: Path) -> bool:
    """Whether the tfds dataset in ``path`` lists ArrayRecord files (its format or an alternative).

    Args:
      path: a dataset's version dir.

    Returns:
      True when its ``dataset_info.json`` names ``array_record``, which :func:`add_array_record`
      writes only once the files are in place.
    """
    try:
        info = json.loads((path / "dataset_info.json").read_text())
    except (OSError, ValueError):
        return False
    return ARRAY_RECORD in [info.get("fileFormat"), *info.get("alternativeFileFormats", [])]


def add_array_record(path: Path, staging: Path) -> None:
    """Adds ArrayRecord copies of the TFRecord files of the dataset in ``path`` beside them.

    Every record is copied as stored into ``staging``, read back and compared (count and
    SHA-256 of the records), then moved into ``path``; last, ``dataset_info.json`` is replaced by
    one that lists ``array_record`` among its alternative file formats: the commit point (see
    ``docs/data.md``). ``tfds.load`` keeps reading TFRecord, ``as_data_source`` reads ArrayRecord.

    Args:
      path: a complete dataset's version dir, stored as TFRecord.
      staging: a dir on the same file system, for the files before they move into ``path``.

    Raises:
      DataError: the dataset is stored in another format, or a copy differs from its TFRecord.
    """
    datasets.import_tfds(needs_tensorflow="adding ArrayRecord files to a tfds dataset")
    tf = datasets.import_tensorflow()
    from array_record.python import array_record_module
    from tensorflow_datasets.core import dataset_info, file_adapters

    info = dataset_info.read_proto_from_builder_dir(path)
    if info.file_format not in ("", file_adapters.FileFormat.TFRECORD.value):
        raise DataError(f"{path}: stored as {info.file_format}; only TFRecord can be converted")
    splits = dataset_info.get_split_dict_from_proto(
        dataset_info_proto=info, data_dir=path, file_format=file_adapters.FileFormat.TFRECORD
    )
    staging.mkdir(parents=True, exist_ok=True)
    written = []
    for split in splits.values():
        shards = split.filename_template.sharded_filepaths(num_shards=split.num_shards)
        for shard, length in zip(shards, split.shard_lengths, strict=True):
            target = (
                staging
                / file_adapters.convert_path_to_file_format(
                    shard, file_adapters.FileFormat.ARRAY_RECORD
                ).name
            )
            copied, back = RecordsDigest(), RecordsDigest()
            records = copied.over(tfrecords(tf, shard))
            file_adapters.ArrayRecordFileAdapter.write_examples(target, enumerate(records))
            reader = array_record_module.ArrayRecordReader(os.fspath(target))
            collections.deque(back.over(reader.read_all()), maxlen=0)
            if copied.value() != back.value() or copied.count != length:
                raise DataError(
                    f"{shard}: its ArrayRecord copy differs ({copied.count} records read, "
                    f"{back.count} written, {length} listed); nothing was installed"
                )
            written.append(target)
    info.alternative_file_formats.append(ARRAY_RECORD)
    (staging / "dataset_info.json").write_text(dataset_info.get_dataset_info_json(info))
    for file in [*written, staging / "dataset_info.json"]:  # the metadata last: the commit
        flush(file)
        os.replace(file, path / file.name)


def tfrecords(tf, shard: Path) -> Iterator[bytes]:
    """The records of a TFRecord file, in order (read in batches: one call a record takes 10 s)."""
    for batch in tf.data.TFRecordDataset(os.fspath(shard)).batch(READ_BATCH).as_numpy_iterator():
        yield from batch


class RecordsDigest:
    """A SHA-256 over records in their order (each length-prefixed), and their count."""

    def __init__(self):
        self.sha, self.count = hashlib.sha256(), 0

    def over(self, records: Iterable[bytes]) -> Iterator[bytes]:
        """Yields ``records``, adding each to the digest."""
        for record in records:
            self.sha.update(len(record).to_bytes(8, "little") + record)
            self.count += 1
            yield record

    def value(self) -> tuple[str, int]:
        """The digest and the count so far."""
        return self.sha.hexdigest(), self.count


def flush(file: Path) -> None:
    """Forces ``file``'s contents to disk before it is renamed into place."""
    with file.open("rb") as handle:
        os.fsync(handle.fileno())
