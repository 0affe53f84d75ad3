"""Data sources for the user's own files: MNIST-style IDX files, .npz archives, image folders.

Each loader returns a `Dataset` of uint8 NHWC images with values 0..255, like the bundled
sources, and turns every way a file can be unreadable or malformed into one `DataError` sentence
that names the file, what is wrong and what was expected; a raw OSError or ValueError from numpy,
Pillow or gzip never reaches the user.
"""

from __future__ import annotations

import concurrent.futures
import gzip
import hashlib
import numbers
import os
import struct
import zipfile
import zlib
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageOps

from vae_jax.data import image_cache
from vae_jax.errors import ConfigError, DataError

if TYPE_CHECKING:
    from vae_jax.data import Dataset

# The order splits are stored in, so every loader yields the same dict order.
_SPLIT_ORDER = ("train", "valid", "test")


# --------------------------------------------------------------------------------------------
# Shared helpers


def _existing_directory(directory: str, what: str) -> Path:
    """Returns `directory` as a Path, or raises DataError if it is not an existing folder."""
    path = Path(directory).expanduser()
    if not path.exists():
        raise DataError(f"{what} {path} does not exist; expected a folder.")
    if not path.is_dir():
        raise DataError(f"{what} {path} is not a directory; expected a folder.")
    return path


def _is_binary(splits: dict[str, np.ndarray]) -> bool:
    """True when every pixel of every split is 0 or 255, so a Bernoulli likelihood is exact."""
    return all(bool(np.all((images == 0) | (images == 255))) for images in splits.values())


def _make_dataset(
    name: str, splits: dict[str, np.ndarray], labels: dict[str, np.ndarray]
) -> Dataset:
    """Builds a Dataset from uint8 NHWC splits that the caller has checked share one shape."""
    # Imported here because vae_jax.data imports this module to register the loaders.
    from vae_jax.data import Dataset

    ordered = {split: splits[split] for split in _SPLIT_ORDER if split in splits}
    image_shape = tuple(int(size) for size in next(iter(ordered.values())).shape[1:])
    return Dataset(
        name=name,
        splits=ordered,
        image_shape=image_shape,
        binary=_is_binary(ordered),
        labels={split: labels[split] for split in _SPLIT_ORDER if split in labels},
    )


# --------------------------------------------------------------------------------------------
# IDX (the format of the original MNIST files)

_IMAGE_MAGIC = 2051  # 0x00000803: unsigned bytes, 3 dimensions (count, rows, columns).
_LABEL_MAGIC = 2049  # 0x00000801: unsigned bytes, 1 dimension (count).
_GZIP_MAGIC = b"\x1f\x8b"
_IDX_PREFIXES = {"train": "train", "test": "t10k"}


def _idx_candidates(directory: Path, prefix: str, kind: str) -> list[Path]:
    """The file names an IDX file may have, in the order they are preferred.

    The dotted spelling (`train-images.idx3-ubyte`) is how some mirrors (e.g. Kaggle) ship it.
    """
    ndim = 3 if kind == "images" else 1
    stems = [f"{prefix}-{kind}-idx{ndim}-ubyte", f"{prefix}-{kind}.idx{ndim}-ubyte"]
    return [directory / name for stem in stems for name in (stem, stem + ".gz")]


def _find_file(candidates: list[Path]) -> Path | None:
    return next((path for path in candidates if path.is_file()), None)


def _read_maybe_gzipped(path: Path) -> bytes:
    """Reads a file, decompressing it if it starts with the gzip magic bytes, whatever its name."""
    try:
        raw = path.read_bytes()
    except OSError as error:
        raise DataError(f"IDX file {path} could not be read: {error}.") from error
    if not raw.startswith(_GZIP_MAGIC):
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as error:
        raise DataError(
            f"IDX file {path} starts like a gzip file but could not be decompressed ({error}); "
            "expected a complete gzip file or an uncompressed IDX file."
        ) from error


