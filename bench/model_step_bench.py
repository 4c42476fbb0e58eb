"""Images/s of one training step of E2E-DCNN against the plain backbone, measured in the same run.

One step = forward + backward + RMSProp update with binary cross-entropy on logits plus the L2
terms, through `Model.train_on_batch` (what `fit` runs per batch). Variants:

  plain       backbone + global average pooling + dropout + dense (no SPP, no deformable conv)
  spp         plain + spatial pyramid pooling
  deformable  plain with the last --deformable_stages stages deformable
  e2e         deformable + SPP: the paper's E2E-DCNN

All variants are built first; warm-up steps (tracing, first allocations) are excluded; then
the timed steps run round-robin over the variants, so a change of load on a shared machine
affects each alike. The table gives, over --steps timed steps, the median wall time, images/s and
its ratio to the first variant, and the same from process CPU time (steadier when the machine
is shared); the load average during timing is printed with it.

  python bench/model_step_bench.py --batch_size=8 --image_size=224 --variants=plain,e2e \
      --implementation=custom_op --implementation=pure_tf
"""

import os
import statistics
import time

from absl import app
from absl import flags

import keras
import numpy as np
import tensorflow as tf

from e2e_tf import ops
from e2e_tf.model import build_model

VARIANTS = {
    "plain": {"deformable": False, "spp": False},
    "spp": {"deformable": False, "spp": True},
    "deformable": {"deformable": True, "spp": False},
    "e2e": {"deformable": True, "spp": True},
}

_BACKBONE = flags.DEFINE_string("backbone", "resnet50", "Backbone name (see e2e_tf.backbones).")
_VARIANTS = flags.DEFINE_list(
    "variants",
    ["plain", "e2e"],
    f"Comma-separated variants to time, the first is the baseline: {list(VARIANTS)}.",
)
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 8, "Images per training step.", lower_bound=1)
_IMAGE_SIZE = flags.DEFINE_integer(
    "image_size", 224, "Height and width of the square input images.", lower_bound=1
)
_NUM_LABELS = flags.DEFINE_integer("num_labels", 260, "Number of keywords M (Corel5k has 260).", lower_bound=1)
_DEFORMABLE_STAGES = flags.DEFINE_integer(
    "deformable_stages", 1, "Last stages made deformable in the deformable and e2e variants.", lower_bound=0
)
_IMPLEMENTATIONS = flags.DEFINE_multi_enum(
    "implementation",
    ["auto"],
    ["auto", "custom_op", "pure_tf"],
    "DeformableConv2D implementation(s); repeat the flag to time the deformable variants with each "
    "in the same run (e.g. --implementation=custom_op --implementation=pure_tf).",
)
_JIT_COMPILE = flags.DEFINE_enum(
    "jit_compile", "auto", ["auto", "true", "false"], "XLA for the train step (Keras' auto: off on CPU)."
)
_MIXED_PRECISION = flags.DEFINE_bool("mixed_precision", False, "Use the mixed_float16 policy.")
_WARMUP = flags.DEFINE_integer("warmup", 2, "Untimed steps before timing.", lower_bound=0)
_STEPS = flags.DEFINE_integer("steps", 5, "Timed steps; the median is reported.", lower_bound=1)


def build_variant(name: str, implementation: str, image_size: tuple[int, int]) -> keras.Model:
    """Builds and compiles one variant for RMSProp + binary cross-entropy on logits."""
    variant = VARIANTS[name]
    model = build_model(
        _NUM_LABELS.value,
        backbone=_BACKBONE.value,
        deformable_stages=_DEFORMABLE_STAGES.value if variant["deformable"] else 0,
        spp=variant["spp"],
        deformable_implementation=implementation,
        image_size=image_size,
    )
    jit_compile = {"auto": "auto", "true": True, "false": False}[_JIT_COMPILE.value]
    model.compile(
        optimizer=keras.optimizers.RMSprop(learning_rate=0.005),
        loss=keras.losses.BinaryCrossentropy(from_logits=True),
        jit_compile=jit_compile,
    )
    return model


