"""Image folders are decoded in parallel and cached until the folder changes (image_cache.py)."""

import os

import numpy as np
import pytest
from PIL import Image

from vae_jax.data import files


def _folder(root, count, seed=0):
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        pixels = rng.integers(0, 256, size=(20, 24, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(root / f"img{i:03d}.png")
    return root


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("VAE_JAX_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache" / "images"


def _load(folder):
    dataset = files.load_image_folder(str(folder), f"images:{folder}", 16)
    return {split: dataset.split(split) for split in ("train", "test")}


def test_a_second_load_comes_from_the_cache_and_equals_the_decoded(tmp_path, cache, monkeypatch):
    folder = _folder(tmp_path / "pics", 30)
    first = _load(folder)
    assert len(os.listdir(cache)) == 1
    assert oct(os.stat(cache / os.listdir(cache)[0]).st_mode & 0o777) == oct(0o666 & ~_umask())

    def refuse(*args, **kwargs):
        raise AssertionError("decoded again")

    monkeypatch.setattr(Image, "open", refuse)
    second = _load(folder)
    for split in first:
        np.testing.assert_array_equal(second[split], first[split])
        assert first[split].dtype == np.uint8 and first[split].shape[1:] == (16, 16, 3)


def test_adding_or_changing_a_file_decodes_the_folder_again(tmp_path, cache):
    folder = _folder(tmp_path / "pics", 30)
    before = _load(folder)
    _folder(tmp_path / "extra", 1, seed=5)
    os.replace(tmp_path / "extra" / "img000.png", folder / "new.png")
    after = _load(folder)
    assert sum(len(v) for v in after.values()) == sum(len(v) for v in before.values()) + 1
    Image.fromarray(np.zeros((20, 24, 3), np.uint8)).save(folder / "img001.png")
    os.utime(folder / "img001.png", ns=(1, 1))
    changed = _load(folder)
    assert len(os.listdir(cache)) == 3
    assert not all(np.array_equal(changed[s], after[s]) for s in changed)


def test_an_unwritable_cache_costs_a_warning_not_the_run(tmp_path, monkeypatch):
    blocker = tmp_path / "not_a_dir"
    blocker.write_text("a file where the cache directory would go")
    monkeypatch.setenv("VAE_JAX_CACHE_DIR", str(blocker))
    folder = _folder(tmp_path / "pics", 30)
    assert sum(len(v) for v in _load(folder).values()) == 30
    monkeypatch.setenv("VAE_JAX_CACHE_DIR", "off")
    assert sum(len(v) for v in _load(folder).values()) == 30


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask
