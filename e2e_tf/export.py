"""Exports a trained model as a TF Serving SavedModel (encoded images in, keywords out).

  python -m e2e_tf.export --model=runs/demo --export_dir=exports/e2e

writes exports/e2e/<next free version>/ with the signatures `serving_default` (image_bytes)
and `serving_pixels` (float pixels); see e2e_tf/serving_export.py.
"""

from absl import app, flags

from e2e_tf.cli_errors import user_errors_exit

PROGRAM = "e2e_tf.export"

flags.DEFINE_string("model", None, "Trained model: a model dir (model.keras + model_info.json) written by "
                    "`python -m e2e_tf.train`, or a .keras file with that model_info.json (vocabulary, input "
                    "size) next to it: a .keras file alone is not enough.")
flags.DEFINE_string("export_dir", None, "Model base path for TF Serving (e.g. runs/demo/export, not a version "
                    "folder in it); the export goes to <export_dir>/<version>/.")
flags.DEFINE_integer("version", None, "Version folder number; default the next free one. Never overwrites.",
                     lower_bound=0)
flags.DEFINE_integer("top_k", None, "Keywords (and scores) returned per image by the signatures; "
                     "default 5, or the number of labels if fewer.", lower_bound=1)
flags.DEFINE_bool("with_custom_op", False, "Trace DeformableConv2D with the compiled E2eTf>DeformableConv2D op "
                  "instead of stock TF ops. Only a model server built with the op library can load the export.")
flags.mark_flags_as_required(["model", "export_dir"])
FLAGS = flags.FLAGS


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    from e2e_tf.serving_export import DEFAULT_TOP_K, check_export_base, export_model
    from e2e_tf.trained_model import load_trained_model

    with user_errors_exit(PROGRAM):  # A wrong --model, --export_dir, --version or --top_k.
        check_export_base(FLAGS.export_dir)  # Before the slow model load.
        model, info = load_trained_model(FLAGS.model)
        path = export_model(
            model,
            info.vocabulary,
            info.image_size,
            info.resize_policy,
            FLAGS.export_dir,
            version=FLAGS.version,
            top_k=FLAGS.top_k or min(DEFAULT_TOP_K, len(info.vocabulary)),
            with_custom_op=FLAGS.with_custom_op,
            metadata={"dataset": info.dataset, "backbone": info.backbone},
        )
    print(f"Exported {FLAGS.model} to {path}")


if __name__ == "__main__":
    app.run(main)
