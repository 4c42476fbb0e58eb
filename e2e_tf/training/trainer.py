"""The main job: train E2E-DCNN on an annotation dataset, select by validation F1, evaluate on test.

What a run writes into `model_dir` (the contract of `e2e_tf.trained_model`):
  model.keras        the model of the best epoch by validation F1 (logits output)
  model_info.json    vocabulary, image size, resize policy, dataset, backbone
  flags.txt          the flags of the run (a valid --flagfile)
  test_metrics.json  top-k P/R/F1/N+/mAP on the test split, and the constant-predictor baseline
  per_label.csv/png  per-label precision and recall against training label frequency
  checkpoints/       the resumable state (running the same command again resumes)
  logs/              TensorBoard
"""

import pathlib
from typing import Any, Optional

import keras
import numpy as np
import tensorflow as tf

from e2e_tf import datasets, evaluation_report, metrics
from e2e_tf.input_pipeline import Augment, image_and_labels, make_dataset
from e2e_tf.model import build_model
from e2e_tf.trained_model import MODEL_FILE, MODEL_INFO_FILE, ModelInfo, load_trained_model
from e2e_tf.training.atomic_io import atomic_write_json, atomic_write_text
from e2e_tf.training.config import TrainConfig
from e2e_tf.training.distribute import make_strategy, sync_workers, worker_role
from e2e_tf.training.evaluation import ValidationScorer, constant_predictor_scores, make_predict_function, predict_scores
from e2e_tf.training.loop import AnnotationTrainer
from e2e_tf.training.schedules import learning_rate_schedule
from e2e_tf.training.selection import SaveBestModel
from e2e_tf.training.state import SaveTrainingState, TrainingState

FLAGS_FILE = "flags.txt"
# Flags that only say where data lives, how long to train or how to run: a resumed run may change them.
FLAGS_ALLOWED_TO_CHANGE_ON_RESUME = frozenset(
    {"epochs", "steps", "verbose", "model_dir", "data_dir", "manual_dir", "cache", "strategy",
     "deformable_implementation"}
)
TEST_METRICS_FILE = "test_metrics.json"
REPORTED_METRICS = ("precision", "recall", "f1", "n_plus", "map", "map_excluded_labels")