def _parse_idx(path: Path, data: bytes, magic: int, ndim: int) -> np.ndarray:
    """Checks an IDX header against the data after it and returns the data, shaped by it.

    Args:
      path: the file, for messages.
      data: the whole (decompressed) file.
      magic: the magic number expected, `_IMAGE_MAGIC` or `_LABEL_MAGIC`.
      ndim: the number of dimensions that magic number implies.

    Returns:
      A uint8 array of the header's shape, e.g. (N, rows, columns) for images.
    """
    kind = "image" if magic == _IMAGE_MAGIC else "label"
    header_size = 4 * (1 + ndim)
    if len(data) < header_size:
        raise DataError(
            f"IDX {kind} file {path} is too short for its header: it has {len(data)} bytes, "
            f"expected at least {header_size}."
        )
    (found,) = struct.unpack(">I", data[:4])
    if found != magic:
        other = {_IMAGE_MAGIC: "an image file", _LABEL_MAGIC: "a label file"}.get(found)
        hint = f" (that of {other})" if other else ""
        raise DataError(
            f"IDX {kind} file {path} has magic number {found}{hint}, expected {magic} "
            f"for an IDX {kind} file."
        )
    shape = struct.unpack(f">{ndim}I", data[4:header_size])
    if 0 in shape:
        raise DataError(
            f"IDX {kind} file {path} has a dimension of 0 in its header {shape}; "
            "expected every dimension to be at least 1."
        )
    expected = int(np.prod(shape, dtype=np.int64))
    present = len(data) - header_size
    if present != expected:
        what = "is truncated" if present < expected else "has extra bytes"
        raise DataError(
            f"IDX {kind} file {path} {what}: its header {shape} calls for {expected} bytes of "
            f"data but {present} are present."
        )
    # A copy, so the arrays are writeable and do not pin the file's bytes.
    return np.frombuffer(data, dtype=np.uint8, offset=header_size).reshape(shape).copy()


def _load_idx_split(directory: Path, prefix: str) -> tuple[np.ndarray, np.ndarray | None]:
    """Loads one split's images (N, H, W, 1) and, when its label file exists, labels (N,)."""
    candidates = _idx_candidates(directory, prefix, "images")
    image_path = _find_file(candidates)
    if image_path is None:
        names = ", ".join(path.name for path in candidates)
        raise DataError(
            f"IDX directory {directory} has no {prefix} image file; looked for: {names}."
        )
    images = _parse_idx(image_path, _read_maybe_gzipped(image_path), _IMAGE_MAGIC, ndim=3)
    label_path = _find_file(_idx_candidates(directory, prefix, "labels"))
    if label_path is None:
        return images[..., np.newaxis], None
    labels = _parse_idx(label_path, _read_maybe_gzipped(label_path), _LABEL_MAGIC, ndim=1)
    if len(labels) != len(images):
        raise DataError(
            f"IDX label file {label_path} has {len(labels)} labels but image file {image_path} "
            f"has {len(images)} images; expected one label per image."
        )
    return images[..., np.newaxis], labels.astype(np.int32)


def load_idx(directory: str, name: str) -> Dataset:
    """Loads MNIST-format IDX files: splits 'train' and 'test', with labels where present.

    Looks in `directory` for train-images-idx3-ubyte, train-labels-idx1-ubyte,
    t10k-images-idx3-ubyte and t10k-labels-idx1-ubyte (or the dotted spelling
    `train-images.idx3-ubyte`), each optionally gzipped; gzip is detected by its magic bytes, so a
    gzipped file without `.gz` loads too. The image files are required, the label files optional.

    Args:
      directory: the folder holding the files.
      name: the config string the user typed, stored as `Dataset.name`.

    Returns:
      A Dataset of uint8 images (N, H, W, 1) and int32 labels (N,).

    Raises:
      DataError: the folder or an image file is missing, or a file is malformed.
    """
    folder = _existing_directory(directory, "IDX directory")
    splits, labels = {}, {}
    for split, prefix in _IDX_PREFIXES.items():
        splits[split], split_labels = _load_idx_split(folder, prefix)
        if split_labels is not None:
            labels[split] = split_labels
    train_shape, test_shape = splits["train"].shape[1:3], splits["test"].shape[1:3]
    if train_shape != test_shape:
        raise DataError(
            f"IDX directory {folder} has train images of {train_shape[0]}x{train_shape[1]} but "
            f"test images of {test_shape[0]}x{test_shape[1]}; expected one image size."
        )
    return _make_dataset(name, splits, labels)


