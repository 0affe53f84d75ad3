"""Data sources for users' own files: IDX, .npz and image folders, and their error messages."""

import gzip
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vae_jax.data.files import load_idx, load_image_folder, load_npz
from vae_jax.errors import ConfigError, DataError

# The real MNIST test files, shared beside the repository (not shipped with it).
MNIST_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "mnist"
MNIST_TEST_DIGIT_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


# --------------------------------------------------------------------------------------------
# IDX


def idx_bytes(array: np.ndarray, magic: int | None = None) -> bytes:
    """An IDX file of unsigned bytes: big-endian magic, one int32 per dimension, then data."""
    if magic is None:
        magic = 2051 if array.ndim == 3 else 2049
    header = struct.pack(f">I{array.ndim}I", magic, *array.shape)
    return header + array.astype(np.uint8).tobytes()


def write(path: Path, data: bytes, gz: bool = False) -> Path:
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


def write_idx_set(directory: Path, images: dict, labels: dict | None = None, gz=False) -> None:
    """Writes train/t10k image (and label) files for the given split arrays."""
    suffix = ".gz" if gz else ""
    for split, prefix in (("train", "train"), ("test", "t10k")):
        write(directory / f"{prefix}-images-idx3-ubyte{suffix}", idx_bytes(images[split]), gz)
        if labels is not None:
            write(directory / f"{prefix}-labels-idx1-ubyte{suffix}", idx_bytes(labels[split]), gz)


def random_split_arrays(height=28, width=28, counts=(7, 5), seed=0):
    rng = np.random.default_rng(seed)
    images = {
        split: rng.integers(0, 256, (n, height, width), dtype=np.uint8)
        for split, n in zip(("train", "test"), counts)
    }
    labels = {
        split: rng.integers(0, 10, n, dtype=np.uint8) for split, n in zip(("train", "test"), counts)
    }
    return images, labels


def load_error(loader, *args) -> str:
    with pytest.raises(DataError) as info:
        loader(*args)
    return str(info.value)


@pytest.mark.parametrize("gz", [False, True])
def test_idx_round_trip(tmp_path, gz):
    images, labels = random_split_arrays()
    write_idx_set(tmp_path, images, labels, gz=gz)

    dataset = load_idx(str(tmp_path), "idx:mine")

    assert dataset.name == "idx:mine"
    assert list(dataset.splits) == ["train", "test"]
    assert dataset.image_shape == (28, 28, 1)
    assert dataset.binary is False
    assert dataset.render is None
    for split in ("train", "test"):
        assert dataset.splits[split].dtype == np.uint8
        assert dataset.splits[split].shape == images[split].shape + (1,)
        np.testing.assert_array_equal(dataset.splits[split][..., 0], images[split])
        assert dataset.labels[split].dtype == np.int32
        np.testing.assert_array_equal(dataset.labels[split], labels[split])


def test_idx_gzipped_file_without_gz_name_loads(tmp_path):
    images, labels = random_split_arrays(seed=1)
    write_idx_set(tmp_path, images, labels)
    # Gzip one of them in place, keeping the plain name.
    path = tmp_path / "train-images-idx3-ubyte"
    write(path, idx_bytes(images["train"]), gz=True)

    dataset = load_idx(str(tmp_path), "idx")

    np.testing.assert_array_equal(dataset.splits["train"][..., 0], images["train"])


def test_idx_other_size_binary_and_no_labels(tmp_path):
    rng = np.random.default_rng(2)
    images = {
        split: rng.choice(np.array([0, 255], np.uint8), (n, 5, 7))
        for split, n in (("train", 4), ("test", 3))
    }
    write_idx_set(tmp_path, images, labels=None)

    dataset = load_idx(str(tmp_path), "idx")

    assert dataset.image_shape == (5, 7, 1)
    assert dataset.splits["train"].shape == (4, 5, 7, 1)
    assert dataset.binary is True
    assert dataset.labels == {}


def test_idx_missing_directory_and_file_path(tmp_path):
    missing = tmp_path / "nowhere"
    message = load_error(load_idx, str(missing), "idx")
    assert str(missing) in message and "does not exist" in message

    a_file = write(tmp_path / "file", b"x")
    message = load_error(load_idx, str(a_file), "idx")
    assert str(a_file) in message and "not a directory" in message


