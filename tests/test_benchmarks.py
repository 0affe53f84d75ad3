"""The benchmark suite's accounting: FLOP counts from the layer shapes, interleaved timing."""

import itertools

from benchmarks import run
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
