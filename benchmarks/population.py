"""A population of K seeds in one vmapped program against K sequential single-model runs.

    python -m benchmarks.population [--population_size 8] [--epochs 2] [--devices D]

Both sides train the default model (MLP 784-500-20, Bernoulli, Adam 1e-3, f32, batch 128) on the
50,000 training images of binarized MNIST, seeds 0..K-1, for `--epochs` epochs of 390 steps:

  population   `population.make_population_epoch`: every member's epoch in one compiled call,
               the vmapped form of what `vae_jax.population.train_population` runs, its member
               axis split over `--devices` devices (default: all) as `train_population` splits
               it (`parallel.population_mesh`);
  sequential   `make_train_epoch` compiled once and run for each seed in turn on the first
               device, the epochs of K single runs (what K calls of `python -m vae_jax.main`
               would train on one device).

Throughput is members x examples per second, in total and per device of the population's mesh.
Forced CPU devices (XLA_FLAGS=--xla_force_host_platform_device_count=D) share the machine's
cores, so their figures check that the split runs and matches, not its speed.

Compilation is excluded from the timed epochs and reported separately; so are initialisation and
evaluation, which neither side times. The two sides run interleaved, epoch by epoch, so that a
change in the machine's load hits both.

Then each member is checked against its sequential run. The two programs round batched and
unbatched matrix products differently, and training amplifies any rounding difference (as it
would one from another machine): so the parameters are held to a tight tolerance after
`--check_steps` steps, and at the end every epoch's mean training figures and the final test
ELBO are (the end's parameter distance is printed, beside the distance between two seeds' runs
for scale). Prints a table and writes JSON to benchmarks/results/population.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import jax
import numpy as np

from vae_jax import config as config_lib
from vae_jax import data, models, objectives, parallel, population
from vae_jax.config import get_config
from vae_jax.evaluation import make_evaluate, pad_to_multiple
from vae_jax.optim import build_optimizer
from vae_jax.rng import EVAL_STREAM, stream_key
from vae_jax.step import create_train_state, make_train_epoch, make_train_step

METRICS = ("elbo", "kl", "recon", "loss")


def _timed_compile(fn, *example_args, out_shardings=None):
    """(compiled program, seconds to lower and compile it)."""
    started = time.perf_counter()
    jitted = jax.jit(fn, donate_argnums=0, out_shardings=out_shardings)
    program = jitted.lower(*example_args).compile()
    return program, time.perf_counter() - started


def _epoch_means(step_metrics: dict) -> dict:
    """Per-step metrics (..., steps) -> their epoch means (...)."""
    return {name: np.mean(np.asarray(step_metrics[name]), axis=-1) for name in METRICS}


def initial_population(config, model, images, schedule_steps, mesh):
    """The population's initial state (leaves (K, ...)) and its traced hyperparameters, split
    over `mesh` by member."""
    members = [population.member_config(config, k) for k in range(config.population_size)]
    optimizer = build_optimizer(config, schedule_steps)
    state = population.initial_population_state(
        model, optimizer, images.shape[1:], config.latents, [m.seed for m in members]
    )
    hyperparameters = population.member_hyperparameters(members)
    return population.place_members(state, mesh), population.place_members(hyperparameters, mesh)


def initial_singles(config, model, images, schedule_steps):
    """Each seed's initial single-model state, as `train.train_and_evaluate` creates it."""
    optimizer = build_optimizer(config, schedule_steps)
    return [
        create_train_state(model, optimizer, images.shape[1:], config.latents, seed)
        for seed in range(config.seed, config.seed + config.population_size)
    ]


def population_epoch(config, model, steps, schedule_steps, num_steps, mesh):
    """`population.make_population_epoch` for the bundled images (no renderer) over `mesh`."""
    return population.make_population_epoch(
        model, config, None, schedule_steps, steps, num_steps, mesh
    )


