"""Shapes of both architectures, and the checks `build_model` makes."""

import contextlib
import functools
import re

import flax.linen
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vae_jax import convolutions, models
from vae_jax.config import get_config
from vae_jax.errors import ConfigError


@pytest.mark.parametrize(
    "model_name, image_shape, latents, conv_features",
    [
        ("mlp", (28, 28, 1), 20, (32, 64)),
        ("mlp", (28, 28, 1), 2, (32, 64)),
        ("conv", (28, 28, 1), 2, (32, 64)),
        ("conv", (28, 28, 3), 10, (32, 64)),
        ("conv", (64, 64, 1), 10, (32, 32, 64, 64)),
        ("conv", (64, 64, 3), 32, (32, 32, 64, 64)),
    ],
)
def test_encoder_and_decoder_shapes(model_name, image_shape, latents, conv_features):
    config = get_config()
    config.model, config.latents, config.conv_features = model_name, latents, conv_features
    model = models.build_model(config, image_shape)
    x = jnp.zeros((5, *image_shape))
    params = model.init(jax.random.key(0), x, jnp.zeros((5, latents)))
    mean, log_variance = model.apply(params, x, method="encode")
    assert mean.shape == log_variance.shape == (5, latents)
    location, log_scale = model.apply(params, mean, method="decode")
    assert location.shape == (5, *image_shape)
    assert log_scale is None  # Bernoulli


def test_default_mlp_matches_the_flax_example():
    model = models.build_model(get_config(), (28, 28, 1))
    params = model.init(jax.random.key(0), jnp.zeros((1, 28, 28, 1)), jnp.zeros((1, 20)))
    shapes = jax.tree.map(lambda p: p.shape, params["params"])
    assert shapes["encoder"]["Dense_0"]["kernel"] == (784, 500)
    assert shapes["encoder"]["mean"]["kernel"] == (500, 20)
    assert shapes["decoder"]["Dense_0"]["kernel"] == (20, 500)
    assert shapes["decoder"]["Dense_1"]["kernel"] == (500, 784)


def test_conv_dropout_is_random_in_training_only():
    config = get_config()
    config.model, config.dropout_rate = "conv", 0.5
    model = models.build_model(config, (28, 28, 1))
    x = jax.random.uniform(jax.random.key(0), (4, 28, 28, 1))
    params = model.init(jax.random.key(1), x, jnp.zeros((4, 20)))
    evaluation = [model.apply(params, x, method="encode")[0] for _ in range(2)]
    np.testing.assert_array_equal(*evaluation)
    training = [
        model.apply(params, x, True, method="encode", rngs={"dropout": jax.random.key(k)})[0]
        for k in range(2)
    ]
    assert not np.allclose(*training)


def test_conv_rejects_image_sides_it_cannot_halve():
    config = get_config()
    config.model, config.conv_features = "conv", (32, 64, 64)
    with pytest.raises(ConfigError, match="divisible by 8.*28x28"):
        models.build_model(config, (28, 28, 1))


# Even and odd sides; few channels (one wide product) and many (phase convolutions, per-tap
# products) on both sides of the few-channels threshold (convolutions.py).
CONV_CASES = [((3, 28, 28, 1), 32), ((3, 14, 14, 32), 64), ((2, 7, 9, 3), 5), ((2, 8, 6, 16), 1)]


@contextlib.contextmanager
def _with_cpu_forms(forms: str):
    """On CPU, whether the layers take convolutions.py's CPU gradients ('cpu') or one of the
    other platforms' forms (the `default` branch of their `platform_dependent`): autodiff of the
    phase convolutions ('phase') or the native transposed convolution ('native')."""
    if forms == "cpu":
        yield
        return
    with convolutions.autodiff_on_cpu(), convolutions.transposed_form(forms):
        yield


