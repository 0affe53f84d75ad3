"""Training: reproducibility, exact resume, the epoch scan's batching, the workdir contract."""

import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import small_config, without_timings

from vae_jax import data, models, objectives, train
from vae_jax.evaluation import make_evaluate, pad_to_multiple
from vae_jax.optim import build_optimizer
from vae_jax.rng import SHUFFLE_STREAM, stream_key
from vae_jax.step import (
    TrainState,
    create_train_state,
    make_train_epoch,
    make_train_step,
    masks_in_chunks,
)


def test_same_seed_same_run_and_another_seed_another(make_config, tmp_path):
    first = train.train_and_evaluate(make_config(), str(tmp_path / "a"))
    second = train.train_and_evaluate(make_config(), str(tmp_path / "b"))
    other = train.train_and_evaluate(make_config(seed=1), str(tmp_path / "c"))
    assert without_timings(first) == without_timings(second)
    assert first[-1]["test_elbo"] != other[-1]["test_elbo"]


def test_resume_continues_exactly_as_if_never_stopped(make_config, tmp_path):
    straight = train.train_and_evaluate(make_config(num_epochs=4), str(tmp_path / "straight"))
    workdir = str(tmp_path / "resumed")
    first_part = train.train_and_evaluate(make_config(num_epochs=2), workdir)
    assert [r["epoch"] for r in first_part] == [1, 2]
    resumed = train.train_and_evaluate(make_config(num_epochs=4), workdir)
    assert [r["epoch"] for r in resumed] == [1, 2, 3, 4]
    assert without_timings(resumed) == without_timings(straight)  # bit for bit
    with open(os.path.join(workdir, "config.json")) as f:
        assert json.load(f)["num_epochs"] == 4


def test_running_a_finished_run_again_changes_nothing(make_config, tmp_path):
    workdir = str(tmp_path / "run")
    records = train.train_and_evaluate(make_config(), workdir)
    again = train.train_and_evaluate(make_config(), workdir)
    assert again == records


def test_metrics_past_the_latest_checkpoint_are_redone_identically(make_config, tmp_path):
    workdir = str(tmp_path / "run")
    config = make_config(num_epochs=3, checkpoint_every_epochs=2)
    records = train.train_and_evaluate(config, workdir)
    steps = sorted(int(d) for d in os.listdir(os.path.join(workdir, "checkpoints")))
    assert steps == [16, 24]  # epoch 2 by checkpoint_every_epochs, epoch 3 as the last
    # As if the run had died after logging epoch 3 but before its checkpoint was complete.
    shutil.rmtree(os.path.join(workdir, "checkpoints", "24"))
    with open(os.path.join(workdir, "metrics.jsonl"), "a") as f:
        f.write('{"epoch": 4, "step": 3')  # and a torn line
    redone = train.train_and_evaluate(config, workdir)
    assert without_timings(redone) == without_timings(records)
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        assert len(f.readlines()) == 3


def test_max_steps_stops_early_and_can_be_lifted(make_config, tmp_path):
    workdir = str(tmp_path / "run")
    capped = train.train_and_evaluate(make_config(max_steps=5), workdir)
    assert [(r["epoch"], r["step"]) for r in capped] == [(1, 5)]
    lifted = train.train_and_evaluate(make_config(max_steps=0), workdir)
    # Epoch 1 is finished from batch 5 on, with the same order of batches, and its whole line
    # replaces the part's: one line per epoch, as an unbroken run writes.
    assert [(r["epoch"], r["step"]) for r in lifted] == [(1, 8), (2, 16)]
    straight = train.train_and_evaluate(make_config(max_steps=0), str(tmp_path / "straight"))
    timings = ("train_seconds", "examples_per_second")
    assert [{k: v for k, v in r.items() if k not in timings} for r in lifted] == [
        {k: v for k, v in r.items() if k not in timings} for r in straight
    ]


def test_workdir_contract(make_config, tmp_path):
    workdir = tmp_path / "run"
    config = make_config(num_epochs=2)
    records = train.train_and_evaluate(config, str(workdir))

    with open(workdir / "config.json") as f:
        saved = json.load(f)
    assert saved["latents"] == 4 and saved["hidden_sizes"] == [64] and saved["beta"] == 1.0

    lines = (workdir / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line) for line in lines] == records
    for epoch, record in enumerate(records, start=1):
        assert record["epoch"] == epoch and record["step"] == 8 * epoch
        for key in (
            "train_elbo",
            "test_elbo",
            "test_kl",
            "test_recon",
            "train_seconds",
            "examples_per_second",
        ):
            assert np.isfinite(record[key]), key
        # A log-density bound on binary data: negative, and -(recon + kl).
        assert record["test_elbo"] < 0 and record["test_kl"] > 0 and record["test_recon"] > 0
        np.testing.assert_allclose(
            record["test_elbo"], -(record["test_recon"] + record["test_kl"]), rtol=1e-5
        )
        assert record["train_seconds"] > 0
        np.testing.assert_allclose(
            record["examples_per_second"], 8 * 128 / record["train_seconds"], rtol=1e-9
        )
        for kind in ("reconstructions", "samples"):
            assert (workdir / "images" / f"{kind}_epoch_{epoch:03d}.png").stat().st_size > 0
    assert sorted(os.listdir(workdir / "checkpoints")) == ["16", "8"]


