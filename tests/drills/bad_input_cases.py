"""The bad-input fuzz's cases: flags, config files, workdirs and damaged datasets, as data.

Each :class:`Case` adds flags to a small, valid base command (``bad_input.py``) and may first
change its folder: damage the synthetic dataset written there, or write an input file.
"""

import dataclasses
import gzip
import hashlib
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from flaxmnist.testing import idx_bytes

NUM_TRAIN = 256
NUM_TEST = 64
TRAIN_IMAGES, TRAIN_LABELS = "train-images-idx3-ubyte", "train-labels-idx1-ubyte"
TEST_IMAGES, TEST_LABELS = "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"

Setup = Callable[[Path], Sequence[str]]  # prepares the case folder; returns extra CLI arguments


@dataclasses.dataclass(frozen=True)
class Case:
    """One fuzz case: CLI arguments, an optional setup, and what the last stderr line names."""

    name: str
    args: tuple[str, ...] = ()
    expect: str = ""  # a substring of stderr's last line (after "error: ")
    setup: Setup | None = None  # damages the dataset or writes input files; may add arguments
    ok: bool = False  # valid input: the run must succeed
    compress: bool = True  # the synthetic dataset's files are .gz
    checksums: bool = True  # ... and listed in SHA256SUMS
    quick: bool = False  # part of the representative subset
    needs_non_root: bool = False  # permission cases: root reads everything


# --------------------------------------------------------------------------- dataset damage


def data_folder(folder: Path) -> Path:
    """The case's ``DATA/mnist`` folder."""
    return folder / "data" / "mnist"


def idx_path(folder: Path, stem: str) -> Path:
    """The file holding IDX ``stem`` in the case's dataset (``.gz`` or raw)."""
    gz = data_folder(folder) / f"{stem}.gz"
    return gz if gz.exists() else data_folder(folder) / stem


def read_array(folder: Path, stem: str) -> np.ndarray:
    """The array currently stored as IDX ``stem``."""
    path = idx_path(folder, stem)
    raw = path.read_bytes()
    raw = gzip.decompress(raw) if path.suffix == ".gz" else raw
    ndim = raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim).reshape(shape)


def write_raw(folder: Path, stem: str, raw: bytes, *, update_checksum: bool = True) -> None:
    """Stores uncompressed IDX bytes as ``stem`` (gzipped if the file is); fixes SHA256SUMS.

    With ``update_checksum`` the listing matches the new bytes, so the parser itself meets them.
    """
    path = idx_path(folder, stem)
    path.write_bytes(gzip.compress(raw) if path.suffix == ".gz" else raw)
    sums = data_folder(folder) / "SHA256SUMS"
    if update_checksum and sums.exists():
        lines = [
            f"{hashlib.sha256(raw).hexdigest()}  {stem}" if line.endswith(f"  {stem}") else line
            for line in sums.read_text().splitlines()
        ]
        sums.write_text("\n".join(lines) + "\n")


def replace_array(stem: str, change: Callable[[np.ndarray], np.ndarray]) -> Setup:
    """A setup that rewrites IDX ``stem`` as ``change(array)`` (a valid file of the wrong data)."""

    def setup(folder: Path) -> list[str]:
        write_raw(folder, stem, idx_bytes(change(read_array(folder, stem))))
        return []

    return setup


def edit_raw(stem: str, change: Callable[[bytes], bytes], update_checksum: bool = True) -> Setup:
    """A setup that rewrites the uncompressed bytes of IDX ``stem`` as ``change(raw)``."""

    def setup(folder: Path) -> list[str]:
        path = idx_path(folder, stem)
        raw = path.read_bytes()
        raw = gzip.decompress(raw) if path.suffix == ".gz" else raw
        write_raw(folder, stem, change(raw), update_checksum=update_checksum)
        return []

    return setup


def edit_file(stem: str, change: Callable[[bytes], bytes]) -> Setup:
    """A setup that rewrites the bytes on disk (compressed or not) of IDX ``stem``."""

    def setup(folder: Path) -> list[str]:
        path = idx_path(folder, stem)
        path.write_bytes(change(path.read_bytes()))
        return []

    return setup


