"""Tests of `e2e_tf.ops.deformable_conv2d` against the contract in notes/deformable-conv.md.

Every test runs against both implementations through the `implementation` fixture.
"""

import logging
import sys

import numpy as np
import pytest
import tensorflow as tf

from e2e_tf.ops import deformable_conv2d
from e2e_tf.ops import implementation_scope
from e2e_tf.ops import resolve_implementation


def _random(rng, shape, dtype=np.float32):
    return rng.standard_normal(shape).astype(dtype)


def _reference_conv(x, kernel, strides, padding, dilation, groups):
    """Keras/TF Conv2D, grouped by splitting the channels (portable to every CPU build)."""
    xs = tf.split(x, groups, axis=-1)
    ks = tf.split(kernel, groups, axis=-1)
    return tf.concat([tf.nn.convolution(a, b, strides=strides, padding=padding.upper(),
                                        dilations=dilation) for a, b in zip(xs, ks)], axis=-1)


def _integer_reference(x, offsets, kernel, mask, strides, pads, dilation, groups):
    """NumPy deformable conv for integer offsets: each tap reads one pixel (zero outside)."""
    n, h, w, c = x.shape
    kh, kw, cg, f = kernel.shape
    _, ho, wo, oc = offsets.shape
    og = oc // (2 * kh * kw)
    margin = int(np.abs(offsets).max()) + max(kh, kw) * max(dilation) + max(pads) + 1
    padded = np.pad(x, [(0, 0), (margin, margin), (margin, margin), (0, 0)])
    off = offsets.reshape(n, ho, wo, og, kh * kw, 2).astype(np.int64)
    m = np.ones((n, ho, wo, og, kh * kw)) if mask is None else mask.reshape(n, ho, wo, og, -1)
    columns = np.zeros((n, ho, wo, kh * kw, c))
    ni = np.arange(n)[:, None, None]
    oy = np.arange(ho)[None, :, None] * strides[0] - pads[0]
    ox = np.arange(wo)[None, None, :] * strides[1] - pads[2]
    for g in range(og):
        chans = slice(g * c // og, (g + 1) * c // og)
        for i in range(kh):
            for j in range(kw):
                t = i * kw + j
                yy = oy + i * dilation[0] + off[..., g, t, 0] + margin
                xx = ox + j * dilation[1] + off[..., g, t, 1] + margin
                columns[:, :, :, t, chans] = padded[ni, yy, xx, chans] * m[..., g, t, None]
    out = np.zeros((n, ho, wo, f))
    fg = f // groups
    for gr in range(groups):
        cols = columns[..., gr * cg:(gr + 1) * cg].reshape(n, ho, wo, -1)
        out[..., gr * fg:(gr + 1) * fg] = cols @ kernel[..., gr * fg:(gr + 1) * fg].reshape(-1, fg)
    return out


def test_golden_value_and_half_mask(implementation):
    x = np.arange(25, dtype=np.float32).reshape(1, 5, 5, 1)
    kernel = np.ones((3, 3, 1, 1), np.float32)
    offsets = np.full((1, 5, 5, 18), 0.5, np.float32)
    expected = np.array([[30, 41.25, 48.75, 45, 28.75], [62.25, 81, 90, 80.25, 50.25],
                         [99.75, 126, 135, 117.75, 72.75], [105, 131.25, 138.75, 120, 73.75],
                         [71.75, 89.25, 93.75, 80.75, 49.5]], np.float32)
    out = deformable_conv2d(x, offsets, kernel, padding="same", implementation=implementation)
    np.testing.assert_allclose(out[0, ..., 0], expected, rtol=1e-6)
    half = deformable_conv2d(x, offsets, kernel, mask=np.full((1, 5, 5, 9), 0.5, np.float32),
                             padding="same", implementation=implementation)
    np.testing.assert_allclose(half[0, ..., 0], expected / 2, rtol=1e-6)


ZERO_OFFSET_CASES = {
    # name: (H, W, C, filters, kernel_size, strides, padding, dilation, groups)
    "3x3_same": (6, 6, 3, 4, (3, 3), (1, 1), "same", (1, 1), 1),
    "3x3_valid": (6, 5, 3, 4, (3, 3), (1, 1), "valid", (1, 1), 1),
    "stride2_valid": (7, 7, 3, 4, (3, 3), (2, 2), "valid", (1, 1), 1),
    "stride2_same": (7, 8, 2, 3, (3, 3), (2, 2), "same", (1, 1), 1),
    "dilation2_same": (8, 7, 2, 3, (3, 3), (1, 1), "same", (2, 2), 1),
    "dilation2_valid": (8, 7, 2, 3, (3, 3), (1, 1), "valid", (2, 2), 1),
    "groups2": (6, 5, 4, 6, (3, 3), (1, 1), "same", (1, 1), 2),
    "kernel3x2_stride2x1": (7, 5, 2, 3, (3, 2), (2, 1), "valid", (1, 1), 1),
    "kernel3x2_same": (6, 5, 2, 3, (3, 2), (1, 1), "same", (1, 1), 1),
    "dilation2x1": (7, 6, 2, 3, (3, 3), (1, 1), "same", (2, 1), 1),
    "input2x2_kernel3x3_same": (2, 2, 2, 3, (3, 3), (1, 1), "same", (1, 1), 1),
    "tall_input_1000x110": (1000, 110, 1, 1, (3, 3), (2, 1), "same", (1, 1), 1),
}


@pytest.mark.parametrize("case", ZERO_OFFSET_CASES.values(), ids=ZERO_OFFSET_CASES.keys())
def test_zero_offsets_equal_conv2d_output_and_gradients(case, implementation):
    h, w, c, f, ksize, strides, padding, dilation, groups = case
    rng = np.random.default_rng(0)
    x = tf.constant(_random(rng, (2, h, w, c)))
    kernel = tf.constant(_random(rng, (*ksize, c // groups, f)))
    expected_shape = _reference_conv(x, kernel, strides, padding, dilation, groups).shape
    offsets = tf.zeros((*expected_shape[:3], 2 * ksize[0] * ksize[1]))

    with tf.GradientTape(persistent=True) as tape:
        tape.watch([x, kernel])
        out = deformable_conv2d(x, offsets, kernel, strides=strides, padding=padding,
                                dilation_rate=dilation, groups=groups,
                                implementation=implementation)
        ref = _reference_conv(x, kernel, strides, padding, dilation, groups)
        loss, ref_loss = tf.reduce_sum(out), tf.reduce_sum(ref)
    assert out.shape == ref.shape
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-4)
    for var in (kernel, x):
        np.testing.assert_allclose(tape.gradient(loss, var), tape.gradient(ref_loss, var),
                                   rtol=1e-4, atol=1e-4)


def test_constant_integer_offsets_equal_conv2d_of_shifted_input(implementation):
    rng = np.random.default_rng(1)
    x = _random(rng, (2, 7, 8, 3))
    kernel = _random(rng, (3, 3, 3, 4))
    dy, dx = 1, -2
    offsets = np.tile(np.array([dy, dx], np.float32), (2, 5, 6, 9))
    # Sampling at (y + dy, x + dx) with zeros outside == convolving the zero-padded, shifted input.
    padded = np.pad(x, [(0, 0), (3, 3), (3, 3), (0, 0)])
    shifted = padded[:, 3 + dy:3 + dy + 7, 3 + dx:3 + dx + 8]
    expected = tf.nn.conv2d(shifted, kernel, 1, "VALID")
    out = deformable_conv2d(x, offsets, kernel, implementation=implementation)
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("strides,padding,dilation,groups", [
    ((1, 1), "same", (1, 1), 1), ((2, 1), "valid", (1, 1), 2), ((1, 1), "same", (1, 2), 1)])
def test_per_pixel_integer_offsets_and_mask_follow_the_channel_order(
        strides, padding, dilation, groups, implementation):
    rng = np.random.default_rng(2)
    x = _random(rng, (2, 6, 5, 4))
    kernel = _random(rng, (3, 2, 4 // groups, 4))
    offset_groups = 2
    (ho, top, bottom), (wo, left, right) = (
        _output_size_and_pads(size, k, s, d, padding)
        for size, k, s, d in zip((6, 5), (3, 2), strides, dilation))
    offsets = rng.integers(-3, 4, (2, ho, wo, 2 * offset_groups * 6)).astype(np.float32)
    mask = rng.uniform(0, 1, (2, ho, wo, offset_groups * 6)).astype(np.float32)
    pads = (top, bottom, left, right)
    expected = _integer_reference(x, offsets, kernel, mask, strides, pads, dilation, groups)
    out = deformable_conv2d(x, offsets, kernel, mask=mask, strides=strides, padding=padding,
                            dilation_rate=dilation, groups=groups, implementation=implementation)
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-4)


def _output_size_and_pads(size, kernel, stride, dilation, padding):
    """Keras Conv2D's output size and (before, after) padding along one axis."""
    span = dilation * (kernel - 1) + 1
    if padding == "valid":
        return (size - span) // stride + 1, 0, 0
    out = -(-size // stride)
    total = max((out - 1) * stride + span - size, 0)
    return out, total // 2, total - total // 2


def _small_problem(rng, batch, mask=True):
    x = _random(rng, (batch, 5, 4, 2))
    offsets = 2 * _random(rng, (batch, 5, 4, 18))
    m = rng.uniform(0, 1, (batch, 5, 4, 9)).astype(np.float32) if mask else None
    kernel = _random(rng, (3, 3, 2, 3))
    return x, offsets, m, kernel


@pytest.mark.parametrize("batch", [1, 2, 33, 37])
def test_each_sample_equals_running_it_alone(batch, implementation):
    x, offsets, mask, kernel = _small_problem(np.random.default_rng(batch), batch)
    x, offsets = tf.constant(x), tf.constant(offsets)
    with tf.GradientTape() as tape:
        tape.watch([x, offsets])
        out = deformable_conv2d(x, offsets, kernel, mask=mask, padding="same",
                                implementation=implementation)
        loss = tf.reduce_sum(out * out)
    grad_x, grad_offsets = tape.gradient(loss, [x, offsets])
    for n in sorted({0, batch // 2, batch - 1}) if batch > 2 else range(batch):
        with tf.GradientTape() as tape:
            xn, on = x[n:n + 1], offsets[n:n + 1]
            tape.watch([xn, on])
            alone = deformable_conv2d(xn, on, kernel, mask=mask[n:n + 1], padding="same",
                                      implementation=implementation)
            loss_n = tf.reduce_sum(alone * alone)
        np.testing.assert_allclose(out[n:n + 1], alone, rtol=1e-5, atol=1e-5)
        gx, go = tape.gradient(loss_n, [xn, on])
        np.testing.assert_allclose(grad_x[n:n + 1], gx, rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(grad_offsets[n:n + 1], go, rtol=1e-4, atol=1e-4)
    if batch > 2:  # every sample's output, not only the ones whose gradients were compared
        alone = [deformable_conv2d(x[n:n + 1], offsets[n:n + 1], kernel, mask=mask[n:n + 1],
                                   padding="same", implementation=implementation)
                 for n in range(batch)]
        np.testing.assert_allclose(out, tf.concat(alone, 0), rtol=1e-5, atol=1e-5)


def test_batch_of_zero(implementation):
    x, offsets, mask, kernel = _small_problem(np.random.default_rng(0), 0)
    kernel = tf.constant(kernel)
    with tf.GradientTape() as tape:
        tape.watch(kernel)
        out = deformable_conv2d(x, offsets, kernel, mask=mask, padding="same",
                                implementation=implementation)
        loss = tf.reduce_sum(out)
    assert out.shape == (0, 5, 4, 3)
    np.testing.assert_array_equal(tape.gradient(loss, kernel), np.zeros((3, 3, 2, 3)))


def test_unknown_batch_and_spatial_size(implementation):
    rng = np.random.default_rng(3)
    kernel = _random(rng, (3, 3, 4, 2))

    @tf.function(input_signature=[tf.TensorSpec([None, None, None, 4]),
                                  tf.TensorSpec([None, None, None, 36])])
    def run(x, offsets):
        out = deformable_conv2d(x, offsets, kernel, strides=2, padding="same",
                                implementation=implementation)
        assert out.shape.as_list() == [None, None, None, 2]
        return out

    for shape in ((2, 7, 6), (1, 4, 9)):
        x = _random(rng, (*shape, 4))
        offsets = _random(rng, (shape[0], (shape[1] + 1) // 2, (shape[2] + 1) // 2, 36))
        eager = deformable_conv2d(x, offsets, kernel, strides=2, padding="same",
                                  implementation=implementation)
        np.testing.assert_allclose(run(x, offsets), eager, rtol=1e-5, atol=1e-5)


def test_offsets_at_the_wrong_resolution_name_both_shapes(implementation):
    rng = np.random.default_rng(4)
    x, kernel = _random(rng, (1, 8, 8, 2)), _random(rng, (3, 3, 2, 2))
    offsets = np.zeros((1, 8, 8, 18), np.float32)  # input resolution, but stride 2 gives 4x4
    with pytest.raises(ValueError, match=r"\(1, 8, 8, 2\).*\(1, 8, 8, 18\)"):
        deformable_conv2d(x, offsets, kernel, strides=2, padding="same",
                          implementation=implementation)

    @tf.function(input_signature=[tf.TensorSpec([None, None, None, 2]),
                                  tf.TensorSpec([None, None, None, 18])])
    def run(x, offsets):
        return deformable_conv2d(x, offsets, kernel, strides=2, padding="same",
                                 implementation=implementation)

    with pytest.raises(tf.errors.InvalidArgumentError, match=r"offsets[\s\S]*\[1 8 8 18\]"):
        run(x, offsets)


@pytest.mark.parametrize("kernel_shape,offset_channels,mask_channels,groups,message", [
    ((3, 3, 3, 4), 17, None, 1, "offsets"),
    ((3, 3, 3, 4), 36, None, 1, "divisible by offset_groups"),
    ((3, 3, 1, 4), 18, None, 2, r"kernel.shape\[2\] \* groups"),
    ((3, 3, 1, 3), 18, None, 3, None),  # valid: C=3, groups=3, filters=3
    ((3, 3, 1, 4), 18, None, 3, "divisible by groups"),
    ((3, 3, 3, 4), 18, 18, 1, "mask"),
])
def test_invalid_shapes_are_rejected_with_the_shapes(kernel_shape, offset_channels,
                                                     mask_channels, groups, message):
    x = np.zeros((1, 5, 5, 3), np.float32)
    offsets = np.zeros((1, 5, 5, offset_channels), np.float32)
    mask = None if mask_channels is None else np.zeros((1, 5, 5, mask_channels), np.float32)
    kernel = np.zeros(kernel_shape, np.float32)
    call = lambda: deformable_conv2d(x, offsets, kernel, mask=mask, padding="same",  # noqa: E731
                                     groups=groups, implementation="pure_tf")
    if message is None:
        assert call().shape == (1, 5, 5, kernel_shape[-1])
    else:
        with pytest.raises(ValueError, match=message):
            call()


@pytest.mark.parametrize("value", [1e3, -1e3, 1e6, 1e10, np.inf, -np.inf, np.nan])
def test_huge_and_nan_offsets_contribute_nothing(value, implementation):
    rng = np.random.default_rng(5)
    x, offsets, _, kernel = _small_problem(rng, 2, mask=False)
    x, kernel = tf.constant(x), tf.constant(kernel)
    # Tap 0: dy only; tap 4: dx only; tap 8: both. Each such sample is outside the image.
    bad = np.zeros(18, bool)
    bad[[0, 9, 16, 17]] = True
    wild = tf.constant(np.where(bad, np.float32(value), offsets))
    tame = tf.constant(np.where(bad, np.float32(0), offsets))
    off_taps = np.ones((2, 5, 4, 9), np.float32)
    off_taps[..., [0, 4, 8]] = 0.0
    results = []
    for off, mask in ((wild, None), (tame, off_taps)):
        with tf.GradientTape() as tape:
            tape.watch([x, off, kernel])
            out = deformable_conv2d(x, off, kernel, mask=mask, padding="same",
                                    implementation=implementation)
            loss = tf.reduce_sum(out * out)
        results.append([out, *tape.gradient(loss, [x, off, kernel])])
    for got in results[0]:
        assert np.all(np.isfinite(got))
    for got, want in zip(results[0], results[1]):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    grad_offsets = results[0][2].numpy().reshape(2, 5, 4, 9, 2)
    np.testing.assert_array_equal(grad_offsets[..., [0, 4, 8], :], 0.0)


def test_float64_gradients_match_finite_differences(implementation):
    rng = np.random.default_rng(6)
    x = rng.standard_normal((1, 4, 3, 2))
    kernel = rng.standard_normal((2, 2, 2, 2))
    # Offsets k + u keep every sample at least 0.05 from the integer kinks of bilinear sampling.
    offsets = rng.integers(-2, 2, (1, 4, 3, 16)) + rng.uniform(0.05, 0.95, (1, 4, 3, 16))
    mask = rng.uniform(0.2, 1.0, (1, 4, 3, 8))

    @tf.function
    def f(x, offsets, kernel, mask):
        return deformable_conv2d(x, offsets, kernel, mask=mask, padding="same",
                                 implementation=implementation)

    theoretical, numerical = tf.test.compute_gradient(f, [x, offsets, kernel, mask], delta=1e-4)
    for t, n in zip(theoretical, numerical):
        np.testing.assert_allclose(t, n, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("axis", [0, 1])
def test_offset_gradient_is_the_right_hand_derivative_at_integers(axis, implementation):
    """At integer sample coordinates, including -1, d(out)/d(offset) = v(c + 1) - v(c)
    with v = 0 outside the image; far outside (c < -1 or c >= size) it is 0."""
    rng = np.random.default_rng(7)
    h, w = 4, 5
    image = rng.uniform(1.0, 2.0, (h, w))
    size = (h, w)[axis]
    targets = rng.integers(-3, size + 2, (h, w))  # integer sample coordinate along `axis`
    targets.flat[:4] = [-1, size - 1, -2, size]
    base = np.indices((h, w))[axis]
    offsets = np.zeros((1, h, w, 2))
    offsets[0, ..., axis] = targets - base
    offsets = tf.constant(offsets)
    with tf.GradientTape() as tape:
        tape.watch(offsets)
        out = deformable_conv2d(image[None, ..., None], offsets, np.ones((1, 1, 1, 1)),
                                implementation=implementation)
    grad = tape.gradient(out, offsets).numpy()[0, ..., axis]

    padded = np.pad(image, 4)  # v(c) for c in [-4, size + 3], zero outside the image
    value = np.zeros((h, w))
    expected = np.zeros((h, w))
    for (r, c), t in np.ndenumerate(targets):
        at = (t, c) if axis == 0 else (r, t)
        step = (t + 1, c) if axis == 0 else (r, t + 1)
        value[r, c] = padded[at[0] + 4, at[1] + 4]
        if -1 <= t < size:
            expected[r, c] = padded[step[0] + 4, step[1] + 4] - value[r, c]
    np.testing.assert_allclose(out[0, ..., 0], value, rtol=1e-12)
    np.testing.assert_allclose(grad, expected, rtol=1e-12, atol=1e-12)
    assert grad[0, 0] == pytest.approx(image[0, 0])  # at -1: the pixel at row/column 0


@pytest.fixture
def without_compiled_op(monkeypatch):
    """Makes the compiled op look unbuilt and re-arms the once-per-process warning."""
    switch = sys.modules["e2e_tf.ops.deformable_conv2d"]
    monkeypatch.setattr(switch, "_load_custom_op", lambda: (None, "no library (test)"))
    monkeypatch.setattr(switch, "_fallback_warned", False)
    monkeypatch.delenv(switch.FORCE_PURE_TF_ENV, raising=False)
    return switch


def test_auto_falls_back_with_one_warning(without_compiled_op, caplog):
    with caplog.at_level(logging.WARNING, logger=without_compiled_op.__name__):
        assert resolve_implementation("auto") == "pure_tf"
        assert resolve_implementation("auto") == "pure_tf"
        x = np.zeros((1, 3, 3, 1), np.float32)
        deformable_conv2d(x, np.zeros((1, 3, 3, 2), np.float32), np.ones((1, 1, 1, 1), np.float32))
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "no library (test)" in warnings[0].getMessage()


def test_explicit_custom_op_without_the_library_raises_the_load_error(without_compiled_op):
    with pytest.raises(RuntimeError, match=r"custom_op[\s\S]*no library \(test\)"):
        resolve_implementation("custom_op")


def test_scope_and_environment_variable_force_pure_tf(without_compiled_op, monkeypatch):
    monkeypatch.setattr(without_compiled_op, "_load_custom_op", lambda: (object(), None))
    assert resolve_implementation("auto") == "custom_op"
    with implementation_scope("pure_tf"):
        assert resolve_implementation("custom_op") == "pure_tf"
        with implementation_scope("auto"):
            assert resolve_implementation("pure_tf") == "custom_op"
        assert resolve_implementation("auto") == "pure_tf"
    assert resolve_implementation("auto") == "custom_op"
    monkeypatch.setenv(without_compiled_op.FORCE_PURE_TF_ENV, "1")
    assert resolve_implementation("custom_op") == "pure_tf"
    with pytest.raises(ValueError, match="Received: implementation='cuda'"):
        with implementation_scope("cuda"):
            pass


def test_graph_traced_in_a_pure_tf_scope_holds_only_stock_ops(implementation):
    kernel = np.ones((3, 3, 2, 2), np.float32)

    @tf.function(input_signature=[tf.TensorSpec([None, None, None, 2]),
                                  tf.TensorSpec([None, None, None, 18])])
    def run(x, offsets):
        return deformable_conv2d(x, offsets, kernel, padding="same",
                                 implementation=implementation)

    with implementation_scope("pure_tf"):
        graph = run.get_concrete_function().graph
    assert not [op.type for op in graph.get_operations() if op.type.startswith("E2eTf")]


def test_pure_tf_path_compiles_with_xla():
    """Keras jit-compiles models on GPUs when every layer allows it, as the pure-TF path does."""
    x, offsets, mask, kernel = _small_problem(np.random.default_rng(8), 2)
    x, offsets = tf.constant(x), tf.constant(offsets)

    def forward_and_gradients(x, offsets):
        with tf.GradientTape() as tape:
            tape.watch([x, offsets])
            out = deformable_conv2d(x, offsets, kernel, mask=mask, padding="same",
                                    implementation="pure_tf")
            loss = tf.reduce_sum(out * out)
        return [out, *tape.gradient(loss, [x, offsets])]

    compiled = tf.function(forward_and_gradients, jit_compile=True)(x, offsets)
    for got, want in zip(compiled, forward_and_gradients(x, offsets)):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
