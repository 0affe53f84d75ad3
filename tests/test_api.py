"""The public API: what `vae_jax` exports, and `load(workdir)`'s shapes, units and errors."""

import os
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import small_config

import vae_jax
from vae_jax import data, models, objectives
from vae_jax import workdir as workdir_lib

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "old_workdirs")


def test_the_public_names_are_exported_and_import_lazily():
    required = {
        "get_config",
        "validate_config",
        "train_and_evaluate",
        "train_population",
        "evaluate_workdir",
        "load",
        "VaeJaxError",
        "ConfigError",
        "DataError",
        "WorkdirError",
        "DivergenceError",
        "Preempted",
    }
    assert required <= set(vae_jax.__all__)
    assert all(not name.startswith("_") or name == "__version__" for name in vae_jax.__all__)
    for name in vae_jax.__all__:
        assert getattr(vae_jax, name) is not None
    assert issubclass(vae_jax.WorkdirError, vae_jax.VaeJaxError)
    # `import vae_jax` (and so every command's --help) does not start JAX.
    probe = "import sys, vae_jax; print('jax' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
    with pytest.raises(AttributeError, match="no attribute 'trian'"):
        vae_jax.trian  # noqa: B018


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("api") / "run")
    config = small_config(num_epochs=1)
    records = vae_jax.train_and_evaluate(config, workdir)
    return workdir, config, records


def test_load_restores_the_trained_parameters_alone(trained):
    workdir, config, _ = trained
    model = vae_jax.load(workdir)
    assert (model.step, model.image_shape, model.config.latents) == (8, (28, 28, 1), 4)
    # The parameters equal those the run saved (read through the full-state restore).
    from vae_jax import checkpoint, optim
    from vae_jax.step import create_train_state

    vae = models.build_model(config, (28, 28, 1))
    optimizer = optim.build_optimizer(config, 8)
    like = create_train_state(vae, optimizer, (28, 28, 1), config.latents, config.seed)
    with checkpoint.CheckpointStore(os.path.join(workdir, "checkpoints"), 3) as store:
        state, step, _ = store.restore_latest(like, config)
    assert step == 8
    for a, b in zip(jax.tree.leaves(model.params), jax.tree.leaves(state.params)):
        np.testing.assert_array_equal(a, b)


def test_the_methods_take_the_data_sets_units_and_give_pixel_means(trained):
    workdir, _, _ = trained
    model = vae_jax.load(workdir)
    images = data.load_binarized_mnist().split("test")[:5]  # uint8 0/255, (5, 28, 28, 1)
    mean, log_variance = model.encode(images)
    assert mean.shape == log_variance.shape == (5, 4)
    as_floats = images.astype(np.float32) / 255.0
    np.testing.assert_array_equal(model.encode(as_floats)[0], mean)
    reconstructions = model.reconstruct(images)
    assert reconstructions.shape == (5, 28, 28, 1)
    # E[x|z] of a Bernoulli decoder: the sigmoid of its logits at the posterior mean.
    logits, _ = model.model.apply(model.params, mean, method="decode")
    expected = objectives.likelihood_mean(logits, None)
    np.testing.assert_allclose(reconstructions, expected, rtol=1e-6)
    np.testing.assert_allclose(model.decode(mean), expected, rtol=1e-6)
    samples = model.sample(jax.random.key(0), 7)
    assert samples.shape == (7, 28, 28, 1)
    assert 0.0 <= float(jnp.min(samples)) and float(jnp.max(samples)) <= 1.0
    np.testing.assert_array_equal(model.sample(jax.random.key(0), 7), samples)  # keyed


def test_bad_inputs_are_one_sentence_errors(trained, tmp_path):
    workdir, _, _ = trained
    model = vae_jax.load(workdir)
    images = data.load_binarized_mnist().split("test")[:2]
    with pytest.raises(vae_jax.DataError, match=r"span \[0, 255\].*divide 0..255 pixels by 255"):
        model.encode(images.astype(np.float32))  # floats 0..255: would read as near white
    with pytest.raises(vae_jax.DataError, match=r"shape \(2, 28, 28\) given; .* \(B, 28, 28, 1\)"):
        model.reconstruct(images[..., 0])
    with pytest.raises(vae_jax.DataError, match="dtype int32"):
        model.encode(images.astype(np.int32))
    with pytest.raises(vae_jax.DataError, match=r"latents of shape \(3, 5\)"):
        model.decode(np.zeros((3, 5)))
    with pytest.raises(vae_jax.ConfigError, match="n=0 samples"):
        model.sample(jax.random.key(0), 0)
    with pytest.raises(vae_jax.WorkdirError, match="has no config.json"):
        vae_jax.load(str(tmp_path))
    empty = tmp_path / "untrained"
    empty.mkdir()
    shutil.copy(os.path.join(workdir, "config.json"), empty / "config.json")
    with pytest.raises(vae_jax.WorkdirError, match="holds no checkpoint yet"):
        vae_jax.load(str(empty))


def test_load_reads_old_workdirs_and_population_members(tmp_path):
    """Workdirs of the previous version have no run.json: the shape comes from the data set."""
    shutil.copytree(FIXTURES, tmp_path / "old")
    single = vae_jax.load(str(tmp_path / "old" / "single"))
    assert (single.step, single.image_shape) == (8, (28, 28, 1))
    population = str(tmp_path / "old" / "population")
    with pytest.raises(vae_jax.ConfigError, match="population of 2 models; say which"):
        vae_jax.load(population)
    members = [vae_jax.load(population, member=k) for k in (0, 1)]
    assert [m.config.beta for m in members] == [1.0, 2.0]
    assert [m.config.seed for m in members] == [0, 1]
    # Member 1's parameters are its slice of the stacked checkpoint, as export_member writes.
    config = workdir_lib.load_workdir_config(population)
    exported = str(tmp_path / "member1")
    vae_jax.export_member(population, 1, exported, config)
    from_export = vae_jax.load(exported)
    for a, b in zip(jax.tree.leaves(members[1].params), jax.tree.leaves(from_export.params)):
        np.testing.assert_array_equal(a, b)


def _readme_block(section: str, language: str) -> str:
    """The first ```language block under the README's `## section` heading."""
    with open(os.path.join(os.path.dirname(__file__), os.pardir, "README.md")) as f:
        text = f.read()
    body = text.split(f"\n## {section}\n", 1)[1].split("\n## ", 1)[0]
    return body.split(f"```{language}\n", 1)[1].split("```", 1)[0]


def test_the_readmes_python_api_script_runs_and_prints_what_it_shows(tmp_path):
    """The README's script, run as a user would paste it; its output as the README shows it,
    up to the test ELBO's last digits (which differ between CPU kinds)."""
    script = _readme_block("Python API", "python")
    shown = _readme_block("Python API", "text").strip().splitlines()
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    printed = result.stdout.strip().splitlines()
    assert len(printed) == len(shown)
    (elbo_line, *rest), (shown_elbo, *shown_rest) = printed, shown
    assert rest == shown_rest
    assert elbo_line.rsplit(" ", 1)[0] == shown_elbo.rsplit(" ", 1)[0] == "epochs 2 test_elbo"
    assert abs(float(elbo_line.rsplit(" ", 1)[1]) - float(shown_elbo.rsplit(" ", 1)[1])) < 1.0
    assert os.path.isdir(tmp_path / "runs" / "api-demo" / "checkpoints" / "32")
