"""Tests of annotation (e2e_tf/annotator.py and `python -m e2e_tf.annotate`)."""

import json
import os
import shutil
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from e2e_tf.annotator import IMAGE_EXTENSIONS, IMAGE_EXTENSIONS_TEXT, Annotator, find_images
from e2e_tf.model import build_model
from e2e_tf.preprocessing import resize_image
from e2e_tf.serving_export import export_model
from e2e_tf.trained_model import ModelInfo, load_trained_model

VOCABULARY = ["sky", "water", "tree", "people", "grass"]
IMAGE_SIZE = (32, 32)
RESIZE_POLICY = "stretch"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A compact E2E-DCNN saved as `python -m e2e_tf.train` saves it."""
    directory = tmp_path_factory.mktemp("trained")
    keras.utils.set_random_seed(0)
    model = build_model(len(VOCABULARY), backbone="compact")
    # Logit biases a unit apart keep the ranking free of near ties.
    model.get_layer("logits").bias.assign(np.array([0.0, 2.0, -1.0, 1.0, -2.0], np.float32))
    model.save(str(directory / "model.keras"))
    ModelInfo(VOCABULARY, IMAGE_SIZE, RESIZE_POLICY, dataset="unit_test", backbone="compact").save(
        directory / "model_info.json"
    )
    return str(directory)


@pytest.fixture(scope="module")
def trained(model_dir):
    return load_trained_model(model_dir)


@pytest.fixture(scope="module")
def export_base(trained, tmp_path_factory):
    model, info = trained
    base = str(tmp_path_factory.mktemp("exports"))
    export_model(model, info.vocabulary, info.image_size, info.resize_policy, base, top_k=2)
    return base


@pytest.fixture(scope="module")
def image_tree(tmp_path_factory):
    """photos/{a.png, b.JPG, notes.txt, nested/c.bmp, nested/d.gif}, corrupt.jpg, pixels.npz."""
    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    (root / "photos" / "nested").mkdir(parents=True)
    files = {"photos/a.png": "PNG", "photos/b.JPG": "JPEG", "photos/nested/c.bmp": "BMP", "photos/nested/d.gif": "GIF"}
    for name, fmt in files.items():
        Image.fromarray(rng.integers(0, 256, (24 + len(name), 40, 3), dtype=np.uint8)).save(root / name, format=fmt)
    (root / "photos" / "notes.txt").write_text("not an image")
    (root / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    (root / "empty").mkdir()
    return root


def expected_annotation(model, path, top_k):
    image = tf.io.decode_image(open(path, "rb").read(), channels=3, expand_animations=False)
    pixels = resize_image(image, IMAGE_SIZE, RESIZE_POLICY)[None]
    probabilities = tf.sigmoid(model(pixels, training=False)).numpy()[0]
    order = np.argsort(-probabilities, kind="stable")[:top_k]
    return [VOCABULARY[i] for i in order], probabilities[order]


def test_find_images_walks_folders_sorted_and_keeps_named_paths(image_tree):
    root = str(image_tree)
    found = find_images([os.path.join(root, "photos"), os.path.join(root, "corrupt.jpg"),
                         os.path.join(root, "missing.png"), os.path.join(root, "empty")])
    relative = [os.path.relpath(path, root) for path in found]
    assert relative == ["photos/a.png", "photos/b.JPG", "photos/nested/c.bmp", "photos/nested/d.gif",
                        "corrupt.jpg", "missing.png", "empty"]


@pytest.mark.parametrize("kind", ["trained_model", "export"])
def test_annotations_match_the_keras_model_and_name_bad_files(kind, model_dir, trained, export_base, image_tree):
    annotator = Annotator.from_path(model_dir if kind == "trained_model" else export_base, top_k=3, batch_size=2)
    root = str(image_tree)
    # The corrupt file shares a batch with a good image: the good one is still annotated.
    paths = find_images([os.path.join(root, "photos")])
    paths = paths[:1] + [os.path.join(root, "corrupt.jpg"), os.path.join(root, "missing.png")] + paths[1:]
    results = list(annotator.annotate_files(paths))

    assert [result["image"] for result in results] == paths
    assert "cannot decode the image" in results[1]["error"] and "JPEG" in results[1]["error"]
    assert "No such file or directory" in results[2]["error"]
    for result in results[:1] + results[3:]:
        keywords, scores = expected_annotation(trained[0], result["image"], top_k=3)
        assert result["keywords"] == keywords
        np.testing.assert_allclose(result["scores"], scores, atol=1e-5)


_RUN_CLI = textwrap.dedent(
    """
    import runpy, sys
    sys.argv = ["annotate"] + sys.argv[1:]
    try:
        runpy.run_module("e2e_tf.annotate", run_name="__main__")
    except SystemExit as e:
        code = e.code
    model_code = sorted(m for m in sys.modules if m.startswith(("e2e_tf.model", "e2e_tf.layers", "e2e_tf.ops")))
    print(f"exit={code} model_code={model_code}", file=sys.stderr)
    sys.exit(code)
    """
)


def run_cli(tmp_path, *args):
    script = tmp_path / "run_annotate.py"
    script.write_text(_RUN_CLI)
    result = subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True, cwd=tmp_path)
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    return result, lines


def test_cli_from_an_export_needs_no_model_code_and_fails_on_bad_images(export_base, image_tree, tmp_path):
    root = str(image_tree)
    result, lines = run_cli(tmp_path, f"--model={export_base}", "--top_k=4",
                            os.path.join(root, "photos"), os.path.join(root, "corrupt.jpg"),
                            os.path.join(root, "missing.png"), os.path.join(root, "empty"))
    assert result.returncode == 1, result.stderr
    assert "exit=1 model_code=[]" in result.stderr
    assert "3 image(s) could not be annotated" in result.stderr
    by_name = {os.path.relpath(line["image"], root): line for line in lines}
    assert list(by_name) == ["photos/a.png", "photos/b.JPG", "photos/nested/c.bmp", "photos/nested/d.gif",
                             "corrupt.jpg", "missing.png", "empty"]
    assert all(len(by_name[name]["keywords"]) == 4 and len(by_name[name]["scores"]) == 4 for name in list(by_name)[:4])
    assert set(by_name["corrupt.jpg"]) == {"image", "error"}
    assert "no image files" in by_name["empty"]["error"]


def test_cli_from_a_trained_model_succeeds_on_good_images(model_dir, trained, image_tree, tmp_path):
    path = os.path.join(str(image_tree), "photos", "a.png")
    result, lines = run_cli(tmp_path, f"--model={model_dir}", path)
    assert result.returncode == 0, result.stderr
    keywords, scores = expected_annotation(trained[0], path, top_k=5)
    assert [line["image"] for line in lines] == [path]
    assert lines[0]["keywords"] == keywords
    np.testing.assert_allclose(lines[0]["scores"], scores, atol=1e-5)


def test_bad_model_path_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="no_such_model"):
        Annotator.from_path(str(tmp_path / "no_such_model"))


def test_find_images_walks_every_listed_extension(tmp_path):
    for index, extension in enumerate(IMAGE_EXTENSIONS):
        (tmp_path / f"{index}{extension.upper()}").write_bytes(b"")
    (tmp_path / "notes.txt").write_bytes(b"")
    assert len(find_images([str(tmp_path)])) == len(IMAGE_EXTENSIONS)


def test_cli_usage_lists_the_extensions_find_images_walks(tmp_path):
    result, _ = run_cli(tmp_path, f"--model={tmp_path}")
    assert result.returncode == 1
    assert f"(walked for {IMAGE_EXTENSIONS_TEXT})" in result.stderr and ".webp" in IMAGE_EXTENSIONS_TEXT


@pytest.mark.parametrize("case", ["truncated", "keras_file_alone"])
def test_cli_names_an_unusable_model_file_in_one_line(case, model_dir, image_tree, tmp_path):
    folder = tmp_path / case
    folder.mkdir()
    model_file = folder / "model.keras"
    if case == "truncated":  # As an interrupted copy leaves it, model_info.json next to it.
        with open(os.path.join(model_dir, "model.keras"), "rb") as f:
            model_file.write_bytes(f.read()[:5000])
        shutil.copy(os.path.join(model_dir, "model_info.json"), folder)
        expected = f"e2e_tf.annotate: error: {model_file} exists but could not be loaded"
    else:
        shutil.copy(os.path.join(model_dir, "model.keras"), model_file)
        expected = f"e2e_tf.annotate: error: {model_file} needs model_info.json"
    result, lines = run_cli(tmp_path, f"--model={model_file}", os.path.join(str(image_tree), "photos"))
    assert result.returncode == 1 and not lines
    assert expected in result.stderr and "Traceback" not in result.stderr
    if case == "keras_file_alone":
        assert str(folder / "model_info.json") in result.stderr
