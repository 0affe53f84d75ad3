"""The wheel is the tool: it holds every module, the bundled data, the experiment configs (by
name: `--config=burda_vae`) and the `vae-jax-train` / `vae-jax-evaluate` commands.

Built offline from a copy of the sources (`pip wheel --no-build-isolation` with the setuptools
the `test` extra installs), so that nothing is written into the checkout.
"""

import configparser
import importlib
import importlib.metadata
import pathlib
import shutil
import subprocess
import sys
import textwrap
import zipfile

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
SOURCES = ("pyproject.toml", "README.md", "vae_jax", "experiments")
COMMANDS = {"vae-jax-train": "vae_jax.main:run", "vae-jax-evaluate": "vae_jax.evaluate:run"}


def setuptools_builds_this() -> bool:
    """pyproject.toml's SPDX `license` string needs setuptools 77 (the build requirement)."""
    try:
        major = int(importlib.metadata.version("setuptools").split(".")[0])
    except importlib.metadata.PackageNotFoundError:
        return False
    return major >= 77


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> zipfile.ZipFile:
    if not setuptools_builds_this():
        pytest.skip("building the wheel offline needs setuptools>=77: pip install -e '.[test]'")
    source = tmp_path_factory.mktemp("source")
    for name in SOURCES:
        copy = shutil.copytree if (ROOT / name).is_dir() else shutil.copy2
        kwargs = (
            {"ignore": shutil.ignore_patterns("__pycache__")} if copy is shutil.copytree else {}
        )
        copy(ROOT / name, source / name, **kwargs)
    out = tmp_path_factory.mktemp("dist")
    command = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation"]
    result = subprocess.run(
        [*command, "-q", "-w", str(out), str(source)], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    (built,) = out.glob("vae_jax-*.whl")
    with zipfile.ZipFile(built) as archive:
        yield archive


def test_the_wheel_holds_every_module_and_the_data(wheel):
    names = set(wheel.namelist())
    sources = {p.relative_to(ROOT).as_posix() for p in (ROOT / "vae_jax").rglob("*.py")}
    assert sources - names == set()
    assert "vae_jax/data/binarized_mnist.npz" in names
    subpackages = {p.parent.name for p in (ROOT / "vae_jax").glob("*/__init__.py")}
    assert {f"vae_jax/{name}/__init__.py" for name in subpackages} <= names  # pyproject lists each


def test_the_wheel_holds_the_experiment_configs_as_vae_jax_experiments(wheel):
    configs = {p.name for p in (ROOT / "experiments").glob("*.py")}
    assert len(configs) >= 10
    in_wheel = {
        name.rsplit("/", 1)[1]
        for name in wheel.namelist()
        if name.startswith("vae_jax/experiments/")
    }
    assert in_wheel == configs
    assert not [name for name in wheel.namelist() if name.startswith("experiments/")]


def test_the_wheel_declares_the_console_scripts(wheel):
    (entry_points,) = [n for n in wheel.namelist() if n.endswith(".dist-info/entry_points.txt")]
    parser = configparser.ConfigParser()
    parser.read_string(wheel.read(entry_points).decode())
    assert dict(parser["console_scripts"]) == COMMANDS
    for target in COMMANDS.values():
        module, function = target.split(":")
        assert callable(getattr(importlib.import_module(module), function))


def test_the_installed_layout_finds_configs_by_name(wheel, tmp_path):
    """The wheel's files, imported from where they lie: `vae_jax.experiments` is the wheel's
    vae_jax/experiments/, not the checkout's experiments/."""
    site = tmp_path / "site"
    wheel.extractall(site)
    code = textwrap.dedent(
        """
        import os, sys
        import vae_jax
        from vae_jax import experiments, main
        from vae_jax.experiments.factor_vae_dsprites import get_config
        site = sys.argv[1]
        assert vae_jax.__file__.startswith(site), vae_jax.__file__
        assert experiments.directory() == os.path.join(site, "vae_jax", "experiments")
        assert main.config_file("burda_vae:x").startswith(experiments.directory())
        print(get_config().objective, len(experiments.names()))
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", code, str(site)],
        cwd=tmp_path,
        env={"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    count = len(list((ROOT / "experiments").glob("*.py")))
    assert result.stdout == f"factor_vae {count}\n"
