"""Installs e2e_tf and compiles the DeformableConv2D custom op.

The repository keeps the design card's top-level folders; they are installed
under the `e2e_tf` namespace so that nothing is importable as a top-level
`datasets` package (which would shadow Hugging Face `datasets`):

  e2e_tf/                 -> e2e_tf
  datasets/               -> e2e_tf.datasets      (TFDS builders)
  custom_ops/python/      -> e2e_tf.custom_ops    (op loader; C++/CUDA in custom_ops/cc)
"""

import setuptools

setuptools.setup(
    name="e2e_tf",
    version="0.1.0",
    description="End-to-end automatic image annotation (E2E-DCNN + ML-WGAN) in TensorFlow/Keras",
    python_requires=">=3.10",
    packages=(
        ["e2e_tf." + p for p in setuptools.find_packages("e2e_tf")]
        + ["e2e_tf"]
        + ["e2e_tf.datasets"]
        + ["e2e_tf.datasets." + p for p in setuptools.find_packages("datasets")]
        + ["e2e_tf.custom_ops"]
        + ["e2e_tf.custom_ops." + p for p in setuptools.find_packages("custom_ops/python")]
    ),
    package_dir={
        "e2e_tf": "e2e_tf",
        "e2e_tf.datasets": "datasets",
        "e2e_tf.custom_ops": "custom_ops/python",
    },
    package_data={"e2e_tf.datasets": ["*/dummy_data/**/*", "*/*.txt", "*/*.bib", "*/*.md"]},
    install_requires=[
        "tensorflow>=2.16",
        "tensorflow-datasets>=4.9",
        "numpy",
        "pillow",
        "absl-py",
        "scipy",
        "matplotlib",
    ],
)