def population_shardings(mesh):
    """The population program's output shardings, as `train_population` compiles it: the state
    split by member, the metrics replicated."""
    return parallel.member_sharding(mesh), parallel.replicated(mesh)


def member_on_host(population_state, k: int):
    """Member k's step and parameters as host arrays, for programs on the first device."""
    member = population.member_state(population_state, k)
    return jax.device_get(member.step), jax.device_get(member.params)


def single_epoch(config, model, steps, schedule_steps, num_steps):
    """The single run's epoch, built as `train.train_and_evaluate` builds it."""
    optimizer = build_optimizer(config, schedule_steps)
    train_step = make_train_step(objectives.make_elbo_loss(model, config.beta), optimizer)
    return make_train_epoch(train_step, config.batch_size, steps, num_steps)


def _timed(program, *args):
    """(outputs, seconds) of one call, waited for."""
    jax.block_until_ready(args[0])
    started = time.perf_counter()
    outputs = jax.block_until_ready(program(*args))
    return outputs, time.perf_counter() - started


def _flat(params) -> np.ndarray:
    return np.concatenate(
        [np.asarray(leaf, np.float64).ravel() for leaf in jax.tree.leaves(params)]
    )


def _relative_l2(params, reference) -> float:
    a, b = _flat(params), _flat(reference)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def compare(model, test_images, population_state, population_history, states, histories):
    """Each member against its sequential run.

    Returns one row per member: the relative L2 distance of all parameters, and the largest
    relative difference of each epoch mean and of the final test ELBO. The parameters are
    reported, not held to a tight tolerance: the two programs round batched and unbatched matrix
    products differently (about 1e-7 relative after 100 steps), and training amplifies that
    (about 1e-1 after 780 steps), as it would any rounding; the model's figures stay equal.
    """
    count = len(test_images)
    evaluate = jax.jit(make_evaluate(model, 1000, count))
    padded = jax.device_put(pad_to_multiple(test_images, 1000))
    rows = []
    for k, (single, history) in enumerate(zip(states, histories)):
        member_step, member_params = member_on_host(population_state, k)
        eval_key = stream_key(single.key, EVAL_STREAM)
        member_elbo = float(evaluate(member_params, padded, eval_key)["elbo"])
        single_elbo = float(evaluate(single.params, padded, eval_key)["elbo"])
        differences = {
            name: max(
                abs(float(population_history[e][name][k]) - float(history[e][name]))
                / abs(float(history[e][name]))
                for e in range(len(history))
            )
            for name in METRICS
        }
        differences["test_elbo"] = abs(member_elbo - single_elbo) / abs(single_elbo)
        rows.append(
            {
                "member": k,
                "steps_equal": int(member_step) == int(single.step),
                "params_relative_l2_difference": _relative_l2(member_params, single.params),
                "test_elbo": member_elbo,
                "sequential_test_elbo": single_elbo,
                "max_relative_difference": differences,
            }
        )
    return rows


def short_horizon_distances(config, model, images, pop_images, steps, horizon, mesh):
    """Relative L2 parameter distance of each member from its single run after `horizon` steps,
    before training has amplified the different rounding: this one is held to a tolerance."""
    state, hyperparameters = initial_population(config, model, images, steps, mesh)
    epoch = population_epoch(config, model, steps, steps, horizon, mesh)
    state, _ = jax.jit(epoch, out_shardings=population_shardings(mesh))(
        state, hyperparameters, pop_images
    )
    single_fn = jax.jit(single_epoch(config, model, steps, steps, horizon))
    return [
        _relative_l2(member_on_host(state, k)[1], single_fn(single, images)[0].params)
        for k, single in enumerate(initial_singles(config, model, images, steps))
    ]


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--population_size", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument(
        "--devices", type=int, default=0, help="devices the population is split over (0: all)"
    )
    parser.add_argument(
        "--max_train_examples", type=int, default=0, help="a prefix of the split (0: all 50,000)"
    )
    parser.add_argument("--check_steps", type=int, default=20, help="horizon of the exact check")
    parser.add_argument(
        "--param_rtol", type=float, default=1e-5, help="relative L2 Δparams after check_steps"
    )
    parser.add_argument(
        "--metric_rtol", type=float, default=1e-3, help="relative Δ of epoch means and test ELBO"
    )
    parser.add_argument(
        "--matmul_precision",
        choices=config_lib.MATMUL_PRECISIONS,
        default="default",
        help="of both sides' float32 products: on a GPU 'default' is TF32, whose rounding "
        "differs between batched and unbatched products by more than the bounds above",
    )
    parser.add_argument("--output", default="benchmarks/results/population.json")
    return parser.parse_args()


