"""A mistyped value or config name is answered in one line that suggests the closest valid one,
before JAX is imported: within a fraction of a second instead of after JAX's start."""

import pathlib
import subprocess
import sys
import textwrap

import pytest

from vae_jax import experiments, main, registry
from vae_jax.config import did_you_mean, get_config, validate_config
from vae_jax.errors import ConfigError

ROOT = pathlib.Path(__file__).resolve().parent.parent

# Runs the command in-process and says whether it got as far as importing JAX.
WITHOUT_JAX = textwrap.dedent(
    """
    import sys
    from vae_jax import main
    try:
        main.run()
    finally:
        print("jax imported" if "jax" in sys.modules else "jax not imported")
    """
)


@pytest.mark.parametrize(
    "field, typo, meant",
    [
        ("dataset", "binarised_mnist", "binarized_mnist"),
        ("dataset", "fashion_mnsit", "fashion_mnist"),
        ("dataset", "image:/data/faces", "images:/data/faces"),
        ("model", "mpl", "mlp"),
        ("objective", "beta_vea", "beta_vae"),
        ("objective", "info_ave", "info_vae"),  # registered as a plugin is (vae_jax.variants)
        ("pipeline", "devise", "device"),
        ("step_loop", "scn", "scan"),
        ("likelihood", "bernouli", "bernoulli"),
        ("lr_schedule", "cosin", "cosine"),
        ("activation", "tahn", "tanh"),
        ("nan_policy", "skp", "skip"),
        ("eval_split", "tset", "test"),
        ("dae_corruption", "maskng", "masking"),
    ],
)
def test_a_near_miss_is_named_with_the_closest_choice(field, typo, meant):
    config = get_config()
    config[field] = typo
    with pytest.raises(ConfigError) as error:
        validate_config(config)
    message = str(error.value)
    assert message.startswith(f"{field}={typo!r} is not known; allowed: ")
    assert message.endswith(f"; did you mean {meant!r}?")


def test_a_value_close_to_nothing_reads_as_before():
    config = get_config()
    config.model = "resnet"
    with pytest.raises(ConfigError) as error:
        validate_config(config)
    assert str(error.value) == "model='resnet' is not known; allowed: 'mlp', 'conv'."


def test_names_registered_later_are_suggested_too():
    registry.register_model("wide_mlp", "vae_jax.models:build_mlp")
    registry.register_dataset("my_digits", "my_module:load")
    try:
        for field, typo, meant in (
            ("model", "wide_mpl", "wide_mlp"),
            ("dataset", "my_digit", "my_digits"),
        ):
            config = get_config()
            config[field] = typo
            with pytest.raises(ConfigError, match=f"; did you mean {meant!r}\\?$"):
                validate_config(config)
    finally:
        registry.unregister("wide_mlp")
        registry.unregister("my_digits")


def test_did_you_mean_suggests_only_what_is_close():
    assert did_you_mean("burda_vea", ("burda_vae", "conv_mnist")) == "; did you mean 'burda_vae'?"
    assert did_you_mean("something_else", ("burda_vae", "conv_mnist")) == ""
    assert did_you_mean(3, ("burda_vae",)) == ""  # a value of the wrong type: its own message


def run_train(*args, cwd):
    return subprocess.run(
        [sys.executable, "-c", WITHOUT_JAX, *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_the_command_refuses_a_mistyped_value_before_importing_jax(tmp_path):
    result = run_train("--workdir", "w", "--config.dataset=binarised_mnist", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stdout.strip() == "jax not imported"
    (line,) = result.stderr.splitlines()
    assert line.startswith("error: dataset='binarised_mnist' is not known; allowed: ")
    assert line.endswith("; did you mean 'binarized_mnist'?")
    assert not (tmp_path / "w").exists()


def test_a_plugins_names_are_checked_before_jax_too(tmp_path):
    (tmp_path / "my_data.py").write_text(
        "import vae_jax\nvae_jax.register_dataset('my_digits', 'my_data:load')\n"
    )
    result = run_train(
        "--workdir", "w", "--plugin=my_data.py", "--config.dataset=my_digit", cwd=tmp_path
    )
    assert result.returncode == 2 and result.stdout.strip() == "jax not imported"
    assert result.stderr.strip().endswith("; did you mean 'my_digits'?")


def test_an_unknown_config_name_lists_the_names_before_jax(tmp_path):
    result = run_train("--workdir", "w", "--config=burda_vea", cwd=tmp_path)
    assert result.returncode == 2 and result.stdout.strip() == "jax not imported"
    (line,) = result.stderr.splitlines()
    assert line.startswith(
        "error: --config='burda_vea' is neither a config file nor the name of one; "
        "did you mean 'burda_vae'? Choose a file or one of: annealed_vae_dsprites, "
    )
    assert all(name in line for name in experiments.names())


def test_a_bundled_configs_values_are_checked_before_jax(tmp_path):
    result = run_train(
        "--workdir", "w", "--config", "burda_vae", "--config.latents=0", cwd=tmp_path
    )
    assert result.returncode == 2 and result.stdout.strip() == "jax not imported"
    assert result.stderr == "error: latents=0 must be an integer >= 1.\n"


def test_a_missing_experiments_path_points_to_its_name(tmp_path):
    result = run_train("--workdir", "w", "--config", "experiments/burda_vae.py", cwd=tmp_path)
    assert result.returncode == 2 and result.stdout.strip() == "jax not imported"
    assert result.stderr == (
        "error: --config could not be loaded: [Errno 2] No such file or directory: "
        "'experiments/burda_vae.py'; for the copy that comes with vae_jax, give "
        "--config=burda_vae\n"
    )


def test_config_names_are_the_experiments_files():
    assert experiments.names() == tuple(sorted(p.stem for p in (ROOT / "experiments").glob("*.py")))
    assert experiments.path("burda_vae") == str(ROOT / "experiments" / "burda_vae.py")
    assert experiments.path("no_such_name") is None


def test_names_become_paths_and_paths_stay_as_they_are(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mine.py").write_text("def get_config(): ...\n")
    (tmp_path / "default").write_text("")  # a file of that name here is a path, not a name
    argv = ["prog", "--config", "burda_vae:arg", "--config=mine.py", "--config=default", "-x"]
    assert main.resolve_config_names(argv) == [
        "prog",
        "--config",
        f"{experiments.path('burda_vae')}:arg",  # ml_collections' argument to get_config
        "--config=mine.py",
        "--config=default",
        "-x",
    ]


def test_the_configuration_page_lists_every_config_name():
    page = (ROOT / "docs" / "configuration.md").read_text(encoding="utf-8")
    names = page.split("## Config names and the checks before a run", 1)[1].split("Before JAX", 1)[
        0
    ]
    listed = {name for name in experiments.names() if f"`{name}`" in names}
    assert listed == set(experiments.names())
