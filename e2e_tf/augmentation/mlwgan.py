"""ML-WGAN: one Wasserstein GAN per training image, many trained at once (paper section III-A).

Each GAN's "real distribution" is a single training image; images its generator produces during
training approach that image and inherit its labels exactly. Training thousands of small GANs
one after another is dominated by per-step overhead, so `MultiImageWGAN` holds `num_models`
independent GANs whose weights carry a leading model axis and trains them all in one traced
step. The models never share anything: losses are summed over the model axis (so each model's
gradient is exactly its own loss's gradient) and RMSProp and weight clipping are elementwise.

WGAN details as in Arjovsky et al. (2017), the paper's choice:
* the critic has no final sigmoid; `L_D = mean D(fake) - mean D(real)`, `L_G = -mean D(fake)`;
* RMSProp, learning rate 5e-5. `rho=0.99` is the reference (PyTorch `alpha`) value. Keras adds
  epsilon INSIDE the square root (`sqrt(v + eps)`) where PyTorch adds it outside
  (`sqrt(v) + 1e-8`); `epsilon=1e-16` inside matches that;
* critic weights are clipped to [-c, c] with `Variable.assign` after EVERY critic update
  (an optimizer's `clipvalue` would clip gradients, which is not the same thing);
* `critic_steps` critic updates per generator update; optionally the reference's
  `initial_critic_steps` (100) for the first `initial_generator_steps` (25) generator updates and
  every `heavy_critic_every` (500)-th.

Networks (DCGAN-like): the generator maps noise through a dense layer to 4x4 and doubles the size
with sub-pixel convolutions (3x3 conv to 4x the channels, then depth-to-space, which can express
any 4x4/stride-2 transposed convolution) up to `image_size`, with a tanh output mapped to
[0, 255]. The critic halves the size with 4x4/stride-2 convolutions and LeakyReLU down to 4x4,
then a dense layer gives one unbounded score. Batch normalisation is replaced by weight-free
per-sample normalisations (pixel norm in the generator, per-image standardisation in the critic
after its first block): they keep the models independent, have nothing to clip, and keep the
signal at unit scale although the critic's weights are clipped to +-0.01. Hidden generator
layers use He initialisation; with DCGAN's N(0, 0.02) everywhere and no batch norm, the
generator's output stayed near mid-grey for hundreds of iterations.

Two ways to run a convolution over the model axis, chosen by `conv_implementation` (measured by
`bench/mlwgan_bench.py`): "batched_matmul" gathers patches and uses one batched matmul over the
model axis, so the graph has the same size for 1 or 64 models (the critic's 4x4/stride-2
convolutions first become 2x2/stride-1 ones over 2x2 pixel blocks, which quarters the slices that
build the patches and their gradient); "unrolled" emits one
`tf.nn.conv2d` per model inside the same graph. `tf.vectorized_map` cannot be used (Conv2D
requires a loop-invariant filter) and a grouped convolution has no filter gradient on the CPU
(under XLA it has one, but XLA's CPU backend expands it into a dense convolution M times larger).

What makes many small GANs fast on a CPU is not a kernel but the absence of per-op overhead:
`train_iterations` compiles its whole loop with XLA (`jit_compile`, on by default), which fuses
the thousands of tiny ops of a step; every op of the graph is independent of the number of
models, so one compilation (tens of seconds) serves any number of groups of the same shape.

Training-loop style: a `keras.Model` subclass whose `train_step` is one generator iteration (so
`fit` works on a dataset whose elements are the stacked real images), plus `train_iterations`,
which runs many iterations inside one `tf.function` while-loop: for per-image GANs the per-step
dispatch of `fit` costs more than the tiny networks themselves.
"""

import dataclasses
import math
from typing import Callable

import keras
import tensorflow as tf

CONV_IMPLEMENTATIONS = ("unrolled", "batched_matmul")
_INIT_STDDEV = 0.02  # DCGAN initialisation


