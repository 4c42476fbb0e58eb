"""Offline augmentation of a training split into resumable, shardable TFRecord files.

The images of the split are taken in their (deterministic) dataset order; `num_shards` /
`shard_index` keep the images whose file-name hash falls in this shard, so several machines can
split the work without talking to each other. The shard's images are cut into groups of
`images_per_step` (one group = one vectorised ML-WGAN run). Each finished group is written to its
own record file atomically and then recorded in a small progress file (also written atomically),
so a killed run restarts at the first unfinished group and never duplicates or loses a finished
one.

Per source image the output holds, by `method`:
* "traditional": `traditional_copies` constrained augmentations of the source;
* "mlwgan": the generator snapshots (after `warmup` generator iterations, then every
  `snapshot_every`, up to `iterations`);
* "both": the traditional copies of the source, plus every snapshot and `traditional_copies`
  augmentations of each snapshot. With 7 snapshots and 5 copies a source yields 47 new images:
  with the source itself that is the paper's x48 for Corel5k (4 snapshots give ESP Game's x30).
Everything inherits the source image's labels unchanged.
"""

import dataclasses
import functools
import json
import os
import pathlib
import time
import zlib
from typing import Callable, Iterable, Iterator

import numpy as np
import tensorflow as tf

from e2e_tf import preprocessing
from e2e_tf.augmentation import augmented_records
from e2e_tf.augmentation.mlwgan import MLWGANConfig, MultiImageWGAN
from e2e_tf.augmentation.traditional import constrained_augment

METHODS = ("traditional", "mlwgan", "both")


@dataclasses.dataclass(frozen=True)
class OfflineSettings:
    """What `run_offline_augmentation` produces; a resumed run must use the same settings.

    Attributes:
      method: "traditional", "mlwgan" or "both" (see module docstring).
      gan: the per-image WGAN hyper-parameters (its `image_size` is the snapshot size).
      iterations: generator iterations per image.
      warmup: the first snapshot is taken after this many generator iterations.
      snapshot_every: then one snapshot every this many iterations (up to `iterations`).
      traditional_copies: constrained augmentations per source (and per snapshot for "both").
      traditional_color: also jitter contrast/colour in the traditional copies.
      images_per_step: GANs trained at once (the group size).
      seed: base seed; each image's randomness depends only on it and the image's file name.
      image_format: "png" (lossless) or "jpeg" for the stored images.
      num_shards, shard_index: this run handles the images whose file-name hash % num_shards ==
        shard_index.
      log_every: generator iterations between two Wasserstein estimates written to TensorBoard.
    """

    method: str = "both"
    gan: MLWGANConfig = MLWGANConfig()
    iterations: int = 2000
    warmup: int = 1000
    snapshot_every: int = 150
    traditional_copies: int = 5
    traditional_color: bool = False
    images_per_step: int = 16
    seed: int = 0
    image_format: str = "png"
    num_shards: int = 1
    shard_index: int = 0
    log_every: int = 50

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}. Received: method={self.method!r}")
        if self.uses_gan:
            if not 1 <= self.warmup <= self.iterations:
                raise ValueError(
                    f"Need 1 <= warmup <= iterations. Received: warmup={self.warmup}, iterations={self.iterations}"
                )
            if self.snapshot_every < 1:
                raise ValueError(f"snapshot_every must be >= 1. Received: snapshot_every={self.snapshot_every}")
        if self.method != "mlwgan" and self.traditional_copies < 1:
            raise ValueError(
                f"traditional_copies must be >= 1 for method={self.method!r}. "
                f"Received: traditional_copies={self.traditional_copies}"
            )
        if self.images_per_step < 1:
            raise ValueError(f"images_per_step must be >= 1. Received: images_per_step={self.images_per_step}")
        if self.num_shards < 1:
            raise ValueError(f"num_shards must be >= 1. Received: num_shards={self.num_shards}")
        if not 0 <= self.shard_index < self.num_shards:
            raise ValueError(
                f"Need 0 <= shard_index < num_shards. Received: shard_index={self.shard_index}, num_shards={self.num_shards}"
            )
        if self.log_every < 1:
            raise ValueError(f"log_every must be >= 1. Received: log_every={self.log_every}")
        if self.image_format not in augmented_records.IMAGE_FORMATS:
            raise ValueError(
                f"image_format must be one of {augmented_records.IMAGE_FORMATS}. Received: image_format={self.image_format!r}"
            )

    @property
    def uses_gan(self) -> bool:
        return self.method in ("mlwgan", "both")

    @property
    def snapshot_iterations(self) -> list[int]:
        """Generator iterations after which a snapshot is taken."""
        return list(range(self.warmup, self.iterations + 1, self.snapshot_every)) if self.uses_gan else []

    @property
    def images_per_source(self) -> int:
        """New images written per source image."""
        snapshots = len(self.snapshot_iterations)
        if self.method == "traditional":
            return self.traditional_copies
        if self.method == "mlwgan":
            return snapshots
        return self.traditional_copies + snapshots * (1 + self.traditional_copies)

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    @property
    def shard_tag(self) -> str:
        return f"s{self.shard_index:05d}-of-{self.num_shards:05d}"


