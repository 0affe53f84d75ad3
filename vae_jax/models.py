"""Encoders, decoders and the VAE that pairs them: Flax Linen modules, pure functions of params.

The encoder maps images x of shape (B, H, W, C) to the mean and log-variance of q(z|x), each
(B, latents). The decoder maps latents z to the location of p(x|z) with the image's shape:
logits for a Bernoulli likelihood, the mean for a Gaussian one. The only randomness is dropout,
which takes its key from `rngs={'dropout': key}`; the reparameterization noise is drawn by the
objective from an explicit key. This module knows nothing of losses.
"""

from __future__ import annotations

import contextlib
import functools
import math
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from vae_jax import convolutions
from vae_jax.errors import ConfigError

ACTIVATIONS: dict[str, Callable] = {
    "relu": nn.relu,
    "leaky_relu": nn.leaky_relu,  # slope 0.01
    "tanh": jnp.tanh,
    "elu": nn.elu,
    "softplus": nn.softplus,
}


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def mixed_precision_matmul(x: jax.Array, kernel: jax.Array, dtype) -> jax.Array:
    r"""x @ kernel with the products in `dtype` and float32 sums, in both directions.

    Forward :math:`y = \mathrm{f32}(\tilde x \tilde W)`, backward
    :math:`\partial x = \mathrm{f32}(\tilde g \tilde W^\top)` and
    :math:`\partial W = \mathrm{f32}(\tilde x^\top \tilde g)`, where a tilde rounds to `dtype`
    (on CPU the weight gradient keeps float32 operands: see `weight_gradient`). The products run
    on bf16 units and accumulate in f32, and the gradients reach the float32 parameters
    unrounded. (Autodiff of a plain bf16 product would round the weight gradient to bf16 and mix
    f32 and bf16 operands in the backward products.)

    Args:
      x: (..., K) float32.
      kernel: (K, N) float32.
      dtype: of the products (jnp.bfloat16; jnp.float32 is the plain product).
    """
    return _low_precision_dot(x, kernel.astype(dtype), dtype)


def _low_precision_dot(x, kernel_in_dtype, dtype):
    return jax.lax.dot_general(
        x.astype(dtype),
        kernel_in_dtype,
        (((x.ndim - 1,), (0,)), ((), ())),
        preferred_element_type=jnp.float32,
    )


def weight_gradient(x: jax.Array, g: jax.Array, dtype) -> jax.Array:
    r"""The weight gradient :math:`x^\top g` of a dense layer, summed over the leading axes of
    x (..., K) and g (..., N) into (K, N) float32, with `dtype` operands except on CPU.

    XLA's CPU backend has no bf16 kernel for a product that contracts the operands' leading
    (batch) axis: it converts both bf16 operands back to f32 and runs the f32 product (read from
    the compiled HLO, jax 0.10). Rounding x and g to bf16 first would only lose precision and
    cost two conversions, so on CPU this product takes the float32 operands as they are (the
    bf16 epoch got faster at small batches and no slower at large ones: docs/performance.md,
    "bf16 on CPU"). GPUs and TPUs multiply bf16 in any
    layout: there the operands are `dtype`. The choice is made when the program is lowered
    (`lax.platform_dependent`), so an exported program keeps both.
    """
    batch_axes = tuple(range(x.ndim - 1))
    dimensions = ((batch_axes, batch_axes), ((), ()))

    def in_dtype(x, g):
        return jax.lax.dot_general(
            x.astype(dtype), g.astype(dtype), dimensions, preferred_element_type=jnp.float32
        )

    def in_float32(x, g):
        return jax.lax.dot_general(x, g, dimensions, preferred_element_type=jnp.float32)

    return jax.lax.platform_dependent(x, g, cpu=in_float32, default=in_dtype)


def _mixed_precision_matmul_forward(x, kernel, dtype):
    kernel_low = kernel.astype(dtype)
    return _low_precision_dot(x, kernel_low, dtype), (x, kernel_low)


