"""Throughput of per-image WGAN training: vectorised over images against one at a time.

Measures (images x generator iterations) / s, in the same run, for:
  one-at-a-time, per-step call: one GAN per image, one traced generator iteration per Python call
                                (the shape of a Keras `fit` / custom-loop implementation);
  one-at-a-time, traced loop:   one GAN per image, all its iterations in one traced while-loop;
  vectorised (unrolled):        `--images` GANs at once, one tf.nn.conv2d per model in one graph;
  vectorised (batched_matmul):  the same with patches + one batched matmul per layer.
Tracing is excluded (each variant is warmed up once). Example:

  python bench/mlwgan_bench.py --image_size=16 --filters=8 --images=16 --iterations=20
"""

import time

import numpy as np
import tensorflow as tf
from absl import app, flags

from e2e_tf.augmentation.mlwgan import MLWGANConfig, MultiImageWGAN

_IMAGE_SIZE = flags.DEFINE_integer("image_size", 16, "GAN image side.")
_FILTERS = flags.DEFINE_integer("filters", 8, "generator_filters = critic_filters.")
_BATCH = flags.DEFINE_integer("batch_size", 8, "Fake images per step and GAN.")
_IMAGES = flags.DEFINE_integer("images", 16, "Images (GANs) in the run = models trained at once when vectorised.")
_ITERATIONS = flags.DEFINE_integer("iterations", 20, "Generator iterations per image (5 critic steps each).")
_VARIANTS = flags.DEFINE_list(
    "variants", ["per_step", "traced_loop", "unrolled", "batched_matmul"], "Which variants to measure."
)


def _config(implementation: str) -> MLWGANConfig:
    return MLWGANConfig(
        image_size=_IMAGE_SIZE.value,
        generator_filters=_FILTERS.value,
        critic_filters=_FILTERS.value,
        batch_size=_BATCH.value,
        conv_implementation=implementation,
    )


def _one_at_a_time(images: np.ndarray, seeds: np.ndarray, iterations: int, traced_loop: bool) -> float:
    model = MultiImageWGAN(1, _config("unrolled"))
    step = tf.function(model.train_step)
    model.reset(seeds[:1])
    model.train_iterations(images[:1], 1) if traced_loop else step(tf.constant(images[:1]))  # trace
    start = time.perf_counter()
    for i in range(len(images)):
        model.reset(seeds[i : i + 1])
        real = tf.constant(images[i : i + 1])
        if traced_loop:
            model.train_iterations(real, iterations)
        else:
            for _ in range(iterations):
                step(real)
    model.sample(0).numpy()
    return time.perf_counter() - start


def _vectorised(images: np.ndarray, seeds: np.ndarray, iterations: int, implementation: str) -> float:
    model = MultiImageWGAN(len(images), _config(implementation))
    model.reset(seeds)
    model.train_iterations(images, 1)  # trace
    start = time.perf_counter()
    model.reset(seeds)
    model.train_iterations(images, iterations)
    model.sample(0).numpy()
    return time.perf_counter() - start


def main(argv):
    del argv
    count, size, iterations = _IMAGES.value, _IMAGE_SIZE.value, _ITERATIONS.value
    images = np.random.default_rng(0).uniform(0, 255, size=(count, size, size, 3)).astype(np.float32)
    seeds = np.stack([np.arange(count), np.full(count, 7)], axis=1)
    runners = {
        "per_step": ("one-at-a-time, per-step call", lambda: _one_at_a_time(images, seeds, iterations, False)),
        "traced_loop": ("one-at-a-time, traced loop", lambda: _one_at_a_time(images, seeds, iterations, True)),
        "unrolled": (f"vectorised x{count} (unrolled)", lambda: _vectorised(images, seeds, iterations, "unrolled")),
        "batched_matmul": (
            f"vectorised x{count} (batched_matmul)",
            lambda: _vectorised(images, seeds, iterations, "batched_matmul"),
        ),
    }
    print(
        f"ML-WGAN throughput: {count} images of {size}x{size}, filters {_FILTERS.value}, batch {_BATCH.value}, "
        f"{iterations} generator iterations (x5 critic steps) each; CPU threads: "
        f"intra {tf.config.threading.get_intra_op_parallelism_threads() or 'auto'}"
    )
    results = {}
    for key in _VARIANTS.value:
        name, run = runners[key]
        seconds = run()
        results[key] = count * iterations / seconds
        print(f"  measured {name}: {seconds:.2f} s", flush=True)
    baseline = results.get("per_step")
    print("\n| variant | image-iterations/s | vs per-step one-at-a-time | vs traced-loop one-at-a-time |")
    print("|---|---|---|---|")
    for key, rate in results.items():
        ratio1 = f"{rate / baseline:.2f}x" if baseline else "-"
        ratio2 = f"{rate / results['traced_loop']:.2f}x" if "traced_loop" in results else "-"
        print(f"| {runners[key][0]} | {rate:.2f} | {ratio1} | {ratio2} |")


if __name__ == "__main__":
    app.run(main)