@pytest.mark.parametrize(
    "cpu_forms, transposed",
    [("cpu", False), ("phase", False), ("cpu", True), ("phase", True), ("native", True)],
    ids=["conv-cpu-forms", "conv-autodiff", "transpose-cpu-forms", "transpose-autodiff", "native"],
)
@pytest.mark.parametrize("shape, features", CONV_CASES)
def test_stride_2_convolutions_equal_flax_layers_with_gradients(
    shape, features, transposed, cpu_forms
):
    x = jax.random.normal(jax.random.key(0), shape)
    if transposed:
        reference = flax.linen.ConvTranspose(features, (4, 4), strides=(2, 2), padding="SAME")
        ours = models.ConvTranspose4x4Stride2(features)
    else:
        reference = flax.linen.Conv(features, (4, 4), strides=(2, 2), padding="SAME")
        ours = models.Conv4x4Stride2(features)
    params = reference.init(jax.random.key(1), x)
    params = jax.tree.map(lambda p: p + 0.1, params)  # a non-zero bias too
    assert jax.tree.map(jnp.shape, ours.init(jax.random.key(1), x)) == jax.tree.map(
        jnp.shape, params
    )

    def loss(params, x, module):
        return jnp.sum(jnp.sin(module.apply(params, x)))

    with _with_cpu_forms(cpu_forms):
        ours_out = jax.jit(ours.apply)(params, x)
        ours_grads = jax.jit(jax.grad(loss, (0, 1)), static_argnums=2)(params, x, ours)
    np.testing.assert_allclose(ours_out, reference.apply(params, x), rtol=1e-5, atol=1e-5)
    reference_grads = jax.grad(loss, (0, 1))(params, x, reference)
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4 * np.abs(b).max()),
        ours_grads,
        reference_grads,
    )


@pytest.mark.parametrize("transposed", [False, True], ids=["conv", "conv-transpose"])
def test_bfloat16_convolution_gradients_are_float32_and_close(transposed):
    x = jax.random.normal(jax.random.key(0), (4, 14, 14, 32))
    layer = models.ConvTranspose4x4Stride2 if transposed else models.Conv4x4Stride2
    grads = {}
    for dtype in (jnp.float32, jnp.bfloat16):
        module = layer(16, dtype)
        params = module.init(jax.random.key(1), x)
        grads[dtype] = jax.grad(lambda p, x, m=module: jnp.sum(jnp.sin(m.apply(p, x))), (0, 1))(
            params, x
        )
    for exact, mixed in zip(*map(jax.tree.leaves, grads.values()), strict=True):
        assert mixed.dtype == jnp.float32
        relative = float(jnp.linalg.norm(mixed - exact) / jnp.linalg.norm(exact))
        assert 1e-5 < relative < 3e-2  # bf16 rounding of the operands: visible, small


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="XLA:CPU's compiled program")
def test_conv_training_step_on_cpu_has_only_plain_forward_convolutions():
    """Every convolution XLA:CPU compiles for the conv model's training step is in the form it
    hands to YNNPACK: NHWC input, HWIO kernel, no zeros inserted (lhs_dilate), no reversed
    window. Autodiff's gradients of a strided convolution are neither, and inside a compiled
    loop those ran 4-21x slower (see convolutions.py)."""
    config = get_config()
    config.model, config.conv_features, config.conv_hidden = "conv", (32, 64), 256
    model = models.build_model(config, (28, 28, 1))
    x = jnp.zeros((8, 28, 28, 1))
    params = model.init(jax.random.key(0), x, jnp.zeros((8, config.latents)))

    def loss(params, x):
        mean, _ = model.apply(params, x, method="encode")
        logits, _ = model.apply(params, mean, method="decode")
        return jnp.sum(jnp.sin(logits))

    text = jax.jit(jax.grad(loss)).lower(params, x).compile().as_text()
    convolutions_in_program = [line for line in text.splitlines() if " convolution(" in line]
    # forward: the 2 encoder layers and the first decoder layer's 4 phases (the last decoder
    # layer's one output channel runs as a product); backward: the second encoder layer's input
    # gradient (4 phases; the first layer's is not needed) and a strided convolution for each
    # decoder layer's input gradient. Kernel gradients are products.
    assert len(convolutions_in_program) == 2 + 4 + 4 + 2, text
    for line in convolutions_in_program:
        assert "dim_labels=b01f_01io->b01f" in line, line
        assert "lhs_dilate" not in line and "rhs_reversal" not in line, line