def time_step(model: keras.Model, images: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """Wall and process-CPU seconds of one training step (forward, backward, update)."""
    wall, cpu = time.perf_counter(), time.process_time()
    model.train_on_batch(images, labels)  # returns numpy losses, so the step has finished
    return time.perf_counter() - wall, time.process_time() - cpu


def main(argv):
    del argv
    unknown = [v for v in _VARIANTS.value if v not in VARIANTS]
    if unknown or not _VARIANTS.value:
        raise app.UsageError(
            f"--variants must name some of {list(VARIANTS)}. Received: {unknown or 'nothing'}"
        )
    if _MIXED_PRECISION.value:
        keras.mixed_precision.set_global_policy("mixed_float16")

    rng = np.random.default_rng(0)
    size = _IMAGE_SIZE.value
    images = rng.uniform(0, 255, (_BATCH_SIZE.value, size, size, 3)).astype("float32")
    labels = (rng.uniform(size=(_BATCH_SIZE.value, _NUM_LABELS.value)) < 0.02).astype("float32")

    devices = [d.device_type for d in tf.config.list_physical_devices()]
    resolved = {i: ops.resolve_implementation(i, warn=False) for i in _IMPLEMENTATIONS.value}
    print(
        f"backbone={_BACKBONE.value} batch={_BATCH_SIZE.value} image={size}x{size} "
        f"M={_NUM_LABELS.value} deformable_stages={_DEFORMABLE_STAGES.value} "
        f"implementation={resolved} "
        f"jit_compile={_JIT_COMPILE.value} mixed_precision={_MIXED_PRECISION.value} "
        f"warmup={_WARMUP.value} steps={_STEPS.value}"
    )
    print(f"devices={devices} cpus={os.cpu_count()} tf={tf.__version__} keras={keras.__version__}")

    models = {}
    for name in _VARIANTS.value:
        # A variant without deformable layers is the same model whatever the implementation.
        implementations = _IMPLEMENTATIONS.value if VARIANTS[name]["deformable"] else ["auto"]
        for implementation in implementations:
            label = name if len(implementations) == 1 else f"{name}[{resolved[implementation]}]"
            models[label] = build_variant(name, implementation, images.shape[1:3])
    for model in models.values():
        for _ in range(_WARMUP.value):
            model.train_on_batch(images, labels)
    # Round-robin: a change of the machine's load during the run hits every variant alike.
    walls = {name: [] for name in models}
    cpus = {name: [] for name in models}
    loads = []
    for _ in range(_STEPS.value):
        loads.append(os.getloadavg()[0])
        for name, model in models.items():
            wall, cpu = time_step(model, images, labels)
            walls[name].append(wall)
            cpus[name].append(cpu)
    print(f"1-minute load average during timing: {min(loads):.2f} to {max(loads):.2f}")
    # CPU seconds count the work done whatever the machine's load: on a shared CPU the ratio of
    # images per CPU-second is steadier than the wall-clock ratio.
    baseline = next(iter(models))
    print(f"\n{'variant':<21} {'params':>11} {'wall ms':>9} {'images/s':>9} {'vs ' + baseline:>9} "
          f"{'cpu s':>7} {'img/cpu-s':>9} {'vs ' + baseline:>9}")
    for name, model in models.items():
        wall, cpu = statistics.median(walls[name]), statistics.median(cpus[name])
        wall_ratio = statistics.median(walls[baseline]) / wall
        cpu_ratio = statistics.median(cpus[baseline]) / cpu
        print(f"{name:<21} {model.count_params():>11,} {wall * 1e3:>9.1f} {_BATCH_SIZE.value / wall:>9.2f} "
              f"{wall_ratio:>8.2f}x {cpu:>7.3f} {_BATCH_SIZE.value / cpu:>9.2f} {cpu_ratio:>8.2f}x")


if __name__ == "__main__":
    app.run(main)