@dataclasses.dataclass(frozen=True)
class MLWGANConfig:
    """Hyper-parameters of one per-image WGAN (every model in a group shares them).

    Attributes:
      image_size: side of the square generated image; 4 * 2**n with n >= 1 (8, 16, 32, 64, 128).
      noise_dim: length of the generator's input noise vector.
      generator_filters: channels of the generator's last hidden block (doubling toward 4x4).
      critic_filters: channels of the critic's first block (doubling toward 4x4).
      batch_size: fake images per step and GAN.
      learning_rate, rho, epsilon: RMSProp settings for both networks (see module docstring).
      clip_value: critic weights are clipped to [-clip_value, clip_value] after every update.
      critic_steps: critic updates per generator update.
      initial_critic_steps: critic updates per generator update during the first
        `initial_generator_steps` generator updates and every `heavy_critic_every`-th one.
      initial_generator_steps: 0 disables the initial phase (the reference uses 25).
      heavy_critic_every: 0 disables (the reference uses 500).
      real_jitter: standard deviation of Gaussian noise added to each copy of the real image
        (in [-1, 1] units); 0 feeds the image itself.
      conv_implementation: "batched_matmul" or "unrolled" (see module docstring).
      jit_compile: compile `train_iterations` with XLA (see module docstring). The random
        numbers of an XLA run differ from those of a run without it; each is deterministic.
    """

    image_size: int = 64
    noise_dim: int = 64
    generator_filters: int = 32
    critic_filters: int = 32
    batch_size: int = 8
    learning_rate: float = 5e-5
    rho: float = 0.99
    epsilon: float = 1e-16
    clip_value: float = 0.01
    critic_steps: int = 5
    initial_critic_steps: int = 100
    initial_generator_steps: int = 0
    heavy_critic_every: int = 0
    real_jitter: float = 0.0
    conv_implementation: str = "batched_matmul"
    jit_compile: bool = True

    def __post_init__(self):
        size = self.image_size
        if size < 8 or size % 4 or (size // 4) & (size // 4 - 1):
            raise ValueError(f"image_size must be 4 * 2**n with n >= 1 (8, 16, 32, 64, ...). Received: image_size={size}")
        for name in ("noise_dim", "generator_filters", "critic_filters", "batch_size", "critic_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1. Received: {name}={getattr(self, name)}")
        for name in ("initial_critic_steps", "initial_generator_steps", "heavy_critic_every"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0. Received: {name}={getattr(self, name)}")
        if self.clip_value <= 0:
            raise ValueError(f"clip_value must be > 0. Received: clip_value={self.clip_value}")
        if self.conv_implementation not in CONV_IMPLEMENTATIONS:
            raise ValueError(
                f"conv_implementation must be one of {CONV_IMPLEMENTATIONS}. "
                f"Received: conv_implementation={self.conv_implementation!r}"
            )

    @property
    def num_resolution_steps(self) -> int:
        """How many times the size doubles from 4x4 to `image_size`."""
        return int(math.log2(self.image_size // 4))


def _patches(x: tf.Tensor, kernel_size: int, stride: int) -> tf.Tensor:
    """[..., H, W, C] (already padded) -> [..., Ho, Wo, k*k*C], ordered like a reshaped [k, k, C, F] kernel."""
    height, width = x.shape[-3], x.shape[-2]
    out_h = (height - kernel_size) // stride + 1
    out_w = (width - kernel_size) // stride + 1
    views = [
        x[..., i : i + stride * (out_h - 1) + 1 : stride, j : j + stride * (out_w - 1) + 1 : stride, :]
        for i in range(kernel_size)
        for j in range(kernel_size)
    ]
    return tf.concat(views, axis=-1)


def _space_to_depth_conv(x: tf.Tensor, kernel: tf.Tensor, stride: int) -> tuple[tf.Tensor, tf.Tensor]:
    """Rewrites a stride-s convolution with a k x k kernel (k % s == 0) as a stride-1 one with a
    (k/s) x (k/s) kernel over s x s blocks of pixels stacked into channels.

    x [M, B, H, W, C] (padded, H and W multiples of s), kernel [M, k, k, C, F] ->
    x [M, B, H/s, W/s, s*s*C], kernel [M, k/s, k/s, s*s*C, F]. The patches then have k*k/s**2
    slices of s*s*C channels instead of k*k slices of C, which is what makes them cheap to build.
    """
    num_models, batch, height, width, channels = x.shape
    blocks = tf.reshape(x, [num_models, batch, height // stride, stride, width // stride, stride, channels])
    blocks = tf.transpose(blocks, [0, 1, 2, 4, 3, 5, 6])
    x = tf.reshape(blocks, [num_models, batch, height // stride, width // stride, stride * stride * channels])
    taps = kernel.shape[1] // stride
    kernel = tf.reshape(kernel, [num_models, taps, stride, taps, stride, channels, kernel.shape[-1]])
    kernel = tf.transpose(kernel, [0, 1, 3, 2, 4, 5, 6])
    return x, tf.reshape(kernel, [num_models, taps, taps, stride * stride * channels, -1])


def model_axis_conv(x: tf.Tensor, kernel: tf.Tensor, bias: tf.Tensor, stride: int, pad: int, implementation: str) -> tf.Tensor:
    """Per-model convolution: x [M, B, H, W, C], kernel [M, k, k, C, F], bias [M, F] -> [M, B, Ho, Wo, F]."""
    x = tf.pad(x, [[0, 0], [0, 0], [pad, pad], [pad, pad], [0, 0]])
    if implementation == "unrolled":
        y = tf.stack([tf.nn.conv2d(x[m], kernel[m], stride, "VALID") for m in range(x.shape[0])])
    else:
        if stride > 1 and kernel.shape[1] % stride == 0 and x.shape[2] % stride == 0 and x.shape[3] % stride == 0:
            x, kernel = _space_to_depth_conv(x, kernel, stride)
            stride = 1
        k = kernel.shape[1]
        patches = _patches(x, k, stride)
        num_models, batch, out_h, out_w, depth = patches.shape
        flat = tf.reshape(patches, [num_models, batch * out_h * out_w, depth])
        y = tf.matmul(flat, tf.reshape(kernel, [num_models, depth, kernel.shape[-1]]))
        y = tf.reshape(y, [num_models, batch, out_h, out_w, kernel.shape[-1]])
    return y + bias[:, tf.newaxis, tf.newaxis, tf.newaxis, :]


def model_axis_dense(x: tf.Tensor, kernel: tf.Tensor, bias: tf.Tensor) -> tf.Tensor:
    """Per-model dense layer: x [M, B, I], kernel [M, I, O], bias [M, O] -> [M, B, O]."""
    return tf.matmul(x, kernel) + bias[:, tf.newaxis, :]


class _StackedNetwork(keras.layers.Layer):
    """A network whose every weight has a leading model axis of size `num_models`."""

    def __init__(self, num_models: int, config: MLWGANConfig, **kwargs):
        super().__init__(**kwargs)
        if num_models < 1:
            raise ValueError(f"num_models must be >= 1. Received: num_models={num_models}")
        self.num_models = num_models
        self.config = config

    def _add_layer_weights(self, kernel_shape: tuple, name: str):
        kernel = self.add_weight(name=f"{name}_kernel", shape=(self.num_models, *kernel_shape), initializer="zeros")
        bias = self.add_weight(name=f"{name}_bias", shape=(self.num_models, kernel_shape[-1]), initializer="zeros")
        return kernel, bias

    def _init_stddev(self, name: str, kernel_shape) -> float:
        """Standard deviation of a kernel's initial values (DCGAN's 0.02 unless overridden)."""
        return _INIT_STDDEV

    def reinitialize(self, seeds: tf.Tensor) -> None:
        """Fresh weights (normal kernels, zero biases) for model m, drawn from `seeds[m]` ([M, 2])."""
        for index, variable in enumerate(self.trainable_variables):
            if variable.name.endswith("_bias"):
                variable.assign(tf.zeros(variable.shape))
                continue
            per_model = [
                tf.random.stateless_normal(
                    variable.shape[1:],
                    seed=tf.random.experimental.stateless_fold_in(seeds[m], index),
                    stddev=self._init_stddev(variable.name, variable.shape[1:]),
                )
                for m in range(self.num_models)
            ]
            variable.assign(tf.stack(per_model))


class StackedGenerator(_StackedNetwork):
    """`num_models` generators: noise [M, B, noise_dim] -> images [M, B, S, S, 3] in [-1, 1]."""

    def __init__(self, num_models: int, config: MLWGANConfig, **kwargs):
        super().__init__(num_models, config, **kwargs)
        steps = config.num_resolution_steps
        self.start_channels = config.generator_filters * 2 ** (steps - 1)
        self.dense = self._add_layer_weights((config.noise_dim, 16 * self.start_channels), "dense")
        self.blocks = []
        channels = self.start_channels
        for i in range(steps):
            out_channels = 3 if i == steps - 1 else channels // 2
            self.blocks.append(self._add_layer_weights((3, 3, channels, 4 * out_channels), f"up{i}"))
            channels = out_channels

    def _init_stddev(self, name: str, kernel_shape) -> float:
        # He initialisation of the hidden layers: with pixel norm and ReLU the signal keeps its
        # scale, so updates reach the output at once. The output layer starts small, at mid-grey,
        # away from tanh saturation.
        if name == f"up{len(self.blocks) - 1}_kernel":
            return _INIT_STDDEV
        return math.sqrt(2.0 / math.prod(kernel_shape[:-1]))

    def call(self, noise: tf.Tensor) -> tf.Tensor:
        x = tf.nn.relu(model_axis_dense(noise, *self.dense))
        num_models, batch = noise.shape[0], noise.shape[1]
        x = _pixel_norm(tf.reshape(x, [num_models, batch, 4, 4, self.start_channels]))
        for i, (kernel, bias) in enumerate(self.blocks):
            x = model_axis_conv(x, kernel, bias, 1, 1, self.config.conv_implementation)
            size, channels = x.shape[2], x.shape[4]
            x = tf.nn.depth_to_space(tf.reshape(x, [num_models * batch, size, size, channels]), 2)
            x = tf.reshape(x, [num_models, batch, 2 * size, 2 * size, channels // 4])
            x = tf.tanh(x) if i == len(self.blocks) - 1 else _pixel_norm(tf.nn.relu(x))
        return x


class StackedCritic(_StackedNetwork):
    """`num_models` critics: images [M, B, S, S, 3] in [-1, 1] -> unbounded scores [M, B]."""

    def __init__(self, num_models: int, config: MLWGANConfig, **kwargs):
        super().__init__(num_models, config, **kwargs)
        self.blocks = []
        channels, out_channels = 3, config.critic_filters
        for i in range(config.num_resolution_steps):
            self.blocks.append(self._add_layer_weights((4, 4, channels, out_channels), f"down{i}"))
            channels, out_channels = out_channels, out_channels * 2
        self.dense = self._add_layer_weights((16 * channels, 1), "score")

    def call(self, images: tf.Tensor) -> tf.Tensor:
        x = images
        for i, (kernel, bias) in enumerate(self.blocks):
            x = model_axis_conv(x, kernel, bias, 2, 1, self.config.conv_implementation)
            if i > 0:
                x = _sample_norm(x)
            x = tf.nn.leaky_relu(x, 0.2)
        num_models, batch = x.shape[0], x.shape[1]
        x = tf.reshape(x, [num_models, batch, -1])
        return model_axis_dense(x, *self.dense)[..., 0]


def _pixel_norm(x: tf.Tensor) -> tf.Tensor:
    """Scales each pixel's feature vector to unit mean square (ProGAN's pixel norm; no weights)."""
    return x * tf.math.rsqrt(tf.reduce_mean(tf.square(x), axis=-1, keepdims=True) + 1e-8)


def _sample_norm(x: tf.Tensor) -> tf.Tensor:
    """Normalises each image's activations [.., H, W, C] to zero mean and unit variance (no weights)."""
    mean, variance = tf.nn.moments(x, axes=[-3, -2, -1], keepdims=True)
    return (x - mean) * tf.math.rsqrt(variance + 1e-5)


def _per_model_normal(seeds: tf.Tensor, shape: list, counter: tf.Tensor, stream: int) -> tf.Tensor:
    """[M, *shape] normal noise; model m's draw depends only on (seeds[m], stream, counter).

    `map_fn` keeps one copy of the sampling ops in the graph whatever the number of models.
    """
    counter = tf.cast(counter, tf.int32)

    def draw(seed):
        fold = tf.random.experimental.stateless_fold_in
        return tf.random.stateless_normal(shape, seed=fold(fold(seed, stream), counter))

    return tf.map_fn(draw, seeds, fn_output_signature=tf.float32)


_CRITIC_NOISE, _GENERATOR_NOISE, _JITTER_NOISE, _SAMPLE_NOISE, _INIT_CRITIC = 1, 2, 3, 4, 5


class MultiImageWGAN(keras.Model):
    """`num_models` independent single-image WGANs trained in lockstep.

    Call `reset(seeds)` before training a new group of images: it re-draws every model's weights
    from its own seed and clears the optimizer state, so a model's trajectory depends only on its
    seed and its image, not on which other images share the group.

    Real images are passed as float [M, S, S, 3] in [0, 255] (model m's real distribution is
    image m).
    """

    def __init__(self, num_models: int, config: MLWGANConfig = MLWGANConfig(), **kwargs):
        super().__init__(**kwargs)
        self.num_models = num_models
        self.config = config
        self.generator = StackedGenerator(num_models, config, name="generator")
        self.critic = StackedCritic(num_models, config, name="critic")
        self.generator_optimizer = self._rmsprop("generator_rmsprop")
        self.critic_optimizer = self._rmsprop("critic_rmsprop")
        self.generator_optimizer.build(self.generator.trainable_variables)
        self.critic_optimizer.build(self.critic.trainable_variables)
        # Restored by `reset`: iteration counters, zero RMS accumulators, and the learning rate
        # (which Keras also keeps in a variable, so it must not be zeroed with the rest).
        self._initial_optimizer_state = [
            (v, tf.identity(v)) for o in (self.generator_optimizer, self.critic_optimizer) for v in o.variables
        ]
        self.seeds = self.add_weight(name="seeds", shape=(num_models, 2), dtype="int32", trainable=False, initializer="zeros")
        self.generator_iterations = self.add_weight(name="generator_iterations", shape=(), dtype="int32", trainable=False, initializer="zeros")
        self.critic_iterations = self.add_weight(name="critic_iterations", shape=(), dtype="int32", trainable=False, initializer="zeros")
        self.wasserstein = self.add_weight(name="wasserstein", shape=(num_models,), trainable=False, initializer="zeros")
        self._train_iterations_fn: Callable | None = None

    def _rmsprop(self, name: str) -> keras.optimizers.RMSprop:
        return keras.optimizers.RMSprop(
            learning_rate=self.config.learning_rate, rho=self.config.rho, epsilon=self.config.epsilon, name=name
        )

    def compile(self, **kwargs):
        """Compiles for `fit`; the two RMSProp optimizers are fixed by the config."""
        super().compile(**kwargs)

    def reset(self, seeds) -> None:
        """Starts a new group: model m gets fresh weights from `seeds[m]` (int [M, 2]) and clean optimizers."""
        seeds = tf.convert_to_tensor(seeds, tf.int32)
        if seeds.shape != (self.num_models, 2):
            raise ValueError(f"seeds must have shape ({self.num_models}, 2). Received: seeds.shape={seeds.shape}")
        self.seeds.assign(seeds)
        self.generator.reinitialize(seeds)
        self.critic.reinitialize(tf.stack([tf.random.experimental.stateless_fold_in(s, _INIT_CRITIC) for s in tf.unstack(seeds)]))
        for variable, initial in self._initial_optimizer_state:
            variable.assign(initial)
        for variable in (self.generator_iterations, self.critic_iterations, self.wasserstein):
            variable.assign(tf.zeros(variable.shape, variable.dtype))

    def call(self, noise: tf.Tensor) -> tf.Tensor:
        """Generator output for noise [M, B, noise_dim], as pixels [M, B, S, S, 3] in [0, 255]."""
        return (self.generator(noise) + 1.0) * 127.5

    def _real_batch(self, real: tf.Tensor) -> tf.Tensor:
        real = tf.cast(real, tf.float32) / 127.5 - 1.0
        real = real[:, tf.newaxis]
        if self.config.real_jitter <= 0:
            return real  # every copy would be identical: one is enough for the mean
        size = self.config.image_size
        jitter = _per_model_normal(self.seeds, [self.config.batch_size, size, size, 3], self.critic_iterations, _JITTER_NOISE)
        return real + self.config.real_jitter * jitter

    def critic_step(self, real: tf.Tensor) -> tf.Tensor:
        """One critic update of every model, then weight clipping. Returns the Wasserstein estimates [M]."""
        noise = _per_model_normal(self.seeds, [self.config.batch_size, self.config.noise_dim], self.critic_iterations, _CRITIC_NOISE)
        fake = self.generator(noise)
        real_batch = self._real_batch(real)
        variables = self.critic.trainable_variables
        with tf.GradientTape() as tape:
            # One critic pass over fakes and reals together: fewer, larger matmuls than two passes
            # (the critic normalises each image on its own, so the images do not interact).
            scores = self.critic(tf.concat([fake, real_batch], axis=1))
            fake_scores, real_scores = scores[:, : self.config.batch_size], scores[:, self.config.batch_size :]
            critic_loss = tf.reduce_mean(fake_scores, axis=1) - tf.reduce_mean(real_scores, axis=1)
            total = tf.reduce_sum(critic_loss)  # a sum keeps each model's gradient its own
        self.critic_optimizer.apply(tape.gradient(total, variables), variables)
        c = self.config.clip_value
        for variable in variables:
            variable.assign(tf.clip_by_value(variable, -c, c))
        self.critic_iterations.assign_add(1)
        return -critic_loss

    def generator_step(self) -> tf.Tensor:
        """One generator update of every model. Returns the generator losses [M]."""
        noise = _per_model_normal(
            self.seeds, [self.config.batch_size, self.config.noise_dim], self.generator_iterations, _GENERATOR_NOISE
        )
        variables = self.generator.trainable_variables
        with tf.GradientTape() as tape:
            generator_loss = -tf.reduce_mean(self.critic(self.generator(noise)), axis=1)
            total = tf.reduce_sum(generator_loss)
        self.generator_optimizer.apply(tape.gradient(total, variables), variables)
        self.generator_iterations.assign_add(1)
        return generator_loss

    def critic_steps_now(self) -> tf.Tensor:
        """Critic updates before the next generator update (the schedule of the config)."""
        config = self.config
        iteration = self.generator_iterations
        heavy = iteration < config.initial_generator_steps
        if config.heavy_critic_every > 0:
            heavy = tf.logical_or(heavy, tf.logical_and(iteration > 0, iteration % config.heavy_critic_every == 0))
        return tf.where(heavy, config.initial_critic_steps, config.critic_steps)

    def _generator_iteration(self, real: tf.Tensor) -> tf.Tensor:
        def body(i, _):
            return i + 1, self.critic_step(real)

        _, wasserstein = tf.while_loop(
            lambda i, _: i < self.critic_steps_now(),
            body,
            (tf.constant(0), tf.zeros([self.num_models])),
        )
        self.wasserstein.assign(wasserstein)
        self.generator_step()
        return wasserstein

    def train_step(self, data):
        """One generator iteration (critic updates, then a generator update) on real images [M, S, S, 3]."""
        real = data[0] if isinstance(data, tuple) else data
        wasserstein = self._generator_iteration(real)
        return {"wasserstein": tf.reduce_mean(wasserstein)}

    def train_iterations(self, real, iterations: int) -> tf.Tensor:
        """Runs `iterations` generator iterations in one traced loop; returns the last Wasserstein estimates [M]."""
        real = tf.convert_to_tensor(real, tf.float32)
        expected = (self.num_models, self.config.image_size, self.config.image_size, 3)
        if tuple(real.shape) != expected:
            raise ValueError(f"real images must have shape {expected}. Received: real.shape={tuple(real.shape)}")
        if self._train_iterations_fn is None:

            @tf.function(jit_compile=self.config.jit_compile)
            def loop(real_images, count):
                def body(i):
                    self._generator_iteration(real_images)
                    return (i + 1,)

                tf.while_loop(lambda i: i < count, body, (tf.constant(0),))
                return tf.identity(self.wasserstein)

            self._train_iterations_fn = loop
        return self._train_iterations_fn(real, tf.constant(iterations, tf.int32))

    def sample(self, stream_counter: int) -> tf.Tensor:
        """One generated image per model, [M, S, S, 3] float in [0, 255]; noise fixed by (seed, counter)."""
        noise = _per_model_normal(self.seeds, [1, self.config.noise_dim], tf.constant(stream_counter), _SAMPLE_NOISE)
        return self(noise)[:, 0]