def _name_hash(file_name: str) -> int:
    return zlib.crc32(file_name.encode())


def in_shard(file_name: str, num_shards: int, shard_index: int) -> bool:
    """Whether an image belongs to a shard (a stable hash of its file name, not its position)."""
    return _name_hash(file_name) % num_shards == shard_index


def image_seed(base_seed: int, file_name: str) -> np.ndarray:
    """int32 [2] seed of one source image: depends only on the base seed and its file name."""
    return np.array([base_seed, _name_hash(file_name)], np.int64).astype(np.uint32).view(np.int32)


def _as_str(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}"


def _atomic_write_json(path: pathlib.Path, content: dict) -> None:
    temporary = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    temporary.write_text(json.dumps(content, indent=1, sort_keys=True))
    os.replace(temporary, path)


class ChangedSettingsError(ValueError):
    """An output folder holds a run started with other settings (resuming it would mix two runs).

    Attributes:
      output_dir: the folder.
      differences: {setting: (stored, now)} of only the settings that differ, keyed by field name
        ("traditional_copies"), "gan.<field>" for the GAN's, and "label_names", so that a program
        can name its own flags for them (see `describe_differences`).
    """

    def __init__(self, output_dir: pathlib.Path, differences: dict[str, tuple[object, object]]):
        self.output_dir = output_dir
        self.differences = differences
        super().__init__(
            f"{output_dir} holds a run started with other settings ({describe_differences(differences)}). "
            "Use the same settings to resume, a new output folder, or remove that folder to start over."
        )


def describe_differences(differences: dict[str, tuple[object, object]], name: Callable[[str], str] = str) -> str:
    """`name(setting): stored -> now` of each difference, sorted and "; "-separated, for a one-line message."""
    return "; ".join(sorted(f"{name(key)}: {_brief(old)} -> {_brief(new)}" for key, (old, new) in differences.items()))


def _brief(value: object) -> str:
    """A value for a one-line message: a long list (the label names) as its first items and length."""
    if isinstance(value, list) and len(value) > 3:
        return f"[{', '.join(map(str, value[:3]))}, ... ({len(value)} items)]"
    return str(value)


def _flatten(settings: dict, prefix: str = "") -> dict:
    """Nested settings as one level, {"gan": {"batch_size": 8}} -> {"gan.batch_size": 8}."""
    flat = {}
    for key, value in settings.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _differences(stored: dict, now: dict) -> dict[str, tuple[object, object]]:
    """{setting: (stored, now)} of the (flattened) settings whose values differ."""
    stored, now = _flatten(stored), _flatten(now)
    return {key: (stored.get(key), now.get(key)) for key in stored.keys() | now.keys() if stored.get(key) != now.get(key)}


class _Progress:
    """The progress file of one shard: settings and the finished groups."""

    def __init__(self, output_dir: pathlib.Path, settings: OfflineSettings, label_names: list[str] | None):
        self.path = output_dir / f"progress-{settings.shard_tag}.json"
        expected = {"settings": settings.to_json(), "label_names": label_names}
        if self.path.exists():
            state = json.loads(self.path.read_text())
            differences = _differences(state.get("settings") or {}, expected["settings"])
            if state.get("label_names") != label_names:  # one value: their positions are the label indices
                differences["label_names"] = (state.get("label_names"), label_names)
            if differences:
                raise ChangedSettingsError(output_dir, differences)
            self.state = state
        else:
            self.state = {**expected, "completed_groups": {}}
            _atomic_write_json(self.path, self.state)

    def is_done(self, group: int) -> bool:
        return str(group) in self.state["completed_groups"]

    def mark_done(self, group: int, record_file: str, sources: list[str], num_records: int) -> None:
        self.state["completed_groups"][str(group)] = {"file": record_file, "sources": sources, "records": num_records}
        _atomic_write_json(self.path, self.state)


