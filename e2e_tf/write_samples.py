"""Writes a few images of a dataset split as PNG files, with their true labels, to try annotation on.

  python -m e2e_tf.write_samples --dataset=visual_concepts --split=test --count=4 --output_dir=runs/demo/samples

Prints one JSON line per image: {"image": path, "labels": [...]} (the ground truth to compare
`python -m e2e_tf.annotate` with).
"""

import json
import pathlib

from absl import app, flags, logging
import tensorflow as tf

from e2e_tf import datasets
from e2e_tf.training.config import DATASETS

flags.DEFINE_enum("dataset", "visual_concepts", DATASETS, "Dataset to take the images from.")
flags.DEFINE_string("data_dir", None, "TFDS data directory (default: TFDS's).")
flags.DEFINE_enum("split", "test", datasets.SPLITS, "Split to take the images from.")
flags.DEFINE_integer("count", 4, "Number of images (the first ones of the split).", lower_bound=1)
flags.DEFINE_string("output_dir", None, "Folder to write the PNG files into.")
flags.mark_flag_as_required("output_dir")
FLAGS = flags.FLAGS


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    if not FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)
    examples, info = datasets.load(FLAGS.dataset, FLAGS.split, data_dir=FLAGS.data_dir)
    names = info.features["labels"].feature.names
    output_dir = pathlib.Path(FLAGS.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    for example in examples.take(FLAGS.count):
        stem = pathlib.PurePosixPath(example["file_name"].numpy().decode()).with_suffix("").as_posix()
        path = output_dir / (stem.replace("/", "_") + ".png")
        tf.io.write_file(str(path), tf.io.encode_png(example["image"]))
        print(json.dumps({"image": str(path), "labels": [names[i] for i in example["labels"].numpy()]}))


if __name__ == "__main__":
    app.run(main)