def test_idx_missing_image_file_lists_names_looked_for(tmp_path):
    images, _ = random_split_arrays()
    write_idx_set(tmp_path, images)
    (tmp_path / "t10k-images-idx3-ubyte").unlink()

    message = load_error(load_idx, str(tmp_path), "idx")

    assert str(tmp_path) in message
    assert "t10k-images-idx3-ubyte," in message
    assert "t10k-images-idx3-ubyte.gz" in message


@pytest.mark.parametrize(
    "file, magic, expected",
    [
        ("train-images-idx3-ubyte", 2049, 2051),
        ("t10k-images-idx3-ubyte", 1234, 2051),
        ("train-labels-idx1-ubyte", 2051, 2049),
    ],
)
def test_idx_wrong_magic_number(tmp_path, file, magic, expected):
    images, labels = random_split_arrays()
    write_idx_set(tmp_path, images, labels)
    split = "train" if file.startswith("train") else "test"
    array = labels[split] if "labels" in file else images[split]
    write(tmp_path / file, idx_bytes(array, magic=magic))

    message = load_error(load_idx, str(tmp_path), "idx")

    assert str(tmp_path / file) in message
    assert f"magic number {magic}" in message
    assert f"expected {expected}" in message


@pytest.mark.parametrize("gz", [False, True])
def test_idx_truncated_data(tmp_path, gz):
    images, labels = random_split_arrays(height=4, width=4, counts=(3, 2))
    write_idx_set(tmp_path, images, labels)
    path = tmp_path / "train-images-idx3-ubyte"
    path.unlink()
    path = tmp_path / ("train-images-idx3-ubyte" + (".gz" if gz else ""))
    write(path, idx_bytes(images["train"])[:-8], gz=gz)

    message = load_error(load_idx, str(tmp_path), "idx")

    assert str(path) in message and "truncated" in message
    assert "48 bytes" in message and "40 are present" in message


def test_idx_extra_bytes(tmp_path):
    images, labels = random_split_arrays(height=4, width=4, counts=(3, 2))
    write_idx_set(tmp_path, images, labels)
    path = write(tmp_path / "t10k-labels-idx1-ubyte", idx_bytes(labels["test"]) + b"\0\0\0")

    message = load_error(load_idx, str(tmp_path), "idx")

    assert str(path) in message and "extra bytes" in message
    assert "2 bytes" in message and "5 are present" in message


def test_idx_header_too_short(tmp_path):
    images, labels = random_split_arrays()
    write_idx_set(tmp_path, images, labels)
    path = write(tmp_path / "train-images-idx3-ubyte", struct.pack(">II", 2051, 7))

    message = load_error(load_idx, str(tmp_path), "idx")

    assert str(path) in message and "8 bytes" in message and "at least 16" in message


def test_idx_dimension_of_zero(tmp_path):
    images, labels = random_split_arrays()
    write_idx_set(tmp_path, images, labels)
    path = write(tmp_path / "train-images-idx3-ubyte", struct.pack(">IIII", 2051, 7, 0, 28))

    message = load_error(load_idx, str(tmp_path), "idx")

    assert str(path) in message and "dimension of 0" in message and "(7, 0, 28)" in message


def test_idx_image_and_label_counts_differ(tmp_path):
    images, labels = random_split_arrays(counts=(7, 5))
    write_idx_set(tmp_path, images, labels)
    label_path = write(tmp_path / "t10k-labels-idx1-ubyte", idx_bytes(labels["test"][:3]))

    message = load_error(load_idx, str(tmp_path), "idx")

    assert str(label_path) in message
    assert str(tmp_path / "t10k-images-idx3-ubyte") in message
    assert "3 labels" in message and "5 images" in message


