"""The benchmark suite's accounting: FLOP counts from the layer shapes, interleaved timing, and
the bf16 layout experiment's products."""

import itertools

import jax.numpy as jnp
import numpy as np

from benchmarks import bf16_layouts, run
from vae_jax.config import get_config


def test_mlp_flops_per_example_are_counted_from_the_layer_shapes():
    config = get_config()  # 784-500-20: encoder 784x500, heads 500x40; decoder 20x500, 500x784
    shapes = run.mlp_product_shapes(config, 784)
    assert shapes == [(784, 500, True), (500, 40, False), (20, 500, False), (500, 784, False)]
    macs = 784 * 500 + 500 * 40 + 20 * 500 + 500 * 784
    forward, train = run.matmul_flops_per_example(config, (28, 28, 1))
    assert forward == 2 * macs
    # backward: input and weight gradients, less the first layer's input gradient
    assert train == 2 * macs + 4 * macs - 2 * 784 * 500 == 4_100_000


def test_interleaved_timing_runs_every_variant_once_per_round_in_turn():
    calls = []
    durations = {"a": itertools.cycle([3.0, 1.0, 2.0]), "b": itertools.cycle([5.0, 6.0, 4.0])}

    def variant(name):
        def timed_run():
            calls.append(name)
            return next(durations[name])

        return run.Timed(timed_run)

    seconds = run.time_interleaved({"a": variant("a"), "b": variant("b")}, rounds=3)
    assert calls == ["a", "b"] * 3
    assert seconds == {"a": [3.0, 1.0, 2.0], "b": [5.0, 6.0, 4.0]}


def test_bf16_layouts_arrange_the_same_five_products():
    o = bf16_layouts._operands(8)
    exact = bf16_layouts.batch_major_products(*o.values(), jnp.float32)
    batch_major = bf16_layouts.batch_major_products(*o.values(), jnp.bfloat16)
    w_out_t_copy = o["w_out"].T.astype(jnp.bfloat16)
    feature_major = bf16_layouts.feature_major_products(
        o["x"], o["h"].T, o["g_hidden"].T, o["g_out"].T, o["w_in"].T, o["w_out"], w_out_t_copy
    )
    # back to batch-major; the encoder weight gradient comes out as (500, 784)
    feature_major = [out.T for out in feature_major[:4]] + [feature_major[4]]
    for exact_out, batch_out, feature_out in zip(exact, batch_major, feature_major, strict=True):
        assert exact_out.shape == batch_out.shape == feature_out.shape
        for out in (batch_out, feature_out):
            relative = float(jnp.linalg.norm(out - exact_out) / jnp.linalg.norm(exact_out))
            assert relative < 1e-2  # bf16 operands, f32 sums
        assert float(jnp.linalg.norm(feature_out - exact_out)) > 0  # rounded: really bf16
    # on CPU the batch-major weight gradients keep f32 operands (models.weight_gradient)
    np.testing.assert_array_equal(batch_major[1], exact[1])
    np.testing.assert_array_equal(batch_major[4], exact[4])


def test_bf16_layouts_epochs_run_and_carry_the_transposed_copy():
    for arrangement in bf16_layouts.ARRANGEMENTS:
        program, carry = bf16_layouts.make_epoch(arrangement, batch_size=8, num_steps=3)
        (_, w_out, w_out_t_copy), total = program(carry)
        assert np.isfinite(float(total))
        assert not np.array_equal(w_out, carry[0][1])  # the weights did move
        if arrangement == "bf16_feature_major":
            np.testing.assert_array_equal(w_out_t_copy, w_out.T.astype(jnp.bfloat16))
        else:
            assert w_out_t_copy is None