def _mixed_precision_matmul_backward(dtype, residuals, g):
    x, kernel_low = residuals
    dx = jax.lax.dot_general(
        g.astype(dtype),
        kernel_low,
        (((g.ndim - 1,), (1,)), ((), ())),
        preferred_element_type=jnp.float32,
    )
    return dx, weight_gradient(x, g, dtype)


mixed_precision_matmul.defvjp(_mixed_precision_matmul_forward, _mixed_precision_matmul_backward)


def cpu_has_bf16_units(cpuinfo_path: str = "/proc/cpuinfo") -> bool | None:
    """Whether this machine's CPU multiplies bf16 in hardware: the `avx512_bf16` or `amx_bf16`
    flag on x86, `bf16` among an Arm CPU's features. None where it cannot be told (no
    /proc/cpuinfo, as on macOS).

    Without them XLA:CPU computes a bf16 product in f32 with conversions around it, so
    `dtype='bfloat16'` costs time instead of saving it (measured in docs/performance.md,
    "bf16 on CPU"), and training warns of it.
    """
    try:
        with open(cpuinfo_path) as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    features = set()
    for line in lines:
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            features.update(value.split())
    if not features:
        return None
    return bool(features & {"avx512_bf16", "amx_bf16", "bf16"})


class Dense(nn.Module):
    """`nn.Dense` (same parameter names, shapes and initialisers) whose product runs in `dtype`
    by `mixed_precision_matmul`; float32 parameters and output whatever `dtype` is."""

    features: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        kernel = self.param("kernel", nn.initializers.lecun_normal(), (x.shape[-1], self.features))
        bias = self.param("bias", nn.initializers.zeros, (self.features,))
        if self.dtype == jnp.float32:
            return x @ kernel + bias
        return mixed_precision_matmul(x, kernel, self.dtype) + bias


def dense(features: int, dtype, name: str | None = None) -> nn.Module:
    """A dense layer whose product runs in `dtype` (float32, or bfloat16 for mixed precision),
    with float32 parameters and float32 accumulation."""
    if dtype == jnp.float32:
        return nn.Dense(features, name=name)
    return Dense(features, dtype, name=name)


class Conv4x4Stride2(nn.Module):
    """`nn.Conv(features, (4, 4), strides=(2, 2), padding='SAME')`: the same parameters (names,
    shapes, initialisers) and outputs, computed by `convolutions.conv_4x4_stride_2`, with
    float32 parameters and sums and the products in `dtype`."""

    features: int
    dtype: Any = jnp.float32
    transposed: bool = False

    @nn.compact
    def __call__(self, x):
        kernel = self.param(
            "kernel", nn.initializers.lecun_normal(), (4, 4, x.shape[-1], self.features)
        )
        bias = self.param("bias", nn.initializers.zeros, (self.features,))
        if self.transposed:
            return convolutions.conv_transpose_4x4_stride_2(x, kernel, self.dtype) + bias
        return convolutions.conv_4x4_stride_2(x, kernel, self.dtype) + bias


class ConvTranspose4x4Stride2(Conv4x4Stride2):
    """`nn.ConvTranspose(features, (4, 4), strides=(2, 2), padding='SAME')`: the same
    parameters and outputs, computed by `convolutions.conv_transpose_4x4_stride_2`."""

    transposed: bool = True


# Mixed precision: the dtype of the matrix products (float32 parameters and sums either way).
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


class MLPEncoder(nn.Module):
    """Flattened image -> hidden layers -> (mean, log-variance)."""

    hidden_sizes: Sequence[int]
    latents: int
    activation: Callable = nn.relu
    dtype: Any = jnp.float32  # of the matrix products; parameters and sums stay float32

    @nn.compact
    def __call__(self, x, train: bool = False):
        h = x.reshape((x.shape[0], -1))
        for width in self.hidden_sizes:
            h = self.activation(dense(width, self.dtype)(h))
        mean = dense(self.latents, self.dtype, name="mean")(h)
        log_variance = dense(self.latents, self.dtype, name="log_variance")(h)
        return mean, log_variance


