"""Evaluation of a trained workdir: `python -m vae_jax.evaluate --workdir W [--iwae_samples=5000]`.

Restores the newest checkpoint of W with the config it was trained with (W/config.json) and
measures, on the whole evaluation split:

- the test ELBO: single-sample, analytic KL, the same figure training logs each epoch;
- the importance-weighted estimate of -log p(x) (Burda et al. 2015): the k-sample bound, with
  samples drawn in chunks so memory stays bounded for k = 5000;
- the reconstruction error from the posterior mean, in nats and as a squared error;
- a PCA baseline with as many components as the model has latents, on the same squared error;
- on dSprites, the BetaVAE score, FactorVAE score and MIG (`vae_jax.disentanglement`).

It writes W/eval.json, prints a table and draws W/images/{traversals, interpolation, manifold,
training_curves, latents, reconstructions, samples}.png. All figures are nats per example,
summed over pixels. Nothing of the training run is changed: evaluation only reads the checkpoint.
"""

from __future__ import annotations

import dataclasses
import glob
import os
import sys
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import app, flags

from vae_jax import (
    caches,
    cli,
    curves,
    data,
    disentanglement,
    drawing,
    estimators,
    evaluation,
    events,
    models,
    objectives,
    pictures,
    rng,
    trained,
)
from vae_jax import workdir as workdir_lib
from vae_jax.config import config_to_dict
from vae_jax.errors import ConfigError

FLAGS = flags.FLAGS

# PCA is fitted on at most this many training examples (enough for its few leading components).
PCA_FIT_EXAMPLES = 20_000


def load_workdir_config(workdir: str) -> ml_collections.ConfigDict:
    """The config a single-model workdir was trained with (see `workdir.load_workdir_config`)."""
    config = workdir_lib.load_workdir_config(workdir)
    if config.population_size > 1:
        raise ConfigError(
            f"{workdir!r} holds a population of {config.population_size} models; export a member "
            "with vae_jax.population.export_member(workdir, k, out_workdir, config) and evaluate "
            "that workdir."
        )
    return config