def train_and_evaluate(config: TrainConfig, flags_text: Optional[str] = None) -> Optional[dict[str, Any]]:
    """Runs (or resumes) the training of `config`, then evaluates the selected model on test.

    Args:
      config: the run.
      flags_text: written to `model_dir/flags.txt` when given (the command line's flags).

    Returns:
      The content of `test_metrics.json` on the chief; None on the other workers of a
      multi-worker job (they only train).
    """
    strategy = make_strategy(config.strategy)
    role = worker_role(strategy)
    keras.utils.set_random_seed(config.seed)
    if config.mixed_precision:
        keras.mixed_precision.set_global_policy("mixed_float16")
    model_dir = pathlib.Path(config.model_dir)
    # Non-chief workers keep their own copy of everything, so nobody writes the chief's files twice.
    work_dir = model_dir if role.is_chief else model_dir / "workers" / f"{role.task_type}_{role.task_id}"
    # Everything a flag or the data can get wrong is checked before flags.txt and model_info.json
    # are written (just before the first step), so a failed start leaves no run to resume.
    _make_model_dir(work_dir)
    if flags_text is not None:
        check_same_run(work_dir / FLAGS_FILE, flags_text, checkpoint_dir=model_dir / "checkpoints")
    _check_weights(config)
    augment, extra_examples = _augmentation(config)

    train_examples, info = _load(config, "train_fit" if config.validation else "train", config.max_train_examples)
    vocabulary = list(info.features["labels"].feature.names)
    _check_top_k(config, len(vocabulary))
    label_counts = _label_counts(train_examples, len(vocabulary))
    num_train = int(_count(train_examples))
    if extra_examples is not None:
        train_examples = image_and_labels(train_examples).concatenate(image_and_labels(extra_examples))
        num_train += int(_count(extra_examples))
    epochs, steps_per_epoch = config.schedule(num_train)
    pipeline = dict(
        num_labels=len(vocabulary),
        image_size=config.image_size,
        resize_policy=config.resize_policy,
        batch_size=config.batch_size,
        cache=config.cache,
    )
    with strategy.scope():
        model = build_model(
            len(vocabulary),
            backbone=config.backbone,
            deformable_stages=config.deformable_stages,
            spp=config.spp,
            dropout=config.dropout,
            weight_decay=config.weight_decay,
            weights=config.weights,
            deformable_implementation=config.deformable_implementation,
        )
        optimizer = _optimizer(config, total_steps=epochs * steps_per_epoch)
        optimizer.build(model.trainable_variables)
        model.compile(optimizer=optimizer)
    state = TrainingState(
        model, optimizer, work_dir / "checkpoints", restore_directory=model_dir / "checkpoints"
    )
    initial_epoch = state.restore()
    # Every worker runs the whole stream and keeps its share (DATA sharding), so all skip the
    # examples of the completed epochs alike.
    train_data = make_dataset(
        train_examples,
        training=True,
        seed=config.seed,
        augment=augment,
        shuffle_buffer=config.shuffle_buffer,
        skip_examples=initial_epoch * steps_per_epoch * config.batch_size,
        **pipeline,
    )
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    train_data = train_data.with_options(options)
    validate = None
    if config.validation:
        validation_examples, _ = _load(config, "validation", config.max_test_examples)
        validate = ValidationScorer(model, make_dataset(validation_examples, training=False, **pipeline), config.top_k)
    # The run starts here: from now on model_dir holds it (and a checkpoint makes it resumable).
    if flags_text is not None:
        atomic_write_text(work_dir / FLAGS_FILE, flags_text)
    ModelInfo(vocabulary, config.image_size, config.resize_policy, config.dataset, config.backbone).save(
        work_dir / MODEL_INFO_FILE
    )
    callbacks = [
        SaveBestModel(work_dir / MODEL_FILE, state, monitor="val_f1" if config.validation else None),
        SaveTrainingState(state),
        keras.callbacks.TensorBoard(str(work_dir / "logs"), write_graph=False, profile_batch=0),
    ]
    if role.is_chief and config.verbose:
        resumed = f", resuming after epoch {initial_epoch}" if initial_epoch else ""
        print(
            f"Training {model.name} ({model.count_params():,} parameters) on {config.dataset}: "
            f"{num_train} images, {epochs} epoch{'s' if epochs != 1 else ''} x {steps_per_epoch} steps "
            f"of {config.batch_size}"
            f"{resumed}. Writing {model_dir}",
            flush=True,
        )
    trainer = AnnotationTrainer(model, optimizer, strategy, config.batch_size)
    trainer.fit(
        train_data,
        epochs=epochs,
        steps_per_epoch=steps_per_epoch,
        initial_epoch=initial_epoch,
        callbacks=callbacks,
        validate=validate,
        verbose=config.verbose if role.is_chief else 0,
    )
    result = None
    if role.is_chief:
        result = evaluate_on_test(config, model_dir, label_counts, best_epoch=int(state.best_epoch.numpy()))
        if config.verbose:
            print(format_test_metrics(result), flush=True)
    sync_workers(strategy)
    return result


