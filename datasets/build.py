"""`tfds build` for these builders, without the TFDS CLI's optional dependencies.

TFDS 4.9's `tfds` command imports apache_beam and mlcroissant at start-up (for
its convert_format and croissant subcommands). This runs only its `build`
subcommand, with the same flags, after registering the builders:

    python -m e2e_tf.datasets.build corel5k --manual_dir=<dir> [--data_dir=<dir>]

With those packages installed, `tfds build --imports=e2e_tf.datasets corel5k
--manual_dir=<dir>` does the same.
"""

import sys

import simple_parsing
from tensorflow_datasets.scripts.cli import build

import e2e_tf.datasets  # noqa: F401  (registers the builders)


def main(argv: list[str]) -> None:
    simple_parsing.parse(build.Args, args=argv, prog="python -m e2e_tf.datasets.build").execute()


if __name__ == "__main__":
    main(sys.argv[1:])