def _groups(examples: Iterable[dict], settings: OfflineSettings, limit: int | None) -> Iterator[tuple[int, list[dict]]]:
    group, taken = [], 0
    index = 0
    for example in examples:
        if limit is not None and taken >= limit:
            break
        if not in_shard(_as_str(example["file_name"]), settings.num_shards, settings.shard_index):
            continue
        group.append(example)
        taken += 1
        if len(group) == settings.images_per_step:
            yield index, group
            group, index = [], index + 1
    if group:
        yield index, group


@functools.lru_cache(maxsize=None)
def _traced_augment(color: bool) -> Callable:
    """One traced `constrained_augment` per setting, shared by all runs of this process."""
    return tf.function(
        lambda image, seed: constrained_augment(image, seed, color=color),
        input_signature=[tf.TensorSpec([None, None, 3], tf.float32), tf.TensorSpec([2], tf.int32)],
    )


class _GroupAugmenter:
    """Turns one group of source examples into serialized records."""

    def __init__(
        self, settings: OfflineSettings, summary_writer: tf.summary.SummaryWriter, log: Callable[[str], None] = print
    ):
        self.settings = settings
        self.summary_writer = summary_writer
        self.log = log
        self.model = MultiImageWGAN(settings.images_per_step, settings.gan) if settings.uses_gan else None
        self._augment = _traced_augment(settings.traditional_color)

    def _traditional(self, image: np.ndarray, seed: np.ndarray, iteration: int, copy: int) -> np.ndarray:
        copy_seed = tf.random.experimental.stateless_fold_in(tf.random.experimental.stateless_fold_in(seed, iteration), copy)
        return augmented_records.to_uint8(self._augment(tf.constant(image, tf.float32), copy_seed))

    def _records_for(self, source: dict, image: np.ndarray, iteration: int, method: str, with_copies: bool) -> Iterator[bytes]:
        """The image itself (for a snapshot) and/or its traditional copies."""
        name = _as_str(source["file_name"])
        labels = np.asarray(source["labels"]).tolist()
        common = dict(labels=labels, source_file_name=name, image_format=self.settings.image_format)
        if method == "mlwgan":
            yield augmented_records.serialize_example(
                image=image, file_name=f"{name}#mlwgan-it{iteration:06d}", method="mlwgan", iteration=iteration, copy=0, **common
            )
        if with_copies:
            seed = image_seed(self.settings.seed, name)
            for copy in range(1, self.settings.traditional_copies + 1):
                suffix = f"mlwgan-it{iteration:06d}-traditional{copy}" if method == "mlwgan" else f"traditional{copy}"
                yield augmented_records.serialize_example(
                    image=self._traditional(image, seed, iteration, copy),
                    file_name=f"{name}#{suffix}",
                    method="traditional" if method != "mlwgan" else "mlwgan+traditional",
                    iteration=iteration,
                    copy=copy,
                    **common,
                )

    def __call__(self, sources: list[dict]) -> list[bytes]:
        settings = self.settings
        records = []
        if settings.method in ("traditional", "both"):
            for source in sources:
                records.extend(self._records_for(source, np.asarray(source["image"]), 0, "traditional", True))
        if settings.uses_gan:
            for i, snapshots in enumerate(self._train_gans(sources)):
                for iteration, image in snapshots:
                    records.extend(self._records_for(sources[i], image, iteration, "mlwgan", settings.method == "both"))
        return records

    def _train_gans(self, sources: list[dict]) -> list[list[tuple[int, np.ndarray]]]:
        """Trains one GAN per source (padding the group with repeats) and returns each one's snapshots."""
        settings, model = self.settings, self.model
        size = settings.gan.image_size
        padded = sources + [sources[-1]] * (settings.images_per_step - len(sources))
        real = tf.stack([preprocessing.resize_image(np.asarray(s["image"]), (size, size), "stretch") for s in padded])
        names = [_as_str(s["file_name"]) for s in sources]
        model.reset(np.stack([image_seed(settings.seed, _as_str(s["file_name"])) for s in padded]))
        snapshots = [[] for _ in sources]
        snapshot_at = set(settings.snapshot_iterations)
        events = sorted(snapshot_at | set(range(settings.log_every, settings.iterations + 1, settings.log_every)))
        done, start = 0, time.time()
        for event in events:
            wasserstein = model.train_iterations(real, event - done).numpy()
            done = event
            rate = len(sources) * done / (time.time() - start)  # includes the XLA compilation of the first group
            self.log(
                f"  GAN iteration {done}/{settings.iterations} of {len(sources)} images: {rate:.1f} image-iterations/s, "
                f"group ETA {_duration(len(sources) * (settings.iterations - done) / rate)}, "
                f"mean Wasserstein estimate {float(wasserstein[: len(sources)].mean()):.4f}"
            )
            with self.summary_writer.as_default(step=event):
                for name, value in zip(names, wasserstein):
                    tf.summary.scalar(f"wasserstein/{name}", value)
            if event in snapshot_at:
                images = augmented_records.to_uint8(model.sample(event))
                for i in range(len(sources)):
                    snapshots[i].append((event, images[i]))
        self.summary_writer.flush()
        return snapshots


