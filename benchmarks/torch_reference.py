"""The same VAEs in PyTorch, for side-by-side throughput: `python -m benchmarks.run` uses these.

Identical to `vae_jax.models` with the default config and `experiments/conv_mnist.py`'s layers:
the same layers and widths, the same initialisation (LeCun normal, truncated at two standard
deviations, on fan-in; zero biases), the same loss (Bernoulli log-likelihood on logits summed
over pixels plus the analytic KL, batch mean, one reparameterized sample), Adam(1e-3, eps 1e-8),
the same batch size and the same data (binarized MNIST, reshuffled every epoch, remainder
dropped). The training loop is the straightforward one a PyTorch user writes.

Needs the `bench` extra: `pip install -e '.[bench]'` (torch 2.13.0, CPU build).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import numpy as np
import torch
from torch import nn


def _lecun_normal_(weight: torch.Tensor, fan_in: int) -> None:
    """Flax's lecun_normal: truncated normal at +-2 std, rescaled so the variance is 1/fan_in."""
    std = math.sqrt(1.0 / fan_in) / 0.87962566103423978
    nn.init.trunc_normal_(weight, std=std, a=-2 * std, b=2 * std)


def _dense(fan_in: int, fan_out: int) -> nn.Linear:
    layer = nn.Linear(fan_in, fan_out)
    _lecun_normal_(layer.weight, fan_in)
    nn.init.zeros_(layer.bias)
    return layer


class MLPVAE(nn.Module):
    """784-500-(20, 20) encoder and 20-500-784 decoder with ReLU, as vae_jax's default model."""

    def __init__(self, pixels: int = 784, hidden: int = 500, latents: int = 20):
        super().__init__()
        self.encoder_hidden = _dense(pixels, hidden)
        self.mean = _dense(hidden, latents)
        self.log_variance = _dense(hidden, latents)
        self.decoder_hidden = _dense(latents, hidden)
        self.decoder_out = _dense(hidden, pixels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, 784) in {0, 1} -> the batch-mean negative ELBO, nats per example."""
        h = torch.relu(self.encoder_hidden(x))
        mean, log_variance = self.mean(h), self.log_variance(h)
        z = mean + torch.exp(0.5 * log_variance) * torch.randn_like(mean)
        logits = self.decoder_out(torch.relu(self.decoder_hidden(z)))
        return _negative_elbo(x, logits, mean, log_variance)


class ConvVAE(nn.Module):
    """vae_jax's conv model: 4x4 stride-2 convolutions (32, 64), a 256-wide dense layer and 20
    latents; the decoder mirrors it with transposed convolutions. Leaky ReLU (slope 0.01)."""

    def __init__(
        self,
        side: int = 28,
        channels: int = 1,
        features=(32, 64),
        hidden: int = 256,
        latents: int = 20,
    ):
        super().__init__()
        self.features = features
        self.base = side // 2 ** len(features)
        convs, in_channels = [], channels
        for out_channels in features:
            conv = nn.Conv2d(in_channels, out_channels, 4, stride=2, padding=1)
            _lecun_normal_(conv.weight, 16 * in_channels)
            nn.init.zeros_(conv.bias)
            convs.append(conv)
            in_channels = out_channels
        self.convs = nn.ModuleList(convs)
        flat = self.base * self.base * features[-1]
        self.encoder_hidden = _dense(flat, hidden)
        self.mean = _dense(hidden, latents)
        self.log_variance = _dense(hidden, latents)
        self.decoder_hidden = _dense(latents, hidden)
        self.decoder_map = _dense(hidden, flat)
        transposed, outs = [], (*reversed(features[:-1]), channels)
        in_channels = features[-1]
        for out_channels in outs:
            layer = nn.ConvTranspose2d(in_channels, out_channels, 4, stride=2, padding=1)
            _lecun_normal_(layer.weight, 16 * in_channels)
            nn.init.zeros_(layer.bias)
            transposed.append(layer)
            in_channels = out_channels
        self.transposed = nn.ModuleList(transposed)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, C, H, W) in {0, 1} -> the batch-mean negative ELBO, nats per example."""
        act = nn.functional.leaky_relu
        h = x
        for conv in self.convs:
            h = act(conv(h))
        h = act(self.encoder_hidden(h.flatten(1)))
        mean, log_variance = self.mean(h), self.log_variance(h)
        z = mean + torch.exp(0.5 * log_variance) * torch.randn_like(mean)
        h = act(self.decoder_map(act(self.decoder_hidden(z))))
        h = h.view(-1, self.features[-1], self.base, self.base)
        for index, layer in enumerate(self.transposed):
            h = layer(h)
            if index < len(self.transposed) - 1:
                h = act(h)
        return _negative_elbo(x, h, mean, log_variance)


def _negative_elbo(x, logits, mean, log_variance) -> torch.Tensor:
    log_px = -nn.functional.binary_cross_entropy_with_logits(logits, x, reduction="none")
    log_px = log_px.flatten(1).sum(1)
    kl = 0.5 * (log_variance.exp() + mean**2 - 1.0 - log_variance).sum(1)
    return (kl - log_px).mean()


def build(model: str, images: np.ndarray) -> tuple[nn.Module, torch.Tensor]:
    """The PyTorch model for vae_jax's 'mlp' or 'conv' and the split as a float tensor in the
    layout it takes ((N, 784) or (N, C, H, W))."""
    data = torch.from_numpy(images.astype(np.float32) / 255.0)
    if model == "mlp":
        return MLPVAE(pixels=data[0].numel()), data.reshape(len(data), -1)
    side, channels = images.shape[1], images.shape[3]
    return ConvVAE(side=side, channels=channels), data.permute(0, 3, 1, 2).contiguous()


def prepare_training(
    model: nn.Module,
    data: torch.Tensor,
    batch_size: int,
    num_steps: int,
    compile_model: bool = False,
    seed: int = 0,
) -> tuple[float, Callable[[], float]]:
    """The typical loop, ready to time: (seconds of the first call, `run`), where `run()` does
    `num_steps` Adam steps (a fresh permutation per pass, index the batch, forward, backward,
    step) and returns its seconds. With `compile_model`, the model's forward (loss included)
    goes through `torch.compile`; the first call, which compiles, is made here."""
    torch.manual_seed(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, eps=1e-8)
    forward = torch.compile(model) if compile_model else model

    def step(batch):
        optimizer.zero_grad(set_to_none=True)
        loss = forward(batch)
        loss.backward()
        optimizer.step()
        return loss

    started = time.perf_counter()
    step(data[:batch_size])  # warm-up (and compilation)
    first_call = time.perf_counter() - started

    def run() -> float:
        order = torch.randperm(len(data))
        started = time.perf_counter()
        for b in range(num_steps):
            step(data[order[b * batch_size : (b + 1) * batch_size]])
        return time.perf_counter() - started

    return first_call, run
