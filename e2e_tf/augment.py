"""Offline augmentation of a dataset's training images (constrained traditional and/or ML-WGAN).

Reads the `train_fit` split (training minus the validation images, which must never leak into
training through augmentation) and writes TFRecord shards that training reads with
`--augmentation=mlwgan --augmented_dir=...`:

  python -m e2e_tf.augment --dataset=corel5k --manual_dir=../shared/data/corel5k/Lihit__SML/DataSet \
      --output_dir=runs/corel5k_aug --method=both --image_size=64 --images_per_step=16

A killed run continues where it stopped when rerun with the same flags. Several machines split
the images with --num_shards=K and --shard_index=0..K-1 into the same (or separate) output dirs.
The Wasserstein estimate of every image's GAN is logged to TensorBoard under <output_dir>/logs.
"""

import pathlib

from absl import app, flags, logging

from e2e_tf import datasets  # registers the TFDS builders
from e2e_tf.augmentation.mlwgan import CONV_IMPLEMENTATIONS, MLWGANConfig
from e2e_tf.augmentation.offline import (
    METHODS,
    ChangedSettingsError,
    OfflineSettings,
    describe_differences,
    in_shard,
    run_offline_augmentation,
)
from e2e_tf.cli_errors import exit_with_error, user_errors_exit

_DATASET = flags.DEFINE_string("dataset", "visual_concepts", "TFDS dataset name registered by e2e_tf.datasets.")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "TFDS data directory (default: TFDS's own).")
_MANUAL_DIR = flags.DEFINE_string("manual_dir", None, "Folder with the dataset's manually placed files.")
_OUTPUT_DIR = flags.DEFINE_string("output_dir", None, "Where the TFRecord shards, progress files and logs go.")
flags.mark_flag_as_required("output_dir")
_METHOD = flags.DEFINE_enum("method", "both", METHODS, "traditional copies, ML-WGAN snapshots, or both.")
_LIMIT = flags.DEFINE_integer("limit", None, "Augment at most this many images of this shard (for trials).")
_ITERATIONS = flags.DEFINE_integer("iterations", 2000, "Generator iterations per image.")
_WARMUP = flags.DEFINE_integer("warmup", 1000, "First snapshot after this many generator iterations.")
_SNAPSHOT_EVERY = flags.DEFINE_integer("snapshot_every", 150, "Then a snapshot every this many iterations.")
_TRADITIONAL_COPIES = flags.DEFINE_integer(
    "traditional_copies", 5, "Constrained augmentations per source image (and per snapshot with --method=both)."
)
_TRADITIONAL_COLOR = flags.DEFINE_bool("traditional_color", False, "Also jitter contrast/colour in traditional copies.")
_IMAGE_SIZE = flags.DEFINE_integer("image_size", 64, "Side of the generated images (8, 16, 32, 64, 128, ...).")
_IMAGES_PER_STEP = flags.DEFINE_integer("images_per_step", 16, "Per-image GANs trained at the same time.")
_NOISE_DIM = flags.DEFINE_integer("noise_dim", 64, "Length of the generator's noise vector.")
_GENERATOR_FILTERS = flags.DEFINE_integer("generator_filters", 32, "Channels of the generator's last hidden block.")
_CRITIC_FILTERS = flags.DEFINE_integer("critic_filters", 32, "Channels of the critic's first block.")
_BATCH_SIZE = flags.DEFINE_integer("gan_batch_size", 8, "Fake images per step and GAN.")
_LEARNING_RATE = flags.DEFINE_float("gan_learning_rate", 5e-5, "RMSProp learning rate of both networks.")
_RHO = flags.DEFINE_float("rmsprop_rho", 0.99, "RMSProp decay (the WGAN reference's PyTorch alpha).")
_EPSILON = flags.DEFINE_float(
    "rmsprop_epsilon", 1e-16, "RMSProp epsilon; Keras adds it inside the sqrt (1e-16 ~ PyTorch's 1e-8 outside)."
)
_CLIP_VALUE = flags.DEFINE_float("clip_value", 0.01, "Critic weights are clipped to +-this after every update.")
_CRITIC_STEPS = flags.DEFINE_integer("critic_steps", 5, "Critic updates per generator update.")
_INITIAL_CRITIC_STEPS = flags.DEFINE_integer(
    "initial_critic_steps", 100, "Critic updates per generator update in the initial/heavy phases."
)
_INITIAL_GENERATOR_STEPS = flags.DEFINE_integer(
    "initial_generator_steps", 0, "Generator updates with initial_critic_steps at the start (reference: 25)."
)
_HEAVY_CRITIC_EVERY = flags.DEFINE_integer(
    "heavy_critic_every", 0, "Every this many generator updates use initial_critic_steps (reference: 500; 0: off)."
)
_REAL_JITTER = flags.DEFINE_float("real_jitter", 0.0, "Std of noise on the real image copies ([-1, 1] units).")
_CONV = flags.DEFINE_enum("conv_implementation", "batched_matmul", CONV_IMPLEMENTATIONS, "Convolution over the model axis.")
_JIT_COMPILE = flags.DEFINE_bool("jit_compile", True, "Compile the GAN training loop with XLA (much faster on CPUs).")
_SEED = flags.DEFINE_integer("seed", 0, "Base seed; an image's output depends only on it and its file name.")
_IMAGE_FORMAT = flags.DEFINE_enum("image_format", "png", ["png", "jpeg"], "Encoding of the stored images.")
_NUM_SHARDS = flags.DEFINE_integer("num_shards", 1, "Split the images into this many shards (one per machine).")
_SHARD_INDEX = flags.DEFINE_integer("shard_index", 0, "Which shard this run handles, 0..num_shards-1.")
_LOG_EVERY = flags.DEFINE_integer("log_every", 50, "Generator iterations between TensorBoard Wasserstein points.")


