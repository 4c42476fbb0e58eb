"""Images/s of the TF Serving export against the Keras model, on CPU, in one run.

  python bench/export_bench.py                      # an untrained compact E2E-DCNN
  python bench/export_bench.py --model=runs/demo    # a trained model dir

Four ways to annotate the same images, at batch 1 and 32:
  keras  pixels  decoded pixels -> resize_image -> model.predict_on_batch -> sigmoid
  export pixels  the export's `serving_pixels` signature (resize in the graph)
  keras  bytes   tf.io.decode_image + resize_image per image, then as above
  export bytes   the export's `serving_default` signature (decode and resize in the graph)
The export is loaded with `tf.saved_model.load` as a model server would; the Keras model runs
with its own DeformableConv2D implementation ("auto": the compiled op when it is built). Each
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
flags.DEFINE_integer("num_labels", 260, "Labels of the untrained model (Corel5k has 260).")
flags.DEFINE_list("image_size", ["128", "128"], "Model input height,width of the untrained model.")
flags.DEFINE_list("source_size", ["150", "200"], "Height,width of the JPEG test images before resizing.")
flags.DEFINE_list("batch_sizes", ["1", "32"], "Batch sizes to measure.")
flags.DEFINE_float("min_seconds", 2.0, "Minimum time per measurement.")
flags.DEFINE_integer("rounds", 3, "Interleaved rounds; the median is reported.")
FLAGS = flags.FLAGS


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

        def keras_pixels(b):
            return lambda: tf.sigmoid(model.predict_on_batch(resize_image(pixel_batches[b], image_size, policy)))

        def keras_bytes(b):
            def run():
                images = [
                    resize_image(tf.io.decode_image(e, channels=3, expand_animations=False), image_size, policy)
                    for e in encoded[:b]
                ]
                return tf.sigmoid(model.predict_on_batch(tf.stack(images)))
            return run

        paths = {
            ("keras", "pixels"): keras_pixels,
            ("export", "pixels"): lambda b: lambda: serve_pixels(pixels=pixel_batches[b]),
            ("keras", "bytes"): keras_bytes,
            ("export", "bytes"): lambda b: lambda: serve_bytes(image_bytes=byte_batches[b]),
        }
        figures = {(p, b): [] for p in paths for b in batch_sizes}
        for _ in range(FLAGS.rounds):
            for b in batch_sizes:
                for path, make in paths.items():
                    figures[(path, b)].append(_images_per_second(make(b), b, FLAGS.min_seconds))

    print(f"\nCPU, {tf.config.threading.get_intra_op_parallelism_threads() or os.cpu_count()} threads; "
          f"model {model.name}, input {image_size[0]}x{image_size[1]}, {len(vocabulary)} labels; "
          f"JPEGs {source_height}x{source_width}; Keras DeformableConv2D: "
          f"{ops.resolve_implementation('auto', warn=False)}, export: pure_tf; median of {FLAGS.rounds} rounds")
    print(f"{'batch':>5}  {'input':<7}{'keras img/s':>12}{'export img/s':>14}{'export/keras':>14}")
    for b in batch_sizes:
        for kind in ("pixels", "bytes"):
            keras_rate = statistics.median(figures[(("keras", kind), b)])
            export_rate = statistics.median(figures[(("export", kind), b)])
            print(f"{b:>5}  {kind:<7}{keras_rate:>12.1f}{export_rate:>14.1f}{export_rate / keras_rate:>13.2f}x")
    sys.stdout.flush()


if __name__ == "__main__":
    app.run(main)
