"""Trains E2E-DCNN for image annotation, selects it by validation F1, evaluates it on test.

  python -m e2e_tf.train --flagfile=configs/default.cfg
  python -m e2e_tf.train --flagfile=configs/corel5k_cpu.cfg --model_dir=runs/corel5k

Running the same command again after an interruption resumes from the last
completed epoch. See `e2e_tf.training.trainer` for what `--model_dir` holds.
"""

import signal
import sys

from absl import app, flags, logging

from e2e_tf.backbones import BACKBONES
from e2e_tf.cli_errors import exit_with_error, user_errors_exit
from e2e_tf.preprocessing import RESIZE_POLICIES
from e2e_tf.training.config import AUGMENTATIONS, DATASETS, TrainConfig
from e2e_tf.training.distribute import STRATEGIES
from e2e_tf.training.schedules import LR_DECAYS
from e2e_tf.training.trainer import train_and_evaluate

# Data.
flags.DEFINE_enum("dataset", "visual_concepts", DATASETS, "Dataset to train on (a TFDS builder of e2e_tf.datasets).")
flags.DEFINE_string("data_dir", None, "TFDS data directory holding prepared datasets (default: TFDS's, ~/tensorflow_datasets).")
flags.DEFINE_string(
    "manual_dir", None,
    "Folder with the dataset's manually downloaded files (default: the dataset's folder under "
    "$E2E_TF_DATA_DIR or ../shared/data when it exists, else <data_dir>/downloads/manual).",
)
flags.DEFINE_bool("validation", True, "Hold out the validation split (~10% of train, by file-name hash) and keep the "
                  "model of the epoch with the best validation F1. --novalidation trains on all of train and keeps the last epoch.")
flags.DEFINE_integer("max_train_examples", None, "Use only the first N training images (smoke runs).")
flags.DEFINE_integer("max_test_examples", None, "Use only the first N validation and test images (smoke runs).")
# Input pipeline.
flags.DEFINE_list("image_size", ["224"], "Model input size: one int (square) or height,width.")
flags.DEFINE_enum("resize_policy", "stretch", RESIZE_POLICIES,
                  "How images reach --image_size: stretch (ignore aspect), pad (keep aspect, zero-pad), crop (centre crop).")
flags.DEFINE_enum("augmentation", "none", AUGMENTATIONS,
                  "Training-time augmentation: traditional (constrained flip/noise/rotation/translation, on the fly), "
                  "mlwgan (adds the ML-WGAN images of --augmented_dir), or both.")
flags.DEFINE_string("augmented_dir", None, "Output folder of `python -m e2e_tf.augment` (needed by --augmentation=mlwgan...).")
flags.DEFINE_bool("cache", True, "Keep the decoded images in memory after the first epoch.")
flags.DEFINE_integer("shuffle_buffer", 2048, "Examples in the shuffle buffer.")
# Model.
flags.DEFINE_enum("backbone", "resnet50", sorted(BACKBONES),
                  "Backbone: vgg16, vgg19, resnet50, resnet101, resnet152 or compact (small, from scratch, for CPUs).")
flags.DEFINE_integer("deformable_stages", 1, "How many of the backbone's last stages use deformable 3x3 convolutions (0: none).")
flags.DEFINE_bool("spp", True, "Spatial pyramid pooling after the backbone (--nospp: global pooling only).")
flags.DEFINE_float("dropout", 0.5, "Dropout rate before the output layer.")
flags.DEFINE_float("weight_decay", 1e-4, "L2 weight decay lambda (Caffe's weight_decay) on every kernel.")
flags.DEFINE_string("weights", None, "Backbone initialisation: unset (Glorot, from scratch), imagenet, or a weights file of the plain backbone.")
flags.DEFINE_enum("deformable_implementation", "auto", ("auto", "custom_op", "pure_tf"),
                  "DeformableConv2D kernel: the compiled op (custom_op), the stock-TF one (pure_tf), or auto (compiled when built).")
