"""The visual_concepts scenes: deterministic, labelled with what is drawn, long-tailed."""

import collections
import io
import time

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from e2e_tf.datasets.visual_concepts import scenes
from e2e_tf.datasets.visual_concepts import visual_concepts_dataset_builder as builder_module


def _scenes(count, seed=7):
    return [scenes.render_scene(np.random.default_rng([seed, 0, i])) for i in range(count)]


def test_same_seed_same_scene_other_seed_other_scene():
    first, again, other = (scenes.render_scene(np.random.default_rng(s)) for s in (3, 3, 4))
    np.testing.assert_array_equal(first[0], again[0])
    assert first[1] == again[1]
    assert not np.array_equal(first[0], other[0])
    assert first[0].shape == (64, 64, 3) and first[0].dtype == np.uint8


def test_label_statistics_are_shaped_like_the_real_datasets():
    drawn = _scenes(400)
    counts = collections.Counter(word for _, words in drawn for word in words)
    per_image = np.array([len(words) for _, words in drawn])
    assert set(counts) == set(scenes.VOCABULARY)  # every word is used
    assert per_image.min() >= 3 and 4.5 <= per_image.mean() <= 7.5
    frequencies = sorted(counts.values(), reverse=True)
    assert frequencies[0] >= 8 * frequencies[-1]  # a long tail
    print(f"\nlabels per image {per_image.mean():.2f} (min {per_image.min()}, max {per_image.max()}); "
          f"most/least frequent {counts.most_common(3)} / {counts.most_common()[-3:]}")


def test_scene_words_are_consistent_with_the_picture():
    for image, words in _scenes(200, seed=11):
        backgrounds = [w for w in words if w in (*scenes.SKIES, "wall")]
        assert len(backgrounds) == 1  # one sky or an indoor wall
        assert sum(w in scenes.SHAPES for w in words) >= 1 and sum(w in scenes.COLOURS for w in words) >= 1
        top = image[:4].reshape(-1, 3).mean(0)
        if "night" in words and "moon" not in words:
            assert top.max() < 90
        if "sky" in words:
            assert top[2] > top[0]  # blue above


@pytest.mark.slow
def test_full_build_has_the_documented_splits_and_reproduces_the_generator(tmp_path):
    builder = tfds.builder("visual_concepts", data_dir=str(tmp_path))
    start = time.perf_counter()
    builder.download_and_prepare()
    print(f"\nvisual_concepts: built in {time.perf_counter() - start:.1f} s; splits {builder.info.splits}")
    assert {s: builder.info.splits[s].num_examples for s in ("train", "test")} == {"train": 2000, "test": 400}
    names = builder.info.features["labels"].feature.names
    assert names == list(scenes.VOCABULARY)
    examples = {e["file_name"].decode(): e for e in tfds.as_numpy(builder.as_dataset(split="test"))}
    image, words = scenes.render_scene(np.random.default_rng([builder_module.SEED, 1, 17]))
    stored = examples["test/00017.png"]
    np.testing.assert_array_equal(stored["image"], image)
    assert [names[i] for i in stored["labels"]] == words
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    assert len(buffer.getvalue()) > 1000  # noisy textures, not flat colour