def test_mixed_precision_matmul_runs_its_products_in_bf16_and_returns_f32_gradients():
    x = jax.random.normal(jax.random.key(0), (32, 64))
    kernel = jax.random.normal(jax.random.key(1), (64, 16)) * 0.1

    def loss(x, kernel, dtype):
        if dtype == jnp.float32:
            return jnp.sum(jnp.tanh(x @ kernel))
        return jnp.sum(jnp.tanh(models.mixed_precision_matmul(x, kernel, dtype)))

    exact = jax.grad(loss, argnums=(0, 1))(x, kernel, jnp.float32)
    mixed = jax.grad(loss, argnums=(0, 1))(x, kernel, jnp.bfloat16)
    for e, m in zip(exact, mixed):
        assert m.dtype == jnp.float32
        relative = float(jnp.linalg.norm(m - e) / jnp.linalg.norm(e))
        assert 1e-5 < relative < 2e-2  # bf16 rounding of the operands: visible, small

    def operand_types(platform):
        """(lhs, rhs) element types of each product in the program lowered for `platform`,
        which needs no such device: forward, input gradient, weight gradient."""
        gradient = jax.jit(jax.grad(functools.partial(loss, dtype=jnp.bfloat16), argnums=(0, 1)))
        text = jax.export.export(gradient, platforms=[platform])(x, kernel).mlir_module()
        products = re.findall(
            r"stablehlo\.dot_general .*: \((tensor<[^>]+>), (tensor<[^>]+>)\)"
            r" -> (tensor<[^>]+>)",
            text,
        )
        assert len(products) == 3, text
        return [tuple(t.split("x")[-1].rstrip(">") for t in product) for product in products]

    # three products of bf16 operands summed in f32; XLA:CPU multiplies bf16 operands that
    # contract their batch axis in f32 anyway, so there the weight gradient keeps f32 operands
    bf16 = ("bf16", "bf16", "f32")
    assert operand_types("cuda") == operand_types("tpu") == [bf16, bf16, bf16]
    assert operand_types("cpu") == [bf16, bf16, ("f32", "f32", "f32")]


def test_bfloat16_model_has_the_float32_parameters_and_close_outputs():
    config = get_config()
    config.latents = 8
    outputs = {}
    for dtype in ("float32", "bfloat16"):
        config.dtype = dtype
        model = models.build_model(config, (28, 28, 1))
        params = model.init(jax.random.key(0), jnp.zeros((2, 28, 28, 1)), jnp.zeros((2, 8)))
        assert {leaf.dtype for leaf in jax.tree.leaves(params)} == {jnp.dtype(jnp.float32)}
        x = jax.random.uniform(jax.random.key(1), (4, 28, 28, 1))
        mean, _ = model.apply(params, x, method="encode")
        logits, _ = model.apply(params, mean, method="decode")
        assert mean.dtype == logits.dtype == jnp.float32
        outputs[dtype] = (params, logits)
    jax.tree.map(np.testing.assert_array_equal, outputs["float32"][0], outputs["bfloat16"][0])
    np.testing.assert_allclose(outputs["bfloat16"][1], outputs["float32"][1], atol=0.1)


@pytest.mark.parametrize(
    "cpuinfo, expected",
    [
        ("processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512_bf16 avx512_vnni\n", True),
        ("processor\t: 0\nflags\t\t: fpu sse2 avx2 amx_tile amx_bf16\n", True),
        (
            "processor\t: 0\nflags\t\t: fpu sse2 avx2 fma\n\nprocessor\t: 1\nflags\t: fpu avx2\n",
            False,
        ),
        ("processor\t: 0\nFeatures\t: fp asimd sve bf16 i8mm\n", True),
        ("processor\t: 0\nFeatures\t: fp asimd evtstrm aes crc32\n", False),
        ("processor\t: 0\nmodel name\t: something\n", None),
    ],
)
def test_cpu_bf16_units_are_read_from_cpuinfo(tmp_path, cpuinfo, expected):
    path = tmp_path / "cpuinfo"
    path.write_text(cpuinfo)
    assert models.cpu_has_bf16_units(str(path)) is expected
    assert models.cpu_has_bf16_units(str(tmp_path / "missing")) is None