def set_header(raw: bytes, *shape: int) -> bytes:
    """``raw`` with its dimensions replaced by ``shape`` (payload unchanged)."""
    ndim = raw[3]
    header = bytes([0, 0, 0x08, len(shape)]) + b"".join(s.to_bytes(4, "big") for s in shape)
    return header + raw[4 + 4 * ndim :]


def corrupt_deflate(raw: bytes) -> bytes:
    """A gzip file whose deflate stream is damaged behind a valid header."""
    damaged = bytearray(raw)
    damaged[20:60] = b"\xff" * 40
    return bytes(damaged)


def directory_instead(stem: str) -> Setup:
    """A setup that puts a directory where IDX ``stem`` should be."""

    def setup(folder: Path) -> list[str]:
        path = idx_path(folder, stem)
        path.unlink()
        path.mkdir()
        return []

    return setup


def remove(stem: str) -> Setup:
    """A setup that deletes IDX ``stem``."""

    def setup(folder: Path) -> list[str]:
        idx_path(folder, stem).unlink()
        return []

    return setup


def unreadable(stem: str) -> Setup:
    """A setup that makes IDX ``stem`` unreadable (chmod 000)."""

    def setup(folder: Path) -> list[str]:
        idx_path(folder, stem).chmod(0)
        return []

    return setup


def checksum_listing(content: bytes) -> Setup:
    """A setup that replaces SHA256SUMS with ``content``."""

    def setup(folder: Path) -> list[str]:
        (data_folder(folder) / "SHA256SUMS").write_bytes(content)
        return []

    return setup


def data_dir_at(kind: str) -> Setup:
    """A setup pointing ``data_dir`` at a regular file, a missing or an empty folder."""

    def setup(folder: Path) -> list[str]:
        target = folder / f"data_{kind}"
        if kind == "file":
            target.write_text("not a folder\n")
        elif kind == "empty":
            target.mkdir()
        return [f"--config.data_dir={target}"]

    return setup


# --------------------------------------------------------------------------- other inputs


def workdir_at(name: str, content: str | None = None) -> Setup:
    """A setup using ``name`` (below the case folder) as workdir; ``content``: a file there."""

    def setup(folder: Path) -> list[str]:
        path = folder / name
        if content is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(content)
        return [f"--workdir={path}"]

    return setup


def workdir_below_a_file(folder: Path) -> list[str]:
    """A workdir whose parent is a regular file."""
    (folder / "a_file").write_text("x\n")
    return [f"--workdir={folder / 'a_file' / 'run'}"]


def config_file(source: str, suffix: str = "") -> Setup:
    """A setup writing a config file with ``source`` and passing it as ``--config`` (first)."""

    def setup(folder: Path) -> list[str]:
        path = folder / "inputs" / "my_config.py"
        path.parent.mkdir(exist_ok=True)
        path.write_text(source)
        return [f"--config={path}{suffix}"]

    return setup


def init_from(kind: str) -> Setup:
    """A setup pointing ``init_from`` at something that is not a run directory."""

    def setup(folder: Path) -> list[str]:
        source = folder / "source_run"
        if kind == "file":
            source.write_text("x\n")
        elif kind != "missing":
            source.mkdir()
        if kind == "bad_json":
            (source / "config.json").write_text("{not json")
        if kind == "no_checkpoints":
            (source / "config.json").write_text('{"model": "dense"}')
        return [f"--config.init_from={source}"]

    return setup


# --------------------------------------------------------------------------- the cases


def _c(name: str, flag: str, expect: str, **kw) -> Case:
    """A case that adds one flag."""
    return Case(name, (flag,), expect, **kw)


