"""Tests of the TF Serving export (e2e_tf/serving_export.py and `python -m e2e_tf.export`)."""

import base64
import io
import json
import os
import pathlib
import shutil
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image
from tensorflow.core.protobuf import saved_model_pb2
from tensorflow.python.framework import op_def_registry

from e2e_tf import ops, serving_export
from e2e_tf.layers.deformable_conv2d import DeformableConv2D
from e2e_tf.model import build_model
from e2e_tf.preprocessing import resize_image
from e2e_tf.trained_model import ModelInfo, load_trained_model

VOCABULARY = ["sky", "water", "tree", "people", "grass", "building", "snow"]
IMAGE_SIZE = (32, 40)  # Not square, so that a swapped height and width shows.
RESIZE_POLICY = "crop"
TOP_K = 3
PROJECT_OP_PREFIX = "E2eTf"


def write_trained_model(model_dir: str) -> str:
    """Writes a compact E2E-DCNN as `python -m e2e_tf.train` would: model.keras + model_info.json."""
    keras.utils.set_random_seed(0)
    model = build_model(len(VOCABULARY), backbone="compact", deformable_stages=1)
    # Logit biases a unit apart keep the top-k ranking free of near ties at 1e-5.
    model.get_layer("logits").bias.assign(np.array([1.0, -2.0, 3.0, 0.0, -1.0, 2.0, -3.0], np.float32))
    os.makedirs(model_dir, exist_ok=True)
    model.save(os.path.join(model_dir, "model.keras"))
    ModelInfo(VOCABULARY, IMAGE_SIZE, RESIZE_POLICY, dataset="unit_test", backbone="compact").save(
        os.path.join(model_dir, "model_info.json")
    )
    return model_dir


def tiny_model():
    """A model much faster to trace than E2E-DCNN, for tests of the export's bookkeeping."""
    return keras.Sequential(
        [keras.Input((None, None, 3)), keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(len(VOCABULARY))]
    )


def encoded_test_images():
    """Returns [(encoded bytes, RGB uint8 pixels a correct decoder gives)]: PNG, BMP, JPEG, GIF, WebP."""
    rng = np.random.default_rng(1)

    def pixels(height, width, channels=3):
        return rng.integers(0, 256, (height, width, channels), dtype=np.uint8)

    def pil_bytes(array, fmt):
        buffer = io.BytesIO()
        Image.fromarray(array).save(buffer, format=fmt)
        return buffer.getvalue()

    images = []
    png = pixels(45, 60)
    images.append((pil_bytes(png, "PNG"), png))
    bmp = pixels(30, 20)
    images.append((pil_bytes(bmp, "BMP"), bmp))
    grey = pixels(36, 36, 1)[..., 0]
    images.append((pil_bytes(grey, "PNG"), np.repeat(grey[..., None], 3, axis=-1)))
    rgba = pixels(25, 50, 4)
    images.append((pil_bytes(rgba, "PNG"), rgba[..., :3]))
    jpeg = pil_bytes(pixels(50, 41), "JPEG")
    images.append((jpeg, tf.io.decode_jpeg(jpeg, channels=3).numpy()))  # Lossy: decoded pixels.
    gif = pil_bytes(pixels(28, 33), "GIF")
    images.append((gif, np.asarray(Image.open(io.BytesIO(gif)).convert("RGB"))))
    webp = pixels(27, 31)
    buffer = io.BytesIO()
    Image.fromarray(webp).save(buffer, format="WEBP", lossless=True)
    images.append((buffer.getvalue(), webp))
    return images


def keras_probabilities(model, decoded_images):
    """The Keras model's probabilities for decoded uint8 images, with the training preprocessing."""
    pixels = tf.stack([resize_image(image, IMAGE_SIZE, RESIZE_POLICY) for image in decoded_images])
    return tf.sigmoid(model(pixels, training=False)).numpy()


def saved_model_ops(export_dir):
    """Every op type in saved_model.pb: the graphs' nodes and all their library functions'."""
    saved_model = saved_model_pb2.SavedModel()
    with open(os.path.join(export_dir, "saved_model.pb"), "rb") as f:
        saved_model.ParseFromString(f.read())
    op_types = set()
    for meta_graph in saved_model.meta_graphs:
        op_types.update(node.op for node in meta_graph.graph_def.node)
        for function in meta_graph.graph_def.library.function:
            op_types.update(node.op for node in function.node_def)
    return op_types


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return write_trained_model(str(tmp_path_factory.mktemp("trained")))


@pytest.fixture(scope="module")
def trained(model_dir):
    return load_trained_model(model_dir)


@pytest.fixture(scope="module")
def export_dir(trained, tmp_path_factory):
    model, info = trained
    base = str(tmp_path_factory.mktemp("exports"))
    return serving_export.export_model(
        model, info.vocabulary, info.image_size, info.resize_policy, base, top_k=TOP_K
    )


@pytest.fixture(scope="module")
def loaded(export_dir):
    return tf.saved_model.load(export_dir)


@pytest.fixture(scope="module")
def images():
    return encoded_test_images()


def test_export_is_version_one_of_the_base_with_vocabulary_asset(export_dir):
    base = os.path.dirname(export_dir)
    assert os.listdir(base) == ["1"]
    assert os.path.isfile(os.path.join(export_dir, "saved_model.pb"))
    with open(os.path.join(export_dir, "assets", serving_export.VOCABULARY_FILENAME), encoding="utf-8") as f:
        assert f.read().splitlines() == VOCABULARY
    with open(os.path.join(export_dir, serving_export.EXPORT_INFO_PATH), encoding="utf-8") as f:
        info = json.load(f)
    assert info["image_size"] == list(IMAGE_SIZE) and info["top_k"] == TOP_K
    assert info["deformable_implementation"] == "pure_tf"


def test_export_graph_holds_only_stock_ops(trained, export_dir):
    model, _ = trained
    # The export would be trivially stock without a deformable layer to trace.
    assert any(isinstance(layer, DeformableConv2D) for layer in model._flatten_layers())
    op_types = saved_model_ops(export_dir)
    assert "DecodeImage" in op_types and "TopKV2" in op_types
    assert not [op for op in op_types if op.startswith(PROJECT_OP_PREFIX)]
    unregistered = sorted(op for op in op_types if op_def_registry.get(op) is None)
    assert not unregistered, f"ops outside TensorFlow's registry: {unregistered}"
    assert not [op for op in op_types if not hasattr(tf.raw_ops, op)]


_LOAD_WITHOUT_PROJECT = textwrap.dedent(
    """
    import sys
    import numpy as np
    import tensorflow as tf

    export_dir, inputs_file, outputs_file = sys.argv[1:]
    inputs = np.load(inputs_file, allow_pickle=True)
    loaded = tf.saved_model.load(export_dir)
    by_bytes = loaded.signatures["serving_default"](image_bytes=tf.constant(list(inputs["image_bytes"])))
    by_pixels = loaded.signatures["serving_pixels"](pixels=tf.constant(inputs["pixels"]))
    empty = loaded.signatures["serving_default"](image_bytes=tf.constant([], tf.string))
    assert "e2e_tf" not in sys.modules, sorted(m for m in sys.modules if m.startswith("e2e_tf"))
    np.savez(
        outputs_file,
        **{"bytes_" + k: v.numpy() for k, v in by_bytes.items()},
        **{"pixels_" + k: v.numpy() for k, v in by_pixels.items()},
        empty_shape=np.array(empty["keywords"].shape),
    )
    """
)