# --------------------------------------------------------------------------------------------
# .npz archives

_NPZ_ALLOWED = tuple(_SPLIT_ORDER) + tuple(f"{split}_labels" for split in _SPLIT_ORDER)


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    """Reads every array of an .npz archive, without ever unpickling."""
    # The file is opened here, not by np.load, because np.load leaks its handle when the file
    # turns out not to be a zip archive.
    try:
        file = open(path, "rb")  # noqa: SIM115 (closed by the `with` below)
    except OSError as error:
        raise DataError(f"npz file {path} could not be opened: {error}.") from error
    with file:
        try:
            loaded = np.load(file, allow_pickle=False)
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as error:
            raise DataError(
                f"npz file {path} could not be read as a NumPy archive ({error}); expected a "
                "file written by np.savez or np.savez_compressed."
            ) from error
        if not isinstance(loaded, np.lib.npyio.NpzFile):
            raise DataError(
                f"npz file {path} holds a single array, not an archive of named arrays; expected "
                "a file written by np.savez(path, train=..., test=...)."
            )
        try:
            with loaded:
                return {key: loaded[key] for key in loaded.files}
        except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as error:
            raise DataError(
                f"npz file {path} has an array that could not be read ({error}); expected "
                "numeric arrays written by np.savez or np.savez_compressed."
            ) from error


def _check_array_names(source: str, arrays: dict[str, np.ndarray]) -> None:
    """Requires 'train' and 'test' and rejects names that would otherwise be silently ignored."""
    found = ", ".join(sorted(arrays)) or "none"
    missing = [split for split in ("train", "test") if split not in arrays]
    if missing:
        raise DataError(
            f"{source} has no array named {' or '.join(map(repr, missing))}; it has: "
            f"{found}; expected 'train' and 'test' (and optionally 'valid', '<split>_labels')."
        )
    # A typo such as 'validation' or 'test_label' would otherwise drop data without a word.
    unknown = [key for key in arrays if key not in _NPZ_ALLOWED]
    if unknown:
        raise DataError(
            f"{source} has arrays with names not understood: {', '.join(sorted(unknown))}; "
            f"expected only: {', '.join(_NPZ_ALLOWED)}."
        )
    for split in _SPLIT_ORDER:
        if f"{split}_labels" in arrays and split not in arrays:
            raise DataError(
                f"{source} has '{split}_labels' but no '{split}' array; expected labels "
                "only for splits that have images."
            )


def _checked_images(source: str, key: str, array: np.ndarray) -> np.ndarray:
    """Checks one split's images and returns them as uint8 (N, H, W, C)."""
    if array.ndim not in (3, 4):
        raise DataError(
            f"{source}: array {key!r} has shape {array.shape}; expected (N, H, W) or (N, H, W, C)."
        )
    if array.ndim == 3:
        array = array[..., np.newaxis]
    if array.shape[-1] not in (1, 3):
        raise DataError(
            f"{source}: array {key!r} has {array.shape[-1]} channels (shape "
            f"{array.shape}); expected 1 (grayscale) or 3 (RGB) in the last axis."
        )
    if 0 in array.shape:
        raise DataError(
            f"{source}: array {key!r} has shape {array.shape}, with a dimension of 0; "
            "expected at least one image of at least 1x1 pixels."
        )
    return _to_uint8(source, key, array)


def _to_uint8(source: str, key: str, array: np.ndarray) -> np.ndarray:
    """Converts uint8, bool or [0, 1] float pixels to uint8 0..255; other dtypes are errors."""
    if array.dtype == np.uint8:
        return array
    if array.dtype == np.bool_:
        return array.astype(np.uint8) * np.uint8(255)
    if array.dtype.kind in "iu":
        # Other integer types are refused rather than guessed at: 0/1 and 0..255 both occur.
        raise DataError(
            f"{source}: array {key!r} has dtype {array.dtype}; expected uint8 (0..255) or "
            "float (0..1), e.g. convert 0..255 values with .astype(np.uint8)."
        )
    if array.dtype.kind != "f":
        raise DataError(
            f"{source}: array {key!r} has non-numeric or unsupported dtype {array.dtype}; "
            "expected uint8 (0..255) or float (0..1)."
        )
    if not np.all(np.isfinite(array)):
        raise DataError(
            f"{source}: array {key!r} contains NaN or infinite values; expected float "
            "pixels in [0, 1]."
        )
    low, high = float(array.min()), float(array.max())
    if low < 0.0 or high > 1.0:
        raise DataError(
            f"{source}: array {key!r} has float values in [{low:g}, {high:g}]; expected "
            "[0, 1] (store 0..255 pixels as uint8)."
        )
    return np.rint(array.astype(np.float64) * 255.0).astype(np.uint8)


