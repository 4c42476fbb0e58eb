"""Throughput of per-image WGAN training: vectorised over images against one at a time.

Measures (images x generator iterations) / s, in the same run, for:
  per_step:       one GAN per image, one traced generator iteration per Python call (the shape of a
                  Keras `fit` / custom-loop implementation);
  loop:           one GAN per image, all its iterations in one traced while-loop;
  loop_xla:       the same loop compiled with XLA;
  vectorised:     `--images` GANs at once (each with its own weights), one traced loop;
  vectorised_xla: the same compiled with XLA (what `python -m e2e_tf.augment` runs).
Tracing and XLA compilation are excluded from the rates (each variant runs one warm-up iteration
first) and printed separately: a compilation is paid once per process and group shape.

To show how far any variant is from what the machine can do, the script also counts the matmul
work of one image-iteration from the traced graph (forward and backward, 5 critic updates + 1
generator update) and times one large float32 matmul in the same run: the large matmul's rate over
that work is an upper bound on image-iterations/s for any implementation on this machine. Example:

  python bench/mlwgan_bench.py --image_size=16 --filters=8 --images=16 --iterations=20
"""

import math
import time

import numpy as np
import tensorflow as tf
from absl import app, flags

from e2e_tf.augmentation.mlwgan import CONV_IMPLEMENTATIONS, MLWGANConfig, MultiImageWGAN

_IMAGE_SIZE = flags.DEFINE_integer("image_size", 16, "GAN image side (8, 16, 32, ...).", lower_bound=8)
_FILTERS = flags.DEFINE_integer("filters", 8, "generator_filters = critic_filters.", lower_bound=1)
_BATCH = flags.DEFINE_integer("batch_size", 8, "Fake images per step and GAN.", lower_bound=1)
_IMAGES = flags.DEFINE_integer(
    "images", 16, "Images (GANs) in the run = models trained at once when vectorised.", lower_bound=1
)
_ITERATIONS = flags.DEFINE_integer(
    "iterations", 20, "Generator iterations per image (5 critic steps each).", lower_bound=1
)
_CONV = flags.DEFINE_enum("conv_implementation", "batched_matmul", CONV_IMPLEMENTATIONS, "Convolution over the model axis.")
_VARIANTS = flags.DEFINE_list(
    "variants", ["per_step", "loop", "loop_xla", "vectorised", "vectorised_xla"], "Which variants to measure."
)

_DESCRIPTIONS = {
    "per_step": "one-at-a-time, per-step call",
    "loop": "one-at-a-time, traced loop",
    "loop_xla": "one-at-a-time, XLA loop",
    "vectorised": "vectorised, traced loop",
    "vectorised_xla": "vectorised, XLA loop",
}


def _config(jit_compile: bool) -> MLWGANConfig:
    return MLWGANConfig(
        image_size=_IMAGE_SIZE.value,
        generator_filters=_FILTERS.value,
        critic_filters=_FILTERS.value,
        batch_size=_BATCH.value,
        conv_implementation=_CONV.value,
        jit_compile=jit_compile,
    )


def _measure(variant: str, images: np.ndarray, seeds: np.ndarray, iterations: int) -> tuple[float, float]:
    """(seconds to warm up, i.e. trace/compile and 1 iteration; seconds for all images' iterations)."""
    vectorised = variant.startswith("vectorised")
    groups = [slice(0, len(images))] if vectorised else [slice(i, i + 1) for i in range(len(images))]
    model = MultiImageWGAN(groups[0].stop - groups[0].start, _config(variant.endswith("_xla")))
    per_step = variant == "per_step"
    step = tf.function(model.train_step)

    def train(group: slice, count: int) -> None:
        model.reset(seeds[group])
        real = tf.constant(images[group])
        if per_step:
            for _ in range(count):
                step(real)
        else:
            model.train_iterations(real, count)

    start = time.perf_counter()
    train(groups[0], 1)
    model.sample(0).numpy()
    warm_up = time.perf_counter() - start
    start = time.perf_counter()
    for group in groups:
        train(group, iterations)
    model.sample(0).numpy()
    return warm_up, time.perf_counter() - start