def run_offline_augmentation(
    examples: Iterable[dict],
    output_dir: os.PathLike,
    settings: OfflineSettings,
    *,
    label_names: list[str] | None = None,
    limit: int | None = None,
    total_images: int | None = None,
    log: Callable[[str], None] = print,
) -> dict:
    """Augments `examples` (dicts with numpy "image" uint8 [H, W, 3], "file_name", "labels") into `output_dir`.

    Args:
      examples: the training split in a deterministic order (never the validation images).
      output_dir: receives `<shard>-g<group>.tfrecord` files, `progress-<shard>.json` and `logs/`.
      settings: what to produce (see `OfflineSettings`); must match a previous run in `output_dir`.
      label_names: the vocabulary (stored in the progress file and checked on resume).
      limit: handle at most this many of this shard's images.
      total_images: images this shard will handle, for the ETA (unknown: no ETA).
      log: receives the progress lines.

    Returns:
      {"groups_written", "groups_skipped", "images", "records", "seconds"} for this run.

    Raises:
      ChangedSettingsError: `output_dir` holds this shard's run with other settings or labels.
    """
    output_dir = pathlib.Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    for stale in output_dir.glob("*.tmp-*"):
        stale.unlink()  # leftovers of a killed run; the finished files have their final names
    progress = _Progress(output_dir, settings, label_names)
    summary_writer = tf.summary.create_file_writer(str(output_dir / "logs" / settings.shard_tag))
    augmenter = None
    start = time.time()
    summary = {"groups_written": 0, "groups_skipped": 0, "images": 0, "records": 0}
    images_before = 0
    for group, sources in _groups(examples, settings, limit):
        if progress.is_done(group):
            summary["groups_skipped"] += 1
            images_before += len(sources)
            continue
        augmenter = augmenter or _GroupAugmenter(settings, summary_writer, log)
        record_file = f"augmented-{settings.shard_tag}-g{group:06d}{augmented_records.RECORD_SUFFIX}"
        count = augmented_records.write_records_atomically(output_dir / record_file, augmenter(sources))
        progress.mark_done(group, record_file, [_as_str(s["file_name"]) for s in sources], count)
        summary["groups_written"] += 1
        summary["images"] += len(sources)
        summary["records"] += count
        elapsed = time.time() - start
        rate = summary["images"] / elapsed
        done = images_before + summary["images"]
        eta = ""
        if total_images:
            remaining = max(total_images - done, 0)
            eta = f", ETA {_duration(remaining / rate)}"
            done_text = f"{done}/{total_images}"
        else:
            done_text = str(done)
        log(f"[{settings.shard_tag}] group {group}: {done_text} images, {count} records, {rate:.3f} images/s{eta}")
    summary["seconds"] = time.time() - start
    summary_writer.close()
    return summary