def _checked_labels(source: str, key: str, array: np.ndarray, count: int) -> np.ndarray:
    """Checks one split's labels against its image count and returns them as int32 (N,)."""
    if array.ndim != 1 or array.dtype.kind not in "iu":
        raise DataError(
            f"{source}: array {key!r} has shape {array.shape} and dtype {array.dtype}; "
            "expected a 1-D array of integer class labels."
        )
    if len(array) != count:
        split = key.removesuffix("_labels")
        raise DataError(
            f"{source}: array {key!r} has {len(array)} labels but {split!r} has {count} "
            "images; expected one label per image."
        )
    info = np.iinfo(np.int32)
    if len(array) and (array.min() < info.min or array.max() > info.max):
        raise DataError(
            f"{source}: array {key!r} has labels outside the int32 range; expected class indices."
        )
    return array.astype(np.int32)


def dataset_from_arrays(arrays: dict[str, np.ndarray], name: str, source: str) -> Dataset:
    """A Dataset from named arrays as an .npz archive holds them ('train', 'test', optionally
    'valid' and '<split>_labels'), with every check of `load_npz`; errors name `source`."""
    _check_array_names(source, arrays)
    splits = {
        split: _checked_images(source, split, arrays[split])
        for split in _SPLIT_ORDER
        if split in arrays
    }
    shapes = {split: images.shape[1:] for split, images in splits.items()}
    if len(set(shapes.values())) > 1:
        listed = ", ".join(f"{split} {shape}" for split, shape in shapes.items())
        raise DataError(
            f"{source} has splits of different image shapes ({listed}); expected one "
            "(H, W, C) for all splits."
        )
    labels = {
        split: _checked_labels(source, f"{split}_labels", arrays[f"{split}_labels"], len(images))
        for split, images in splits.items()
        if f"{split}_labels" in arrays
    }
    return _make_dataset(name, splits, labels)


def load_npz(path: str, name: str) -> Dataset:
    """Loads images and optional labels from an .npz archive.

    The archive holds arrays 'train' and 'test' (and optionally 'valid'), each (N, H, W) or
    (N, H, W, C) with C in {1, 3}, as uint8 0..255 or float in [0, 1] (quantised to uint8 by
    rounding x * 255), all with one image shape; and optionally '<split>_labels', integer (N,).

    Args:
      path: the .npz file.
      name: the config string the user typed, stored as `Dataset.name`.

    Returns:
      A Dataset of uint8 images (N, H, W, C) and int32 labels for the splits that have them.

    Raises:
      DataError: the file is missing, not an .npz archive, or its arrays are malformed.
    """
    file = Path(path).expanduser()
    if not file.exists():
        raise DataError(f"npz file {file} does not exist; expected a file written by np.savez.")
    if not file.is_file():
        raise DataError(f"npz file {file} is not a file; expected a file written by np.savez.")
    return dataset_from_arrays(_read_npz(file), name, f"npz file {file}")


# --------------------------------------------------------------------------------------------
# Folders of PNG / JPEG images

_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
_GRAY_MODES = frozenset({"1", "L", "LA", "I", "F", "I;16", "I;16L", "I;16B", "I;16N"})
# What Pillow raises on broken files: most formats raise OSError, but some decoders raise
# SyntaxError, struct.error, EOFError or ValueError, and huge images DecompressionBombError.
_PIL_ERRORS = (
    OSError,
    ValueError,
    SyntaxError,
    EOFError,
    struct.error,
    zlib.error,
    Image.DecompressionBombError,
)
# One file in this many goes to 'test' when the folder has no train/test subfolders.
_TEST_ONE_IN = 10


