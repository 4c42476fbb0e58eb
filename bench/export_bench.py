"""Images/s of the TF Serving export against the Keras model, on CPU, in one run.

  python bench/export_bench.py                      # an untrained compact E2E-DCNN
  python bench/export_bench.py --model=runs/demo    # a trained model dir

Four ways to annotate the same images, at batch 1 and 32:
  keras  pixels  decoded pixels -> resize_image -> the Keras model (in a tf.function) -> sigmoid
  export pixels  the export's `serving_pixels` signature (resize in the graph)
  keras  bytes   tf.io.decode_image + resize_image per image, then as above
  export bytes   the export's `serving_default` signature (decode and resize in the graph)
The export is loaded with `tf.saved_model.load` as a model server would. The Keras model runs
twice: with its own DeformableConv2D implementation ("auto": the compiled op when it is built)
and traced with the pure-TF one the export holds, which is the like-for-like baseline. Each
figure is the median of --rounds interleaved rounds, so background load hits all paths alike.
"""

import io
import os
import statistics
import sys
import tempfile
import time

os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")  # CPU figures, even on a GPU machine.

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from absl import app, flags  # noqa: E402
from PIL import Image  # noqa: E402

from e2e_tf import ops  # noqa: E402
from e2e_tf.model import build_model  # noqa: E402
from e2e_tf.preprocessing import resize_image  # noqa: E402
from e2e_tf.serving_export import export_model  # noqa: E402
from e2e_tf.trained_model import load_trained_model  # noqa: E402

flags.DEFINE_string("model", None, "Trained model dir or .keras file; default an untrained compact E2E-DCNN.")
flags.DEFINE_integer("num_labels", 260, "Labels of the untrained model (Corel5k has 260).", lower_bound=1)
flags.DEFINE_list("image_size", ["128", "128"], "Model input height,width of the untrained model.")
flags.DEFINE_list("source_size", ["150", "200"], "Height,width of the JPEG test images before resizing.")
flags.DEFINE_list("batch_sizes", ["1", "32"], "Batch sizes to measure.")
flags.DEFINE_float("min_seconds", 1.5, "Minimum time per measurement.", lower_bound=0)
flags.DEFINE_integer("rounds", 3, "Interleaved rounds; the median is reported.", lower_bound=1)
FLAGS = flags.FLAGS


def _register_positive_ints_validator(name: str, count: int | None = None) -> None:
    """Makes absl reject list flag `name` unless it holds `count` (or some) integers >= 1, like lower_bound."""

    def valid(values: list[str]) -> bool:
        right_length = len(values) == count if count is not None else bool(values)
        return right_length and all(value.isdigit() and int(value) >= 1 for value in values)

    what = f"{count} integers" if count is not None else "integers"
    flags.register_validator(name, valid, message=f"--{name} must be {what} >= 1, comma-separated")


_register_positive_ints_validator("image_size", count=2)
_register_positive_ints_validator("source_size", count=2)
_register_positive_ints_validator("batch_sizes")


