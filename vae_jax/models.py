"""Encoders, decoders and the VAE that pairs them: Flax Linen modules, pure functions of params.

The encoder maps images x of shape (B, H, W, C) to the mean and log-variance of q(z|x), each
(B, latents). The decoder maps latents z to the location of p(x|z) with the image's shape:
logits for a Bernoulli likelihood, the mean for a Gaussian one. The only randomness is dropout,
which takes its key from `rngs={'dropout': key}`; the reparameterization noise is drawn by the
objective from an explicit key. This module knows nothing of losses.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from vae_jax.errors import ConfigError

ACTIVATIONS: dict[str, Callable] = {
    "relu": nn.relu,
    "leaky_relu": nn.leaky_relu,  # slope 0.01
    "tanh": jnp.tanh,
    "elu": nn.elu,
    "softplus": nn.softplus,
}


class MLPEncoder(nn.Module):
    """Flattened image -> hidden layers -> (mean, log-variance)."""

    hidden_sizes: Sequence[int]
    latents: int
    activation: Callable = nn.relu

    @nn.compact
    def __call__(self, x, train: bool = False):
        h = x.reshape((x.shape[0], -1))
        for width in self.hidden_sizes:
            h = self.activation(nn.Dense(width)(h))
        mean = nn.Dense(self.latents, name="mean")(h)
        log_variance = nn.Dense(self.latents, name="log_variance")(h)
        return mean, log_variance


class MLPDecoder(nn.Module):
    """Latents -> hidden layers -> one output per pixel, reshaped to the image."""

    hidden_sizes: Sequence[int]
    image_shape: tuple[int, int, int]
    activation: Callable = nn.relu

    @nn.compact
    def __call__(self, z, train: bool = False):
        h = z
        for width in self.hidden_sizes:
            h = self.activation(nn.Dense(width)(h))
        out = nn.Dense(math.prod(self.image_shape))(h)
        return out.reshape((z.shape[0], *self.image_shape))


class ConvEncoder(nn.Module):
    """Stride-2 4x4 convolutions (and optional dropout), then a dense layer, then the latents."""

    features: Sequence[int]
    hidden: int
    latents: int
    dropout_rate: float = 0.0
    activation: Callable = nn.relu

    @nn.compact
    def __call__(self, x, train: bool = False):
        h = x
        for channels in self.features:
            h = self.activation(nn.Conv(channels, (4, 4), strides=(2, 2), padding="SAME")(h))
            if self.dropout_rate > 0:
                h = nn.Dropout(self.dropout_rate, deterministic=not train)(h)
        h = h.reshape((h.shape[0], -1))
        h = self.activation(nn.Dense(self.hidden)(h))
        mean = nn.Dense(self.latents, name="mean")(h)
        log_variance = nn.Dense(self.latents, name="log_variance")(h)
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

    @nn.compact
    def __call__(self, z, train: bool = False):
        height, width, channels = self.image_shape
        scale = 2 ** len(self.features)
        base_h, base_w = height // scale, width // scale
        h = self.activation(nn.Dense(self.hidden)(z))
        h = self.activation(nn.Dense(base_h * base_w * self.features[-1])(h))
        h = h.reshape((z.shape[0], base_h, base_w, self.features[-1]))
        for out_channels in tuple(reversed(self.features[:-1])):
            h = nn.ConvTranspose(out_channels, (4, 4), strides=(2, 2), padding="SAME")(h)
            h = self.activation(h)
        return nn.ConvTranspose(channels, (4, 4), strides=(2, 2), padding="SAME")(h)


class VAE(nn.Module):
    """An encoder, a decoder and, for the learned-scale Gaussian, one log-scale per pixel.

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


def build_model(config: ml_collections.ConfigDict, image_shape: tuple[int, int, int]) -> VAE:
    """The VAE that `config` describes, for images of `image_shape` (H, W, C)."""
    activation = ACTIVATIONS[config.activation]
    if config.model == "mlp":
        encoder = MLPEncoder(tuple(config.hidden_sizes), config.latents, activation)
        decoder = MLPDecoder(tuple(reversed(config.hidden_sizes)), tuple(image_shape), activation)
    elif config.model == "conv":
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
        )
        decoder = ConvDecoder(
            tuple(config.conv_features), config.conv_hidden, tuple(image_shape), activation
        )
    else:
        raise ConfigError(f"model={config.model!r} is not known; allowed: 'mlp', 'conv'.")
    return VAE(encoder, decoder, config.likelihood, float(config.gaussian_scale))
