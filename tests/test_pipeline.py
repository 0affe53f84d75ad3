"""One training loop, two data paths, every source: streaming equals on-device, and each local
source trains end to end."""

import gzip
import os
import struct

import jax
import numpy as np
import pytest
from conftest import without_timings
from PIL import Image

from vae_jax import engine, train
from vae_jax.data import stream
from vae_jax.engine import choose_pipeline


def test_streaming_order_is_the_on_device_permutation():
    key = jax.random.key(5)
    for epoch in (0, 3):
        device = jax.jit(lambda k, e: jax.random.permutation(jax.random.fold_in(k, e), 1000))(
            key, epoch
        )
        np.testing.assert_array_equal(stream.epoch_order(key, epoch, 1000), np.asarray(device))


def test_loader_chunks_cover_the_epoch_in_order():
    records = np.arange(50, dtype=np.int32).reshape(50, 1)
    key = jax.random.key(0)
    loader = stream.StreamingLoader(records, 4, 12, key, chunk_steps=5)
    chunks = [np.asarray(c) for c in loader.epoch(12 + 2, 10)]  # epoch 1 from its batch 2
    assert [c.shape for c in chunks] == [(5, 4, 1), (5, 4, 1)]
    order = stream.epoch_order(key, 1, 50)
    np.testing.assert_array_equal(np.concatenate(chunks).ravel(), order[8:48])


def test_padded_chunks_have_one_shape_and_zeros_after_the_valid_steps():
    records = np.arange(1, 51, dtype=np.int32).reshape(50, 1)  # no zero among the records
    key = jax.random.key(0)
    loader = stream.StreamingLoader(records, 4, 12, key, chunk_steps=5, pad_chunks=True)
    chunks = [np.asarray(c) for c in loader.epoch(12 + 5, 7)]  # 7 steps: chunks of 5 and 2
    assert [c.shape for c in chunks] == [(5, 4, 1), (5, 4, 1)]
    order = stream.epoch_order(key, 1, 50)
    np.testing.assert_array_equal(np.concatenate(chunks)[:7].ravel(), records[order[20:48], 0])
    assert not chunks[1][2:].any()  # three zero batches of padding


def _whole_epoch(loader):
    return np.concatenate([np.asarray(chunk) for chunk in loader.epoch(0, 8)])


def test_processes_share_each_global_batch():
    records = np.arange(64, dtype=np.int32).reshape(64, 1)
    key = jax.random.key(1)
    whole = _whole_epoch(stream.StreamingLoader(records, 8, 8, key, chunk_steps=3))
    shares = [
        _whole_epoch(
            stream.StreamingLoader(records, 8, 8, key, 3, process_index=i, process_count=2)
        )
        for i in range(2)
    ]
    assert shares[0].shape == (8, 4, 1)
    np.testing.assert_array_equal(np.concatenate(shares, axis=1), whole)
    with pytest.raises(ValueError, match="batch_size=8 must be divisible by the 3 processes"):
        stream.StreamingLoader(records, 8, 8, key, chunk_steps=3, process_count=3)


def test_loader_reports_a_failing_source():
    class Broken:
        def __len__(self):
            return 40

        def __getitem__(self, index):
            raise OSError("disk went away")

    loader = stream.StreamingLoader(Broken(), 4, 10, jax.random.key(0), chunk_steps=5)
    with pytest.raises(OSError, match="disk went away"):
        list(loader.epoch(0, 10))


def test_streaming_and_on_device_training_give_the_same_metrics(make_config, tmp_path):
    # 1024 examples at batch 128 are 8 steps; chunks of 3 leave a remainder chunk of 2.
    device = train.train_and_evaluate(make_config(pipeline="device"), str(tmp_path / "device"))
    streamed = train.train_and_evaluate(
        make_config(pipeline="stream", stream_chunk_steps=3), str(tmp_path / "stream")
    )
    assert without_timings(streamed) == without_timings(device)


def test_resume_may_switch_pipelines(make_config, tmp_path):
    straight = train.train_and_evaluate(make_config(num_epochs=3), str(tmp_path / "straight"))
    workdir = str(tmp_path / "switched")
    train.train_and_evaluate(make_config(num_epochs=1, pipeline="stream"), workdir)
    switched = train.train_and_evaluate(make_config(num_epochs=3, pipeline="device"), workdir)
    assert without_timings(switched) == without_timings(straight)


def test_auto_pipeline_streams_what_does_not_fit(make_config, monkeypatch):
    config = make_config()
    small = np.zeros((10, 28, 28, 1), np.uint8)
    assert choose_pipeline(config, small) == "device"
    monkeypatch.setattr(engine, "DEVICE_DATA_BUDGET_BYTES", small.nbytes - 1)
    assert choose_pipeline(config, small) == "stream"


