"""TensorFlow Datasets: the catalogue's image data sets by name, behind the `tfds` extra.

TensorFlow (about 1.4 GB) is imported only here, and only when a TFDS data set is asked for.
Data sets are read from a prepared `data_dir`; when one is not prepared, it is downloaded only if
the download host resolves within seconds, since TFDS itself retries an offline download for
minutes.
"""

from __future__ import annotations

import concurrent.futures
import socket

import numpy as np

from vae_jax.errors import ConfigError, DataError

_INSTALL = "pip install 'vae_jax[tfds]' (from a checkout: pip install -e '.[tfds]')"
DOWNLOAD_HOST = "storage.googleapis.com"
_ALTERNATIVES = (
    "prepare it on a machine with network access (tfds build, or tfds.load with download=True) "
    "and pass its directory as --config.data_dir, or give the files directly with "
    "--config.dataset='idx:<dir>' (MNIST-format files), 'npz:<file>' or 'images:<dir>'"
)
# CelebA's faces sit in the middle 148x148 of its 218x178 images (the usual VAE crop).
_CENTER_CROPS = {"celeb_a": 148}
_HAS_VALIDATION = ("celeb_a",)


def can_resolve(host: str, timeout_seconds: float = 3.0) -> bool:
    """Whether `host` resolves within the timeout (the resolver's own timeout can be minutes)."""
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=1)
    try:
        pool.submit(socket.getaddrinfo, host, 443).result(timeout=timeout_seconds)
        return True
    except (OSError, concurrent.futures.TimeoutError):
        return False
    finally:
        pool.shutdown(wait=False)


def _import_tfds(config_name: str):
    try:
        import tensorflow_datasets as tfds
    except ImportError as error:
        raise DataError(
            f"dataset={config_name!r} needs TensorFlow Datasets, which is not installed: {_INSTALL}."
        ) from error
    return tfds


def _to_uint8_images(images: np.ndarray, size: int | None, crop: int | None) -> np.ndarray:
    """Center-crops to `crop` x `crop` and resizes to `size` x `size` (area-averaging), uint8."""
    if crop is None and size is None:
        return images
    from PIL import Image

    height, width = images.shape[1:3]
    crop = crop or min(height, width)
    top, left = (height - crop) // 2, (width - crop) // 2
    images = images[:, top : top + crop, left : left + crop]
    if size is None or size == crop:
        return np.ascontiguousarray(images)
    resized = [
        np.asarray(
            Image.fromarray(image.squeeze(-1) if image.shape[-1] == 1 else image).resize(
                (size, size), Image.BOX
            )
        )
        for image in images
    ]
    return np.stack(resized).reshape((len(images), size, size, images.shape[-1]))


def _read_split(tfds, builder, split: str, size, crop, batch_size: int = 1024):
    """All of a split as uint8 images (N, H, W, C) and labels (or None), in batches (reading a
    whole split as one batch aborts under tfds.testing.mock_data)."""
    images, labels = [], []
    for batch in tfds.as_numpy(builder.as_dataset(split=split, batch_size=batch_size)):
        if "image" not in batch:
            raise DataError(
                f"TFDS data set {builder.name!r} has no 'image' feature (it has: "
                f"{', '.join(batch)}); only image data sets can train a VAE here."
            )
        images.append(_to_uint8_images(np.asarray(batch["image"], np.uint8), size, crop))
        if "label" in batch and np.ndim(batch["label"]) == 1:
            labels.append(np.asarray(batch["label"], np.int32))
    images = np.concatenate(images)
    if images.ndim == 3:
        images = images[..., None]
    return images, (np.concatenate(labels) if labels else None)


def _load_prepared(tfds, builder, tfds_name: str, config_name: str, image_size: int):
    from vae_jax.data import Dataset

    crop = _CENTER_CROPS.get(tfds_name)
    size = image_size if crop else None
    wanted = [("train", "train"), ("test", "test")]
    # Before preparation (and under tfds.testing.mock_data) the split list is empty.
    if "validation" in builder.info.splits or tfds_name in _HAS_VALIDATION:
        wanted.append(("valid", "validation"))
    splits, labels = {}, {}
    for ours, theirs in wanted:
        splits[ours], split_labels = _read_split(tfds, builder, theirs, size, crop)
        if split_labels is not None:
            labels[ours] = split_labels
    binary = all(np.isin(images, (0, 255)).all() for images in splits.values())
    return Dataset(
        name=config_name,
        splits=splits,
        image_shape=tuple(splits["train"].shape[1:]),
        binary=binary,
        labels=labels,
    )


def load_tfds(tfds_name: str, config_name: str, image_size: int = 64, data_dir: str = ""):
    """Loads TFDS data set `tfds_name` as a `Dataset` of uint8 images with its labels.

    Splits 'train' and 'test' (and 'valid' from TFDS's 'validation' where it has one). Pixels
    stay uint8 0..255 (training scales them to [0, 1]). `celeb_a` is center-cropped to 148x148
    and resized to `image_size`; other data sets keep their size. The whole data set is read into
    host memory; training streams it when it does not fit on the device.

    Raises:
      ConfigError: TFDS does not know the name.
      DataError: TFDS is not installed, or the data set is not prepared and cannot be downloaded.
    """
    tfds = _import_tfds(config_name)
    try:
        builder = tfds.builder(tfds_name, data_dir=data_dir or None)
    except Exception as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else ""
        raise ConfigError(
            f"dataset={config_name!r}: TFDS does not know {tfds_name!r} ({first_line})."
        ) from error
    try:
        return _load_prepared(tfds, builder, tfds_name, config_name, image_size)
    except AssertionError as error:  # TFDS's way of saying the data set is not prepared
        if "could not find data" not in str(error):
            raise
    if not can_resolve(DOWNLOAD_HOST):
        raise DataError(
            f"TFDS data set {tfds_name!r} is not prepared in {builder.data_dir} and cannot be "
            f"downloaded: {DOWNLOAD_HOST} does not resolve (no network). To use it, "
            f"{_ALTERNATIVES}."
        )
    builder.download_and_prepare()
    return _load_prepared(tfds, builder, tfds_name, config_name, image_size)