def _is_visible(path: Path) -> bool:
    """False for hidden entries such as .DS_Store or .ipynb_checkpoints."""
    return not path.name.startswith(".")


def _is_image_file(path: Path) -> bool:
    return path.suffix.lower() in _IMAGE_SUFFIXES and _is_visible(path) and path.is_file()


def _images_below(folder: Path) -> list[Path]:
    """Image files anywhere below `folder`, skipping hidden ones, in a stable sorted order."""
    found = [
        path
        for path in folder.rglob("*")
        # Only the parts below `folder` count: the folder itself may live under a hidden one.
        if _is_image_file(path)
        and all(not part.startswith(".") for part in path.relative_to(folder).parts)
    ]
    return sorted(found, key=lambda path: path.relative_to(folder).as_posix())


def _labelled_files(folder: Path) -> list[tuple[Path, str | None]]:
    """The images of one folder: (file, None) if they lie in it, or (file, class subfolder)."""
    entries = sorted(path for path in folder.iterdir() if _is_visible(path))
    direct = [path for path in entries if _is_image_file(path)]
    nested = [
        (path, subfolder.name)
        for subfolder in entries
        if subfolder.is_dir()
        for path in _images_below(subfolder)
    ]
    if direct and nested:
        raise DataError(
            f"image folder {folder} has images both directly in it (e.g. {direct[0].name}) and in "
            "subfolders; expected either only files or only class subfolders."
        )
    return [(path, None) for path in direct] or nested