def check_same_run(flags_file: pathlib.Path, flags_text: str, checkpoint_dir: Optional[pathlib.Path] = None) -> None:
    """Refuses to resume the run in `flags_file`'s folder with flags that change the run.

    Resuming restores weights, optimizer and selection state, so a model folder must not be
    reused with another model, data or preprocessing; only the flags in
    `FLAGS_ALLOWED_TO_CHANGE_ON_RESUME` may differ. Only a run that has a checkpoint in
    `checkpoint_dir` (default: `checkpoints/` next to `flags_file`) would be resumed: a folder
    whose run never completed an epoch is started over with the new flags.
    """
    checkpoint_dir = flags_file.parent / "checkpoints" if checkpoint_dir is None else checkpoint_dir
    if not flags_file.exists() or tf.train.latest_checkpoint(str(checkpoint_dir)) is None:
        return
    previous, current = _parse_flags(flags_file.read_text()), _parse_flags(flags_text)
    changed = sorted(
        name
        for name in previous.keys() | current.keys()
        if name not in FLAGS_ALLOWED_TO_CHANGE_ON_RESUME and previous.get(name) != current.get(name)
    )
    def describe(names: list[str]) -> str:
        return "; ".join(f"--{name}: {previous.get(name)} -> {current.get(name)}" for name in names)

    if changed:
        differences = describe(changed)
        raise ValueError(
            f"{flags_file.parent} holds a run started with other flags ({differences}). "
            "Use a new --model_dir, or remove that folder to start over."
        )
    longer = [name for name in ("epochs", "steps") if previous.get(name) != current.get(name)]
    if longer:
        # Allowed (train a finished run further), but the learning-rate schedule is recomputed over
        # the new length: the result differs from a run started with that length.
        print(
            f"Note: resuming {flags_file.parent} with another length ({describe(longer)}); the learning-rate "
            "schedule now spans the new length, so the run differs from one started with it.",
            flush=True,
        )


def _parse_flags(text: str) -> dict[str, str]:
    """A flagfile's `--name=value` lines as {name: value}; boolean `--name`/`--noname` as "true"/"false"."""
    parsed = {}
    for line in text.splitlines():
        line = line.strip()
        if not line.startswith("--"):
            continue
        name, separator, value = line.removeprefix("--").partition("=")
        if not separator:
            name, value = (name[2:], "false") if name.startswith("no") else (name, "true")
        parsed[name] = value
    return parsed


def evaluate_on_test(
    config: TrainConfig, model_dir: pathlib.Path, label_counts: np.ndarray, best_epoch: int
) -> dict[str, Any]:
    """Scores the saved model on the test split; writes test_metrics.json and the per-label report."""
    model, info = load_trained_model(model_dir)
    test_examples, _ = _load(config, "test", config.max_test_examples)
    test_data = make_dataset(
        test_examples,
        training=False,
        num_labels=len(info.vocabulary),
        image_size=info.image_size,
        resize_policy=info.resize_policy,
        batch_size=config.batch_size,
        cache=False,
    )
    y_true, scores = predict_scores(make_predict_function(model), test_data)
    measured = metrics.annotation_metrics(y_true, scores, k=config.top_k)
    baseline = metrics.annotation_metrics(
        y_true, constant_predictor_scores(label_counts, len(y_true)), k=config.top_k
    )
    result = {
        "dataset": config.dataset,
        "split": "test",
        "num_images": int(len(y_true)),
        "num_labels": int(y_true.shape[1]),
        "k": config.top_k,
        "selected_by": "validation f1" if config.validation else "last epoch",
        "best_epoch": best_epoch + 1,
        **{name: measured[name] for name in REPORTED_METRICS},
        "constant_predictor": {name: baseline[name] for name in REPORTED_METRICS},
    }
    evaluation_report.write_per_label_report(
        y_true, scores, list(info.vocabulary), model_dir, k=config.top_k, label_frequency=label_counts
    )
    atomic_write_json(model_dir / TEST_METRICS_FILE, result)
    return result


def format_test_metrics(result: dict[str, Any]) -> str:
    """The human-readable summary line(s) of `test_metrics.json`."""

    def line(values):
        return (
            f"P={values['precision']:.3f} R={values['recall']:.3f} F1={values['f1']:.3f} "
            f"N+={values['n_plus']} mAP={values['map']:.3f}"
        )

    return (
        f"Test ({result['num_images']} images, {result['num_labels']} labels, top-{result['k']}, "
        f"model of epoch {result['best_epoch']} selected by {result['selected_by']}):\n"
        f"  model:              {line(result)}\n"
        f"  constant predictor: {line(result['constant_predictor'])} "
        f"(the {result['k']} most frequent training labels for every image)"
    )