class MLPDecoder(nn.Module):
    """Latents -> hidden layers -> one output per pixel, reshaped to the image."""

    hidden_sizes: Sequence[int]
    image_shape: tuple[int, int, int]
    activation: Callable = nn.relu
    dtype: Any = jnp.float32  # of the matrix products; parameters and sums stay float32

    @nn.compact
    def __call__(self, z, train: bool = False):
        h = z
        for width in self.hidden_sizes:
            h = self.activation(dense(width, self.dtype)(h))
        out = dense(math.prod(self.image_shape), self.dtype)(h)
        return out.reshape((z.shape[0], *self.image_shape))


class ConvEncoder(nn.Module):
    """Stride-2 4x4 convolutions (and optional dropout), then a dense layer, then the latents."""

    features: Sequence[int]
    hidden: int
    latents: int
    dropout_rate: float = 0.0
    activation: Callable = nn.relu
    dtype: Any = jnp.float32  # of the matrix products; parameters and sums stay float32

    @nn.compact
    def __call__(self, x, train: bool = False):
        h = x
        for index, channels in enumerate(self.features):
            h = self.activation(Conv4x4Stride2(channels, self.dtype, name=f"Conv_{index}")(h))
            if self.dropout_rate > 0:
                h = nn.Dropout(self.dropout_rate, deterministic=not train)(h)
        h = h.reshape((h.shape[0], -1))
        h = self.activation(dense(self.hidden, self.dtype)(h))
        mean = dense(self.latents, self.dtype, name="mean")(h)
        log_variance = dense(self.latents, self.dtype, name="log_variance")(h)
        return mean, log_variance


class ConvDecoder(nn.Module):
    """Dense layers to a small feature map, then stride-2 transposed convolutions to the image.

    Mirrors `ConvEncoder`: each transposed convolution doubles height and width, so the image
    sides must be divisible by 2 ** len(features).
    """

    features: Sequence[int]
    hidden: int
    image_shape: tuple[int, int, int]
    activation: Callable = nn.relu
    dtype: Any = jnp.float32  # of the matrix products; parameters and sums stay float32

    @nn.compact
    def __call__(self, z, train: bool = False):
        height, width, channels = self.image_shape
        scale = 2 ** len(self.features)
        base_h, base_w = height // scale, width // scale
        h = self.activation(dense(self.hidden, self.dtype)(z))
        h = self.activation(dense(base_h * base_w * self.features[-1], self.dtype)(h))
        h = h.reshape((z.shape[0], base_h, base_w, self.features[-1]))
        out_channels = (*reversed(self.features[:-1]), channels)
        for index, features in enumerate(out_channels):
            h = ConvTranspose4x4Stride2(features, self.dtype, name=f"ConvTranspose_{index}")(h)
            if index < len(out_channels) - 1:
                h = self.activation(h)
        return h


class VAE(nn.Module):
    """An encoder, a decoder and, for the learned-scale Gaussian, one log-scale per pixel.

    The contract a user's own modules keep (`vae_jax.register_model`), as typing protocols::

        class Encoder(Protocol):   # a flax.linen.Module
            def __call__(self, x: Array, train: bool) -> tuple[Array, Array]:
                '(B, H, W, C) float images in [0, 1] -> (mean, log_variance), each (B, latents)'

        class Decoder(Protocol):   # a flax.linen.Module with an `image_shape` attribute
            image_shape: tuple[int, int, int]
            def __call__(self, z: Array, train: bool) -> Array:
                '(B, latents) -> (B, H, W, C) logits (Bernoulli) or means (Gaussian)'

    `train` is True in training steps (dropout then takes its key from `rngs={'dropout': key}`);
    anything else random is drawn by the objective from explicit keys.

    Attributes:
      encoder: returns (mean, log_variance) of q(z|x).
      decoder: returns the location of p(x|z): logits or Gaussian means.
      likelihood: 'bernoulli', 'gaussian' (scale fixed to `gaussian_scale`) or 'gaussian_learned'.
      gaussian_scale: sigma of the fixed-scale Gaussian.
    """

    encoder: nn.Module
    decoder: nn.Module
    likelihood: str = "bernoulli"
    gaussian_scale: float = 1.0

    def setup(self):
        if self.likelihood == "gaussian_learned":
            self.pixel_log_scale = self.param(
                "pixel_log_scale", nn.initializers.zeros, tuple(self.decoder.image_shape)
            )

    def encode(self, x, train: bool = False):
        return self.encoder(x, train)

    def decode(self, z, train: bool = False):
        """Returns (location, log_scale); log_scale is None for the Bernoulli likelihood."""
        location = self.decoder(z, train)
        if self.likelihood == "bernoulli":
            return location, None
        if self.likelihood == "gaussian":
            return location, jnp.full((), math.log(self.gaussian_scale), location.dtype)
        return location, self.pixel_log_scale

    def __call__(self, x, z, train: bool = False):
        """Touches every parameter once, for `init`: encodes x and decodes the given z."""
        return self.encode(x, train), self.decode(z, train)


