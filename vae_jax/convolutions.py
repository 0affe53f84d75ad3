r"""The conv model's two convolutions, 4x4 kernels at stride 2 with SAME padding, and their
gradients in forms that XLA's CPU backend runs fast.

Notation: `down(x, k)` is the strided convolution of the encoder; x (B, H, W, C) padded with
one pixel in front, k (4, 4, C, O), output (B, M, N, O) with M = ceil(H/2):

.. math::
    \mathrm{down}(x, k)_{b,m,n} = \sum_{i,j=0}^{3} x_{b,\,2m+i-1,\,2n+j-1}\, k_{i,j}

Its two gradients are the two other operations a conv model needs:

.. math::
    \partial x = \mathrm{up}(g, k),\ \ \mathrm{up}(g, k)_{b,2m+i-1,2n+j-1} \mathrel{+}=
        g_{b,m,n}\, k_{i,j}^\top, \qquad
    \partial k_{i,j} = \mathrm{taps}(x, g)_{i,j} = \sum_{b,m,n} x_{b,2m+i-1,2n+j-1}^\top\, g_{b,m,n}

and `up` is the decoder's transposed convolution (`nn.ConvTranspose(..., (4, 4), (2, 2),
'SAME')` with its kernel flipped and its channel axes swapped), whose gradients are `down` and
`taps` again. So three kernels serve both layers, forward and backward.

Why not autodiff: XLA:CPU hands a convolution to YNNPACK only in the plain NHWC/HWIO form
with no zeros inserted into the input (XLA's `ynn_support.cc`). Autodiff's `up` inserts zeros
and its `taps` swaps batch and channels, so both fall back to XLA's own convolution, which
runs several times slower inside a compiled loop (`lax.scan`; jax-ml/jax#12868; the timings
are in docs/performance.md, "Convolutions on CPU"). On other platforms (cuDNN, TPU)
autodiff's gradients are used: of the strided convolution, and of the transposed one written as
four phase convolutions.
"""

from __future__ import annotations

import contextlib
import functools

import jax
import jax.numpy as jnp

_NHWC = ("NHWC", "HWIO", "NHWC")

# Below this many channels `up`'s output and `taps`' input run as one wide product (im2col):
# the phase convolutions and per-tap products are slow for one or a few channels.
_FEW_CHANNELS = 8