# Optimisation.
flags.DEFINE_integer("batch_size", 64, "Global batch size (split over the replicas).")
flags.DEFINE_integer("epochs", None, "Epochs to train (default 10); exclusive with --steps.")
flags.DEFINE_integer("steps", None, "Optimizer steps (iterations) to train, rounded up to whole epochs; the paper trains 100K.")
flags.DEFINE_integer("steps_per_epoch", None, "Steps between validations and checkpoints (default: one pass over the training images).")
flags.DEFINE_float("learning_rate", 0.005, "Initial RMSProp learning rate.")
flags.DEFINE_float("rho", 0.9, "RMSProp decay of the squared-gradient average.")
flags.DEFINE_float("momentum", 0.0, "RMSProp momentum.")
flags.DEFINE_float("epsilon", 1e-7, "RMSProp epsilon (larger values damp the first steps).")
flags.DEFINE_enum("lr_decay", "none", LR_DECAYS,
                  "Learning-rate schedule: none, exponential or step (x --lr_decay_rate every --lr_decay_steps), "
                  "cosine (to --lr_min_ratio x lr at the end).")
flags.DEFINE_float("lr_decay_rate", 0.1, "Factor per --lr_decay_steps of exponential/step decay.")
flags.DEFINE_integer("lr_decay_steps", 0, "Period of exponential/step decay (0: a third of the training).")
flags.DEFINE_float("lr_min_ratio", 0.0, "Final learning rate of cosine decay, as a fraction of --learning_rate.")
# Execution.
flags.DEFINE_enum("strategy", "default", STRATEGIES,
                  "default (one device), mirrored (all local GPUs) or multi_worker (the cluster in $TF_CONFIG).")
flags.DEFINE_bool("mixed_precision", False, "Compute in float16 (GPUs) with float32 weights and loss scaling.")
flags.DEFINE_integer("seed", 0, "Random seed (initialisation, shuffling, augmentation).")
flags.DEFINE_integer("top_k", 5, "Labels annotated per image in validation and test metrics (5 in the literature).")
flags.DEFINE_integer("verbose", 1, "1: progress bar and summaries; 0: quiet.")
flags.DEFINE_string("model_dir", None, "Folder the run writes (model.keras, metrics, checkpoints, logs) and resumes from.")
flags.mark_flag_as_required("model_dir")

FLAGS = flags.FLAGS
PROGRAM = "e2e_tf.train"


def _flags_text() -> str:
    """This program's flags as a --flagfile that reproduces the run."""
    own = FLAGS.get_key_flags_for_module(sys.modules[__name__])
    return "".join(f"{flag.serialize()}\n" for flag in sorted(own, key=lambda f: f.name) if flag.serialize())


class _Stopped(KeyboardInterrupt):
    """Raised in the main thread by a SIGTERM (a scheduler's stop), so it ends like a Ctrl-C."""


def _raise_stopped(signum: int, frame: object) -> None:
    del frame
    raise _Stopped(signum)


def main(argv: list[str]) -> None:
    """Trains the run of the flags; a user's mistake, a Ctrl-C or a SIGTERM ends it with one line."""
    if len(argv) > 1:
        exit_with_error(PROGRAM, f"unexpected arguments: {argv[1:]}")
    if not FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)  # TFDS and checkpoint INFO lines would bury the progress bar
    signal.signal(signal.SIGTERM, _raise_stopped)
    # A wrong flag value, path or dataset is named in one line, without absl's ~120-line flag help.
    with user_errors_exit(PROGRAM):
        config = TrainConfig(**{name: FLAGS[name].value for name in TrainConfig.__dataclass_fields__})
        try:
            train_and_evaluate(config, flags_text=_flags_text())
        except KeyboardInterrupt as interrupt:
            stopped = isinstance(interrupt, _Stopped)
            print(  # on a line of its own, after the progress bar's
                f"\n{PROGRAM}: {'stopped (SIGTERM)' if stopped else 'interrupted'}. Run the same command "
                f"again to resume from the checkpoint of the last completed epoch (if any) in "
                f"--model_dir={config.model_dir}.",
                file=sys.stderr,
            )
            sys.exit(128 + (signal.SIGTERM if stopped else signal.SIGINT))


if __name__ == "__main__":
    app.run(main)