class Discriminator(nn.Module):
    """FactorVAE's critic: latents -> hidden leaky-ReLU (slope 0.2) layers -> 2 logits.

    Logit 0 scores "a sample of q(z)", logit 1 "a sample of prod_j q(z_j)" (latents permuted
    dimension by dimension across the batch); logit 0 - logit 1 estimates log q(z) / prod q(z_j).
    """

    hidden_sizes: Sequence[int]

    @nn.compact
    def __call__(self, z):
        h = z
        for width in self.hidden_sizes:
            h = jax.nn.leaky_relu(nn.Dense(width)(h), negative_slope=0.2)
        return nn.Dense(2)(h)


def build_mlp(config, image_shape: tuple[int, int, int]) -> VAE:
    """'mlp': dense layers of `hidden_sizes` (the decoder mirrors them)."""
    activation, dtype = ACTIVATIONS[config.activation], DTYPES[config.dtype]
    encoder = MLPEncoder(tuple(config.hidden_sizes), config.latents, activation, dtype)
    decoder = MLPDecoder(
        tuple(reversed(config.hidden_sizes)), tuple(image_shape), activation, dtype
    )
    return VAE(encoder, decoder, config.likelihood, float(config.gaussian_scale))


def build_conv(config, image_shape: tuple[int, int, int]) -> VAE:
    """'conv': stride-2 4x4 convolutions of `conv_features`, then a dense layer of `conv_hidden`."""
    activation, dtype = ACTIVATIONS[config.activation], DTYPES[config.dtype]
    scale = 2 ** len(config.conv_features)
    height, width = image_shape[:2]
    if height % scale or width % scale:
        raise ConfigError(
            f"model='conv' with conv_features={tuple(config.conv_features)} halves the image "
            f"{len(config.conv_features)} times, so its sides must be divisible by {scale}; "
            f"the images are {height}x{width}. Use fewer conv_features or model='mlp'."
        )
    encoder = ConvEncoder(
        tuple(config.conv_features),
        config.conv_hidden,
        config.latents,
        config.dropout_rate,
        activation,
        dtype,
    )
    decoder = ConvDecoder(
        tuple(config.conv_features), config.conv_hidden, tuple(image_shape), activation, dtype
    )
    return VAE(encoder, decoder, config.likelihood, float(config.gaussian_scale))


def matmul_precision(config: ml_collections.ConfigDict) -> contextlib.AbstractContextManager:
    """The context every program of a run is traced in: `config.matmul_precision` for float32
    matrix products and convolutions ('default', XLA's choice, leaves JAX's setting alone, so
    programs and their cache entries stay as before the field existed)."""
    precision = config.get("matmul_precision", "default")
    if precision == "default":
        return contextlib.nullcontext()
    return jax.default_matmul_precision(precision)


def build_model(config: ml_collections.ConfigDict, image_shape: tuple[int, int, int]) -> VAE:
    """The VAE that `config` describes (`config.model`, a `registry` name), for images of
    `image_shape` (H, W, C)."""
    from vae_jax import registry

    model = registry.model_spec(config.model).builder()(config, tuple(image_shape))
    if not isinstance(model, VAE):
        raise ConfigError(
            f"model={config.model!r} built a {type(model).__name__}, not a vae_jax.models.VAE; "
            "wrap the encoder and decoder: VAE(encoder, decoder, config.likelihood)."
        )
    return model
