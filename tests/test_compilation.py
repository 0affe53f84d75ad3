"""One compilation per program per run: more epochs, a resume, or another pipeline chunk never
recompile the training step (a recompilation would cost seconds every epoch)."""

import contextlib

import jax
import pytest
from conftest import small_config

from vae_jax import train

BACKEND_COMPILE = "/jax/core/compile/backend_compile_duration"


@contextlib.contextmanager
def counting_compilations():
    """Yields a list that gains one entry per program compiled while the block runs. JAX records
    the event for a program compiled by XLA and for one loaded from the persistent compilation
    cache that the suite enables (conftest.py); either way it was traced and lowered again, which
    is what must not happen per epoch."""
    compiled = []

    def listener(event, duration, **kwargs):
        del duration, kwargs
        if event == BACKEND_COMPILE:
            compiled.append(event)

    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        yield compiled
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)


@pytest.mark.parametrize("pipeline", ["device", "stream"])
def test_more_epochs_compile_nothing_more(tmp_path, pipeline):
    # The same programs for 1 epoch and for 3: the step, the epoch scan (or the chunk scans),
    # evaluation and pictures each compile once per run, never per epoch.
    overrides = {"pipeline": pipeline, "stream_chunk_steps": 3, "num_image_examples": 4}
    # A first run fills JAX's caches of small helpers (key folding, conversions) that later runs
    # in this process reuse; the two counted runs then compile the same set.
    train.train_and_evaluate(small_config(num_epochs=1, **overrides), str(tmp_path / "warm"))
    with counting_compilations() as one_epoch:
        train.train_and_evaluate(small_config(num_epochs=1, **overrides), str(tmp_path / "a"))
    with counting_compilations() as three_epochs:
        train.train_and_evaluate(small_config(num_epochs=3, **overrides), str(tmp_path / "b"))
    assert len(one_epoch) > 0  # the listener sees compilations at all
    assert len(three_epochs) == len(one_epoch)
    # init, evaluation, pictures and one training program: the device epoch, or the stream
    # chunk of 3 steps that also runs the padded remainder chunk of 2 (8 steps per epoch).
    assert len(one_epoch) == 4


def test_a_resumed_run_compiles_what_a_fresh_run_does(tmp_path):
    config = small_config(num_epochs=1, num_image_examples=4, max_train_examples=512)
    with counting_compilations() as fresh:
        train.train_and_evaluate(config, str(tmp_path))
    config.num_epochs = 3
    with counting_compilations() as resumed:
        train.train_and_evaluate(config, str(tmp_path))
    # Restoring may compile a few small programs (device placement of the restored arrays),
    # but the further epochs add nothing per epoch.
    config.num_epochs = 4
    with counting_compilations() as one_more:
        train.train_and_evaluate(config, str(tmp_path))
    assert len(resumed) == len(one_more) <= len(fresh) + 4


def test_an_epochs_remainder_runs_in_the_calls_program_with_the_same_results(tmp_path):
    # 8 steps per epoch in calls of 3: 3, 3 and a remainder of 2, which the 3-step program runs
    # with its last step masked instead of compiling a 2-step program.
    warm = small_config(num_epochs=1, num_image_examples=4)
    train.train_and_evaluate(warm, str(tmp_path / "warm"))
    with counting_compilations() as whole:
        straight = train.train_and_evaluate(warm, str(tmp_path / "whole"))
    with counting_compilations() as split:
        called = train.train_and_evaluate(
            small_config(num_epochs=1, num_image_examples=4, steps_per_call=3),
            str(tmp_path / "split"),
        )
    assert len(split) == len(whole)  # one training program either way
    timings = ("train_seconds", "examples_per_second")
    assert [{k: v for k, v in r.items() if k not in timings} for r in called] == [
        {k: v for k, v in r.items() if k not in timings} for r in straight
    ]
