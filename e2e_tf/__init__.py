"""e2e_tf: end-to-end automatic image annotation (E2E-DCNN with ML-WGAN augmentation)."""

__version__ = "0.1.0"
