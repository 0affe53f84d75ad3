"""The README's "Writing a variant": its plugin file, exactly as shown, through its commands:
trained, resumed (to the same records as a straight run), evaluated without the plugin flag, and
swept in a population."""

import json
import os
import shlex

import pytest
from conftest import run_cli, without_timings

README = os.path.join(os.path.dirname(__file__), os.pardir, "README.md")
# A prefix of MNIST, so the test takes seconds; the scan, so two runs compare exactly.
SMALL = [
    "--config.max_train_examples=512",
    "--config.max_eval_examples=200",
    "--config.batch_size=64",
    "--config.num_epochs=2",
    "--config.num_image_examples=0",
    "--config.progress_bar=false",
    "--config.step_loop=scan",
]


def section_block(language: str) -> str:
    with open(README) as f:
        text = f.read()
    body = text.split("\n## Writing a variant\n", 1)[1].split("\n## ", 1)[0]
    return body.split(f"```{language}\n", 1)[1].split("```", 1)[0]


@pytest.fixture(scope="module")
def commands(tmp_path_factory):
    """The plugin file written where the commands run, and the commands, split into words."""
    cwd = tmp_path_factory.mktemp("variant")
    (cwd / "my_vae.py").write_text(section_block("python"))
    lines = [line for line in section_block("bash").splitlines() if line.strip()]
    assert len(lines) == 3, lines
    return cwd, [shlex.split(line)[3:] for line in lines]  # drop 'python -m <module>'


def records(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_the_plugin_trains_resumes_and_evaluates_by_the_readmes_commands(commands):
    cwd, (train, evaluate, _) = commands
    straight = [word.replace("runs/mine", "runs/straight") for word in train]
    result = run_cli(*straight, *SMALL, cwd=cwd)
    assert result.returncode == 0, result.stderr[-3000:]
    first = run_cli(*train, *SMALL, "--config.num_epochs=1", cwd=cwd)  # interrupted after one
    assert first.returncode == 0, first.stderr[-3000:]
    resumed = run_cli(*train, *SMALL, cwd=cwd)  # the same command goes on
    assert resumed.returncode == 0 and "Resumed from the checkpoint" in resumed.stderr
    mine = records(cwd / "runs" / "mine" / "metrics.jsonl")
    assert without_timings(mine) == without_timings(records(cwd / "runs/straight/metrics.jsonl"))
    assert len(mine) == 2 and mine[-1]["train_moment"] > 0
    saved = json.loads((cwd / "runs" / "mine" / "config.json").read_text())
    assert saved["model"] == "small_conv" and saved["moment_weight"] == 2.0
    run_info = json.loads((cwd / "runs" / "mine" / "run.json").read_text())
    assert run_info["plugins"] == [str(cwd / "my_vae.py")]
    assert "--plugin" not in evaluate
    scored = run_cli(
        *evaluate, "--iwae_samples=2", "--max_examples=100", cwd=cwd, module="vae_jax.evaluate"
    )
    assert scored.returncode == 0, scored.stderr[-3000:]
    result = json.loads((cwd / "runs" / "mine" / "eval.json").read_text())
    assert result["objective"] == "moment_vae" and result["metrics"]["test_elbo"] < 0


def test_the_plugin_objective_sweeps_in_a_population(commands):
    cwd, (_, _, sweep) = commands
    result = run_cli(*sweep, *SMALL, "--config.num_epochs=1", cwd=cwd)
    assert result.returncode == 0, result.stderr[-3000:]
    members = [
        records(cwd / "runs" / "sweep" / "members" / str(k) / "metrics.jsonl") for k in range(3)
    ]
    losses = [m[0]["train_loss"] for m in members]
    assert len(set(losses)) == 3  # each member its own weight (0.5, 2, 8)
    moments = [m[0]["train_moment"] for m in members]
    assert moments[2] < moments[0]  # a heavier penalty on E[z^2] gives smaller codes


def test_the_plugins_setting_with_another_objective_is_refused(commands):
    cwd, _ = commands
    result = run_cli(
        "--workdir",
        "runs/refused",
        "--plugin=my_vae.py",
        "--config.moment_weight=3",
        *SMALL,
        cwd=cwd,
    )
    assert result.returncode == 2
    assert (
        result.stderr.strip()
        .splitlines()[-1]
        .startswith("error: moment_weight=3.0 is set, but objective='vae' does not read it")
    )
    assert not (cwd / "runs" / "refused" / "metrics.jsonl").exists()