def train_both(config, model, images, pop_images, steps, mesh):
    """Both sides' epochs, interleaved so that a change in the machine's load hits both.

    Returns (population state, its epoch means, single states, their epoch means, and
    {side: (compile seconds, train seconds)})."""
    epochs, size = config.num_epochs, config.population_size
    schedule_steps = epochs * steps
    pop_state, hyperparameters = initial_population(config, model, images, schedule_steps, mesh)
    pop_program, pop_compile = _timed_compile(
        population_epoch(config, model, steps, schedule_steps, steps, mesh),
        pop_state,
        hyperparameters,
        pop_images,
        out_shardings=population_shardings(mesh),
    )
    states = initial_singles(config, model, images, schedule_steps)
    single_program, seq_compile = _timed_compile(
        single_epoch(config, model, steps, schedule_steps, steps), states[0], images
    )
    pop_seconds = seq_seconds = 0.0
    pop_history, histories = [], [[] for _ in states]
    for _ in range(epochs):
        (pop_state, metrics), seconds = _timed(pop_program, pop_state, hyperparameters, pop_images)
        pop_seconds += seconds
        pop_history.append(_epoch_means(metrics))
        for k in range(size):
            (states[k], metrics), seconds = _timed(single_program, states[k], images)
            seq_seconds += seconds
            histories[k].append(_epoch_means(metrics))
    timings = {"population": (pop_compile, pop_seconds), "sequential": (seq_compile, seq_seconds)}
    return pop_state, pop_history, states, histories, timings


def throughput(timings, examples: int, devices: dict) -> dict:
    """Per side: compile and train seconds, members x examples per second in total and per
    device of that side (`devices`: side -> device count)."""
    return {
        name: {
            "devices": devices[name],
            "compile_seconds": compile_seconds,
            "train_seconds": seconds,
            "examples_per_second": examples / seconds,
            "examples_per_second_per_device": examples / seconds / devices[name],
        }
        for name, (compile_seconds, seconds) in timings.items()
    }


def print_report(report, rows, early, args) -> None:
    size, epochs, steps = report["population_size"], report["epochs"], report["steps_per_epoch"]
    mesh = report["mesh"]
    print(
        f"{report['device']} ({report['platform']}, {report['cpu_count']} cores), "
        f"jax {report['jax']}"
    )
    print(
        f"default MLP, batch {report['batch_size']}, {size} seeds x {epochs} epochs x {steps} "
        f"steps = {report['examples_trained']} examples; compilation excluded; population over "
        f"{report['results']['population']['devices']} devices (mesh members={mesh['members']}, "
        f"data={mesh['data']}), sequential on one"
    )
    print(
        f"{'variant':<12} {'devices':>7} {'compile s':>10} {'train s':>9} {'examples/s':>11} "
        f"{'per device':>11}"
    )
    for name, r in report["results"].items():
        print(
            f"{name:<12} {r['devices']:>7} {r['compile_seconds']:>10.2f} "
            f"{r['train_seconds']:>9.2f} {r['examples_per_second']:>11.0f} "
            f"{r['examples_per_second_per_device']:>11.0f}"
        )
    print(
        f"population speed-up over sequential: {report['speedup_population_over_sequential']:.2f}x"
    )
    names = (*METRICS, "test_elbo")
    print(
        f"{'member':>6} {'test ELBO':>10} {f'Δparams@{args.check_steps}':>12} {'Δparams end':>12} "
        + " ".join(f"{'Δ' + name:>11}" for name in names)
    )
    for r, distance in zip(rows, early):
        print(
            f"{r['member']:>6} {r['test_elbo']:>10.3f} {distance:>12.2e} "
            f"{r['params_relative_l2_difference']:>12.2e} "
            + " ".join(f"{r['max_relative_difference'][name]:>11.2e}" for name in names)
        )
    between_seeds = report["params_relative_l2_between_seeds_0_and_1"]
    if between_seeds is not None:
        print(
            f"(relative L2 distance between the sequential runs of seeds 0 and 1: {between_seeds:.2f})"
        )
    print(
        f"members equal their sequential runs (relative Δparams <= {args.param_rtol:g} after "
        f"{args.check_steps} steps; relative Δ of every epoch mean and the final test ELBO <= "
        f"{args.metric_rtol:g}): {'yes' if report['members_equal_sequential'] else 'NO'}"
    )


