"""Prints the top-k keywords of images as JSON lines, from a trained model or an export.

  python -m e2e_tf.annotate --model=runs/demo photos/ cat.jpg
  python -m e2e_tf.annotate --model=exports/e2e photos/

One line per image: {"image": path, "keywords": [...], "scores": [...]}, or
{"image": path, "error": "..."} when it cannot be read or decoded. The exit code is 1 when
any image failed.
"""

import json
import sys

from absl import app, flags

from e2e_tf.cli_errors import user_errors_exit

PROGRAM = "e2e_tf.annotate"

flags.DEFINE_string("model", None, "A trained model: a model dir (model.keras + model_info.json) written by "
                    "`python -m e2e_tf.train`, or a .keras file with that model_info.json (vocabulary, input "
                    "size) next to it; or a SavedModel export (a version folder, or the base folder: its "
                    "highest version).")
flags.DEFINE_integer("top_k", None, "Keywords per image; default 5, or the number of labels if fewer.",
                     lower_bound=1)
flags.DEFINE_integer("batch_size", 32, "Images run through the model at once.", lower_bound=1)
flags.mark_flag_as_required("model")
FLAGS = flags.FLAGS


def main(argv):
    from e2e_tf.annotator import IMAGE_EXTENSIONS_TEXT, Annotator, find_images

    if len(argv) < 2:
        raise app.UsageError(f"Give the images or folders (walked for {IMAGE_EXTENSIONS_TEXT}) to annotate.")
    with user_errors_exit(PROGRAM):  # A wrong --model or --top_k.
        annotator = Annotator.from_path(FLAGS.model, top_k=FLAGS.top_k, batch_size=FLAGS.batch_size)
    failed = 0
    for result in annotator.annotate_files(find_images(argv[1:])):
        failed += "error" in result
        print(json.dumps(result), flush=True)
    if failed:
        print(f"{failed} image(s) could not be annotated.", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    app.run(main)