def test_idx_corrupt_gzip(tmp_path):
    images, labels = random_split_arrays()
    write_idx_set(tmp_path, images, labels, gz=True)
    path = tmp_path / "train-images-idx3-ubyte.gz"
    compressed = path.read_bytes()
    path.write_bytes(compressed[: len(compressed) // 2])

    message = load_error(load_idx, str(tmp_path), "idx")

    assert str(path) in message and "gzip" in message

    path.write_bytes(b"\x1f\x8b" + b"garbage" * 10)
    assert "gzip" in load_error(load_idx, str(tmp_path), "idx")


def test_idx_train_and_test_image_sizes_differ(tmp_path):
    images, _ = random_split_arrays()
    images["test"] = np.zeros((2, 14, 14), np.uint8)
    write_idx_set(tmp_path, images)

    message = load_error(load_idx, str(tmp_path), "idx")

    assert "28x28" in message and "14x14" in message


def test_idx_real_mnist_test_files(tmp_path):
    if not MNIST_DIR.is_dir():
        pytest.skip(f"the real MNIST files are not at {MNIST_DIR}")
    for kind in ("images-idx3", "labels-idx1"):
        source = MNIST_DIR / f"t10k-{kind}-ubyte.gz"
        for prefix in ("train", "t10k"):
            shutil.copy(source, tmp_path / f"{prefix}-{kind}-ubyte.gz")

    dataset = load_idx(str(tmp_path), f"idx:{tmp_path}")

    test = dataset.splits["test"]
    assert test.shape == (10000, 28, 28, 1) and test.dtype == np.uint8
    assert test.min() == 0 and test.max() == 255
    assert dataset.binary is False
    assert np.bincount(dataset.labels["test"], minlength=10).tolist() == MNIST_TEST_DIGIT_COUNTS
    np.testing.assert_array_equal(dataset.splits["train"], test)


# --------------------------------------------------------------------------------------------
# .npz


def save_npz(path: Path, **arrays) -> str:
    np.savez(path, **arrays)
    return str(path)


def test_npz_uint8_three_dimensional_with_labels(tmp_path):
    rng = np.random.default_rng(3)
    train = rng.integers(0, 256, (6, 9, 8), dtype=np.uint8)
    test = rng.integers(0, 256, (4, 9, 8), dtype=np.uint8)
    valid = rng.integers(0, 256, (2, 9, 8), dtype=np.uint8)
    path = save_npz(
        tmp_path / "d.npz",
        test=test,
        train=train,
        valid=valid,
        train_labels=np.arange(6, dtype=np.int64),
        test_labels=np.array([3, 1, 4, 1], np.uint8),
    )

    dataset = load_npz(path, "npz:d")

    assert dataset.name == "npz:d"
    assert list(dataset.splits) == ["train", "valid", "test"]
    assert dataset.image_shape == (9, 8, 1)
    np.testing.assert_array_equal(dataset.splits["train"][..., 0], train)
    np.testing.assert_array_equal(dataset.splits["valid"][..., 0], valid)
    assert dataset.splits["test"].dtype == np.uint8
    assert set(dataset.labels) == {"train", "test"}
    assert dataset.labels["test"].dtype == np.int32
    assert dataset.labels["test"].tolist() == [3, 1, 4, 1]
    assert dataset.binary is False


def test_npz_float_rgb_is_quantised(tmp_path):
    pixels = np.array([0.0, 0.2, 0.5, 1.0, 1 / 255, 0.999])
    train = np.tile(pixels, 12).reshape(2, 3, 4, 3)
    path = save_npz(tmp_path / "f.npz", train=train.astype(np.float32), test=train[:1])

    dataset = load_npz(path, "npz")

    assert dataset.image_shape == (3, 4, 3)
    assert dataset.splits["train"].dtype == np.uint8
    np.testing.assert_array_equal(dataset.splits["train"], np.rint(train * 255).astype(np.uint8))
    assert sorted(np.unique(dataset.splits["train"])) == [0, 1, 51, 128, 255]


def test_npz_binary_flag_from_float_and_bool(tmp_path):
    rng = np.random.default_rng(4)
    as_float = (rng.random((5, 4, 4, 1)) < 0.5).astype(np.float64)
    path = save_npz(tmp_path / "b.npz", train=as_float, test=as_float > 0.5)

    dataset = load_npz(path, "npz")

    assert dataset.binary is True
    np.testing.assert_array_equal(dataset.splits["train"], dataset.splits["test"])
    assert set(np.unique(dataset.splits["train"])) == {0, 255}


def test_npz_missing_and_not_a_file(tmp_path):
    message = load_error(load_npz, str(tmp_path / "none.npz"), "npz")
    assert str(tmp_path / "none.npz") in message and "does not exist" in message
    message = load_error(load_npz, str(tmp_path), "npz")
    assert str(tmp_path) in message and "not a file" in message


@pytest.mark.parametrize("content", [b"", b"just some text, not a zip", b"PK\x03\x04broken"])
def test_npz_not_an_npz_file(tmp_path, content):
    path = write(tmp_path / "x.npz", content)
    message = load_error(load_npz, str(path), "npz")
    assert str(path) in message and "np.savez" in message


def test_npz_truncated_archive(tmp_path):
    path = save_npz(tmp_path / "t.npz", train=np.zeros((50, 8, 8), np.uint8), test=np.zeros(3))
    data = Path(path).read_bytes()
    Path(path).write_bytes(data[: len(data) // 2])
    assert path in load_error(load_npz, path, "npz")


def test_npz_single_npy_array(tmp_path):
    path = tmp_path / "single.npz"
    with open(path, "wb") as f:
        np.save(f, np.zeros((2, 3, 3), np.uint8))
    message = load_error(load_npz, str(path), "npz")
    assert str(path) in message and "single array" in message


def test_npz_missing_split_lists_arrays_found(tmp_path):
    path = save_npz(tmp_path / "m.npz", train=np.zeros((2, 3, 3), np.uint8), tst=np.zeros(3))
    message = load_error(load_npz, path, "npz")
    assert path in message and "'test'" in message and "it has: train, tst" in message


def test_npz_unknown_array_name(tmp_path):
    images = np.zeros((2, 3, 3), np.uint8)
    path = save_npz(tmp_path / "u.npz", train=images, test=images, validation=images)
    message = load_error(load_npz, path, "npz")
    assert path in message and "validation" in message and "valid_labels" in message


def test_npz_labels_without_split(tmp_path):
    images = np.zeros((2, 3, 3), np.uint8)
    path = save_npz(tmp_path / "l.npz", train=images, test=images, valid_labels=np.zeros(2, int))
    message = load_error(load_npz, path, "npz")
    assert path in message and "'valid_labels'" in message and "no 'valid'" in message


@pytest.mark.parametrize(
    "train, expected",
    [
        (np.zeros((2, 3), np.uint8), "has shape (2, 3); expected (N, H, W) or (N, H, W, C)"),
        (np.zeros((1, 2, 3, 3, 1), np.uint8), "expected (N, H, W) or (N, H, W, C)"),
        (np.zeros((2, 3, 3, 2), np.uint8), "has 2 channels"),
        (np.zeros((2, 3, 3, 4), np.uint8), "has 4 channels"),
        (np.zeros((0, 3, 3), np.uint8), "dimension of 0"),
        (np.arange(18.0).reshape(2, 3, 3) * 15, "float values in [0, 255]; expected [0, 1]"),
        (np.full((2, 3, 3), -0.5), "float values in [-0.5, -0.5]"),
        (np.array([[[0.5, np.nan]]]), "NaN"),
        (np.full((2, 3, 3), "a"), "non-numeric or unsupported dtype <U1"),
        (np.zeros((2, 3, 3), np.complex64), "unsupported dtype complex64"),
        (np.zeros((2, 3, 3), np.int64), "dtype int64; expected uint8"),
    ],
)
def test_npz_bad_images(tmp_path, train, expected):
    path = save_npz(tmp_path / "bad.npz", train=train, test=np.zeros((2, 3, 3), np.uint8))
    message = load_error(load_npz, path, "npz")
    assert path in message and "'train'" in message
    assert expected in message


def test_npz_object_array_is_not_unpickled(tmp_path):
    objects = np.array([None, 1], dtype=object)
    path = save_npz(tmp_path / "o.npz", train=objects, test=np.zeros((1, 2, 2), np.uint8))
    message = load_error(load_npz, path, "npz")
    assert path in message and "could not be read" in message


@pytest.mark.parametrize(
    "labels, expected",
    [
        (np.arange(3), "has 3 labels but 'train' has 2 images"),
        (np.zeros((2, 1), int), "expected a 1-D array of integer class labels"),
        (np.array([0.0, 1.0]), "dtype float64"),
        (np.array([0, 2**40]), "outside the int32 range"),
    ],
)
def test_npz_bad_labels(tmp_path, labels, expected):
    images = np.zeros((2, 3, 3), np.uint8)
    path = save_npz(tmp_path / "bl.npz", train=images, test=images, train_labels=labels)
    message = load_error(load_npz, path, "npz")
    assert path in message and "'train_labels'" in message and expected in message


def test_npz_splits_of_different_shapes(tmp_path):
    path = save_npz(
        tmp_path / "s.npz", train=np.zeros((2, 3, 3), np.uint8), test=np.zeros((2, 3, 3, 3))
    )
    message = load_error(load_npz, path, "npz")
    assert path in message and "train (3, 3, 1)" in message and "test (3, 3, 3)" in message


# --------------------------------------------------------------------------------------------
# Image folders


def save_image(path: Path, value, size=(8, 8), mode="L") -> Path:
    """Saves a constant image; `size` is (width, height) as Pillow has it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, value).save(path)
    return path


# Which of img000.png ... img199.png the 10% hash split holds out. Pinned so the split of a
# user's folder can never change between versions (or between runs, as hash() would).
GOLDEN_HELD_OUT = [12, 19, 30, 34, 37, 49, 82, 86, 92, 100]
GOLDEN_HELD_OUT += [106, 129, 134, 137, 170, 182, 183, 192, 194, 195]


@pytest.fixture(scope="module")
def flat_folder(tmp_path_factory):
    """200 grayscale PNGs whose pixel value is their index modulo 256."""
    folder = tmp_path_factory.mktemp("flat")
    for index in range(200):
        save_image(folder / f"img{index:03d}.png", index, size=(6, 4))
    return folder


def test_image_folder_flat_hash_split(flat_folder):
    dataset = load_image_folder(str(flat_folder), "images:flat", 4)

    assert dataset.name == "images:flat"
    assert dataset.image_shape == (4, 4, 1)
    assert dataset.labels == {}
    assert dataset.binary is False
    test_indices = sorted(int(v) for v in dataset.splits["test"][:, 0, 0, 0])
    train_indices = sorted(int(v) for v in dataset.splits["train"][:, 0, 0, 0])
    assert test_indices == GOLDEN_HELD_OUT
    assert sorted(test_indices + train_indices) == list(range(200))
    # Files are read in sorted order.
    assert train_indices == [int(v) for v in dataset.splits["train"][:, 0, 0, 0]]


def test_image_folder_split_is_deterministic_and_relative(flat_folder, tmp_path):
    first = load_image_folder(str(flat_folder), "images", 4)
    moved = shutil.copytree(flat_folder, tmp_path / "elsewhere" / "moved")
    second = load_image_folder(str(moved), "images", 4)
    for split in ("train", "test"):
        np.testing.assert_array_equal(first.splits[split], second.splits[split])


def test_image_folder_center_crop_and_resize(tmp_path):
    # A wide 30x10 image: black, a white 10x10 square in the middle, black.
    wide = np.zeros((10, 30), np.uint8)
    wide[:, 10:20] = 255
    (tmp_path / "train").mkdir()
    Image.fromarray(wide).save(tmp_path / "train" / "wide.png")
    # A tall 20x40 one: a centre band of 100 between bands of 0.
    tall = np.zeros((40, 20), np.uint8)
    tall[10:30] = 100
    (tmp_path / "test").mkdir()
    Image.fromarray(tall).save(tmp_path / "test" / "tall.png")

    dataset = load_image_folder(str(tmp_path), "images", 5)

    # Only the central square survives, so each image comes out uniform.
    assert dataset.splits["train"].shape == (1, 5, 5, 1)
    assert (dataset.splits["train"] == 255).all()
    assert (dataset.splits["test"] == 100).all()


def test_image_folder_class_subfolders_give_sorted_labels(tmp_path):
    for index in range(30):
        save_image(tmp_path / "zebra" / f"z{index}.png", 200)
        save_image(tmp_path / "ant" / f"sub{index % 2}" / f"a{index}.png", 50)
    (tmp_path / "ant" / "notes.txt").write_text("not an image")

    dataset = load_image_folder(str(tmp_path), "images", 8)

    assert set(dataset.labels) == {"train", "test"}
    for split, images in dataset.splits.items():
        labels = dataset.labels[split]
        assert labels.dtype == np.int32 and len(labels) == len(images)
        # ant (50) is class 0, zebra (200) class 1.
        np.testing.assert_array_equal(images[:, 0, 0, 0], np.where(labels == 0, 50, 200))
    assert len(dataset.splits["train"]) + len(dataset.splits["test"]) == 60


def test_image_folder_train_test_subfolders(tmp_path):
    save_image(tmp_path / "train" / "cat" / "1.png", 10)
    save_image(tmp_path / "train" / "dog" / "1.png", 20)
    save_image(tmp_path / "train" / "eel" / "1.png", 30)
    # The test split lacks 'dog', yet 'eel' keeps its index 2.
    save_image(tmp_path / "test" / "eel" / "1.png", 30)
    save_image(tmp_path / "test" / "cat" / "1.png", 10)

    dataset = load_image_folder(str(tmp_path), "images", 8)

    assert list(dataset.splits) == ["train", "test"]
    assert dataset.labels["train"].tolist() == [0, 1, 2]
    assert dataset.labels["test"].tolist() == [0, 2]
    assert dataset.splits["test"][:, 0, 0, 0].tolist() == [10, 30]


def test_image_folder_flat_train_valid_test_subfolders(tmp_path):
    for split, count in (("train", 3), ("valid", 2), ("test", 1)):
        for index in range(count):
            save_image(tmp_path / split / f"{index}.png", 0 if index % 2 else 255)

    dataset = load_image_folder(str(tmp_path), "images", 8)

    assert {split: len(images) for split, images in dataset.splits.items()} == {
        "train": 3,
        "valid": 2,
        "test": 1,
    }
    assert dataset.labels == {}
    assert dataset.binary is True


def test_image_folder_rgb_if_any_image_is_color(tmp_path):
    save_image(tmp_path / "train" / "gray.png", 90)
    save_image(tmp_path / "train" / "color.JPG", (250, 0, 0), mode="RGB")
    save_image(tmp_path / "test" / "also.JPEG", (0, 0, 250), mode="RGB")

    dataset = load_image_folder(str(tmp_path), "images", 4)

    assert dataset.image_shape == (4, 4, 3)
    color, gray = dataset.splits["train"]  # sorted: color.JPG before gray.png
    assert (gray == 90).all()
    assert abs(int(color[0, 0, 0]) - 250) <= 3 and int(color[0, 0, 2]) <= 3


def test_image_folder_gray_jpeg_and_sixteen_bit_png_stay_grayscale(tmp_path):
    save_image(tmp_path / "train" / "a.jpg", 128)
    (tmp_path / "test").mkdir()
    # 257 * 100 is 100 on the 8-bit scale; Pillow's own convert('L') would clip it to 255.
    Image.fromarray(np.full((8, 8), 257 * 100, np.uint16)).save(tmp_path / "test" / "b.png")

    dataset = load_image_folder(str(tmp_path), "images", 8)

    assert dataset.image_shape == (8, 8, 1)
    assert abs(int(dataset.splits["train"][0, 4, 4, 0]) - 128) <= 2
    assert (dataset.splits["test"] == 100).all()


def test_image_folder_skips_hidden_and_non_image_files(tmp_path):
    save_image(tmp_path / "train" / "a.png", 1)
    save_image(tmp_path / "train" / ".hidden.png", 2)
    save_image(tmp_path / "train" / ".ipynb_checkpoints" / "x.png", 3)
    save_image(tmp_path / "test" / "b.png", 4)
    save_image(tmp_path / "test" / "c.bmp", 5)

    dataset = load_image_folder(str(tmp_path), "images", 2)

    assert dataset.splits["train"].ravel().tolist() == [1] * 4
    assert dataset.splits["test"].ravel().tolist() == [4] * 4


@pytest.mark.parametrize("content", [b"not an image at all", "truncated"])
def test_image_folder_corrupt_file_is_named(tmp_path, content):
    good = save_image(tmp_path / "train" / "good.png", 7, size=(64, 64))
    save_image(tmp_path / "test" / "fine.png", 7)
    if content == "truncated":
        content = good.read_bytes()[:60]
    bad = write(tmp_path / "train" / "broken.png", content)

    message = load_error(load_image_folder, str(tmp_path), "images", 8)

    assert str(bad) in message and "PNG or JPEG" in message


def test_image_folder_with_no_images(tmp_path):
    message = load_error(load_image_folder, str(tmp_path), "images", 8)
    assert str(tmp_path) in message and "no image files" in message

    (tmp_path / "readme.txt").write_text("hi")
    (tmp_path / "emptyclass").mkdir()
    assert "no image files" in load_error(load_image_folder, str(tmp_path), "images", 8)


def test_image_folder_empty_split(tmp_path):
    # A single file lands in 'train' by its hash, leaving 'test' empty.
    save_image(tmp_path / "flat" / "only.png", 1)
    message = load_error(load_image_folder, str(tmp_path / "flat"), "images", 8)
    assert str(tmp_path / "flat") in message and "no images for split 'test'" in message

    save_image(tmp_path / "split" / "train" / "a.png", 1)
    (tmp_path / "split" / "test").mkdir()
    message = load_error(load_image_folder, str(tmp_path / "split"), "images", 8)
    assert "no images for split 'test'" in message


def test_image_folder_layout_errors(tmp_path):
    save_image(tmp_path / "mixed" / "a.png", 1)
    save_image(tmp_path / "mixed" / "cls" / "b.png", 1)
    message = load_error(load_image_folder, str(tmp_path / "mixed"), "images", 8)
    assert str(tmp_path / "mixed") in message and "both directly in it" in message

    save_image(tmp_path / "half" / "train" / "a.png", 1)
    save_image(tmp_path / "half" / "val" / "a.png", 1)
    message = load_error(load_image_folder, str(tmp_path / "half"), "images", 8)
    assert "'train' subfolder but no 'test' subfolder" in message


def test_image_folder_missing_directory(tmp_path):
    message = load_error(load_image_folder, str(tmp_path / "gone"), "images", 8)
    assert str(tmp_path / "gone") in message and "does not exist" in message


@pytest.mark.parametrize("image_size", [0, -3, True, 2.5])
def test_image_folder_bad_image_size_is_a_config_error(tmp_path, image_size):
    with pytest.raises(ConfigError, match="image_size"):
        load_image_folder(str(tmp_path), "images", image_size)


def test_from_arrays_takes_uint8_or_unit_floats_with_the_npz_checks():
    from vae_jax import data

    rng = np.random.default_rng(0)
    floats = rng.random((6, 4, 4)).astype(np.float32)  # grayscale without a channel axis
    dataset = data.from_arrays(floats, floats[:2], labels={"train": np.arange(6)}, name="mine")
    train = dataset.split("train")
    assert train.dtype == np.uint8 and train.shape == (6, 4, 4, 1)
    np.testing.assert_array_equal(train[..., 0], np.rint(floats * 255).astype(np.uint8))
    assert np.max(np.abs(train[..., 0] / 255.0 - floats)) <= 1 / 510 + 1e-7
    assert dataset.image_shape == (4, 4, 1) and not dataset.binary
    np.testing.assert_array_equal(dataset.labels["train"], np.arange(6))
    assert list(dataset.splits) == ["train", "test"]
    binary = data.from_arrays(floats > 0.5, floats[:2] > 0.5)
    assert binary.binary and binary.split("test").max() == 255
    with pytest.raises(DataError, match=r"from_arrays\('arrays'\): array 'train' has float values"):
        data.from_arrays(floats * 255.0, floats)  # 0..255 as floats
    with pytest.raises(DataError, match="array 'test' has dtype int64"):
        data.from_arrays(floats, np.zeros((2, 4, 4), np.int64))
    with pytest.raises(DataError, match="'train_labels' has 5 labels but 'train' has 6 images"):
        data.from_arrays(floats, floats, labels={"train": np.arange(5)})


def test_float_records_reaching_the_pixel_conversion_are_an_error():
    import jax.numpy as jnp

    from vae_jax.step import to_float

    assert float(to_float(jnp.full((1, 2), 255, jnp.uint8))[0, 0]) == 1.0
    with pytest.raises(DataError, match="dtype float32 reached the pixel conversion"):
        to_float(jnp.ones((1, 2), jnp.float32))