def _jpeg_images(count, height, width):
    rng = np.random.default_rng(0)
    encoded = []
    for _ in range(count):
        # Smooth content compresses like a photo; pure noise would make JPEG decoding the whole cost.
        base = rng.integers(0, 256, (height // 8 + 1, width // 8 + 1, 3), dtype=np.uint8)
        image = Image.fromarray(base).resize((width, height), Image.BILINEAR)
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=90)
        encoded.append(buffer.getvalue())
    return encoded


def _images_per_second(fn, batch_size, min_seconds):
    fn()  # Warm-up: tracing and first-call allocations.
    fn()
    calls, start = 0, time.perf_counter()
    while True:
        fn()
        calls += 1
        elapsed = time.perf_counter() - start
        if elapsed >= min_seconds and calls >= 3:
            return calls * batch_size / elapsed


def main(argv):
    del argv
    if FLAGS.model:
        model, info = load_trained_model(FLAGS.model)
        vocabulary, image_size, policy = info.vocabulary, info.image_size, info.resize_policy
    else:
        keras.utils.set_random_seed(0)
        image_size = tuple(int(s) for s in FLAGS.image_size)
        model = build_model(FLAGS.num_labels, backbone="compact")
        vocabulary, policy = [f"label_{i}" for i in range(FLAGS.num_labels)], "stretch"
    source_height, source_width = (int(s) for s in FLAGS.source_size)
    batch_sizes = [int(b) for b in FLAGS.batch_sizes]

    with tempfile.TemporaryDirectory() as base:
        export_dir = export_model(model, vocabulary, image_size, policy, base)
        loaded = tf.saved_model.load(export_dir)
        serve_bytes = loaded.signatures["serving_default"]
        serve_pixels = loaded.signatures["serving_pixels"]

        encoded = _jpeg_images(max(batch_sizes), source_height, source_width)
        decoded = [tf.io.decode_image(e, channels=3, expand_animations=False) for e in encoded]
        pixel_batches = {b: tf.cast(tf.stack(decoded[:b]), tf.float32) for b in batch_sizes}
        byte_batches = {b: tf.constant(encoded[:b]) for b in batch_sizes}

        # The Keras model as a graph (what model.predict runs), with its own DeformableConv2D
        # implementation, and once more traced with the pure-TF one the export holds.
        keras_auto = tf.function(lambda x: tf.sigmoid(model(x, training=False)))
        keras_pure = tf.function(lambda x: tf.sigmoid(model(x, training=False)))

        def in_pure_tf(fn):
            def run(x):
                with ops.implementation_scope("pure_tf"):
                    return fn(x)
            return run

        def keras_pixels(predict):
            return lambda b: lambda: predict(resize_image(pixel_batches[b], image_size, policy))

        def keras_bytes(predict):
            def make(b):
                def run():
                    images = [
                        resize_image(tf.io.decode_image(e, channels=3, expand_animations=False), image_size, policy)
                        for e in encoded[:b]
                    ]
                    return predict(tf.stack(images))
                return run
            return make

        paths = {
            ("keras", "pixels"): keras_pixels(keras_auto),
            ("keras_pure_tf", "pixels"): keras_pixels(in_pure_tf(keras_pure)),
            ("export", "pixels"): lambda b: lambda: serve_pixels(pixels=pixel_batches[b]),
            ("keras", "bytes"): keras_bytes(keras_auto),
            ("keras_pure_tf", "bytes"): keras_bytes(in_pure_tf(keras_pure)),
            ("export", "bytes"): lambda b: lambda: serve_bytes(image_bytes=byte_batches[b]),
        }
        figures = {(p, b): [] for p in paths for b in batch_sizes}
        for _ in range(FLAGS.rounds):
            for b in batch_sizes:
                for path, make in paths.items():
                    figures[(path, b)].append(_images_per_second(make(b), b, FLAGS.min_seconds))

    auto = ops.resolve_implementation("auto", warn=False)
    print(f"\nCPU ({os.cpu_count()} cores); model {model.name}, input {image_size[0]}x{image_size[1]}, "
          f"{len(vocabulary)} labels; JPEGs {source_height}x{source_width}; median of {FLAGS.rounds} rounds")
    print(f"keras = Keras model in a tf.function, DeformableConv2D '{auto}'; keras pure_tf = the same traced "
          "with the pure-TF implementation; export = tf.saved_model.load'ed signature (pure_tf)")
    header = ["batch", "input", f"keras({auto}) img/s", "keras(pure_tf) img/s", "export img/s", "export/keras(pure_tf)"]
    widths = [5, 6] + [len(h) for h in header[2:]]
    print("  ".join(f"{h:>{w}}" for h, w in zip(header, widths)))
    for b in batch_sizes:
        for kind in ("pixels", "bytes"):
            rates = [statistics.median(figures[((p, kind), b)]) for p in ("keras", "keras_pure_tf", "export")]
            row = [str(b), kind] + [f"{r:.1f}" for r in rates] + [f"{rates[2] / rates[1]:.2f}x"]
            print("  ".join(f"{c:>{w}}" for c, w in zip(row, widths)))
    sys.stdout.flush()


if __name__ == "__main__":
    app.run(main)
