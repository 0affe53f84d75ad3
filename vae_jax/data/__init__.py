"""Data sources. Each returns a `Dataset` of uint8 images in NHWC; models never see this module.

Images are kept as uint8 with values 0..255 (binary data as exactly 0 and 255), so that a whole
split of MNIST costs 39 MB on the device and one `x / 255` in the compiled step restores
exact [0, 1] floats.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from importlib import resources

import numpy as np

from vae_jax.errors import ConfigError

__all__ = [
    "Dataset",
    "from_arrays",
    "dataset_for",
    "load_splits",
    "load_dataset",
    "load_binarized_mnist",
    "first_examples",
    "check_dataset_name",
    "BUILTIN_NAMES",
    "TFDS_NAMES",
    "SOURCE_PREFIXES",
]


@dataclasses.dataclass(frozen=True)
class Dataset:
    """A data set as arrays of records per split, and how to turn records into images.

    Attributes:
      name: the config name it was loaded by.
      splits: split name ('train', 'valid', 'test') to its records, (N, ...). For most sources a
        record is a uint8 image (H, W, C) with values 0..255; a procedural source stores
        something smaller (dSprites: its factor indices) and renders it on the device.
      image_shape: (H, W, C) of the rendered images.
      binary: True when every pixel is 0 or 255, so a Bernoulli likelihood is exact.
      labels: split name to (N,) int32 class labels, for the splits that have them.
      render: a jittable function from a batch of records (B, ...) to uint8 images
        (B, H, W, C); None when the records are the images.
    """

    name: str
    splits: dict[str, np.ndarray]
    image_shape: tuple[int, int, int]
    binary: bool
    labels: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
    render: Callable | None = None

    def split(self, name: str) -> np.ndarray:
        if name not in self.splits:
            raise ConfigError(
                f"data set {self.name!r} has no split {name!r}; it has: {', '.join(self.splits)}."
            )
        return self.splits[name]


def load_binarized_mnist() -> Dataset:
    """Statically binarized MNIST (Larochelle & Murray, 2011): 50k train, 10k valid, 10k test.

    Shipped inside the package, bit-packed (98 bytes per 28x28 image), so it needs no network.
    """
    with resources.files("vae_jax.data").joinpath("binarized_mnist.npz").open("rb") as f:
        packed = dict(np.load(f))
    splits = {
        name: (np.unpackbits(packed[name], axis=1) * np.uint8(255)).reshape(-1, 28, 28, 1)
        for name in ("train", "valid", "test")
    }
    return Dataset(name="binarized_mnist", splits=splits, image_shape=(28, 28, 1), binary=True)


# Names that need TensorFlow Datasets (the `tfds` extra), mapped to their TFDS names.
TFDS_NAMES = {
    "mnist": "mnist",
    "fashion_mnist": "fashion_mnist",
    "cifar10": "cifar10",
    "svhn_cropped": "svhn_cropped",
    "celeb_a": "celeb_a",
}
BUILTIN_NAMES = ("binarized_mnist", "dsprites")
SOURCE_PREFIXES = ("tfds:", "idx:", "npz:", "images:")


def check_dataset_name(name: str) -> None:
    """Raises ConfigError unless `name` is a known data set or a `<source>:<argument>` spec."""
    from vae_jax import registry

    if name in BUILTIN_NAMES or name in TFDS_NAMES or registry.dataset_spec(name) is not None:
        return
    prefix, _, argument = name.partition(":")
    if f"{prefix}:" in SOURCE_PREFIXES and argument:
        return
    allowed = ", ".join(repr(n) for n in (*BUILTIN_NAMES, *TFDS_NAMES, *registry.dataset_names()))
    raise ConfigError(
        f"dataset={name!r} is not known; allowed: {allowed}, or 'tfds:<name>' (any TFDS image "
        "data set), 'idx:<dir>' (MNIST-format IDX files), 'npz:<file>' (arrays train/test) or "
        "'images:<dir>' (a folder of PNG/JPEG files)."
    )


def from_arrays(
    train: np.ndarray,
    test: np.ndarray,
    valid: np.ndarray | None = None,
    labels: dict[str, np.ndarray] | None = None,
    name: str = "arrays",
) -> Dataset:
    """A Dataset from images in memory.

    Args:
      train, test, valid: (N, H, W) or (N, H, W, C) images, C in {1, 3}, as uint8 0..255, bool,
        or floats in [0, 1] (quantised to uint8 by rounding x * 255; training sees x again to
        within 1/510). All share one image shape.
      labels: optional split name -> (N,) integer class labels.
      name: how the data set is named in messages and records.

    Raises:
      DataError: what `npz:` files are refused for: another dtype (int, or floats outside
        [0, 1] such as 0..255 stored as floats), NaN, a bad shape, labels of another length.
    """
    from vae_jax.data import files

    arrays = {"train": np.asarray(train), "test": np.asarray(test)}
    if valid is not None:
        arrays["valid"] = np.asarray(valid)
    for split, values in (labels or {}).items():
        arrays[f"{split}_labels"] = np.asarray(values)
    return files.dataset_from_arrays(arrays, name, f"data.from_arrays({name!r})")


def first_examples(records: np.ndarray, limit: int) -> np.ndarray:
    """The first `limit` records (0: all of them)."""
    return records if limit == 0 else records[:limit]


def dataset_for(config) -> Dataset:
    """The data set `config.dataset` names: a registered one's loader, else `load_dataset`."""
    from vae_jax import registry

    spec = registry.dataset_spec(config.dataset)
    if spec is None:
        return load_dataset(config.dataset, config.image_size, config.data_dir)
    dataset = spec.builder()(config)
    if not isinstance(dataset, Dataset):
        raise ConfigError(
            f"dataset={config.dataset!r}'s loader returned a {type(dataset).__name__}, not a "
            "vae_jax.data.Dataset; build one with vae_jax.data.from_arrays(train, test)."
        )
    return dataset