def _down(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """The strided convolution itself (YNNPACK on CPU)."""
    return jax.lax.conv_general_dilated(
        x, kernel, (2, 2), "SAME", dimension_numbers=_NHWC, preferred_element_type=jnp.float32
    )


def _dot(a: jax.Array, b: jax.Array, contract: tuple[int, int]) -> jax.Array:
    return jax.lax.dot_general(
        a, b, (((contract[0],), (contract[1],)), ((), ())), preferred_element_type=jnp.float32
    )


def _padded_for_taps(x: jax.Array, rows: int, cols: int) -> jax.Array:
    """x padded to 2M+2 rows and 2N+2 columns, one in front: tap i of output m reads row 2m+i."""
    _, height, width, _ = x.shape
    return jnp.pad(x, ((0, 0), (1, 2 * rows + 1 - height), (1, 2 * cols + 1 - width), (0, 0)))


def _taps(x: jax.Array, g: jax.Array) -> jax.Array:
    """The kernel gradient (4, 4, C, O) of `down`, as products over the batch and positions."""
    batch, rows, cols, out_channels = g.shape
    padded = _padded_for_taps(x, rows, cols)
    g = g.reshape(batch * rows * cols, out_channels)
    tap_inputs = [
        padded[:, i : i + 2 * rows : 2, j : j + 2 * cols : 2, :].reshape(batch * rows * cols, -1)
        for i in range(4)
        for j in range(4)
    ]
    if x.shape[-1] < _FEW_CHANNELS:  # one product, 16C wide
        patches = jnp.concatenate(tap_inputs, axis=1)
        return _dot(patches, g, (0, 0)).reshape(4, 4, x.shape[-1], out_channels)
    return jnp.stack([_dot(tap, g, (0, 0)) for tap in tap_inputs]).reshape(
        4, 4, x.shape[-1], out_channels
    )


def _shifted(t: jax.Array, rows: int, cols: int) -> jax.Array:
    """t (B, M, N, C) moved so that pixel (q, r) holds t[q + rows, r + cols], zeros outside."""
    zero = jnp.zeros((), t.dtype)
    return jax.lax.pad(t, zero, [(0, 0, 0), (-rows, rows, 0), (-cols, cols, 0), (0, 0, 0)])


def _up(
    g: jax.Array, kernel: jax.Array, height: int, width: int, few_as_product: bool = True
) -> jax.Array:
    """`down`'s input gradient (B, height, width, C), no zeros inserted.

    Output row u = 2m + i - 1 meets only taps of one parity: an even row 2q the taps 1 and 3
    at inputs q and q - 1, an odd row 2q + 1 the taps 0 and 2 at inputs q + 1 and q. So each
    of the four (row, column) parities is a stride-1 2x2 convolution of g, and the parities
    interleave into the output. With few output channels (and `few_as_product`, which the
    non-CPU branch turns off to keep the phase form everywhere), one product g (BMN, O) x k^T
    (O, 16C) and shifted sums instead.
    """
    batch, rows, cols, _ = g.shape
    channels = kernel.shape[2]
    if few_as_product and channels < _FEW_CHANNELS:
        per_tap = _dot(g.reshape(batch * rows * cols, -1), kernel.reshape(16, channels, -1), (1, 2))
        per_tap = per_tap.reshape(batch, rows, cols, 4, 4, channels)

        def parity(a, b):  # tap i of row parity a reads input q + a - i // 2
            return sum(
                _shifted(per_tap[:, :, :, i, j, :], a - i // 2, b - j // 2)
                for i in (1 - a, 3 - a)
                for j in (1 - b, 3 - b)
            )
    else:

        def parity(a, b):  # a 2x2 window over inputs (q + a - 1, q + a): taps 3 - a, 1 - a
            padded = jnp.pad(g, ((0, 0), (1 - a, a), (1 - b, b), (0, 0)))
            taps = kernel[1 - a :: 2, 1 - b :: 2][::-1, ::-1].transpose(0, 1, 3, 2)
            return jax.lax.conv_general_dilated(
                padded,
                taps,
                (1, 1),
                "VALID",
                dimension_numbers=_NHWC,
                preferred_element_type=jnp.float32,
            )

    rows_of_parity = [jnp.stack([parity(a, b) for b in (0, 1)], axis=3) for a in (0, 1)]
    y = jnp.stack(rows_of_parity, axis=2)  # (B, M, 2 row parities, N, 2 column parities, C)
    y = y.reshape(batch, 2 * rows, 2 * cols, channels)
    return y[:, :height, :width, :]


@jax.custom_vjp
def _down_on_cpu(x: jax.Array, kernel: jax.Array) -> jax.Array:
    return _down(x, kernel)


def _down_on_cpu_forward(x, kernel):
    return _down(x, kernel), (x, kernel)


def _down_on_cpu_backward(residuals, g):
    x, kernel = residuals
    g = g.astype(x.dtype)
    dx = _up(g, kernel, x.shape[1], x.shape[2])
    return dx.astype(x.dtype), _taps(x, g).astype(kernel.dtype)


_down_on_cpu.defvjp(_down_on_cpu_forward, _down_on_cpu_backward)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _up_on_cpu(g: jax.Array, kernel: jax.Array, height: int, width: int) -> jax.Array:
    return _up(g, kernel, height, width)


def _up_on_cpu_forward(g, kernel, height, width):
    return _up(g, kernel, height, width), (g, kernel)


def _up_on_cpu_backward(height, width, residuals, dy):
    g, kernel = residuals
    dy = dy.astype(g.dtype)
    return _down(dy, kernel).astype(g.dtype), _taps(dy, g).astype(kernel.dtype)


_up_on_cpu.defvjp(_up_on_cpu_forward, _up_on_cpu_backward)


# Whether the CPU branch traces the hand-written gradients above (the default) or autodiff, as
# the other platforms do. Read at trace time; `autodiff_on_cpu` switches it, so that tests can
# compare both forms on a CPU.
_CPU_GRADIENTS = {"hand_written": True}


# How the transposed convolution is traced for other platforms than the CPU: 'phase' (four
# stride-1 convolutions, interleaved) or 'native' (`lax.conv_transpose`). Read at trace time.
_ACCELERATOR_UP = {"form": "phase"}


@contextlib.contextmanager
def transposed_form(form: str):
    """Within this block, transposed convolutions traced for a GPU or TPU take `form`:
    'phase' or 'native' (benchmarks.step_levers measures both)."""
    if form not in ("phase", "native"):
        raise ValueError(f"form={form!r}: expected 'phase' or 'native'")
    previous = _ACCELERATOR_UP["form"]
    _ACCELERATOR_UP["form"] = form
    try:
        yield
    finally:
        _ACCELERATOR_UP["form"] = previous


@contextlib.contextmanager
def autodiff_on_cpu():
    """Within this block, layers traced on a CPU take the other platforms' autodiff gradients."""
    previous = _CPU_GRADIENTS["hand_written"]
    _CPU_GRADIENTS["hand_written"] = False
    try:
        yield
    finally:
        _CPU_GRADIENTS["hand_written"] = previous


def conv_4x4_stride_2(x: jax.Array, kernel: jax.Array, dtype=jnp.float32) -> jax.Array:
    """`nn.Conv(O, (4, 4), strides=(2, 2), padding='SAME')`'s product: `down(x, kernel)`.

    Args:
      x: (B, H, W, C).
      kernel: (4, 4, C, O), as `nn.Conv` stores it.
      dtype: of the products (x and kernel are cast to it); the sums are float32.

    Returns:
      (B, ceil(H/2), ceil(W/2), O), float32.
    """
    x, kernel = x.astype(dtype), kernel.astype(dtype)
    cpu = _down_on_cpu if _CPU_GRADIENTS["hand_written"] else _down
    return jax.lax.platform_dependent(x, kernel, cpu=cpu, default=_down)


def conv_transpose_4x4_stride_2(x: jax.Array, kernel: jax.Array, dtype=jnp.float32) -> jax.Array:
    """`nn.ConvTranspose(O, (4, 4), strides=(2, 2), padding='SAME')`'s product.

    That transposed convolution is `up(x, k')` with k' the kernel flipped in both spatial axes
    and its channel axes swapped (the kernel `down` would map the output back with).

    Args:
      x: (B, H, W, C).
      kernel: (4, 4, C, O), as `nn.ConvTranspose` stores it.
      dtype: of the products (x and kernel are cast to it); the sums are float32.

    Returns:
      (B, 2H, 2W, O), float32.
    """
    x, kernel = x.astype(dtype), kernel.astype(dtype)
    down_kernel = kernel[::-1, ::-1].transpose(0, 1, 3, 2)  # (4, 4, O, C)
    height, width = 2 * x.shape[1], 2 * x.shape[2]

    def by_autodiff(x, down_kernel):
        return _up(x, down_kernel, height, width, few_as_product=False)

    def on_cpu(x, down_kernel):
        return _up_on_cpu(x, down_kernel, height, width)

    def native(x, _):  # cuDNN's own transposed convolution of the layer's kernel (zeros inserted)
        return jax.lax.conv_transpose(
            x, kernel, (2, 2), "SAME", dimension_numbers=_NHWC, preferred_element_type=jnp.float32
        )

    default = native if _ACCELERATOR_UP["form"] == "native" else by_autodiff
    cpu = on_cpu if _CPU_GRADIENTS["hand_written"] else default
    return jax.lax.platform_dependent(x, down_kernel, cpu=cpu, default=default)
