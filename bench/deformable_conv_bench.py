"""Forward+backward time of DeformableConv2D relative to tf.nn.conv2d, and its peak memory.

For each shape (N, HxW, C -> C, 3x3 kernel, "same" padding, offsets ~ N(0, 1), no mask) it
times, in the same process and interleaved, one training step's worth of work:
  conv2d    tf.nn.conv2d, gradients w.r.t. input and kernel (the baseline);
  compiled  the E2eTf>DeformableConv2D custom op, gradients w.r.t. input, offsets, kernel;
  pure_tf   the pure-TensorFlow bilinear-sampling path, same gradients;
  gemms     only the three matrix products of an im2col implementation of this shape, by
            tf.linalg.matmul (forward, column gradient, kernel gradient): a floor for any
            sample-then-GEMM kernel (the compiled op's included), before any sampling;
and prints median milliseconds and the ratio to conv2d.

Peak memory (--memory): each implementation runs in a fresh subprocess on the largest shape,
with TensorFlow's BFC allocator on the CPU (TF_CPU_ALLOCATOR_USE_BFC=true) so that its memory
statistics exist; after a warm-up step the statistics are reset, and the figure is the allocator's
peak during one more step minus what it held before: every tensor and kernel temporary of one
forward+backward (its outputs included), independent of how malloc keeps freed pages.

  python bench/deformable_conv_bench.py --repeats=10 --memory
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

from absl import app, flags

flags.DEFINE_integer("repeats", 10, "Timed steps per implementation and shape (median shown).", lower_bound=1)
flags.DEFINE_list("implementations", ["conv2d", "compiled", "pure_tf", "gemms"],
                  "Which of conv2d, compiled, pure_tf, gemms to run.")
flags.DEFINE_bool("memory", False, "Also measure the peak memory of the largest shape.")
flags.DEFINE_string("memory_child", None, "Internal: run the memory probe for this "
                    "implementation and print JSON.")
FLAGS = flags.FLAGS

SHAPES = [(8, 14, 256), (8, 7, 512), (4, 56, 64)]  # (N, H = W, C = filters)
LARGEST = (4, 56, 64)


def _step_fn(implementation: str, batch: int, size: int, channels: int):
    """A tf.function running forward + backward of one implementation on fixed random data."""
    import tensorflow as tf

    rng = tf.random.Generator.from_seed(0)
    x = rng.normal((batch, size, size, channels))
    kernel = rng.normal((3, 3, channels, channels)) * 0.05
    offsets = rng.normal((batch, size, size, 18))
    attrs = dict(strides=(1, 1), pads=(1, 1, 1, 1), dilations=(1, 1), groups=1,
                 offset_groups=1)
    if implementation == "gemms":
        rows, depth = batch * size * size, 9 * channels
        columns = rng.normal((rows, depth))
        grad_output = rng.normal((rows, channels))
        kernel_matrix = tf.reshape(kernel, (depth, channels))

        @tf.function
        def gemms():
            return [tf.linalg.matmul(columns, kernel_matrix),
                    tf.linalg.matmul(grad_output, kernel_matrix, transpose_b=True),
                    tf.linalg.matmul(columns, grad_output, transpose_a=True)]

        return gemms
    if implementation == "conv2d":
        def forward():
            return tf.nn.conv2d(x, kernel, 1, "SAME")
        sources = [x, kernel]
    else:
        if implementation == "compiled":
            from e2e_tf.custom_ops.ops.deformable_conv2d_ops import deformable_conv2d as op
        else:
            from e2e_tf.ops.deformable_sampling import deformable_conv2d_pure_tf as op

        def forward():
            return op(x, offsets, kernel, None, **attrs)
        sources = [x, offsets, kernel]

    @tf.function
    def step():
        with tf.GradientTape() as tape:
            tape.watch(sources)
            loss = tf.reduce_sum(forward())
        # Returning the loss keeps the forward pass in the graph: the gradients of a plain sum do
        # not need the output, so TensorFlow would otherwise prune the forward op from the step.
        return [loss, *tape.gradient(loss, sources)]

    return step


def _run(step) -> None:
    for tensor in step():
        tensor.numpy()  # wait for the result


def _time_shapes(implementations: list[str], repeats: int) -> None:
    import numpy as np

    print(f"{'N, HxW, C->C':>18} | " + " | ".join(f"{name:>19}" for name in implementations))
    print("-" * (21 + 22 * len(implementations)))
    for batch, size, channels in SHAPES:
        steps = {name: _step_fn(name, batch, size, channels) for name in implementations}
        for step in steps.values():
            _run(step)
            _run(step)
        times = {name: [] for name in implementations}
        for _ in range(repeats):  # interleaved, so load changes hit all implementations alike
            for name, step in steps.items():
                start = time.perf_counter()
                _run(step)
                times[name].append(time.perf_counter() - start)
        medians = {name: float(np.median(t)) * 1e3 for name, t in times.items()}
        base = medians.get("conv2d")
        cells = []
        for name in implementations:
            ratio = f" ({medians[name] / base:4.2f}x)" if base else ""
            cells.append(f"{medians[name]:8.1f} ms{ratio:>8}")
        print(f"{f'{batch}, {size}x{size}, {channels}':>18} | " + " | ".join(cells), flush=True)


def _memory_child(implementation: str) -> None:
    import tensorflow as tf

    step = _step_fn(implementation, *LARGEST)
    _run(step)
    tf.config.experimental.reset_memory_stats("CPU:0")
    before = tf.config.experimental.get_memory_info("CPU:0")["current"]
    _run(step)
    peak = tf.config.experimental.get_memory_info("CPU:0")["peak"]
    print(json.dumps({"peak_delta_bytes": peak - before}))


def _measure_memory(implementations: list[str]) -> None:
    print(f"\nPeak memory of one forward+backward, N, HxW, C = {LARGEST} "
          "(TensorFlow allocator's peak minus its holding before, fresh process each):")
    for name in [n for n in implementations if n != "gemms"]:
        result = subprocess.run(
            [sys.executable, os.path.abspath(__file__), f"--memory_child={name}"],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, check=True,
            env={**os.environ, "TF_CPU_ALLOCATOR_USE_BFC": "true"})
        peak = json.loads(result.stdout.strip().splitlines()[-1])["peak_delta_bytes"]
        print(f"  {name:>9}: {peak / 2**20:8.1f} MiB")


def main(argv):
    del argv
    if FLAGS.memory_child:
        _memory_child(FLAGS.memory_child)
        return
    implementations = list(FLAGS.implementations)
    if "compiled" in implementations:
        from e2e_tf.custom_ops.ops import deformable_conv2d_ops

        if not deformable_conv2d_ops.is_available():
            print(f"compiled op not available ({deformable_conv2d_ops.load_error()}); skipped")
            implementations.remove("compiled")
    import tensorflow as tf

    print(f"TensorFlow {tf.__version__}, {os.cpu_count()} CPUs, "
          f"devices: {[d.device_type for d in tf.config.list_logical_devices()]}")
    _time_shapes(implementations, FLAGS.repeats)
    if FLAGS.memory:
        _measure_memory(implementations)


if __name__ == "__main__":
    app.run(main)
