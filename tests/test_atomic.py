"""Whole files replace their old version atomically and get the user's umask (atomic.py)."""

import os
import stat

import pytest
from conftest import small_config

from vae_jax import train
from vae_jax.atomic import atomic_write


@pytest.fixture
def umask():
    def set_umask(value):
        os.umask(value)

    previous = os.umask(0o022)
    yield set_umask
    os.umask(previous)


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.mark.parametrize("mask, expected", [(0o022, 0o644), (0o027, 0o640), (0o002, 0o664)])
def test_a_written_file_has_the_users_umask(tmp_path, umask, mask, expected):
    umask(mask)
    with atomic_write(str(tmp_path / "a.json")) as f:
        f.write("{}")
    assert _mode(tmp_path / "a.json") == expected
    assert (tmp_path / "a.json").read_text() == "{}"


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path, umask):
    path = tmp_path / "a.json"
    path.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_write(str(path)) as f:
            f.write("new, half")
            raise RuntimeError("disk gone")
    assert path.read_text() == "old"
    assert os.listdir(tmp_path) == ["a.json"]


def test_every_file_of_a_fresh_workdir_is_readable_by_group_and_others(tmp_path, umask):
    workdir = tmp_path / "run"
    train.train_and_evaluate(small_config(num_epochs=1), str(workdir))
    files = [
        os.path.join(root, name)
        for root, _, names in os.walk(workdir)
        for name in names
        if name not in (".lock",)
    ]
    assert any(name.endswith(".png") for name in files) and len(files) > 5
    wrong = {os.path.relpath(p, workdir): oct(_mode(p)) for p in files if _mode(p) != 0o644}
    assert not wrong