def test_export_loads_without_project_code_and_matches_keras(trained, export_dir, images, tmp_path):
    model, _ = trained
    pixels = np.random.default_rng(2).uniform(0, 255, (2, 37, 29, 3)).astype(np.float32)
    inputs_file, outputs_file = str(tmp_path / "inputs.npz"), str(tmp_path / "outputs.npz")
    np.savez(inputs_file, image_bytes=np.array([b for b, _ in images], dtype=object), pixels=pixels)
    script = tmp_path / "load.py"
    script.write_text(_LOAD_WITHOUT_PROJECT)
    # The script's folder, not the repository, is sys.path[0]: nothing can import e2e_tf by accident.
    subprocess.run([sys.executable, str(script), export_dir, inputs_file, outputs_file], check=True, cwd=tmp_path)
    outputs = np.load(outputs_file, allow_pickle=True)

    expected = keras_probabilities(model, [decoded for _, decoded in images])
    np.testing.assert_allclose(outputs["bytes_probabilities"], expected, atol=1e-5)
    expected_pixels = tf.sigmoid(model(resize_image(pixels, IMAGE_SIZE, RESIZE_POLICY), training=False)).numpy()
    np.testing.assert_allclose(outputs["pixels_probabilities"], expected_pixels, atol=1e-5)
    for prefix, probabilities in (("bytes_", expected), ("pixels_", expected_pixels)):
        order = np.argsort(-probabilities, axis=1, kind="stable")[:, :TOP_K]
        keywords = [[k.decode("utf-8") for k in row] for row in outputs[prefix + "keywords"]]
        assert keywords == [[VOCABULARY[i] for i in row] for row in order]
        np.testing.assert_allclose(
            outputs[prefix + "scores"], np.take_along_axis(probabilities, order, axis=1), atol=1e-5
        )
    assert list(outputs["empty_shape"]) == [0, TOP_K]


def test_saved_model_cli_lists_both_signatures(export_dir):
    cli = os.path.join(os.path.dirname(sys.executable), "saved_model_cli")
    shown = subprocess.run([cli, "show", "--all", "--dir", export_dir], check=True, capture_output=True, text=True)
    text = shown.stdout
    for expected in ("signature_def['serving_default']", "signature_def['serving_pixels']", "inputs['image_bytes']",
                     "inputs['pixels']", "outputs['keywords']", "outputs['scores']", "outputs['probabilities']"):
        assert expected in text, f"{expected} missing from saved_model_cli output:\n{text}"
    default = text[text.index("signature_def['serving_default']"):text.index("signature_def['serving_pixels']")]
    assert "dtype: DT_STRING" in default and "shape: (-1)" in default
    pixels = text[text.index("signature_def['serving_pixels']"):]
    assert "shape: (-1, -1, -1, 3)" in pixels


def decode_rest_request(body: str, input_name: str) -> tf.Tensor:
    """Turns a TF Serving REST predict body into the signature's input, as the server does.

    Row form `{"instances": [...]}` lists one value per example (a dict of named inputs, or the
    bare value when the signature has one input); the columnar form `{"inputs": ...}` gives the
    batch at once (named or bare). `{"b64": "..."}` stands for the base64-decoded bytes.
    """

    def value(item):
        if isinstance(item, dict) and set(item) == {"b64"}:
            return base64.b64decode(item["b64"])
        if isinstance(item, list):
            return [value(element) for element in item]
        return item

    request = json.loads(body)
    if "instances" in request:
        rows = [row[input_name] if isinstance(row, dict) and "b64" not in row else row for row in request["instances"]]
        return tf.constant([value(row) for row in rows])
    columns = request["inputs"]
    return tf.constant(value(columns[input_name] if isinstance(columns, dict) else columns))


def test_rest_request_bodies_run_through_the_signature(loaded, images):
    serve = loaded.signatures["serving_default"]
    encoded = [b for b, _ in images[:3]]
    expected = serve(image_bytes=tf.constant(encoded))
    b64 = [{"b64": base64.b64encode(b).decode("ascii")} for b in encoded]
    bodies = [
        json.dumps({"instances": b64}),
        json.dumps({"instances": [{"image_bytes": item} for item in b64]}),
        json.dumps({"inputs": {"image_bytes": b64}}),
        json.dumps({"inputs": b64}),
    ]
    for body in bodies:
        outputs = serve(image_bytes=decode_rest_request(body, "image_bytes"))
        np.testing.assert_array_equal(outputs["probabilities"].numpy(), expected["probabilities"].numpy())
        # The row-form response TF Serving builds is JSON with UTF-8 keywords.
        predictions = [
            {"keywords": [k.decode("utf-8") for k in kw], "scores": sc.tolist()}
            for kw, sc in zip(outputs["keywords"].numpy(), outputs["scores"].numpy())
        ]
        response = json.loads(json.dumps({"predictions": predictions}))
        assert [p["keywords"] for p in response["predictions"]] == [
            [k.decode("utf-8") for k in row] for row in expected["keywords"].numpy()
        ]