def _is_held_out(relative_path: str) -> bool:
    """Whether a file belongs to 'test' in the hash split; stable across runs and machines.

    Python's hash() of a str is randomised per process, so a digest of the path is used instead;
    the path is relative so the split does not change when the folder moves.
    """
    digest = hashlib.sha256(relative_path.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % _TEST_ONE_IN == 0


def _split_files(root: Path) -> dict[str, list[tuple[Path, str | None]]]:
    """Lists the files of each split, from train/test subfolders or by the hash split."""
    subfolders = {path.name for path in root.iterdir() if path.is_dir() and _is_visible(path)}
    has_train, has_test = "train" in subfolders, "test" in subfolders
    if has_train and has_test:
        return {
            split: _labelled_files(root / split) for split in _SPLIT_ORDER if split in subfolders
        }
    if has_train or has_test:
        # Otherwise 'train' (or 'test') would silently become a class of images.
        present, absent = ("train", "test") if has_train else ("test", "train")
        raise DataError(
            f"image folder {root} has a '{present}' subfolder but no '{absent}' subfolder; "
            "expected both (one per split) or neither (class subfolders or plain files)."
        )
    files = _labelled_files(root)
    held_out = [_is_held_out(path.relative_to(root).as_posix()) for path, _ in files]
    return {
        "train": [entry for entry, test in zip(files, held_out) if not test],
        "test": [entry for entry, test in zip(files, held_out) if test],
    }


def _check_split_counts(root: Path, files: dict[str, list[tuple[Path, str | None]]]) -> None:
    if not any(files.values()):
        raise DataError(
            f"image folder {root} has no image files; expected PNG or JPEG files "
            f"({', '.join(_IMAGE_SUFFIXES)}) directly in it or in class subfolders."
        )
    for split, entries in files.items():
        if not entries:
            total = sum(len(entries) for entries in files.values())
            raise DataError(
                f"image folder {root} has no images for split {split!r} ({total} image files in "
                "all); expected at least one, e.g. add images or use train/ and test/ subfolders."
            )


def _sixteen_bit_to_eight(image: Image.Image) -> Image.Image:
    """Scales 16-bit grayscale to 8 bits; Pillow's convert('L') clips instead of scaling."""
    pixels = np.clip(np.asarray(image, dtype=np.float64), 0, 65535)
    return Image.fromarray(np.rint(pixels / 257.0).astype(np.uint8))


def _to_gray_or_rgb(image: Image.Image) -> Image.Image:
    if image.mode.startswith("I"):
        return _sixteen_bit_to_eight(image)
    return image.convert("L" if image.mode in _GRAY_MODES else "RGB")


def _center_crop_resize(image: Image.Image, image_size: int) -> Image.Image:
    """Crops the central square, then resizes it with Lanczos (antialiased when shrinking)."""
    width, height = image.size
    side = min(width, height)
    left, top = (width - side) // 2, (height - side) // 2
    square = image.crop((left, top, left + side, top + side))
    if side == image_size:
        return square
    return square.resize((image_size, image_size), Image.Resampling.LANCZOS)


def _read_image(path: Path, image_size: int) -> np.ndarray:
    """Decodes one image to uint8 (size, size) for grayscale or (size, size, 3) for color."""
    try:
        with Image.open(path) as opened:
            # Phone cameras store rotation as an EXIF tag rather than in the pixels.
            image = ImageOps.exif_transpose(opened)
            image.load()
            return np.asarray(_center_crop_resize(_to_gray_or_rgb(image), image_size))
    except _PIL_ERRORS as error:
        raise DataError(
            f"image file {path} could not be read ({type(error).__name__}: {error}); expected a "
            "valid PNG or JPEG image."
        ) from error


def _stack_images(images: list[np.ndarray], rgb: bool) -> np.ndarray:
    """Stacks (H, W) and (H, W, 3) images to (N, H, W, C); gray ones are repeated if `rgb`."""
    if not rgb:
        return np.stack(images)[..., np.newaxis]
    as_rgb = [image if image.ndim == 3 else np.repeat(image[..., None], 3, -1) for image in images]
    return np.stack(as_rgb)


def _decode_splits(files: dict, image_size: int) -> dict[str, np.ndarray]:
    """Every split's images decoded by a pool of threads (Pillow decodes without the GIL), in
    file order; a broken file raises its DataError here."""
    workers = min(32, os.cpu_count() or 1)
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        decoded = {
            split: list(pool.map(lambda entry: _read_image(entry[0], image_size), entries))
            for split, entries in files.items()
        }
    rgb = any(image.ndim == 3 for images in decoded.values() for image in images)
    return {split: _stack_images(images, rgb) for split, images in decoded.items()}


def load_image_folder(directory: str, name: str, image_size: int) -> Dataset:
    """Loads a folder of PNG/JPEG images, resized to image_size x image_size.

    Files (.png, .jpg, .jpeg, any case) lie directly in the folder or in class subfolders, whose
    sorted names give the labels. With 'train' and 'test' subfolders (and optionally 'valid'),
    those are the splits; otherwise a deterministic tenth of the files, chosen by a SHA-256 hash
    of each file's path relative to the folder, forms 'test' and the rest 'train'. Each image is
    center-cropped to a square and resized; the data set is grayscale if every image is, else
    RGB. Hidden files and folders (names starting with '.') are skipped. Files are decoded in
    parallel threads, and the arrays cached once (`data.image_cache`) until the folder changes.

    Args:
      directory: the folder of images.
      name: the config string the user typed, stored as `Dataset.name`.
      image_size: the side in pixels of the square images returned.

    Returns:
      A Dataset of uint8 images (N, image_size, image_size, C), C 1 or 3, with int32 labels
      when the images lie in class subfolders.

    Raises:
      ConfigError: image_size is not a positive integer.
      DataError: the folder is missing, has no images, a split would be empty, or an image
        file cannot be decoded.
    """
    if (
        isinstance(image_size, bool)
        or not isinstance(image_size, numbers.Integral)
        or image_size < 1
    ):
        raise ConfigError(f"image_size={image_size!r} is not allowed; expected an integer >= 1.")
    image_size = int(image_size)
    root = _existing_directory(directory, "image folder")
    files = _split_files(root)
    _check_split_counts(root, files)
    # One class list across splits, so a class missing from one split keeps its index.
    classes = sorted({label for entries in files.values() for _, label in entries} - {None})
    class_index = {label: index for index, label in enumerate(classes)}
    key = image_cache.folder_key(root, files, image_size)
    splits = image_cache.load(key)
    if splits is None or set(splits) != set(files):
        splits = _decode_splits(files, image_size)
        image_cache.store(key, splits)
    labels = {
        split: np.array([class_index[label] for _, label in entries], dtype=np.int32)
        for split, entries in files.items()
        if entries[0][1] is not None
    }
    return _make_dataset(name, splits, labels)
