"""Training-data augmentation: constrained traditional transforms and ML-WGAN (paper section III-A).

* `traditional.constrained_augment`: flip, noise and rotation/translation that lose at most 10% of
  the image content (on the fly in tf.data, or offline).
* `mlwgan.MultiImageWGAN`: one WGAN per training image, many trained at once.
* `offline.run_offline_augmentation`: resumable, sharded offline augmentation into TFRecords.
* `augmented_records.load_augmented_dataset`: reads them back like the TFDS datasets.
"""