FLAG_TYPE_CASES = [
    _c("batch_size_not_int", "--config.batch_size=abc", "config.batch_size", quick=True),
    _c("batch_size_empty", "--config.batch_size=", "config.batch_size"),
    _c("learning_rate_word", "--config.learning_rate=fast", "config.learning_rate"),
    _c("num_epochs_fraction", "--config.num_epochs=1.5", "config.num_epochs"),
    _c("resume_maybe", "--config.resume=maybe", "config.resume"),
    _c("augment_flip_2", "--config.augment.flip=2", "config.augment.flip"),
    _c("patience_word", "--config.early_stopping.patience=three", "early_stopping.patience"),
    _c("augment_group_number", "--config.augment=3", "config.augment"),
    _c("learning_rate_no_value", "--config.learning_rate", "config.learning_rate"),
]
RANGE_CASES = [
    _c("batch_size_negative", "--config.batch_size=-32", "batch_size"),
    _c("batch_size_zero", "--config.batch_size=0", "batch_size"),
    _c("eval_batch_size_zero", "--config.eval_batch_size=0", "eval_batch_size"),
    _c("learning_rate_zero", "--config.learning_rate=0", "learning_rate"),
    _c("learning_rate_negative", "--config.learning_rate=-0.1", "learning_rate"),
    _c("validation_fraction_one", "--config.validation_fraction=1.0", "validation_fraction"),
    _c("validation_fraction_negative", "--config.validation_fraction=-0.1", "validation_fraction"),
    _c("ema_decay_one", "--config.ema_decay=1.0", "ema_decay"),
    _c("momentum_negative", "--config.momentum=-0.5", "momentum"),
    _c("weight_decay_negative", "--config.weight_decay=-1e-4", "weight_decay"),
    _c("warmup_negative", "--config.warmup_epochs=-1", "warmup_epochs"),
    _c("lr_decay_rate_zero", "--config.lr_decay_rate=0", "lr_decay_rate"),
    _c("lr_decay_epochs_negative", "--config.lr_decay_epochs=-2", "lr_decay_epochs"),
    _c("tta_shift_9", "--config.tta_shift=9", "tta_shift", quick=True),
    _c("num_epochs_negative", "--config.num_epochs=-2", "num_epochs"),
    _c("chunks_per_epoch_zero", "--config.chunks_per_epoch=0", "chunks_per_epoch"),
    _c("keep_checkpoints_zero", "--config.keep_checkpoints=0", "keep_checkpoints"),
    _c("checkpoint_every_negative", "--config.checkpoint_every_epochs=-1", "checkpoint_every"),
    _c("log_every_negative", "--config.log_every_steps=-5", "log_every_steps"),
    _c("seed_negative", "--config.seed=-1", "seed"),
    _c("num_devices_negative", "--config.num_devices=-1", "num_devices"),
    _c("num_devices_too_many", "--config.num_devices=4096", "num_devices"),
    _c("patience_negative", "--config.early_stopping.patience=-1", "early_stopping.patience"),
    _c("rotation_negative", "--config.augment.rotation=-5", "augment.rotation"),
    _c("cutout_negative", "--config.augment.cutout=-2", "augment.cutout"),
    _c("cutout_prob_above_1", "--config.augment.cutout_prob=1.5", "augment.cutout_prob"),
    _c("zoom_one", "--config.augment.zoom=1.0", "augment.zoom"),
    _c("timeout_zero", "--config.multihost.timeout_s=0", "multihost.timeout_s"),
    Case(
        "restore_best_without_checkpoints",
        ("--config.early_stopping.restore_best=true", "--config.checkpoint_every_epochs=0"),
        "restore_best",
    ),
]
NON_FINITE_CASES = [
    _c("learning_rate_nan", "--config.learning_rate=nan", "learning_rate", quick=True),
    _c("learning_rate_inf", "--config.learning_rate=inf", "learning_rate"),
    _c("learning_rate_minus_inf", "--config.learning_rate=-inf", "learning_rate"),
    _c("momentum_nan", "--config.momentum=nan", "momentum"),
    _c("weight_decay_inf", "--config.weight_decay=inf", "weight_decay"),
    _c("warmup_nan", "--config.warmup_epochs=nan", "warmup_epochs"),
    _c("lr_decay_rate_inf", "--config.lr_decay_rate=inf", "lr_decay_rate"),
    _c("lr_decay_epochs_nan", "--config.lr_decay_epochs=nan", "lr_decay_epochs"),
    _c("ema_decay_nan", "--config.ema_decay=nan", "ema_decay"),
    _c("validation_fraction_nan", "--config.validation_fraction=nan", "validation_fraction"),
    _c("rotation_inf", "--config.augment.rotation=inf", "augment.rotation"),
    _c("translate_nan", "--config.augment.translate=nan", "augment.translate"),
    _c("zoom_minus_inf", "--config.augment.zoom=-inf", "augment.zoom"),
    _c("shear_nan", "--config.augment.shear=nan", "augment.shear"),
    _c("cutout_prob_nan", "--config.augment.cutout_prob=nan", "augment.cutout_prob"),
    _c("min_delta_nan", "--config.early_stopping.min_delta=nan", "early_stopping.min_delta"),
    _c("timeout_inf", "--config.multihost.timeout_s=inf", "multihost.timeout_s"),
]
HUGE_CASES = [
    _c("batch_size_huge", "--config.batch_size=10000000", "batch_size"),
    _c("eval_batch_size_huge", "--config.eval_batch_size=1000000000", "eval_batch_size"),
    _c("batch_size_above_train_set", "--config.batch_size=100000", "batch_size"),
    _c("seed_huge", "--config.seed=99999999999999999999999", "seed"),
]
EMPTY_CASES = [
    _c(f"{field}_empty", f"--config.{field}=", field)
    for field in ("model", "optimizer", "dataset", "loss", "schedule", "activation")
]
UNKNOWN_NAME_CASES = [
    _c("model_unknown", "--config.model=resnet9000", "model 'resnet9000'"),
    _c("optimizer_unknown", "--config.optimizer=lamb", "optimizer 'lamb'"),
    _c("schedule_unknown", "--config.schedule=linear", "schedule 'linear'"),
    _c("loss_unknown", "--config.loss=hinge", "loss 'hinge'"),
    _c("activation_unknown", "--config.activation=mish", "activation 'mish'"),
    _c("dtype_unknown", "--config.dtype=float16", "dtype 'float16'"),
    _c("conv_impl_unknown", "--config.conv_impl=fft", "conv_impl 'fft'"),
    _c("pool_impl_unknown", "--config.pool_impl=avg", "pool_impl 'avg'"),
    _c("input_pipeline_unknown", "--config.input_pipeline=magic", "input_pipeline 'magic'"),
    _c("normalization_unknown", "--config.normalization=zscore", "normalization 'zscore'"),
    _c("nan_policy_unknown", "--config.nan_policy=ignore", "nan_policy 'ignore'"),
    _c("monitor_unknown", "--config.early_stopping.monitor=val_f1", "early_stopping.monitor"),
    _c("multihost_mode_unknown", "--config.multihost.enabled=maybe", "multihost.enabled"),
    _c("dataset_unknown", "--config.dataset=no_such_dataset", "dataset 'no_such_dataset'"),
    _c("import_module_missing", "--config.import_modules=/no/such/plugin.py", "import_modules"),
]
LOSS_OPTION_CASES = [
    _c("loss_options_no_equals", "--config.loss_options=gamma", "loss_options", quick=True),
    _c("loss_options_no_name", "--config.loss_options==1.5", "loss_options"),
    _c("loss_options_bad_name", "--config.loss_options=1x=2", "loss_options"),
    _c("loss_options_step", "--config.loss_options=step=3", "'step'"),
    _c("loss_options_rejected", "--config.loss_options=gamma=1.5", "loss 'cross_entropy'"),
]
CONFIG_FILE_CASES = [
    _c("unknown_field", "--config.no_such_field=3", "no_such_field", quick=True),
    _c("unknown_nested_field", "--config.augment.blur=1", "augment.blur"),
    _c("field_below_a_string", "--config.early_stopping.monitor.x=1", "early_stopping.monitor"),
    _c("unknown_preset", "--config=nonexistent_preset", "nonexistent_preset"),
    _c("preset_given_an_argument", "--config=dense:3", "get_config('3')"),
    Case("config_after_overrides", ("--config=dense",), ok=True),  # --config may come anywhere
    Case("config_file_syntax_error", expect="my_config.py", setup=config_file("x = (\n")),
    Case("config_file_without_get_config", expect="get_config", setup=config_file("x = 1\n")),
    Case(
        "config_file_get_config_raises",
        expect="my_config.py",
        setup=config_file("def get_config():\n    raise RuntimeError('boom')\n"),
    ),
    Case(
        "config_file_returns_a_number",
        expect="ConfigDict",
        setup=config_file("def get_config():\n    return 3\n"),
    ),
    _c("unknown_flag", "--no_such_flag=1", "no_such_flag"),
    _c("positional_argument", "extra", "extra"),
]
WORKDIR_CASES = [
    Case("workdir_with_spaces", setup=workdir_at("run with spaces"), ok=True, quick=True),
    Case("workdir_unicode", setup=workdir_at("rün-数据 ✓"), ok=True),
    Case(
        "workdir_is_a_file",
        expect="workdir",
        setup=workdir_at("run_file", content="keep me\n"),
        quick=True,
    ),
    Case("workdir_below_a_file", expect="cannot write to workdir", setup=workdir_below_a_file),
]
INIT_FROM_CASES = [
    Case(f"init_from_{kind}", expect="init_from", setup=init_from(kind))
    for kind in ("missing", "file", "empty_dir", "bad_json", "no_checkpoints")
]
DATA_CASES = [
    # Damaged bytes with SHA256SUMS on: the checksum names the file.
    Case(
        "train_images_truncated",
        expect=TRAIN_IMAGES,
        compress=False,
        setup=edit_file(TRAIN_IMAGES, lambda b: b[:-100]),
    ),
    Case(
        "gzip_truncated",
        expect=f"{TRAIN_LABELS}.gz",
        setup=edit_file(TRAIN_LABELS, lambda b: b[:40]),
    ),
    Case(
        "wrong_magic",
        expect=TEST_IMAGES,
        setup=edit_raw(TEST_IMAGES, lambda b: b"\x08\x08" + b[2:], update_checksum=False),
    ),
    # The same damage without checksums, so the parser meets it.
    Case(
        "train_images_truncated_nosums",
        expect=TRAIN_IMAGES,
        compress=False,
        checksums=False,
        setup=edit_file(TRAIN_IMAGES, lambda b: b[:-100]),
    ),
    Case(
        "test_labels_truncated_nosums",
        expect=TEST_LABELS,
        checksums=False,
        setup=edit_raw(TEST_LABELS, lambda b: b[:-7]),
        quick=True,
    ),
    Case(
        "gzip_truncated_nosums",
        expect=f"{TEST_IMAGES}.gz",
        checksums=False,
        setup=edit_file(TEST_IMAGES, lambda b: b[: len(b) // 2]),
    ),
    Case(
        "gzip_corrupt_nosums",
        expect=f"{TRAIN_IMAGES}.gz",
        checksums=False,
        setup=edit_file(TRAIN_IMAGES, corrupt_deflate),
    ),
    Case(
        "gz_name_but_not_gzip",
        expect=f"{TRAIN_LABELS}.gz",
        checksums=False,
        setup=edit_file(TRAIN_LABELS, gzip.decompress),
    ),
    Case(
        "wrong_magic_nosums",
        expect=TEST_IMAGES,
        checksums=False,
        setup=edit_raw(TEST_IMAGES, lambda b: b"\x08\x08" + b[2:]),
    ),
    # Valid-looking files (checksums updated to match) with the wrong structure or content.
    Case(
        "wrong_dtype_code",
        expect=TRAIN_IMAGES,
        setup=edit_raw(TRAIN_IMAGES, lambda b: b[:2] + b"\x0d" + b[3:]),
    ),
    Case(
        "zero_dimensions",
        expect=TRAIN_LABELS,
        setup=edit_raw(TRAIN_LABELS, lambda b: b[:3] + b"\x00" + b[8:]),
    ),
    Case(
        "images_2d",
        expect=TRAIN_IMAGES,
        setup=replace_array(TRAIN_IMAGES, lambda a: a.reshape(len(a), -1)),
    ),
    Case("labels_2d", expect=TEST_LABELS, setup=replace_array(TEST_LABELS, lambda a: a[:, None])),
    Case(
        "header_count_exceeds_payload",
        expect=TRAIN_IMAGES,
        setup=edit_raw(TRAIN_IMAGES, lambda b: set_header(b, NUM_TRAIN + 10, 28, 28)),
    ),
    Case(
        "header_huge_dimensions",
        expect=TEST_IMAGES,
        checksums=False,
        setup=edit_raw(TEST_IMAGES, lambda b: set_header(b, 2**32 - 1, 2**32 - 1, 2**32 - 1)),
    ),
    Case(
        "train_label_10",
        expect=TRAIN_LABELS,
        setup=replace_array(TRAIN_LABELS, lambda a: np.where(np.arange(len(a)) == 3, 10, a)),
        quick=True,
    ),
    Case(
        "test_label_255",
        expect=TEST_LABELS,
        checksums=False,
        setup=replace_array(TEST_LABELS, lambda a: np.full_like(a, 255)),
    ),
    Case(
        "images_32x32",
        expect=TRAIN_IMAGES,
        setup=lambda folder: [
            *replace_array(TRAIN_IMAGES, lambda a: np.pad(a, ((0, 0), (2, 2), (2, 2))))(folder),
            *replace_array(TEST_IMAGES, lambda a: np.pad(a, ((0, 0), (2, 2), (2, 2))))(folder),
        ],
    ),
    Case(
        "test_images_32x32_train_28x28",
        expect=TEST_IMAGES,
        setup=replace_array(TEST_IMAGES, lambda a: np.pad(a, ((0, 0), (2, 2), (2, 2)))),
    ),
    Case(
        "label_count_mismatch",
        expect=TRAIN_LABELS,
        setup=replace_array(TRAIN_LABELS, lambda a: a[:-6]),
    ),
    Case(
        "empty_split",
        expect=TEST_IMAGES,
        setup=lambda folder: [
            *replace_array(TEST_IMAGES, lambda a: a[:0])(folder),
            *replace_array(TEST_LABELS, lambda a: a[:0])(folder),
        ],
    ),
    Case(
        "empty_file_nosums",
        expect=TRAIN_LABELS,
        compress=False,
        checksums=False,
        setup=edit_file(TRAIN_LABELS, lambda b: b""),
    ),
    Case("empty_gz_file", expect=f"{TEST_LABELS}.gz", setup=edit_file(TEST_LABELS, lambda b: b"")),
    Case("directory_instead_of_file", expect=TRAIN_IMAGES, setup=directory_instead(TRAIN_IMAGES)),
    Case("missing_file", expect=TEST_LABELS, setup=remove(TEST_LABELS)),
    Case(
        "unreadable_file",
        expect=TRAIN_IMAGES,
        setup=unreadable(TRAIN_IMAGES),
        needs_non_root=True,
    ),
    Case("checksums_malformed", expect="SHA256SUMS", setup=checksum_listing(b"garbage\n")),
    Case("checksums_not_text", expect="SHA256SUMS", setup=checksum_listing(b"\xff\xfe\x00bad")),
    Case("data_dir_is_a_file", expect="data_file", setup=data_dir_at("file")),
    Case("data_dir_missing", expect="data_missing", setup=data_dir_at("missing")),
    Case("data_dir_empty", expect="data_empty", setup=data_dir_at("empty")),
    _c("dataset_files_absent", "--config.dataset=fashion_mnist", "fashion_mnist"),
]
CASES: list[Case] = [
    *FLAG_TYPE_CASES,
    *RANGE_CASES,
    *NON_FINITE_CASES,
    *HUGE_CASES,
    *EMPTY_CASES,
    *UNKNOWN_NAME_CASES,
    *LOSS_OPTION_CASES,
    *CONFIG_FILE_CASES,
    *WORKDIR_CASES,
    *INIT_FROM_CASES,
    *DATA_CASES,
]