_MATMUL_OPS = ("MatMul", "BatchMatMulV2", "BatchMatMulV3")


def _matmul_flops(function) -> int:
    """Floating-point operations of the matmuls in `function`'s traced graph (2 per multiply-add)."""
    flops = 0
    for op in tf.function(function).get_concrete_function().graph.get_operations():
        if op.type in _MATMUL_OPS:
            transposed = op.get_attr("adj_x" if op.type != "MatMul" else "transpose_a")
            lhs = op.inputs[0].shape
            depth = lhs[-2] if transposed else lhs[-1]
            flops += 2 * math.prod(op.outputs[0].shape) * depth
    return flops


def _matmul_flops_per_image_iteration() -> float:
    """Matmul work of one generator iteration of one GAN (critic_steps critic updates + 1 generator update)."""
    model = MultiImageWGAN(1, _config(jit_compile=False))
    real = tf.zeros([1, _IMAGE_SIZE.value, _IMAGE_SIZE.value, 3])
    critic = _matmul_flops(lambda: model.critic_step(real))
    return model.config.critic_steps * critic + _matmul_flops(model.generator_step)


def _large_matmul_flops_per_second(size: int = 1024, repeats: int = 20) -> float:
    """This machine's float32 rate on one large square matmul (XLA-compiled), the compute ceiling."""
    a, b = tf.random.normal([size, size]), tf.random.normal([size, size])
    matmul = tf.function(tf.matmul, jit_compile=True)
    matmul(a, b).numpy()
    start = time.perf_counter()
    for _ in range(repeats):
        result = matmul(a, b)
    result.numpy()
    return 2 * size**3 * repeats / (time.perf_counter() - start)


def main(argv):
    del argv
    count, size, iterations = _IMAGES.value, _IMAGE_SIZE.value, _ITERATIONS.value
    images = np.random.default_rng(0).uniform(0, 255, size=(count, size, size, 3)).astype(np.float32)
    seeds = np.stack([np.arange(count), np.full(count, 7)], axis=1)
    print(
        f"ML-WGAN throughput: {count} images of {size}x{size}, filters {_FILTERS.value}, batch {_BATCH.value}, "
        f"{iterations} generator iterations (x5 critic steps) each, convolution {_CONV.value}"
    )
    rates = {}
    for variant in _VARIANTS.value:
        if variant not in _DESCRIPTIONS:
            raise app.UsageError(f"--variants: unknown variant {variant!r}; choose from {', '.join(_DESCRIPTIONS)}")
        warm_up, seconds = _measure(variant, images, seeds, iterations)
        rates[variant] = count * iterations / seconds
        print(f"  {_DESCRIPTIONS[variant]}: warm-up (trace/compile) {warm_up:.1f} s, run {seconds:.2f} s", flush=True)
    work = _matmul_flops_per_image_iteration()
    peak = _large_matmul_flops_per_second()
    print(
        f"\nMatmul work per image-iteration: {work / 1e6:.0f} MFLOP; one 1024x1024 matmul here runs at "
        f"{peak / 1e9:.0f} GFLOP/s, so no implementation exceeds ~{peak / work:.0f} image-iterations/s on this machine."
    )
    baselines = [b for b in ("per_step", "loop_xla") if b in rates]
    header = " | ".join(f"vs {_DESCRIPTIONS[b]}" for b in baselines)
    print(f"\n| variant | image-iterations/s | ms per image-iteration | matmul GFLOP/s (% of large matmul) | {header} |")
    print("|---|---|---|---|" + "---|" * len(baselines))
    for variant, rate in rates.items():
        ratios = " | ".join(f"{rate / rates[b]:.2f}x" for b in baselines)
        achieved = rate * work
        print(
            f"| {_DESCRIPTIONS[variant]} | {rate:.1f} | {1000 / rate:.1f} | "
            f"{achieved / 1e9:.1f} ({100 * achieved / peak:.0f}%) | {ratios} |"
        )


if __name__ == "__main__":
    app.run(main)