def main() -> None:
    args = parse_args()
    config = get_config()
    config.matmul_precision = args.matmul_precision
    with models.matmul_precision(config):
        measure(args, config)


def measure(args, config) -> None:
    config.population_size = size = args.population_size
    config.num_epochs = epochs = args.epochs
    dataset = data.load_binarized_mnist()
    records = dataset.split("train")
    if args.max_train_examples:
        records = records[: args.max_train_examples]
    steps = records.shape[0] // config.batch_size
    model = models.build_model(config, records.shape[1:])
    devices = jax.devices()[: args.devices or None]
    mesh = parallel.population_mesh(size, devices)
    images = jax.device_put(records, jax.devices()[0])  # the sequential runs' device
    pop_images = parallel.put_replicated(records, mesh)

    pop_state, pop_history, states, histories, timings = train_both(
        config, model, images, pop_images, steps, mesh
    )
    rows = compare(model, dataset.split("test"), pop_state, pop_history, states, histories)
    early = short_horizon_distances(
        config, model, images, pop_images, steps, args.check_steps, mesh
    )
    for row, distance in zip(rows, early):
        row[f"params_relative_l2_difference_after_{args.check_steps}_steps"] = distance
    equal = all(
        r["steps_equal"]
        and distance <= args.param_rtol
        and max(r["max_relative_difference"].values()) <= args.metric_rtol
        for r, distance in zip(rows, early)
    )
    examples = size * epochs * steps * config.batch_size
    results = throughput(timings, examples, {"population": len(devices), "sequential": 1})
    report = {
        "benchmark": "population",
        "model": "mlp 784-500-20, bernoulli, adam 1e-3, f32",
        "matmul_precision": args.matmul_precision,
        "population_size": size,
        "epochs": epochs,
        "batch_size": config.batch_size,
        "steps_per_epoch": steps,
        "examples_trained": examples,
        "mesh": dict(mesh.shape),
        "device": str(jax.devices()[0].device_kind),
        "platform": jax.devices()[0].platform,
        "device_count": len(devices),
        "cpu_count": os.cpu_count(),
        "machine": platform.machine(),
        "jax": jax.__version__,
        "results": results,
        "speedup_population_over_sequential": timings["sequential"][1] / timings["population"][1],
        "members_equal_sequential": equal,
        "tolerances": {
            "check_steps": args.check_steps,
            "param_rtol": args.param_rtol,
            "metric_rtol": args.metric_rtol,
        },
        "params_relative_l2_between_seeds_0_and_1": (
            _relative_l2(states[1].params, states[0].params) if size > 1 else None
        ),
        "members": rows,
    }
    os.makedirs(os.path.dirname(args.output) or ".", exist_ok=True)
    with open(args.output, "w") as f:
        json.dump(report, f, indent=2)
    print_report(report, rows, early, args)


if __name__ == "__main__":
    main()
