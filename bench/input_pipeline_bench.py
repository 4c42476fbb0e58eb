"""Does training wait for data? Input-pipeline throughput against training-step throughput.

Measures, in one run and in images/s:
  pipeline  the training tf.data pipeline alone (decode cache -> resize -> multi-hot -> batch);
  step      training steps on one batch already in memory (no input work at all);
  training  training steps fed by the pipeline, as `python -m e2e_tf.train` runs them.
The model does not wait for data when pipeline >> step and training ~= step.

  python bench/input_pipeline_bench.py --dataset=visual_concepts --backbone=compact --image_size=64
"""

import time

from absl import app, flags
import keras
import tensorflow as tf

from e2e_tf import datasets
from e2e_tf.input_pipeline import make_dataset
from e2e_tf.model import build_model
from e2e_tf.training.loop import AnnotationTrainer

flags.DEFINE_string("dataset", "visual_concepts", "Dataset (a builder of e2e_tf.datasets).")
flags.DEFINE_string("data_dir", None, "TFDS data directory.")
flags.DEFINE_string("backbone", "compact", "Backbone.")
flags.DEFINE_integer("deformable_stages", 1, "Deformable stages.", lower_bound=0)
flags.DEFINE_integer("image_size", 64, "Square input size.", lower_bound=1)
flags.DEFINE_integer("batch_size", 32, "Batch size.", lower_bound=1)
flags.DEFINE_integer("steps", 20, "Timed steps per measurement (after warm-up).", lower_bound=1)
FLAGS = flags.FLAGS


def _rate(function, steps: int, batch_size: int) -> float:
    function()  # warm-up: tracing, first cache pass, thread pools
    start = time.perf_counter()
    for _ in range(steps):
        function()
    return steps * batch_size / (time.perf_counter() - start)


def main(argv):
    del argv
    examples, info = datasets.load(FLAGS.dataset, "train_fit", data_dir=FLAGS.data_dir)
    num_labels = info.features["labels"].feature.num_classes
    data = make_dataset(examples, num_labels=num_labels, image_size=(FLAGS.image_size,) * 2,
                        resize_policy="stretch", batch_size=FLAGS.batch_size, training=True)
    # Fill the decode cache first, as every epoch after the first one reads from it.
    for _ in make_dataset(examples, num_labels=num_labels, image_size=(8, 8), resize_policy="stretch",
                          batch_size=256, training=False):
        pass
    pipeline_iterator = iter(data)
    pipeline = _rate(lambda: next(pipeline_iterator), FLAGS.steps * 5, FLAGS.batch_size)

    keras.utils.set_random_seed(0)
    model = build_model(num_labels, backbone=FLAGS.backbone, deformable_stages=FLAGS.deformable_stages)
    optimizer = keras.optimizers.RMSprop(1e-3)
    optimizer.build(model.trainable_variables)
    trainer = AnnotationTrainer(model, optimizer, tf.distribute.get_strategy(), FLAGS.batch_size)
    in_memory = iter(tf.data.Dataset.from_tensors(next(pipeline_iterator)).repeat())
    step = _rate(lambda: trainer._train_function(in_memory), FLAGS.steps, FLAGS.batch_size)  # pylint: disable=protected-access
    fed = iter(data)
    training = _rate(lambda: trainer._train_function(fed), FLAGS.steps, FLAGS.batch_size)  # pylint: disable=protected-access

    print(f"{FLAGS.dataset}, {FLAGS.backbone} (deformable stages {FLAGS.deformable_stages}), "
          f"{FLAGS.image_size}x{FLAGS.image_size}, batch {FLAGS.batch_size}:")
    print(f"  pipeline alone      {pipeline:9.1f} images/s")
    print(f"  step, data in RAM   {step:9.1f} images/s")
    print(f"  step fed by tf.data {training:9.1f} images/s")
    print(f"  pipeline / step = {pipeline / step:.1f}x; fed step reaches {100 * training / step:.0f}% of the in-memory step")


if __name__ == "__main__":
    app.run(main)