def load_splits(config) -> tuple[Dataset, np.ndarray, np.ndarray]:
    """The data set a config names, and its training and evaluation records (`max_train_examples`
    and `max_eval_examples` applied), checked against the batch size."""
    dataset = dataset_for(config)
    train_records = first_examples(dataset.split("train"), config.max_train_examples)
    eval_records = first_examples(dataset.split(config.eval_split), config.max_eval_examples)
    num_train = len(train_records)
    if config.batch_size > num_train:
        raise ConfigError(
            f"batch_size={config.batch_size} is larger than the training split of "
            f"{config.dataset!r} ({num_train} examples); allowed: 1 to {num_train}."
        )
    return dataset, train_records, eval_records


def load_dataset(name: str, image_size: int = 64, data_dir: str = "") -> Dataset:
    """Loads a data set by its config name (see `check_dataset_name`).

    Args:
      name: the config's `dataset`.
      image_size: side of the square images that `images:` folders and `celeb_a` are resized to.
      data_dir: where TFDS keeps prepared data sets ('' for its default).
    """
    check_dataset_name(name)
    if name == "binarized_mnist":
        return load_binarized_mnist()
    if name == "dsprites":
        from vae_jax.data import dsprites

        return dsprites.load_dsprites()
    if name in TFDS_NAMES or name.startswith("tfds:"):
        from vae_jax.data import tfds_source

        tfds_name = TFDS_NAMES.get(name) or name.partition(":")[2]
        return tfds_source.load_tfds(tfds_name, name, image_size=image_size, data_dir=data_dir)
    from vae_jax.data import files

    prefix, _, argument = name.partition(":")
    if prefix == "idx":
        return files.load_idx(argument, name)
    if prefix == "npz":
        return files.load_npz(argument, name)
    return files.load_image_folder(argument, name, image_size)