def _write_idx(path, array, magic, gz):
    header = struct.pack(">I", magic) + b"".join(struct.pack(">I", d) for d in array.shape)
    payload = header + array.astype(np.uint8).tobytes()
    with (gzip.open if gz else open)(path, "wb") as f:
        f.write(payload)


def _digits(count, seed):
    """Grayscale 28x28 'images' with labels: a bright bar whose position is the label."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, count)
    images = rng.integers(0, 40, (count, 28, 28)).astype(np.uint8)
    for image, label in zip(images, labels):
        image[4 + 2 * label : 6 + 2 * label, 4:24] = 255
    return images, labels


def test_idx_source_trains_with_dynamic_binarization_and_plots_labels(make_config, tmp_path):
    source = tmp_path / "idx"
    source.mkdir()
    for prefix, count in (("train", 512), ("t10k", 256)):
        images, labels = _digits(count, seed=len(prefix))
        _write_idx(source / f"{prefix}-images-idx3-ubyte.gz", images, 2051, gz=True)
        _write_idx(source / f"{prefix}-labels-idx1-ubyte", labels, 2049, gz=False)
    config = make_config(
        dataset=f"idx:{source}",
        max_train_examples=0,
        max_eval_examples=0,
        dynamic_binarization=True,
        num_epochs=1,
        batch_size=64,
    )
    records = train.train_and_evaluate(config, str(tmp_path / "run"))
    assert records[-1]["step"] == 8 and np.isfinite(records[-1]["test_elbo"])
    scatter = tmp_path / "run" / "images" / "latents_epoch_001.png"
    assert scatter.stat().st_size > 0  # the labels reached the outputs
    colours = {tuple(c) for c in np.asarray(Image.open(scatter)).reshape(-1, 3)}
    assert len(colours) > 5  # dots of several label colours, not a blank canvas


def test_npz_source_trains(make_config, tmp_path):
    train_images, train_labels = _digits(256, 1)
    test_images, _ = _digits(128, 2)
    path = tmp_path / "digits.npz"
    np.savez(
        path,
        train=train_images.astype(np.float32) / 255,
        train_labels=train_labels,
        test=test_images.astype(np.float32) / 255,
    )
    config = make_config(
        dataset=f"npz:{path}",
        likelihood="gaussian_learned",
        max_steps=3,
        max_train_examples=0,
        max_eval_examples=0,
        batch_size=32,
    )
    records = train.train_and_evaluate(config, str(tmp_path / "run"))
    assert records[-1]["step"] == 3 and np.isfinite(records[-1]["test_elbo"])
    assert not os.path.exists(
        tmp_path / "run" / "images" / "latents_epoch_001.png"
    )  # no test labels


@pytest.mark.parametrize("pipeline", ["device", "stream"])
def test_conv_model_trains_on_an_image_folder(make_config, tmp_path, pipeline):
    rng = np.random.default_rng(0)
    for split, count in (("train", 40), ("test", 12)):
        for label, name in enumerate(("circles", "squares")):
            folder = tmp_path / "pictures" / split / name
            folder.mkdir(parents=True)
            for i in range(count // 2):
                pixels = rng.integers(0, 255, (48, 40, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f"{i}.{'png' if label else 'jpg'}")
    config = make_config(
        dataset=f"images:{tmp_path / 'pictures'}",
        image_size=32,
        model="conv",
        likelihood="gaussian",
        max_train_examples=0,
        max_eval_examples=0,
        batch_size=8,
        max_steps=4,
        pipeline=pipeline,
        stream_chunk_steps=3,
    )
    records = train.train_and_evaluate(config, str(tmp_path / "run"))
    assert records[-1]["step"] == 4 and np.isfinite(records[-1]["test_elbo"])


@pytest.mark.parametrize("pipeline", ["device", "stream"])
def test_conv_model_trains_on_dsprites_rendered_on_the_device(make_config, tmp_path, pipeline):
    config = make_config(
        dataset="dsprites",
        model="conv",
        conv_features=(32, 32, 64, 64),
        latents=10,
        max_train_examples=0,
        max_eval_examples=512,
        batch_size=32,
        max_steps=3,
        pipeline=pipeline,
        stream_chunk_steps=2,
    )
    records = train.train_and_evaluate(config, str(tmp_path / "run"))
    assert records[-1]["step"] == 3 and np.isfinite(records[-1]["test_elbo"])
    # Binary 64x64 images: the Bernoulli reconstruction term is a few hundred nats at most.
    assert 0 < records[-1]["test_recon"] < 64 * 64 * np.log(2)
    assert (tmp_path / "run" / "images" / "latents_epoch_001.png").exists()  # shape labels
