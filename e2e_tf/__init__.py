"""e2e_tf: end-to-end automatic image annotation (E2E-DCNN with ML-WGAN augmentation)."""

__version__ = "0.1.0"

from e2e_tf import datasets  # noqa: E402,F401  (registers the TFDS builders)