def draw_pictures(config, workdir, model, params, dataset, records, key) -> list[str]:
    """The final pictures into W/images/; returns their file names."""
    images_dir = os.path.join(workdir, "images")
    count = min(len(records), 2000)
    # Evenly spaced over the split: some splits (binarized MNIST's test split) are sorted by class.
    chosen = np.linspace(0, len(records) - 1, count).astype(int)
    inputs = estimators.float_images(records[chosen], dataset, count)
    labels = dataset.labels.get(config.eval_split)
    labels = None if labels is None else labels[: len(records)][chosen]
    written = []

    def path(name):
        written.append(name)
        return os.path.join(images_dir, name)

    shown = inputs[np.linspace(0, count - 1, min(32, count)).astype(int)]
    means = np.asarray(jax.jit(lambda p, x: model.apply(p, x, method="encode")[0])(params, inputs))
    reconstructions = np.asarray(
        jax.jit(lambda p, z: objectives.likelihood_mean(*model.apply(p, z, method="decode")))(
            params, jnp.asarray(means[np.linspace(0, count - 1, len(shown)).astype(int)])
        )
    )
    drawing.save_reconstructions(path("reconstructions.png"), shown, reconstructions)
    z = jax.random.normal(key, (64, config.latents))
    samples = jax.jit(lambda p, z: objectives.likelihood_mean(*model.apply(p, z, method="decode")))
    drawing.save_samples(path("samples.png"), np.asarray(samples(params, z)))
    pictures.save_traversals(path("traversals.png"), model, params, inputs[0])
    # Two inputs of different classes when labels exist, else the first and the middle one.
    second = count // 2
    if labels is not None:
        different = np.flatnonzero(labels != labels[0])
        second = int(different[len(different) // 2]) if len(different) else second
    pictures.save_interpolation(path("interpolation.png"), model, params, inputs[0], inputs[second])
    if config.latents == 2:
        pictures.save_manifold(path("manifold.png"), model, params)
    if labels is not None:
        drawing.save_latent_scatter(path("latents.png"), means, labels)
    records_log = workdir_lib.MetricsLog(os.path.join(workdir, "metrics.jsonl")).read()
    if records_log:
        curves.save_training_curves(path("training_curves.png"), records_log, config.eval_split)
    return written


@dataclasses.dataclass(frozen=True)
class _Run:
    """What every measurement reads: the run's config, the examples of its evaluation split and
    the restored model, with the evaluation key. Loaded once, so that each group of figures is
    its own function of it."""

    workdir: str
    config: ml_collections.ConfigDict
    dataset: data.Dataset
    records: np.ndarray
    model: object
    params: object
    step: int
    root_key: jax.Array  # the run's root key: never changes during training
    eval_key: jax.Array

    @property
    def split(self) -> str:
        return self.config.eval_split

    @property
    def variational(self) -> bool:
        return objectives.is_variational(self.config.objective)

    @property
    def inputs(self) -> tuple:
        """The first arguments of `importance_weighted_nll` and `reconstruction_errors`."""
        return self.model, self.params, self.records, self.dataset, self.eval_key


def _load_run(workdir: str, config: ml_collections.ConfigDict, max_examples: int) -> _Run:
    dataset = data.dataset_for(config)
    records = dataset.split(config.eval_split)
    if max_examples:
        records = records[:max_examples]
    loaded, root_key = trained.load(workdir), rng.root_key(config.seed)
    model, params, step = loaded.model, loaded.params, loaded.step
    eval_key = rng.stream_key(root_key, rng.EVAL_STREAM)
    return _Run(workdir, config, dataset, records, model, params, step, root_key, eval_key)


def _new_result(run: _Run) -> dict:
    """eval.json before any figure: what was measured, its units, and empty groups that the
    measurements fill in order (their order is eval.json's and the printed table's)."""
    return {
        "workdir": run.workdir,
        "checkpoint_step": run.step,
        "objective": run.config.objective,
        "dataset": run.config.dataset,
        "split": run.split,
        "num_examples": len(run.records),
        "units": "nats per example, summed over pixels",
        "metrics": {},
        "procedures": {},
        "seconds": {},
        "versions": {"jax": jax.__version__, "device": jax.devices()[0].device_kind},
    }


def _timed(result: dict, name: str, fn):
    """fn(), its wall time in seconds recorded as result["seconds"][name]."""
    begun = time.perf_counter()
    value = fn()
    result["seconds"][name] = round(time.perf_counter() - begun, 3)
    return value


def _measure_single_sample(run: _Run, result: dict) -> None:
    """The figures training logs each epoch (single-sample ELBO, KL, reconstruction term), by
    the same compiled evaluation, so that they can be compared with the records exactly."""
    metrics, procedures, split = result["metrics"], result["procedures"], run.split
    eval_batch = min(run.config.eval_batch_size, len(run.records))
    count, binarize = len(run.records), run.config.dynamic_binarization
    evaluate = jax.jit(
        evaluation.make_evaluate(
            run.model, eval_batch, count, run.dataset.render, binarize, variational=run.variational
        )
    )
    padded = jnp.asarray(evaluation.pad_to_multiple(run.records, eval_batch))
    single = _timed(
        result, "elbo", lambda: jax.device_get(evaluate(run.params, padded, run.eval_key))
    )
    for name, value in single.items():
        metrics[f"{split}_{name}"] = float(value)
    if run.variational:
        procedures[f"{split}_elbo"] = "single-sample ELBO, analytic KL (as logged in training)"
        procedures[f"{split}_kl"] = "KL(q(z|x) || p(z)), analytic"
        procedures[f"{split}_recon"] = "-log p(x|z), z one sample of q(z|x)"
    else:
        procedures[f"{split}_recon"] = "-log p(x | z = encoder output) (autoencoder)"


def _measure_iwae(run: _Run, result: dict, iwae_samples: int, batch_size: int) -> None:
    metrics = result["metrics"]
    nll, stderr = _timed(
        result,
        "iwae",
        lambda: estimators.importance_weighted_nll(
            *run.inputs, run.config, iwae_samples, batch_size
        ),
    )
    metrics["iwae_nll"], metrics["iwae_nll_stderr"] = nll, stderr
    metrics["iwae_samples"] = iwae_samples
    result["procedures"]["iwae_nll"] = (
        f"-(k-sample importance-weighted bound), k = {iwae_samples}, one draw per "
        "example (Burda et al. 2015); an upper bound on -log p(x) in expectation"
    )


def _measure_reconstruction(run: _Run, result: dict, batch_size: int) -> None:
    metrics, procedures = result["metrics"], result["procedures"]
    binarize = run.config.dynamic_binarization
    recon_nats, recon_squared = _timed(
        result,
        "reconstruction",
        lambda: estimators.reconstruction_errors(*run.inputs, binarize, batch_size),
    )
    metrics["recon_nats"] = recon_nats
    metrics["recon_squared_error"] = recon_squared
    procedures["recon_nats"] = "-log p(x | z = posterior mean)"
    procedures["recon_squared_error"] = "sum over pixels of (E[x | z = posterior mean] - x)^2"


def _measure_pca(run: _Run, result: dict) -> None:
    """The PCA baseline: the squared error a linear model of the latent size reaches."""
    config, dataset = run.config, run.dataset

    def pca():
        # The run's training examples (a prefix, with max_train_examples), at most PCA_FIT_EXAMPLES.
        fit = dataset.split("train")[: min(PCA_FIT_EXAMPLES, config.max_train_examples or 10**9)]
        fit_images = estimators.float_images(fit, dataset, len(fit))
        eval_images = estimators.float_images(run.records, dataset, len(run.records))
        return estimators.pca_squared_error(fit_images, eval_images, config.latents)

    result["metrics"]["pca_squared_error"] = _timed(result, "pca", pca)
    result["procedures"]["pca_squared_error"] = (
        f"PCA with {config.latents} components (the latent size) fitted on the first "
        f"{min(PCA_FIT_EXAMPLES, config.max_train_examples or 10**9, len(dataset.split('train')))}"
        " training examples; the same "
        "squared error as recon_squared_error"
    )


def _measure_disentanglement(run: _Run, result: dict, points: tuple[int, int]) -> None:
    """dSprites' BetaVAE, FactorVAE and MIG scores: their figures, and in full under
    result["disentanglement"]."""
    source = estimators.dsprites_factor_source(run.model, run.params, run.dataset)
    num_train, num_eval = points

    def score_all():
        return disentanglement.evaluate_all(source, seed=0, num_train=num_train, num_eval=num_eval)

    scores = _timed(result, "disentanglement", score_all)
    for name, score in scores.items():
        result["metrics"][name] = score["score"]
        result["procedures"][name] = score["procedure"]
    result["disentanglement"] = scores


def evaluate_workdir(
    workdir: str,
    iwae_samples: int = 5000,
    batch_size: int = 100,
    max_examples: int = 0,
    disentanglement_points: tuple[int, int] = (10_000, 5_000),
    draw: bool = True,
) -> dict:
    """Measures the newest checkpoint of `workdir` and writes `workdir/eval.json`.

    Args:
      workdir: a workdir written by `python -m vae_jax.main`.
      iwae_samples: k of the importance-weighted estimate; 0 skips it.
      batch_size: examples per compiled call of the IWAE estimate (each decodes
        min(k, 128) * batch_size samples at once).
      max_examples: evaluate the first this many examples of the split (0: all).
      disentanglement_points: (train, eval) points of the BetaVAE and FactorVAE scores; the
        first is also MIG's number of points.
      draw: also draw the pictures into workdir/images/.

    Returns:
      The dict written to eval.json.
    """
    _check_positive("iwae_samples", iwae_samples, allow_zero=True)
    _check_positive("batch_size", batch_size)
    _check_positive("max_examples", max_examples, allow_zero=True)
    workdir = os.path.abspath(workdir)
    config = load_workdir_config(workdir)
    started = time.perf_counter()
    with models.matmul_precision(config):
        result = _measure_all(
            workdir, config, max_examples, iwae_samples, batch_size, disentanglement_points, draw
        )
    result["seconds"]["total"] = round(time.perf_counter() - started, 3)
    result["config"] = config_to_dict(config)
    workdir_lib.write_json_atomic(os.path.join(workdir, "eval.json"), result)
    _add_to_events(workdir, result)
    return result


def _measure_all(workdir, config, max_examples, iwae_samples, batch_size, points, draw) -> dict:
    """Every figure of eval.json but the total time and the config, and the pictures."""
    run = _load_run(workdir, config, max_examples)
    result = _new_result(run)
    # What float32 products ran at: on a GPU 'default' is TF32 (docs/configuration.md).
    result["matmul_precision"] = jax.config.jax_default_matmul_precision or "default"
    _measure_single_sample(run, result)
    if run.variational and iwae_samples:
        _measure_iwae(run, result, iwae_samples, batch_size)
    _measure_reconstruction(run, result, batch_size * 10)
    _measure_pca(run, result)
    if config.dataset == "dsprites":
        _measure_disentanglement(run, result, points)
    if draw:
        pictures_key = rng.stream_key(run.root_key, rng.PICTURES_STREAM)
        result["images"] = _timed(
            result,
            "pictures",
            lambda: draw_pictures(
                config, workdir, run.model, run.params, run.dataset, run.records, pictures_key
            ),
        )
    return result


def _add_to_events(workdir: str, result: dict) -> None:
    """eval.json's figures in the run's TensorBoard files, beside its training curves (a single
    run's; the next training start rebuilds them with eval.json included)."""
    directory = os.path.join(workdir, events.EVENTS_DIR)
    if not glob.glob(os.path.join(directory, "events.out.tfevents.*")):
        return
    event_log = events.EventLog(directory, result["config"], None)
    try:
        event_log.add_evaluation(result)
    finally:
        event_log.close()


def _check_positive(name: str, value, allow_zero: bool = False) -> None:
    ok = (
        isinstance(value, int) and not isinstance(value, bool) and value >= (0 if allow_zero else 1)
    )
    if not ok:
        raise ConfigError(f"--{name}={value!r} must be an integer >= {0 if allow_zero else 1}.")


def format_table(result: dict) -> str:
    """The printed summary: one line per figure, with the estimator in words."""
    metrics, procedures = result["metrics"], result["procedures"]
    header = (
        f"{result['workdir']}: checkpoint step {result['checkpoint_step']}, objective "
        f"{result['objective']}, {result['dataset']} {result['split']} split, "
        f"{result['num_examples']} examples; {result['units']}"
    )
    lines = [header]
    rows = []
    for name, value in metrics.items():
        if name in ("iwae_nll_stderr", "iwae_samples"):
            continue
        shown = f"{value:.3f}"
        if name == "iwae_nll":
            shown += f" ± {metrics['iwae_nll_stderr']:.3f}"
        rows.append((name, shown, procedures.get(name, "")))
    width = max(len(r[0]) for r in rows)
    value_width = max(len(r[1]) for r in rows)
    for name, shown, note in rows:
        lines.append(f"  {name:<{width}}  {shown:>{value_width}}  {note}")
    lines.append(f"  written: {os.path.join(result['workdir'], 'eval.json')}")
    return "\n".join(lines)


def _define_flags() -> None:
    cli.define_workdir_flag("A workdir written by `python -m vae_jax.main`.")
    cli.define_plugin_flag()
    flags.DEFINE_integer("iwae_samples", 5000, "k of the importance-weighted estimate (0: skip).")
    flags.DEFINE_integer("batch_size", 100, "Examples per call of the IWAE estimate.")
    flags.DEFINE_integer("max_examples", 0, "Evaluate the first N examples of the split (0: all).")
    flags.DEFINE_integer("disentanglement_train_points", 10_000, "dSprites metrics: train points.")
    flags.DEFINE_integer("disentanglement_eval_points", 5_000, "dSprites metrics: eval points.")
    flags.DEFINE_bool("pictures", True, "Also draw the pictures into <workdir>/images/.")


def main(argv) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    cli.quiet_library_logs()
    caches.enable_compilation_cache()
    with cli.user_errors():
        cli.log_to_workdir(FLAGS.workdir)
        result = evaluate_workdir(
            FLAGS.workdir,
            iwae_samples=FLAGS.iwae_samples,
            batch_size=FLAGS.batch_size,
            max_examples=FLAGS.max_examples,
            disentanglement_points=(
                FLAGS.disentanglement_train_points,
                FLAGS.disentanglement_eval_points,
            ),
            draw=FLAGS.pictures,
        )
    print(format_table(result))


def run() -> None:
    cli.import_plugins(sys.argv)
    _define_flags()
    app.run(main, flags_parser=cli.parse_flags)


if __name__ == "__main__":
    run()
