"""TFDS data sets through tfds.testing.mock_data (no download), and the offline failure path."""

import socket
import subprocess
import sys
import time

import numpy as np
import pytest

tfds = pytest.importorskip("tensorflow_datasets", reason="the tfds extra is not installed")

from vae_jax import train
from vae_jax.data import load_dataset, tfds_source
from vae_jax.errors import ConfigError, DataError


def test_mocked_mnist_loads_as_uint8_images_with_labels(tmp_path):
    with tfds.testing.mock_data(num_examples=40):
        dataset = load_dataset("mnist", data_dir=str(tmp_path))
    assert dataset.splits["train"].shape == (40, 28, 28, 1)
    assert dataset.splits["train"].dtype == np.uint8
    assert dataset.labels["test"].shape == (40,) and dataset.labels["test"].dtype == np.int32
    assert not dataset.binary  # the mock's pixels are random 0..254


@pytest.mark.parametrize("name", ["mnist", "tfds:fashion_mnist"])
def test_mocked_tfds_data_sets_train(make_config, tmp_path, name):
    config = make_config(
        dataset=name,
        data_dir=str(tmp_path / "tfds"),
        dynamic_binarization=True,
        max_train_examples=0,
        max_eval_examples=0,
        batch_size=16,
        max_steps=3,
    )
    with tfds.testing.mock_data(num_examples=64):
        records = train.train_and_evaluate(config, str(tmp_path / "run"))
    assert records[-1]["step"] == 3 and np.isfinite(records[-1]["test_elbo"])
    assert (tmp_path / "run" / "images" / "latents_epoch_001.png").exists()


def test_mocked_celeb_a_is_cropped_resized_and_trains_a_conv_model(make_config, tmp_path):
    with tfds.testing.mock_data(num_examples=24):
        dataset = load_dataset("celeb_a", image_size=64, data_dir=str(tmp_path))
        assert dataset.splits["train"].shape == (24, 64, 64, 3)
        assert set(dataset.splits) == {"train", "valid", "test"}
        config = make_config(
            dataset="celeb_a",
            data_dir=str(tmp_path),
            model="conv",
            conv_features=(32, 32, 64, 64),
            likelihood="gaussian",
            max_train_examples=0,
            max_eval_examples=0,
            batch_size=8,
            max_steps=2,
        )
        records = train.train_and_evaluate(config, str(tmp_path / "run"))
    assert records[-1]["step"] == 2 and np.isfinite(records[-1]["test_elbo"])


def test_unknown_tfds_name_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="TFDS does not know 'no_such_set'"):
        load_dataset("tfds:no_such_set", data_dir=str(tmp_path))


def test_unprepared_data_set_offline_fails_fast_with_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setattr(tfds_source, "can_resolve", lambda host: False)
    started = time.perf_counter()
    with pytest.raises(DataError) as error:
        load_dataset("mnist", data_dir=str(tmp_path))
    assert time.perf_counter() - started < 10
    message = str(error.value)
    assert "'mnist' is not prepared in" in message and "no network" in message
    assert "--config.data_dir" in message and "idx:<dir>" in message


def test_resolution_check_gives_up_on_a_name_that_cannot_resolve():
    started = time.perf_counter()
    assert not tfds_source.can_resolve("no-such-host.invalid", timeout_seconds=3)
    assert time.perf_counter() - started < 5


def test_missing_extra_names_the_install_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)  # import fails
    with pytest.raises(
        DataError, match=r"needs TensorFlow Datasets.*pip install 'vae_jax\[tfds\]'"
    ):
        load_dataset("cifar10")


def _online() -> bool:
    try:
        socket.getaddrinfo(tfds_source.DOWNLOAD_HOST, 443)
        return True
    except OSError:
        return False


@pytest.mark.skipif(_online(), reason="this machine can reach the download host")
def test_cli_offline_mnist_ends_in_seconds_with_one_line(tmp_path):
    started = time.perf_counter()
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "vae_jax.main",
            "--workdir",
            str(tmp_path / "run"),
            "--config.dataset=mnist",
            f"--config.data_dir={tmp_path / 'tfds'}",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    elapsed = time.perf_counter() - started
    assert result.returncode == 2, result.stderr[-2000:]
    assert "error: TFDS data set 'mnist' is not prepared" in result.stderr
    assert "Traceback" not in result.stderr
    assert elapsed < 60  # TensorFlow's import is most of it; the check itself takes seconds
