"""The compiled E2eTf>DeformableConv2D op against the pure-TF path, the note's golden
value and gradient convention, and its shape checks."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from e2e_tf.custom_ops.ops import deformable_conv2d_ops as custom
from e2e_tf.ops.deformable_sampling import deformable_conv2d_pure_tf

if not custom.is_available() and os.environ.get("CI", "").lower() == "true":
    pytest.fail(f"CI=true but the compiled DeformableConv2D op is not available: "
                f"{custom.load_error()}", pytrace=False)

pytestmark = pytest.mark.skipif(
    not custom.is_available(),
    reason=f"compiled DeformableConv2D op not built: {custom.load_error()}")


def _geometry(h, w, kh, kw, strides, pads, dilations):
    ho = (h + pads[0] + pads[1] - (dilations[0] * (kh - 1) + 1)) // strides[0] + 1
    wo = (w + pads[2] + pads[3] - (dilations[1] * (kw - 1) + 1)) // strides[1] + 1
    return ho, wo


def _problem(rng, *, batch=2, size=(6, 5), channels=4, filters=6, kernel=(3, 3),
             strides=(1, 1), pads=(1, 1, 1, 1), dilations=(1, 1), groups=1, offset_groups=1,
             use_mask=False, offset_scale=1.5, dtype=tf.float64):
    ho, wo = _geometry(*size, *kernel, strides, pads, dilations)
    taps = kernel[0] * kernel[1]
    tensors = {
        "inputs": rng.normal(size=(batch, *size, channels)),
        "offsets": rng.normal(size=(batch, ho, wo, 2 * offset_groups * taps)) * offset_scale,
        "kernel": rng.normal(size=(*kernel, channels // groups, filters)),
        "mask": rng.uniform(size=(batch, ho, wo, offset_groups * taps)) if use_mask else None,
    }
    tensors = {k: None if v is None else tf.constant(v, dtype) for k, v in tensors.items()}
    attrs = dict(strides=strides, pads=pads, dilations=dilations, groups=groups,
                 offset_groups=offset_groups)
    return tensors, attrs


def _forward_and_grads(fn, tensors, attrs):
    """Output and gradients of a non-linear loss w.r.t. every input tensor."""
    sources = {k: v for k, v in tensors.items() if v is not None}
    with tf.GradientTape() as tape:
        tape.watch(list(sources.values()))
        y = fn(tensors["inputs"], tensors["offsets"], tensors["kernel"], tensors["mask"], **attrs)
        loss = tf.reduce_sum(y * tf.cos(y))
    grads = tape.gradient(loss, sources)
    return {"output": y, **{"grad_" + k: g for k, g in grads.items()}}


def _assert_close(actual: dict, expected: dict, rtol: float):
    for name, want in expected.items():
        want = np.asarray(want)
        got = np.asarray(actual[name])
        assert got.shape == want.shape, name
        scale = max(float(np.max(np.abs(want), initial=0.0)), 1e-12)
        error = float(np.max(np.abs(got - want), initial=0.0)) / scale
        assert error <= rtol, f"{name}: max error {error:.3g} relative to max |value| > {rtol}"


PARITY_CASES = {
    "plain": {},
    "grouped": dict(channels=4, filters=6, groups=2),
    "offset_grouped": dict(channels=6, offset_groups=3),
    "groups_and_offset_groups": dict(channels=6, filters=4, groups=2, offset_groups=3),
    "strided": dict(size=(7, 6), strides=(2, 1)),
    "dilated": dict(size=(7, 7), dilations=(2, 1), pads=(2, 2, 1, 1)),
    "non_square": dict(size=(9, 4), kernel=(3, 2), pads=(1, 0, 0, 1)),
    "masked": dict(use_mask=True, offset_groups=2),
    "batch_33_small_chunks": dict(batch=33, size=(4, 3), channels=2, filters=3,
                                  use_mask=True, chunk_rows=7),
    "huge_offsets": dict(offset_scale=1e3),
    # Channel runs of 8 and more take the CPU's vectorised sampling loops; 10, 12 and 17
    # also leave remainders, and runs split where groups and offset groups do not align.
    "wide_offset_groups": dict(channels=20, filters=5, offset_groups=2, use_mask=True),
    "wide_groups_and_offset_groups": dict(channels=24, filters=6, groups=3, offset_groups=2),
    "wide_small_chunks": dict(batch=5, channels=17, filters=4, use_mask=True, chunk_rows=5),
    # More than 64 filters: the CPU kernel-gradient GEMM packs its transposed operand.
    "many_filters": dict(channels=3, filters=80),
}


@pytest.mark.parametrize("dtype,rtol", [(tf.float64, 1e-9), (tf.float32, 1e-4)],
                         ids=["float64", "float32"])
@pytest.mark.parametrize("case", list(PARITY_CASES))
def test_matches_pure_tf_output_and_every_gradient(case, dtype, rtol):
    params = dict(PARITY_CASES[case])
    chunk_rows = params.pop("chunk_rows", 0)
    tensors, attrs = _problem(np.random.default_rng(len(case)), dtype=dtype, **params)

    def compiled(*args, **kwargs):
        return custom.deformable_conv2d(*args, chunk_rows=chunk_rows, **kwargs)

    _assert_close(_forward_and_grads(compiled, tensors, attrs),
                  _forward_and_grads(deformable_conv2d_pure_tf, tensors, attrs), rtol)


def test_infinite_and_huge_offsets_contribute_nothing():
    tensors, attrs = _problem(np.random.default_rng(1), use_mask=True)
    offsets = tensors["offsets"].numpy()
    offsets[0, ..., 0::4] = 1e6
    offsets[1, ..., 1::4] = -np.inf
    offsets[0, :2, :, 3::4] = np.inf
    offsets[1, 2:, :, 2::4] = 3e9  # beyond int32 after adding the grid
    tensors["offsets"] = tf.constant(offsets)
    got = _forward_and_grads(custom.deformable_conv2d, tensors, attrs)
    for value in got.values():
        assert np.all(np.isfinite(value))
    far = ~np.isfinite(offsets) | (np.abs(offsets) > 1e5)
    assert np.all(got["grad_offsets"].numpy()[far] == 0.0)
    _assert_close(got, _forward_and_grads(deformable_conv2d_pure_tf, tensors, attrs), 1e-9)


def test_nan_offsets_sample_nothing():
    tensors, attrs = _problem(np.random.default_rng(2))
    offsets = tensors["offsets"].numpy()
    offsets[0, 1, 1, :] = np.nan
    y_nan = custom.deformable_conv2d(tensors["inputs"], tf.constant(offsets), tensors["kernel"],
                                     None, **attrs)
    offsets[0, 1, 1, :] = 1e6
    y_far = custom.deformable_conv2d(tensors["inputs"], tf.constant(offsets), tensors["kernel"],
                                     None, **attrs)
    np.testing.assert_array_equal(y_nan.numpy(), y_far.numpy())
    assert np.all(y_nan.numpy()[0, 1, 1] == 0.0)


def test_golden_value_from_the_note():
    inputs = tf.reshape(tf.range(25, dtype=tf.float32), (1, 5, 5, 1))
    kernel = tf.ones((3, 3, 1, 1))
    offsets = tf.fill((1, 5, 5, 18), 0.5)
    attrs = dict(strides=(1, 1), pads=(1, 1, 1, 1), dilations=(1, 1), groups=1, offset_groups=1)
    expected = np.array([[30, 41.25, 48.75, 45, 28.75], [62.25, 81, 90, 80.25, 50.25],
                         [99.75, 126, 135, 117.75, 72.75], [105, 131.25, 138.75, 120, 73.75],
                         [71.75, 89.25, 93.75, 80.75, 49.5]])
    y = custom.deformable_conv2d(inputs, offsets, kernel, None, **attrs)
    np.testing.assert_allclose(y.numpy()[0, ..., 0], expected, rtol=1e-6)
    y_half = custom.deformable_conv2d(inputs, offsets, kernel, tf.fill((1, 5, 5, 9), 0.5),
                                      **attrs)
    np.testing.assert_allclose(y_half.numpy()[0, ..., 0], expected / 2, rtol=1e-6)


def test_zero_offsets_is_conv2d_with_its_kernel_gradient():
    rng = np.random.default_rng(3)
    tensors, attrs = _problem(rng, channels=4, filters=5, offset_scale=0.0,
                              strides=(2, 1), pads=(1, 1, 1, 1))
    x, k = tensors["inputs"], tensors["kernel"]
    with tf.GradientTape(persistent=True) as tape:
        tape.watch([x, k])
        y = custom.deformable_conv2d(x, tensors["offsets"], k, None, **attrs)
        y_ref = tf.nn.conv2d(tf.pad(x, [[0, 0], [1, 1], [1, 1], [0, 0]]), k, (1, 2, 1, 1),
                             "VALID")
        loss, loss_ref = tf.reduce_sum(y), tf.reduce_sum(y_ref)
    np.testing.assert_allclose(y.numpy(), y_ref.numpy(), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(tape.gradient(loss, k).numpy(), tape.gradient(loss_ref, k).numpy(),
                               rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(tape.gradient(loss, x).numpy(), tape.gradient(loss_ref, x).numpy(),
                               rtol=1e-12, atol=1e-12)


def test_compute_gradient_matches_central_differences():
    rng = np.random.default_rng(4)
    tensors, attrs = _problem(rng, batch=1, size=(4, 4), channels=2, filters=2, use_mask=True,
                              offset_groups=2, strides=(1, 2))
    # Offsets k + u with u in [0.05, 0.95]: no sample is near a kink of the bilinear map.
    whole = rng.integers(-2, 2, size=tensors["offsets"].shape)
    tensors["offsets"] = tf.constant(whole + rng.uniform(0.05, 0.95, size=whole.shape))
    names = ["inputs", "offsets", "kernel", "mask"]

    def fn(*values):
        return custom.deformable_conv2d(*values, **attrs)

    theoretical, numerical = tf.test.compute_gradient(fn, [tensors[n] for n in names], delta=1e-6)
    for name, t, n in zip(names, theoretical, numerical):
        np.testing.assert_allclose(t, n, rtol=1e-6, atol=1e-7, err_msg=name)


def _one_tap_offset_gradient(dy: float, dx: float):
    """Value and offset gradient of a 1x1 deformable conv with one output pixel (3x3 image)."""
    image = tf.constant(np.arange(1.0, 10.0).reshape(1, 3, 3, 1) ** 2)
    offsets = tf.constant([[[[dy, dx]]]], tf.float64)
    with tf.GradientTape() as tape:
        tape.watch(offsets)
        y = custom.deformable_conv2d(image, offsets, tf.ones((1, 1, 1, 1), tf.float64), None,
                                     strides=(3, 3), pads=(0, 0, 0, 0), dilations=(1, 1),
                                     groups=1, offset_groups=1)[0, 0, 0, 0]
    return float(y), tape.gradient(y, offsets).numpy().reshape(2), image.numpy()[0, ..., 0]


def test_gradient_convention_at_integers_and_at_minus_one():
    # Integer coordinate (1, 1): the value is the pixel, the gradient the right-hand difference.
    value, grad, image = _one_tap_offset_gradient(1.0, 1.0)
    assert value == image[1, 1]
    np.testing.assert_allclose(grad, [image[2, 1] - image[1, 1], image[1, 2] - image[1, 1]])
    # y = -1 exactly: nothing sampled, but d/dy is the row-0 pixel (right-hand derivative).
    value, grad, image = _one_tap_offset_gradient(-1.0, 0.0)
    assert value == 0.0
    np.testing.assert_allclose(grad, [image[0, 0], 0.0])
    # Beyond one pixel outside: zero value and zero gradient.
    value, grad, _ = _one_tap_offset_gradient(-1.5, 0.0)
    assert value == 0.0 and np.all(grad == 0.0)


def test_integer_offsets_match_pure_tf_gradients():
    tensors, attrs = _problem(np.random.default_rng(5), use_mask=True)
    tensors["offsets"] = tf.round(tensors["offsets"] * 2.0)
    _assert_close(_forward_and_grads(custom.deformable_conv2d, tensors, attrs),
                  _forward_and_grads(deformable_conv2d_pure_tf, tensors, attrs), 1e-9)


def test_each_sample_equals_running_it_alone():
    tensors, attrs = _problem(np.random.default_rng(6), batch=2, use_mask=True)
    both = custom.deformable_conv2d(tensors["inputs"], tensors["offsets"], tensors["kernel"],
                                    tensors["mask"], **attrs)
    for i in range(2):
        alone = custom.deformable_conv2d(tensors["inputs"][i:i + 1], tensors["offsets"][i:i + 1],
                                         tensors["kernel"], tensors["mask"][i:i + 1], **attrs)
        np.testing.assert_allclose(both[i:i + 1].numpy(), alone.numpy(), rtol=1e-13, atol=1e-13)


def test_batch_zero_gives_empty_output_and_zero_kernel_gradient():
    tensors, attrs = _problem(np.random.default_rng(7), batch=0, use_mask=True)
    got = _forward_and_grads(custom.deformable_conv2d, tensors, attrs)
    assert got["output"].shape == (0, 6, 5, 6)
    assert got["grad_offsets"].shape == tensors["offsets"].shape
    np.testing.assert_array_equal(got["grad_kernel"].numpy(), np.zeros((3, 3, 4, 6)))


@pytest.mark.parametrize("dtype", [tf.float16, tf.bfloat16])
def test_half_precision_computes_in_float32(dtype):
    tensors, attrs = _problem(np.random.default_rng(8), dtype=tf.float32, use_mask=True)
    low = {k: None if v is None else tf.cast(v, dtype) for k, v in tensors.items()}
    got = _forward_and_grads(custom.deformable_conv2d, low, attrs)
    assert got["output"].dtype == dtype
    want = _forward_and_grads(custom.deformable_conv2d,
                              {k: None if v is None else tf.cast(v, tf.float32)
                               for k, v in low.items()}, attrs)
    _assert_close({k: tf.cast(v, tf.float32) for k, v in got.items()}, want,
                  0.03 if dtype == tf.bfloat16 else 5e-3)


def test_unknown_dimensions_are_accepted_by_the_shape_function():
    attrs = dict(strides=(2, 2), pads=(1, 1, 1, 1), dilations=(1, 1), groups=1, offset_groups=1)
    spec = [tf.TensorSpec((None, None, None, 4), tf.float32),
            tf.TensorSpec((None, None, None, 18), tf.float32),
            tf.TensorSpec((3, 3, 4, 8), tf.float32)]
    traced = tf.function(lambda x, o, k: custom.deformable_conv2d(x, o, k, None, **attrs))
    concrete = traced.get_concrete_function(*spec)
    assert concrete.output_shapes.as_list() == [None, None, None, 8]
    static = tf.function(lambda x, o, k: custom.deformable_conv2d(x, o, k, None, **attrs))
    known = static.get_concrete_function(tf.TensorSpec((2, 9, 8, 4)),
                                         tf.TensorSpec((None, 5, 4, 18)),
                                         tf.TensorSpec((3, 3, 4, 8)))
    assert known.output_shapes.as_list() == [2, 5, 4, 8]


@pytest.mark.parametrize("shapes,attrs,message", [
    # Offsets predicted at the input resolution for a stride-2 conv.
    (((1, 8, 8, 4), (1, 8, 8, 18), (3, 3, 4, 4)), dict(strides=(2, 2)), r"offsets.*\[1,8,8,18\]"),
    (((1, 8, 8, 4), (1, 8, 8, 16), (3, 3, 4, 4)), {}, r"offsets.*\[1,8,8,16\]"),
    (((1, 8, 8, 5), (1, 8, 8, 18), (3, 3, 2, 4)), dict(groups=2), r"input \[1,8,8,5\]"),
    (((1, 8, 8, 6), (1, 8, 8, 18), (3, 3, 6, 4)), dict(offset_groups=4), r"offset_groups=4"),
    (((1, 8, 8, 4), (1, 8, 8, 18), (3, 3, 2, 5)), dict(groups=2), r"kernel \[3,3,2,5\]"),
    (((1, 2, 2, 4), (1, 1, 1, 18), (3, 3, 4, 4)), dict(pads=(0, 0, 0, 0)), r"smaller than"),
])
def test_shape_function_rejects_inconsistent_shapes(shapes, attrs, message):
    params = dict(strides=(1, 1), pads=(1, 1, 1, 1), dilations=(1, 1), groups=1,
                  offset_groups=1)
    params.update(attrs)
    specs = [tf.TensorSpec(s, tf.float32) for s in shapes]
    traced = tf.function(lambda x, o, k: custom.deformable_conv2d(x, o, k, None, **params))
    with pytest.raises(ValueError, match=message):
        traced.get_concrete_function(*specs)


def test_kernel_rechecks_shapes_that_were_unknown_when_traced():
    traced = tf.function(
        lambda x, o, k: custom.deformable_conv2d(x, o, k, None, strides=(2, 2),
                                                 pads=(1, 1, 1, 1), dilations=(1, 1), groups=1,
                                                 offset_groups=1),
        input_signature=[tf.TensorSpec((None, None, None, 4)),
                         tf.TensorSpec((None, None, None, 18)), tf.TensorSpec((3, 3, 4, 4))])
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"offsets has shape \[1,8,8,18\]"):
        traced(tf.zeros((1, 8, 8, 4)), tf.zeros((1, 8, 8, 18)), tf.zeros((3, 3, 4, 4)))


def test_public_op_dispatches_to_the_compiled_op():
    from e2e_tf.ops import deformable_conv2d

    tensors, _ = _problem(np.random.default_rng(9), dtype=tf.float32)

    @tf.function
    def run():
        return deformable_conv2d(tensors["inputs"], tensors["offsets"], tensors["kernel"],
                                 padding="same", implementation="custom_op")

    graph_ops = {op.type for op in run.get_concrete_function().graph.get_operations()}
    assert "E2eTf>DeformableConv2D" in graph_ops
    pure = deformable_conv2d(tensors["inputs"], tensors["offsets"], tensors["kernel"],
                             padding="same", implementation="pure_tf")
    np.testing.assert_allclose(run().numpy(), pure.numpy(), rtol=1e-4, atol=1e-4)


def test_a_library_that_fails_to_load_leaves_import_and_the_fallback_working(tmp_path):
    broken = tmp_path / "_deformable_conv2d_ops.so"
    broken.write_bytes(b"not an ELF file")
    script = (
        "import e2e_tf, tensorflow as tf\n"
        "from e2e_tf.custom_ops.ops import deformable_conv2d_ops as m\n"
        "from e2e_tf.ops import deformable_conv2d\n"
        "assert not m.is_available()\n"
        "print(m.load_error())\n"
        "y = deformable_conv2d(tf.ones((1, 4, 4, 2)), tf.zeros((1, 4, 4, 18)),\n"
        "                      tf.ones((3, 3, 2, 3)), padding='same')\n"
        "print(float(y[0, 1, 1, 0]))\n")
    env = dict(os.environ, E2E_TF_DEFORMABLE_OP_LIBRARY=str(broken))
    env.pop("E2E_TF_PURE_TF_DEFORMABLE", None)
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.strip().splitlines()
    assert str(broken) in lines[-2] and "failed to load" in lines[-2]
    assert float(lines[-1]) == 18.0  # 3x3 taps x 2 channels of ones: a plain convolution


@pytest.mark.parametrize("from_env", [True, False])
def test_a_missing_library_error_names_where_the_path_came_from(from_env, tmp_path, monkeypatch):
    """A wrong $E2E_TF_DEFORMABLE_OP_LIBRARY is named as such, not as a failed install."""
    missing = tmp_path / "nonexistent.so"
    if from_env:
        monkeypatch.setenv(custom.LIBRARY_ENV, str(missing))
    else:
        monkeypatch.delenv(custom.LIBRARY_ENV, raising=False)
        monkeypatch.setattr(custom, "LIBRARY_NAME", missing.name)
    # A fresh load attempt; monkeypatch restores the loaded library afterwards.
    for name, value in (("_loaded", False), ("_library", None), ("_load_error", None)):
        monkeypatch.setattr(custom, name, value)
    assert not custom.is_available()
    error = custom.load_error()
    if from_env:
        assert error.startswith(f"${custom.LIBRARY_ENV} points at {missing}") and "does not exist" in error
        assert "not compiled" not in error
    else:
        assert "does not exist" in error and "not compiled when the project was installed" in error


@pytest.mark.parametrize("isa", ["avx2", "portable"])
def test_narrower_cpu_gemm_kernels_match_pure_tf(isa):
    """The suite above checks the widest GEMM micro-kernel this CPU runs; these rerun its
    parity cases (all tile edges, the packed transposed operand) with a narrower one forced."""
    selection = "test_matches_pure_tf_output_and_every_gradient and (plain or grouped or many_filters or wide_small_chunks or batch_33)"
    env = dict(os.environ, E2E_TF_CPU_GEMM_ISA=isa)
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__, "-k", selection],
        env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert "12 passed" in result.stdout, result.stdout[-2000:]
