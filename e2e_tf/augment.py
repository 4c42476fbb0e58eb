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

from absl import app, flags, logging

from e2e_tf import datasets  # registers the TFDS builders
from e2e_tf.augmentation.mlwgan import CONV_IMPLEMENTATIONS, MLWGANConfig
from e2e_tf.augmentation.offline import METHODS, OfflineSettings, in_shard, run_offline_augmentation

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


def settings_from_flags() -> OfflineSettings:
    """The flags as `OfflineSettings` (validated there, with the flag values in the message)."""
    gan = MLWGANConfig(
        image_size=_IMAGE_SIZE.value,
        noise_dim=_NOISE_DIM.value,
        generator_filters=_GENERATOR_FILTERS.value,
        critic_filters=_CRITIC_FILTERS.value,
        batch_size=_BATCH_SIZE.value,
        learning_rate=_LEARNING_RATE.value,
        rho=_RHO.value,
        epsilon=_EPSILON.value,
        clip_value=_CLIP_VALUE.value,
        critic_steps=_CRITIC_STEPS.value,
        initial_critic_steps=_INITIAL_CRITIC_STEPS.value,
        initial_generator_steps=_INITIAL_GENERATOR_STEPS.value,
        heavy_critic_every=_HEAVY_CRITIC_EVERY.value,
        real_jitter=_REAL_JITTER.value,
        conv_implementation=_CONV.value,
        jit_compile=_JIT_COMPILE.value,
    )
    return OfflineSettings(
        method=_METHOD.value,
        gan=gan,
        iterations=_ITERATIONS.value,
        warmup=_WARMUP.value,
        snapshot_every=_SNAPSHOT_EVERY.value,
        traditional_copies=_TRADITIONAL_COPIES.value,
        traditional_color=_TRADITIONAL_COLOR.value,
        images_per_step=_IMAGES_PER_STEP.value,
        seed=_SEED.value,
        image_format=_IMAGE_FORMAT.value,
        num_shards=_NUM_SHARDS.value,
        shard_index=_SHARD_INDEX.value,
        log_every=_LOG_EVERY.value,
    )


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    settings = settings_from_flags()
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
    summary = run_offline_augmentation(
        dataset.as_numpy_iterator(),
        _OUTPUT_DIR.value,
        settings,
        label_names=label_names,
        limit=_LIMIT.value,
        total_images=total,
        log=logging.info,
    )
    logging.info("Done: %s", summary)


if __name__ == "__main__":
    app.run(main)