@pytest.mark.parametrize(
    "bad, reason",
    [(b"this is not an image", "Unknown image file format"), (b"", "Input is empty"), (None, "JPEG")],
)
def test_corrupt_image_in_a_batch_is_an_invalid_argument_error(loaded, images, bad, reason):
    if bad is None:  # A truncated JPEG: a valid header, broken data.
        jpeg = images[4][0]
        bad = jpeg[: len(jpeg) // 2]
    serve = loaded.signatures["serving_default"]
    with pytest.raises(tf.errors.InvalidArgumentError, match=reason):
        serve(image_bytes=tf.constant([images[0][0], bad]))
    # The signature still serves good batches afterwards.
    assert serve(image_bytes=tf.constant([images[0][0]]))["keywords"].shape == (1, TOP_K)


def test_versions_are_numbered_and_never_overwritten(tmp_path):
    model, base = tiny_model(), str(tmp_path / "base")

    def export(**kwargs):
        return serving_export.export_model(model, VOCABULARY, IMAGE_SIZE, RESIZE_POLICY, base, **kwargs)

    assert export() == os.path.join(base, "1")
    assert export(version=7) == os.path.join(base, "7")
    with pytest.raises(FileExistsError, match="version 7 already exists"):
        export(version=7)
    assert export() == os.path.join(base, "8")
    assert sorted(os.listdir(base)) == ["1", "7", "8"]  # No temporary folder is left behind.


def test_a_failed_export_leaves_no_version_and_no_temp_dir(tmp_path, monkeypatch):
    base = str(tmp_path / "base")

    def failing_save(module, export_dir, **kwargs):
        open(os.path.join(export_dir, "saved_model.pb"), "wb").close()  # Half written...
        raise OSError("disk full")

    monkeypatch.setattr(tf.saved_model, "save", failing_save)
    with pytest.raises(OSError, match="disk full"):
        serving_export.export_model(tiny_model(), VOCABULARY, IMAGE_SIZE, RESIZE_POLICY, base)
    assert os.listdir(base) == []


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"top_k": 0}, "top_k must be between 1 and the number of labels"),
        ({"top_k": 8}, "top_k must be between 1 and the number of labels"),
        ({"vocabulary": VOCABULARY[:-1]}, "7 logits but the vocabulary has 6"),
        ({"vocabulary": VOCABULARY[:-1] + ["sky"]}, "unique"),
        ({"vocabulary": VOCABULARY[:-1] + ["two\nlines"]}, "single lines"),
        ({"version": -1}, "non-negative"),
    ],
)
def test_bad_export_arguments_are_named(tmp_path, kwargs, message):
    arguments = {"vocabulary": VOCABULARY, "image_size": IMAGE_SIZE, "resize_policy": RESIZE_POLICY, **kwargs}
    with pytest.raises(ValueError, match=message):
        serving_export.export_model(tiny_model(), export_base=str(tmp_path), **arguments)


def test_export_base_that_is_a_file_is_named(tmp_path):
    base = tmp_path / "not_a_folder"
    base.write_text("kept")
    with pytest.raises(FileExistsError, match=f"--export_dir {base} is a file"):
        serving_export.export_model(tiny_model(), VOCABULARY, IMAGE_SIZE, RESIZE_POLICY, str(base))
    assert base.read_text() == "kept"