def test_training_improves_the_bound(make_config, tmp_path):
    records = train.train_and_evaluate(make_config(num_epochs=3), str(tmp_path / "run"))
    assert records[-1]["test_elbo"] > records[0]["test_elbo"] + 5


def _setup(num_images):
    """The small model, a fresh state, its train step, and the first real training images."""
    images = data.load_binarized_mnist().split("train")[:num_images]
    config = small_config()
    model = models.build_model(config, (28, 28, 1))
    optimizer = build_optimizer(config, 100)
    state = create_train_state(model, optimizer, (28, 28, 1), config.latents, 0)
    step = make_train_step(objectives.make_elbo_loss(model), optimizer)
    return model, state, step, jnp.asarray(images)


def test_epoch_scan_equals_a_python_loop_over_the_same_batches():
    _, state, step, images = _setup(num_images=160)
    steps_per_epoch = 160 // 32
    epoch_fn = jax.jit(make_train_epoch(step, 32, steps_per_epoch, steps_per_epoch))
    scanned, metrics = epoch_fn(state, images)

    order_key = jax.random.fold_in(stream_key(state.key, SHUFFLE_STREAM), 0)
    order = np.asarray(jax.random.permutation(order_key, 160))
    looped = state
    jit_step = jax.jit(step)
    losses = []
    for b in range(steps_per_epoch):
        looped, m = jit_step(looped, images[order[b * 32 : (b + 1) * 32]])
        losses.append(float(m["loss"]))
    assert int(scanned.step) == int(looped.step) == steps_per_epoch
    np.testing.assert_allclose(metrics["loss"], losses, rtol=1e-5)
    for a, b in zip(jax.tree.leaves(scanned.params), jax.tree.leaves(looped.params)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_each_epoch_visits_every_example_once_in_a_new_order():
    seen_per_epoch = []
    state = TrainState(jnp.zeros((), jnp.int32), {}, (), jax.random.key(0))

    def record_step(state, batch):
        return state.replace(step=state.step + 1), batch[:, 0, 0, 0]

    epoch_fn = jax.jit(make_train_epoch(record_step, 4, 5, 5))
    images = jnp.arange(22, dtype=jnp.int32).reshape(22, 1, 1, 1)  # 22 = 5 batches of 4 + 2
    for _ in range(2):
        state, seen = epoch_fn(state, images)
        seen_per_epoch.append(np.asarray(seen).ravel())
    for seen in seen_per_epoch:
        assert len(set(seen.tolist())) == 20  # the remainder of 2 is dropped, no repeats
    assert not np.array_equal(seen_per_epoch[0], seen_per_epoch[1])


def test_evaluation_does_not_depend_on_its_batch_size():
    model, state, _, images = _setup(num_images=160)
    results = []
    for batch_size in (160, 40, 64):  # 64 pads the split to 192 and masks the padding
        padded = jnp.asarray(pad_to_multiple(np.asarray(images), batch_size))
        evaluate = jax.jit(make_evaluate(model, batch_size, 160))
        results.append(evaluate(state.params, padded, jax.random.key(3)))
    for other in results[1:]:
        for k in ("elbo", "kl", "recon"):
            np.testing.assert_allclose(other[k], results[0][k], rtol=1e-5)


def test_evaluation_of_dynamically_binarized_data_scores_a_fixed_binary_draw():
    model, state, _, _ = _setup(num_images=8)
    gray = jnp.full((120, 28, 28, 1), 100, jnp.uint8)
    results = []
    for batch_size in (120, 40):
        evaluate = jax.jit(make_evaluate(model, batch_size, 120, binarize=True))
        results.append(evaluate(state.params, gray, jax.random.key(3)))
    np.testing.assert_allclose(results[0]["elbo"], results[1]["elbo"], rtol=1e-5)
    continuous = jax.jit(make_evaluate(model, 120, 120))(state.params, gray, jax.random.key(3))
    assert float(continuous["recon"]) != pytest.approx(float(results[0]["recon"]), rel=1e-3)


def test_dynamic_binarization_samples_binary_pixels_each_step():
    def loss_fn(params, x, key, step):
        # 0 exactly when every pixel is 0 or 1; the mean tracks the gray levels.
        return jnp.sum(params["w"]) * 0.0, {"nonbinary": jnp.mean(x * (1 - x)), "mean": jnp.mean(x)}

    optimizer = optax.sgd(0.1)
    params = {"w": jnp.zeros(())}
    state = TrainState(jnp.zeros((), jnp.int32), params, optimizer.init(params), jax.random.key(0))
    gray = jnp.full((64, 28, 28, 1), 64, jnp.uint8)  # intensity 64/255
    for binarize, expect_binary in ((True, True), (False, False)):
        step = jax.jit(make_train_step(loss_fn, optimizer, dynamic_binarization=binarize))
        _, first = step(state, gray)
        _, second = step(state.replace(step=state.step + 1), gray)
        assert (float(first["nonbinary"]) == 0.0) == expect_binary
        np.testing.assert_allclose(first["mean"], 64 / 255, rtol=0.02)
        if binarize:
            assert float(first["mean"]) != float(second["mean"])  # a fresh draw every step


@pytest.mark.parametrize("model_name", ["mlp", "conv"])
@pytest.mark.parametrize("likelihood", ["bernoulli", "gaussian", "gaussian_learned"])
def test_every_model_and_likelihood_trains(make_config, tmp_path, model_name, likelihood):
    config = make_config(model=model_name, likelihood=likelihood, num_epochs=1, max_steps=3)
    records = train.train_and_evaluate(config, str(tmp_path / "run"))
    assert records[-1]["step"] == 3 and np.isfinite(records[-1]["test_elbo"])


@pytest.mark.parametrize(
    "dtype, has_units, warned",
    [
        ("bfloat16", False, True),
        ("bfloat16", True, False),
        ("bfloat16", None, False),
        ("float32", False, False),
    ],
)
def test_bfloat16_on_a_cpu_without_bf16_units_warns_that_it_is_slower(
    tmp_path, monkeypatch, caplog, dtype, has_units, warned
):
    monkeypatch.setattr(models, "cpu_has_bf16_units", lambda: has_units)
    caplog.set_level("WARNING")
    records = train.train_and_evaluate(
        small_config(dtype=dtype, num_epochs=1, max_steps=2), str(tmp_path / "run")
    )
    assert records[-1]["step"] == 2  # a warning, not an error: it trains
    said = "slower than with dtype='float32'" in caplog.text
    assert said is warned, caplog.text


@pytest.mark.parametrize("masking, unroll", [("cond", 1), ("select", 1), ("chunks", 2)])
def test_a_masked_short_call_equals_the_shorter_program_bit_for_bit(masking, unroll):
    # 5 and 3 of a 7-step program's steps, against 5- and 3-step programs: the same state, bit
    # for bit, the same metrics for those steps and zeros for the masked ones. In chunks of 3,
    # 5 steps are one whole chunk, one with a masked step and one skipped (two of its steps
    # past the program's 7); 3 steps end on a chunk's end.
    model, state, step, images = _setup(num_images=256)
    epoch = make_train_epoch(step, 32, 8, 7, unroll=unroll, masking=masking, mask_chunk=3)
    masked = jax.jit(epoch)
    for valid in (5, 3):
        short = jax.jit(make_train_epoch(step, 32, 8, valid))
        masked_state, masked_metrics = masked(state, images, np.int32(valid))
        short_state, short_metrics = short(state, images)
        assert int(masked_state.step) == valid
        for a, b in zip(jax.tree.leaves(masked_state), jax.tree.leaves(short_state), strict=True):
            if jnp.issubdtype(a.dtype, jax.dtypes.prng_key):
                a, b = jax.random.key_data(a), jax.random.key_data(b)
            np.testing.assert_array_equal(a, b)
        for name, values in masked_metrics.items():
            assert values.shape[0] == 7
            np.testing.assert_array_equal(values[:valid], short_metrics[name])
            np.testing.assert_array_equal(values[valid:], 0)


def test_auto_masking_branches_per_step_on_cpus_and_tpus_and_in_chunks_on_gpus():
    assert not masks_in_chunks("cpu") and not masks_in_chunks("tpu")
    assert masks_in_chunks("gpu") and masks_in_chunks("cuda") and masks_in_chunks("rocm")
    # The CPU's compiled 'auto' program is the per-step branch's: the platform choice leaves
    # nothing of the chunked form behind (no more selects, no second conditional).
    _, state, step, images = _setup(num_images=128)

    def compiled(masking):
        epoch = make_train_epoch(step, 32, 4, 4, masking=masking)
        return jax.jit(epoch).lower(state, images, np.int32(3)).compile().as_text()

    auto, cond = compiled("auto"), compiled("cond")
    for op in ("conditional(", " select("):
        assert auto.count(op) == cond.count(op) > 0
