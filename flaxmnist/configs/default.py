"""Default config: the Keras "simple MNIST convnet" recipe (convnet, Adam, batch 128)."""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    """Every field a run reads, with its default; presets override a few."""
    config = ml_collections.ConfigDict()
    # Data.
    config.dataset = "mnist"  # mnist | fashion_mnist (IDX files) | any tensorflow-datasets name
    config.data_dir = ""  # IDX root or tfds data dir; "" = $FLAXMNIST_DATA_DIR or vendored data/
    config.normalization = "unit"  # unit: pixels / 255; standardize: (pixels / 255 - mean) / std
    config.validation_fraction = 0.1  # held out of the training split; 0 disables validation
    config.input_pipeline = "device"  # device: resident + lax.scan; tfds: tf.data; grain: no TF
    config.chunks_per_epoch = 20  # host syncs (progress-bar updates) per epoch, every pipeline
    # On-device augmentation (Keras ImageDataGenerator set); all zero = off.
    config.augment = ml_collections.ConfigDict()
    config.augment.rotation = 0.0  # max degrees
    config.augment.translate = 0.0  # max shift, fraction of the image size
    config.augment.zoom = 0.0  # scale in [1 - zoom, 1 + zoom]
    config.augment.shear = 0.0  # max degrees
    config.augment.flip = False  # random horizontal flips (wrong for digits)
    config.augment.cutout = 0  # side of a random erased square, pixels
    config.augment.cutout_prob = 0.5
    # Model.
    config.model = "convnet"
    config.activation = "relu"
    config.dtype = "float32"  # compute dtype; bfloat16 keeps float32 params and optimizer state
    config.conv_impl = "auto"  # auto | xla | im2col (auto: im2col on CPU, native elsewhere)
    config.pool_impl = "auto"  # auto | xla | fast | fused (auto: fused into the conv on CPU)
    # Loss and optimisation.
    config.loss = "cross_entropy"
    config.loss_options = ""  # "name=value,..." keyword options for the loss
    config.optimizer = "adam"  # adam | adamw | sgd | rmsprop | adadelta
    config.learning_rate = 1e-3
    config.momentum = 0.0  # sgd, rmsprop
    config.adam_b1 = 0.9  # adam, adamw: decay of the gradient average
    config.adam_b2 = 0.999  # adam, adamw: decay of the squared-gradient average
    config.nesterov = False  # sgd
    config.weight_decay = 1e-4  # adamw
    config.schedule = "constant"  # constant | cosine | warmup_cosine | exponential | step
    config.warmup_epochs = 0.0  # warmup_cosine
    config.lr_decay_rate = 0.5  # exponential, step
    config.lr_decay_epochs = 1.0  # exponential, step
    config.tta_shift = 0  # > 0: evaluate on the mean softmax of the image and 4 shifted copies
    config.ema_decay = 0.0  # > 0: keep an EMA of the weights (e.g. 0.999) and evaluate with it
    config.batch_size = 128
    config.eval_batch_size = 1000
    config.num_epochs = 15
    config.seed = 0
    # Run management: checkpoints, resume, early stopping, faults.
    config.resume = True  # rerunning with the same --workdir continues from its latest checkpoint
    config.checkpoint_every_epochs = 1  # also saved whenever the monitored metric improves
    config.keep_checkpoints = 2  # latest N kept, plus the best one
    config.nan_policy = "stop"  # stop: end the run at a non-finite loss; skip_step: skip update
    config.early_stopping = ml_collections.ConfigDict()
    config.early_stopping.monitor = "val_loss"  # val_loss | val_accuracy (train_* without val)
    config.early_stopping.patience = 0  # epochs without improvement before stopping; 0 = never
    config.early_stopping.min_delta = 0.0  # smaller changes do not count as improvement
    config.early_stopping.restore_best = False  # test (and save) the best epoch's weights
    config.log_every_steps = 50  # TensorBoard step/loss interval; 0 disables step scalars
    # Fine-tuning: start from another run's weights (the head is re-initialised when the classes
    # differ). "" = from scratch.
    config.init_from = ""
    # Devices.
    config.num_devices = 0  # data parallelism over this many local devices; 0 = all
    # Multi-process (multi-host) runs through jax.distributed; see README "Multi-host".
    config.multihost = ml_collections.ConfigDict()
    config.multihost.enabled = "auto"  # auto (when fields or environment name a cluster) | on | off
    config.multihost.coordinator_address = ""  # host:port of process 0 ("" = JAX's detection)
    config.multihost.num_processes = 0  # 0 = $JAX_NUM_PROCESSES or JAX's detection
    config.multihost.process_id = -1  # -1 = $JAX_PROCESS_ID or JAX's detection
    config.multihost.timeout_s = 300  # how long processes wait for each other to join
    # Extensions and runtime.
    config.import_modules = ""  # comma-separated modules or .py files imported before names resolve
    config.compilation_cache_dir = "~/.cache/flaxmnist/jax"  # "" disables the persistent cache
    return config


def with_overrides(**overrides) -> ml_collections.ConfigDict:
    """The default config with ``overrides`` applied (how presets are written)."""
    config = get_config()
    config.update(overrides)
    return config


def fashion_notebook_recipe(
    model: str, *, batch_size: int = 64, loss: str = "cross_entropy"
) -> ml_collections.ConfigDict:
    """The reference Fashion-MNIST notebooks' recipe for ``model``.

    Adam at its default rate, up to 20 epochs, and Keras EarlyStopping on val_loss with patience
    3 with the best weights kept (ModelCheckpoint).

    Args:
      model: the model's registered name.
      batch_size: the notebook's batch size.
      loss: the notebook's loss (``categorical_cross_entropy`` for one-hot labels).

    Returns:
      The default config with the recipe applied.
    """
    config = with_overrides(
        dataset="fashion_mnist", model=model, loss=loss, batch_size=batch_size, num_epochs=20
    )
    config.early_stopping.update(monitor="val_loss", patience=3, restore_best=True)
    return config
