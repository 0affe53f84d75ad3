"""A plugin file outside the package reaches both commands: train, resume, sweep, evaluate."""

import json
import os
import textwrap

from conftest import run_cli

PLUGIN = textwrap.dedent(
    '''
    """moment_vae: the ELBO plus moment_weight times the batch's mean of z squared."""
    import jax.numpy as jnp

    import vae_jax
    from vae_jax import objectives


    def build(config, model):
        def regularizer(terms, step):
            second_moment = jnp.mean(terms.z**2)
            return config.moment_weight * second_moment, {"second_moment": second_moment}

        return objectives.make_regularized_loss(model, regularizer)


    vae_jax.register_objective(
        "moment_vae", build, fields={"moment_weight": 0.5}, sweepable=("moment_weight",)
    )
    '''
)
SMALL = [
    "--config.max_train_examples=512",
    "--config.max_eval_examples=256",
    "--config.batch_size=64",
    "--config.hidden_sizes=(32,)",
    "--config.latents=2",
    "--config.num_image_examples=4",
    "--config.progress_bar=False",
    "--config.objective=moment_vae",
]


def test_a_plugin_file_trains_resumes_sweeps_and_evaluates(tmp_path):
    plugin = tmp_path / "my_variant.py"
    plugin.write_text(PLUGIN)
    first = run_cli(
        "--workdir",
        "run",
        f"--plugin={plugin}",
        *SMALL,
        "--config.moment_weight=2.0",
        "--config.num_epochs=1",
        cwd=tmp_path,
    )
    assert first.returncode == 0, first.stderr
    with open(tmp_path / "run" / "run.json") as f:
        assert json.load(f)["plugins"] == [str(plugin)]
    # The rerun names no plugin: the workdir remembers it.
    second = run_cli(
        "--workdir",
        "run",
        *SMALL,
        "--config.moment_weight=2.0",
        "--config.num_epochs=2",
        cwd=tmp_path,
    )
    assert second.returncode == 0, second.stderr
    assert "Resumed from the checkpoint at step 8" in second.stderr
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").open()]
    assert [r["step"] for r in records] == [8, 16] and "train_second_moment" in records[0]
    evaluated = run_cli(
        "--workdir",
        "run",
        "--iwae_samples=4",
        "--pictures=false",
        cwd=tmp_path,
        module="vae_jax.evaluate",
    )
    assert evaluated.returncode == 0, evaluated.stderr
    assert "objective moment_vae" in evaluated.stdout
    sweep = run_cli(
        "--workdir",
        "sweep",
        f"--plugin={plugin}",
        *SMALL,
        "--config.num_epochs=1",
        "--config.population_size=2",
        "--config.population_weights=(0.0,4.0)",
        cwd=tmp_path,
    )
    assert sweep.returncode == 0, sweep.stderr
    assert os.path.isfile(tmp_path / "sweep" / "members" / "1" / "metrics.jsonl")


def test_a_missing_plugin_is_one_line(tmp_path):
    result = run_cli("--workdir", "run", "--plugin=no_such_module_here", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: plugin 'no_such_module_here' could not be imported: ModuleNotFoundError: No "
        "module named 'no_such_module_here'. Check the module name or the file's path."
    ]
    # A workdir whose recorded plugin file is gone says which and why.
    plugin = tmp_path / "gone.py"
    plugin.write_text(PLUGIN)
    trained = run_cli(
        "--workdir", "w", f"--plugin={plugin}", *SMALL, "--config.num_epochs=1", cwd=tmp_path
    )
    assert trained.returncode == 0, trained.stderr
    plugin.unlink()
    for module in ("vae_jax.main", "vae_jax.evaluate"):
        again = run_cli("--workdir", "w", cwd=tmp_path, module=module)
        assert again.returncode == 2
        (line,) = again.stderr.strip().splitlines()
        assert line.startswith(f"error: plugin '{plugin}' could not be imported (the workdir ")
        assert "was trained with it): FileNotFoundError" in line