def test_export_cli_from_a_keras_file(images, tmp_path):
    model_dir = tmp_path / "trained"
    model_dir.mkdir()
    tiny_model().save(model_dir / "model.keras")
    ModelInfo(VOCABULARY, IMAGE_SIZE, RESIZE_POLICY, dataset="unit_test", backbone="tiny").save(
        model_dir / "model_info.json"
    )
    base = str(tmp_path / "served")
    result = subprocess.run(
        [sys.executable, "-m", "e2e_tf.export", f"--model={model_dir / 'model.keras'}",
         f"--export_dir={base}", "--version=3", "--top_k=2"],
        check=True, capture_output=True, text=True,
    )
    assert os.path.join(base, "3") in result.stdout
    outputs = tf.saved_model.load(os.path.join(base, "3")).signatures["serving_default"](
        image_bytes=tf.constant([images[0][0]])
    )
    assert outputs["keywords"].shape == (1, 2) and outputs["probabilities"].shape == (1, len(VOCABULARY))
    with open(os.path.join(base, "3", serving_export.EXPORT_INFO_PATH), encoding="utf-8") as f:
        assert json.load(f)["backbone"] == "tiny"


@pytest.mark.skipif(
    ops.resolve_implementation("auto", warn=False) != "custom_op",
    reason="the compiled DeformableConv2D op is not built (or E2E_TF_PURE_TF_DEFORMABLE forces pure TF)",
)
def test_with_custom_op_traces_the_compiled_op(trained, images, tmp_path):
    model, info = trained
    export_dir = serving_export.export_model(
        model, info.vocabulary, info.image_size, info.resize_policy, str(tmp_path), with_custom_op=True
    )
    assert any(op.startswith(PROJECT_OP_PREFIX) for op in saved_model_ops(export_dir))
    # This process has loaded the op library, as a model server built with it would have.
    outputs = tf.saved_model.load(export_dir).signatures["serving_default"](
        image_bytes=tf.constant([b for b, _ in images])
    )
    expected = keras_probabilities(model, [decoded for _, decoded in images])
    np.testing.assert_allclose(outputs["probabilities"].numpy(), expected, atol=1e-5)


def test_a_truncated_model_file_is_named_as_unloadable_not_missing(model_dir, tmp_path):
    """As an interrupted copy leaves it: the start of the zip archive, without its central directory."""
    truncated = tmp_path / "model.keras"
    truncated.write_bytes((pathlib.Path(model_dir) / "model.keras").read_bytes()[:5000])
    shutil.copy(os.path.join(model_dir, "model_info.json"), tmp_path)
    with pytest.raises(ValueError, match="exists but could not be loaded") as raised:
        load_trained_model(str(tmp_path))
    message = str(raised.value)
    assert str(truncated) in message and "not a zip archive" in message and "File not found" not in message


def test_a_keras_file_without_model_info_names_both_paths(model_dir, tmp_path):
    alone = tmp_path / "alone.keras"
    shutil.copy(os.path.join(model_dir, "model.keras"), alone)
    with pytest.raises(FileNotFoundError, match="model_info.json") as raised:
        load_trained_model(str(alone))
    assert str(alone) in str(raised.value) and str(tmp_path / "model_info.json") in str(raised.value)
    assert "next to it" in str(raised.value)


def test_an_export_dir_that_is_itself_an_export_is_refused(export_dir):
    before = sorted(os.listdir(export_dir))
    with pytest.raises(FileExistsError, match="is itself an export") as raised:
        serving_export.export_model(tiny_model(), VOCABULARY, IMAGE_SIZE, RESIZE_POLICY, export_dir)
    assert f"({os.path.dirname(export_dir)})" in str(raised.value)
    assert sorted(os.listdir(export_dir)) == before  # No version nested inside the version folder.


def test_export_cli_refuses_a_version_folder_in_one_line(model_dir, export_dir):
    result = subprocess.run(
        [sys.executable, "-m", "e2e_tf.export", f"--model={model_dir}", f"--export_dir={export_dir}"],
        capture_output=True, text=True,
    )
    assert result.returncode == 1
    last_line = result.stderr.strip().splitlines()[-1]
    assert last_line.startswith(f"e2e_tf.export: error: --export_dir {export_dir} is itself an export")
    assert "Traceback" not in result.stderr and not os.path.exists(os.path.join(export_dir, "1"))