PROGRAM = "e2e_tf.augment"

# The flag of each `MLWGANConfig` and `OfflineSettings` field, which also names the flags of the
# settings a rerun changed.
_GAN_FLAGS = {
    "image_size": _IMAGE_SIZE,
    "noise_dim": _NOISE_DIM,
    "generator_filters": _GENERATOR_FILTERS,
    "critic_filters": _CRITIC_FILTERS,
    "batch_size": _BATCH_SIZE,
    "learning_rate": _LEARNING_RATE,
    "rho": _RHO,
    "epsilon": _EPSILON,
    "clip_value": _CLIP_VALUE,
    "critic_steps": _CRITIC_STEPS,
    "initial_critic_steps": _INITIAL_CRITIC_STEPS,
    "initial_generator_steps": _INITIAL_GENERATOR_STEPS,
    "heavy_critic_every": _HEAVY_CRITIC_EVERY,
    "real_jitter": _REAL_JITTER,
    "conv_implementation": _CONV,
    "jit_compile": _JIT_COMPILE,
}
_SETTINGS_FLAGS = {
    "method": _METHOD,
    "iterations": _ITERATIONS,
    "warmup": _WARMUP,
    "snapshot_every": _SNAPSHOT_EVERY,
    "traditional_copies": _TRADITIONAL_COPIES,
    "traditional_color": _TRADITIONAL_COLOR,
    "images_per_step": _IMAGES_PER_STEP,
    "seed": _SEED,
    "image_format": _IMAGE_FORMAT,
    "num_shards": _NUM_SHARDS,
    "shard_index": _SHARD_INDEX,
    "log_every": _LOG_EVERY,
}
# Both, keyed like `ChangedSettingsError.differences` ("gan.batch_size").
_FLAG_OF_SETTING = {**_SETTINGS_FLAGS, **{f"gan.{field}": flag for field, flag in _GAN_FLAGS.items()}}


def settings_from_flags() -> OfflineSettings:
    """The flags as `OfflineSettings` (validated there, with the flag values in the message)."""
    gan = MLWGANConfig(**{field: flag.value for field, flag in _GAN_FLAGS.items()})
    return OfflineSettings(gan=gan, **{field: flag.value for field, flag in _SETTINGS_FLAGS.items()})


def check_dataset(name: str) -> None:
    """Refuses an unknown --dataset before anything is loaded, listing the known ones."""
    if name not in datasets.DATASETS:
        raise ValueError(f"--dataset={name} is not a known dataset; choose one of {', '.join(datasets.DATASETS)}.")


def check_output_dir(output_dir: str) -> None:
    """Refuses an --output_dir that is (or lies under) a regular file, before the slow dataset loading."""
    path = pathlib.Path(output_dir)
    existing = next(p for p in (path, *path.parents) if p.exists())
    if not existing.is_dir():
        where = "is" if existing == path else f"lies under {existing}, which is"
        raise FileExistsError(f"--output_dir={output_dir} {where} an existing file, not a folder.")


def _flag_of(setting: str) -> str:
    """The flag behind a `ChangedSettingsError` setting ("gan.batch_size" -> "--gan_batch_size")."""
    if setting == "label_names":
        return "labels of --dataset"
    flag = _FLAG_OF_SETTING.get(setting)
    return f"--{flag.name}" if flag is not None else setting  # a setting of an older version has no flag


def changed_flags_message(error: ChangedSettingsError) -> str:
    """`error` in terms of this program's flags, like e2e_tf.train's guard of --model_dir."""
    return (
        f"--output_dir={_OUTPUT_DIR.value} holds a run started with other flags "
        f"({describe_differences(error.differences, _flag_of)}). "
        "Use a new --output_dir, or remove that folder to start over."
    )


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    with user_errors_exit(PROGRAM):
        settings = settings_from_flags()
        check_dataset(_DATASET.value)
        check_output_dir(_OUTPUT_DIR.value)
        dataset, info = datasets.load(_DATASET.value, "train_fit", data_dir=_DATA_DIR.value, manual_dir=_MANUAL_DIR.value)
    label_names = list(info.features["labels"].feature.names)
    names = [n.decode() for n in dataset.map(lambda e: e["file_name"]).as_numpy_iterator()]
    total = sum(in_shard(n, settings.num_shards, settings.shard_index) for n in names)
    if _LIMIT.value is not None:
        total = min(total, _LIMIT.value)
    logging.info(
        "%s train_fit: %d images, %d in shard %s; %d new images per source.",
        _DATASET.value, len(names), total, settings.shard_tag, settings.images_per_source,
    )
    try:
        summary = run_offline_augmentation(
            dataset.as_numpy_iterator(),
            _OUTPUT_DIR.value,
            settings,
            label_names=label_names,
            limit=_LIMIT.value,
            total_images=total,
            log=logging.info,
        )
    except ChangedSettingsError as error:
        exit_with_error(PROGRAM, changed_flags_message(error))
    logging.info("Done: %s", summary)


if __name__ == "__main__":
    app.run(main)