def _load(config: TrainConfig, split: str, limit: Optional[int]) -> tuple[tf.data.Dataset, Any]:
    examples, info = datasets.load(config.dataset, split, data_dir=config.data_dir, manual_dir=config.manual_dir)
    return (examples.take(limit) if limit else examples), info


def _label_counts(examples: tf.data.Dataset, num_labels: int) -> np.ndarray:
    """How many images carry each label."""
    multi_hot = examples.map(lambda e: datasets.multi_hot(e["labels"], num_labels), num_parallel_calls=tf.data.AUTOTUNE)
    return multi_hot.batch(1024).reduce(tf.zeros([num_labels]), lambda acc, b: acc + tf.reduce_sum(b, 0)).numpy()


def _count(examples: tf.data.Dataset) -> int:
    cardinality = int(examples.cardinality())
    if cardinality >= 0:
        return cardinality
    return int(examples.map(lambda e: 0).reduce(tf.constant(0, tf.int64), lambda n, _: n + 1))


def _augmentation(config: TrainConfig) -> tuple[Optional[Augment], Optional[tf.data.Dataset]]:
    """The on-the-fly augmentation and the offline (ML-WGAN) examples that `--augmentation` asks for."""
    augment, extra = None, None
    if "traditional" in config.augmentation:
        try:
            from e2e_tf.augmentation.traditional import constrained_augment  # pylint: disable=g-import-not-at-top
        except ImportError as e:
            raise ValueError(
                f"--augmentation={config.augmentation} needs e2e_tf.augmentation.traditional, which "
                f"could not be imported: {e}"
            ) from e
        augment = constrained_augment
    if "mlwgan" in config.augmentation:
        try:
            from e2e_tf.augmentation.augmented_records import load_augmented_dataset  # pylint: disable=g-import-not-at-top
        except ImportError as e:
            raise ValueError(
                f"--augmentation={config.augmentation} needs e2e_tf.augmentation.augmented_records, which "
                f"could not be imported: {e}"
            ) from e
        try:
            extra = load_augmented_dataset(config.augmented_dir)
        except ValueError as e:
            raise ValueError(f"--augmented_dir={config.augmented_dir}: {e}") from e
    return augment, extra


def _make_model_dir(work_dir: pathlib.Path) -> None:
    """Creates the run's folder, or raises a ValueError naming --model_dir (not an OSError traceback)."""
    if work_dir.exists() and not work_dir.is_dir():
        raise ValueError(f"--model_dir={work_dir} is a file; give a folder (new or of a run to resume).")
    try:
        work_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ValueError(f"--model_dir={work_dir} cannot be created: {e.strerror or e}") from e


def _check_weights(config: TrainConfig) -> None:
    """A --weights file must exist before the data is loaded (build_model would find out later)."""
    if config.weights not in (None, "imagenet") and not pathlib.Path(config.weights).is_file():
        raise FileNotFoundError(
            f"--weights={config.weights}: no such file (give 'imagenet', a weights file of the plain "
            f"{config.backbone} backbone, or leave it unset to train from scratch)."
        )


def _check_top_k(config: TrainConfig, num_labels: int) -> None:
    """--top_k labels per image must exist in the vocabulary (the metrics would fail after an epoch)."""
    if config.top_k > num_labels:
        raise ValueError(
            f"--top_k={config.top_k} exceeds the {num_labels} labels of {config.dataset}; "
            f"give --top_k <= {num_labels}."
        )


def _optimizer(config: TrainConfig, total_steps: int) -> keras.optimizers.Optimizer:
    schedule = learning_rate_schedule(
        config.learning_rate,
        config.lr_decay,
        total_steps=total_steps,
        decay_rate=config.lr_decay_rate,
        decay_steps=config.lr_decay_steps,
        min_ratio=config.lr_min_ratio,
    )
    optimizer = keras.optimizers.RMSprop(
        learning_rate=schedule, rho=config.rho, momentum=config.momentum, epsilon=config.epsilon
    )
    if config.mixed_precision:
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
    return optimizer

