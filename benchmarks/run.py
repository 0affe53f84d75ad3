"""The throughput suite: vae_jax against the typical JAX loop and PyTorch, and against the device's
own matmul rate, all measured in one run.

    python -m benchmarks.run                       # the full table (20-25 min on a 2-core CPU)
    python -m benchmarks.run --quick               # batch 128 only, fewer repeats
    python -m benchmarks.run --models mlp --batch_sizes 128,1024 --no-torch

For each model (the default MLP 784-500-20 and the conv model of experiments/conv_mnist.py, on
binarized MNIST) and batch size it times the same number of Adam steps of:

  vae_jax         what `python -m vae_jax.main` runs, f32: the steps as one compiled `lax.scan`
                  with on-device shuffling and gathering (`make_train_epoch`);
  vae_jax_bf16    the same with `--config.dtype=bfloat16` (bf16 products, f32 sums and weights);
  jax_loop        the typical JAX loop: a Python loop over one jitted step, batches gathered
                  from the device-resident split;
  torch_eager     the same model, loss, initialisation, optimizer and data in PyTorch
                  (benchmarks/torch_reference.py), the straightforward loop;
  torch_compile   the same with the model's forward through `torch.compile`;
  products_only   (MLP) only the step's matrix products at its shapes, in one compiled scan:
                  the floor under any XLA implementation of the step on this device;
  products_only_bf16  the same products with bf16 operands and f32 sums (on CPU the weight
                  gradient's stay f32, as in the step): the floor of the bf16 step. Since the rest of the step is the same f32 work in both precisions,
                  products_only / products_only_bf16 bounds the speed-up bf16 can give.

Every variant is compiled and warmed up first; then `--repeats` rounds each time every variant
once, in turn, and each variant's best is kept. Interleaving matters on a shared machine: a slow
spell then touches all variants alike instead of skewing one ratio. The table reports
examples/s, steps/s, seconds per 50,000-example epoch, the compile time, and the fraction of the
device's f32 matmul rate (2048^3, measured in the same run) that the step's matrix-product FLOPs
reach; bf16 rows are measured against the same f32 rate, so they can pass 100%. FLOPs per example are counted from the layer shapes: forward
2·Σ(in·out) per matrix product (convolutions as their im2col products), backward twice that,
less the input gradient of the first layer, which nobody needs. Also: the matmul rate at the
model's own batch shapes, and evaluation throughput of the k = 5000 importance-weighted bound.

Writes benchmarks/results/run.json and prints the table. Ratios are the figures to compare across
machines; absolute times depend on what else the machine runs.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import math
import os
import platform
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from vae_jax import data, models, objectives
from vae_jax.config import get_config
from vae_jax.engine import choose_step_loop
from vae_jax.optim import build_optimizer
from vae_jax.step import create_train_state, make_host_loop_epoch, make_train_epoch, make_train_step

EPOCH_EXAMPLES = 50_000


def model_config(model: str, batch_size: int, dtype: str = "float32"):
    config = get_config()
    config.batch_size = batch_size
    config.dtype = dtype
    if model == "conv":  # experiments/conv_mnist.py
        config.model = "conv"
        config.conv_features = (32, 64)
        config.conv_hidden = 256
        config.activation = "leaky_relu"
    elif model == "conv64":  # experiments/beta_vae_dsprites.py's network, on 64x64 images
        config.model = "conv"
        config.conv_features = (32, 32, 64, 64)
        config.conv_hidden = 256
        config.activation = "relu"
        config.latents = 10
    elif model != "mlp":
        raise ValueError(f"model={model!r}; expected 'mlp', 'conv' or 'conv64'")
    return config


def mlp_product_shapes(config, pixels: int) -> list[tuple[int, int, bool]]:
    """(inputs, outputs, is_first_layer) of each of the MLP's dense layers, encoder first (the
    mean and log-variance heads counted as one layer of 2·latents outputs)."""
    sizes = [pixels, *config.hidden_sizes]
    shapes = [(a, b, i == 0) for i, (a, b) in enumerate(itertools.pairwise(sizes))]
    shapes.append((sizes[-1], 2 * config.latents, False))
    decoder = [config.latents, *reversed(config.hidden_sizes), pixels]
    return shapes + [(a, b, False) for a, b in itertools.pairwise(decoder)]


def matmul_flops_per_example(config, image_shape) -> tuple[float, float]:
    """(forward, training) matrix-product FLOPs per example, from the layer shapes."""
    height, width, channels = image_shape
    pixels = height * width * channels
    layers = []  # (macs per example, is_first_layer)
    if config.model == "mlp":
        layers += [(a * b, first) for a, b, first in mlp_product_shapes(config, pixels)]
    else:
        side_h, side_w, in_channels = height, width, channels
        for index, out_channels in enumerate(config.conv_features):
            side_h, side_w = side_h // 2, side_w // 2
            layers.append((side_h * side_w * 16 * in_channels * out_channels, index == 0))
            in_channels = out_channels
        flat = side_h * side_w * in_channels
        layers += [
            (flat * config.conv_hidden, False),
            (config.conv_hidden * 2 * config.latents, False),
        ]
        layers += [(config.latents * config.conv_hidden, False), (config.conv_hidden * flat, False)]
        outs = (*reversed(config.conv_features[:-1]), channels)
        for out_channels in outs:  # a transposed convolution: 16 taps per input pixel
            layers.append((side_h * side_w * 16 * in_channels * out_channels, False))
            side_h, side_w, in_channels = side_h * 2, side_w * 2, out_channels
    forward = sum(2 * macs for macs, _ in layers)
    backward = sum(2 * macs * (1 if first else 2) for macs, first in layers)
    return float(forward), float(forward + backward)


def matmul_rate(
    m: int,
    k: int,
    n: int,
    dtype,
    repeats: int = 5,
    contract_leading: bool = False,
    flops_per_timing: float = 2e9,
) -> float:
    """FLOP/s of an (m, k) @ (k, n) product in `dtype` with f32 sums, best of `repeats`, each
    timing as many back-to-back products as make up `flops_per_timing` (at least one).

    With `contract_leading`, the product of a weight gradient, xᵀ·g: the operands are stored
    (k, m) and (k, n), as a batch of activations and of output gradients are, and the product
    contracts their leading dimension.
    """
    a_shape, contracting = ((k, m), (0,)) if contract_leading else ((m, k), (1,))
    a = jax.random.normal(jax.random.key(0), a_shape).astype(dtype)
    b = jax.random.normal(jax.random.key(1), (k, n)).astype(dtype)
    product = jax.jit(
        lambda a, b: jax.lax.dot_general(
            a, b, ((contracting, (0,)), ((), ())), preferred_element_type=jnp.float32
        )
    )
    jax.block_until_ready(product(a, b))
    inner = max(1, int(flops_per_timing / (2 * m * k * n)))
    best = math.inf
    for _ in range(repeats):
        started = time.perf_counter()
        for _ in range(inner):
            out = product(a, b)
        jax.block_until_ready(out)
        best = min(best, (time.perf_counter() - started) / inner)
    return 2 * m * k * n / best


def jax_setup(model_name, batch_size, dtype, images):
    config = model_config(model_name, batch_size, dtype)
    model = models.build_model(config, images.shape[1:])
    optimizer = build_optimizer(config, 1000)
    state = create_train_state(model, optimizer, images.shape[1:], config.latents, 0)
    step = make_train_step(objectives.make_elbo_loss(model), optimizer)
    return config, state, step


@dataclasses.dataclass
class Timed:
    """A variant ready to time: `run()` does the timed work once and returns its seconds (the
    result synchronised); `compile_seconds` is what it took to get ready; `details()` adds
    figures to its row after the timings. A variant that is one compiled program of
    (state, images) also gives the `program` and `latest_state()`, to be traced as timed."""

    run: Callable[[], float]
    compile_seconds: float | None = None
    details: Callable[[], dict] = dict
    program: Any = None
    latest_state: Callable[[], Any] | None = None


def prepare_vae_jax(
    model_name, batch_size, dtype, images, images_on_device, num_steps, masking=None, unroll=1
) -> Timed:
    """What `python -m vae_jax.main` runs: `EpochRunner`'s device pipeline, its steps in
    one compiled scan (or, with `step_loop='host'`, the compiled step called per step). With
    `masking`, the scan is masked as the runner calls it (`num_valid` traced, here every step
    valid); `unroll` is the scan's."""
    config, state, step = jax_setup(model_name, batch_size, dtype, images)
    steps_per_epoch = images.shape[0] // batch_size
    # 'auto' settles at a run's start by measuring (step_loops); the benchmark times the scan
    # unless the config asks for the host loop (benchmarks.scan_vs_loop times both).
    loop = "host" if choose_step_loop(config) == "host" else "scan"
    valid = () if masking is None else (np.int32(num_steps),)
    started = time.perf_counter()
    if loop == "scan":
        epoch = make_train_epoch(
            step, batch_size, steps_per_epoch, num_steps, unroll=unroll, masking=masking or "auto"
        )
        program = jax.jit(epoch, donate_argnums=0).lower(state, images_on_device, *valid).compile()
    else:
        program = make_host_loop_epoch(step, batch_size, steps_per_epoch, num_steps)(
            state, images_on_device
        )
    compile_seconds = time.perf_counter() - started
    carried = {}
    carried["state"], carried["metrics"] = program(state, images_on_device, *valid)  # warm-up
    jax.block_until_ready(carried["metrics"])

    def run() -> float:
        # The same batches each time: the epoch's order follows the step counter.
        state = carried["state"].replace(step=jnp.zeros((), jnp.int32))
        started = time.perf_counter()
        carried["state"], carried["metrics"] = program(state, images_on_device, *valid)
        jax.block_until_ready(carried["metrics"])
        return time.perf_counter() - started

    def details() -> dict:
        return {"loop": loop, "final_loss": float(np.mean(carried["metrics"]["loss"]))}

    if loop == "scan":
        return Timed(run, compile_seconds, details, program, lambda: carried["state"])
    return Timed(run, compile_seconds, details)


def prepare_products_only(batch_size: int, images, num_steps: int, dtype="float32") -> Timed:
    """The floor under the MLP's step on this device with XLA: only its matrix products (per
    layer x·W, g·Wᵀ except for the first layer, and xᵀ·g, at the step's shapes), `num_steps`
    times in one compiled scan, with no activation, loss, sampling or optimizer work. The
    operands are `dtype` and the sums f32, as in the step; casting them costs nothing here. As in
    the step, the weight gradient xᵀ·g goes through `models.weight_gradient`, which keeps f32
    operands on CPU.

    Each step's operands depend on the loop counter so that XLA cannot hoist the products out of
    the loop; what remains beyond the products is a scalar add per operand and a sum per output.
    """
    config = model_config("mlp", batch_size)
    shapes = mlp_product_shapes(config, int(np.prod(images.shape[1:])))
    keys = jax.random.split(jax.random.key(0), 3 * len(shapes))
    operands = [
        (
            jax.random.normal(keys[3 * i], (batch_size, fan_in)),
            jax.random.normal(keys[3 * i + 1], (fan_in, fan_out)) / np.sqrt(fan_in),
            jax.random.normal(keys[3 * i + 2], (batch_size, fan_out)),
        )
        for i, (fan_in, fan_out, _) in enumerate(shapes)
    ]

    operands_in_dtype = [tuple(a.astype(dtype) for a in triple) for triple in operands]

    def dot(a, b):
        return jnp.matmul(a, b, preferred_element_type=jnp.float32)

    def products(total, step):
        shift = step.astype(jnp.float32) * 1e-6
        for (x, kernel, g), (x32, _, g32), (_, _, first) in zip(
            operands_in_dtype, operands, shapes, strict=True
        ):
            low_shift = shift.astype(dtype)
            x, kernel, g = x + low_shift, kernel + low_shift, g + low_shift
            total += jnp.sum(dot(x, kernel))
            total += jnp.sum(models.weight_gradient(x32 + shift, g32 + shift, dtype))
            if not first:
                total += jnp.sum(dot(g, kernel.T))
        return total, None

    started = time.perf_counter()
    program = (
        jax.jit(lambda: jax.lax.scan(products, jnp.zeros(()), jnp.arange(num_steps))[0])
        .lower()
        .compile()
    )
    compile_seconds = time.perf_counter() - started
    jax.block_until_ready(program())

    def run() -> float:
        started = time.perf_counter()
        jax.block_until_ready(program())
        return time.perf_counter() - started

    return Timed(run, compile_seconds)


def prepare_jax_loop(model_name, batch_size, images, images_on_device, num_steps) -> Timed:
    """The typical JAX loop: a Python loop over one jitted step, each batch gathered from the
    device-resident split by a second jitted call, a fresh permutation per pass."""
    _, state, step = jax_setup(model_name, batch_size, "float32", images)
    jit_step = jax.jit(step, donate_argnums=0)
    gather = jax.jit(lambda images, indices: images[indices])
    rng = np.random.default_rng(0)

    def new_order():
        order = rng.permutation(images.shape[0])[: num_steps * batch_size]
        return jax.device_put(order.reshape(num_steps, batch_size))

    started = time.perf_counter()
    carried = {}
    carried["state"], metrics = jit_step(state, gather(images_on_device, new_order()[0]))
    jax.block_until_ready(metrics)
    compile_seconds = time.perf_counter() - started

    def run() -> float:
        order, state = new_order(), carried["state"]
        started = time.perf_counter()
        for b in range(num_steps):
            state, metrics = jit_step(state, gather(images_on_device, order[b]))
        jax.block_until_ready(metrics)
        carried["state"] = state
        return time.perf_counter() - started

    return Timed(run, compile_seconds)


def prepare_torch(model_name, batch_size, images, num_steps, compiled) -> Timed:
    import torch

    from benchmarks import torch_reference

    torch.set_num_threads(os.cpu_count() or 1)
    model, tensor = torch_reference.build(model_name, images)
    first_call, run = torch_reference.prepare_training(
        model, tensor, batch_size, num_steps, compile_model=compiled
    )
    return Timed(run, first_call)


def time_interleaved(variants: dict[str, Timed], rounds: int) -> dict[str, list[float]]:
    """Seconds of each variant in each of `rounds` rounds, each round timing every variant once
    in turn: a slow spell of the machine then touches every variant, not just one."""
    seconds = {name: [] for name in variants}
    for _ in range(rounds):
        for name, variant in variants.items():
            seconds[name].append(variant.run())
    return seconds


def time_iwae(images, num_examples: int, num_samples: int = 5000) -> dict:
    """Evaluation throughput: the k-sample bound of the default model on `num_examples` test
    images (untrained weights: the cost does not depend on them)."""
    config = get_config()
    model = models.build_model(config, images.shape[1:])
    params = model.init(
        jax.random.key(0), jnp.zeros((1, *images.shape[1:])), jnp.zeros((1, config.latents))
    )
    batch = min(100, num_examples)
    bound = jax.jit(
        lambda p, x, key: objectives.importance_weighted_bound(model, p, x, key, num_samples, 128)
    )
    x = jnp.asarray(images[:batch], jnp.float32) / 255.0
    jax.block_until_ready(bound(params, x, jax.random.key(0)))
    started = time.perf_counter()
    for start in range(0, num_examples, batch):
        x = jnp.asarray(images[start : start + batch], jnp.float32) / 255.0
        out = bound(params, x, jax.random.fold_in(jax.random.key(0), start))
    jax.block_until_ready(out)
    seconds = time.perf_counter() - started
    return {
        "examples": num_examples,
        "samples": num_samples,
        "seconds": seconds,
        "decodes_per_second": num_examples * num_samples / seconds,
        "projected_seconds_for_10000": seconds * 10_000 / num_examples,
    }


def _row(name, result, batch_size, num_steps, train_flops, f32_rate):
    examples = num_steps * batch_size
    per_second = examples / result["seconds"]
    return {
        "variant": name,
        "examples_per_second": per_second,
        "steps_per_second": num_steps / result["seconds"],
        "seconds_per_epoch": EPOCH_EXAMPLES / per_second,
        "compile_seconds": result.get("compile_seconds"),
        "roofline_fraction": per_second * train_flops / f32_rate,
        **{k: v for k, v in result.items() if k not in ("seconds", "compile_seconds")},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default="mlp,conv")
    parser.add_argument("--batch_sizes", default="32,128,512,4096")
    parser.add_argument("--conv_batch_sizes", default="32,128,512,4096")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--conv_examples", type=int, default=8192, help="examples per timing (conv)"
    )
    parser.add_argument("--iwae_examples", type=int, default=200)
    parser.add_argument("--torch", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--quick", action="store_true", help="batch 128 only, 2 repeats")
    parser.add_argument("--output", default="benchmarks/results/run.json")
    args = parser.parse_args()
    if args.quick:
        args.batch_sizes = args.conv_batch_sizes = "128"
        args.repeats = 2
        args.iwae_examples = 100

    images = data.load_binarized_mnist().split("train")
    test_images = data.load_binarized_mnist().split("test")
    images_on_device = jax.device_put(images)
    f32_rate = matmul_rate(2048, 2048, 2048, jnp.float32)
    bf16_rate = matmul_rate(2048, 2048, 2048, jnp.bfloat16)
    shape_rates = {
        "784x500 @ batch 128, f32": matmul_rate(128, 784, 500, jnp.float32),
        "784x500 @ batch 128, bf16": matmul_rate(128, 784, 500, jnp.bfloat16),
        "500x784 @ batch 128, f32": matmul_rate(128, 500, 784, jnp.float32),
        # The weight gradients' form xᵀ·g contracts the leading (batch) dimension of both
        # operands. XLA:CPU sends bf16 products to YNNPACK only when the left operand contracts
        # its last dimension; this form it converts to f32 and multiplies there. The same
        # product with xᵀ stored as such (a transpose that XLA folds back into the product in
        # the real step) shows what that costs.
        "784x500 weight gradient over batch 128, f32": matmul_rate(
            784, 128, 500, jnp.float32, contract_leading=True
        ),
        "784x500 weight gradient over batch 128, bf16": matmul_rate(
            784, 128, 500, jnp.bfloat16, contract_leading=True
        ),
        "784x500 weight gradient over batch 128 from a stored xᵀ, bf16": matmul_rate(
            784, 128, 500, jnp.bfloat16
        ),
        "784x500 @ batch 4096, bf16": matmul_rate(4096, 784, 500, jnp.bfloat16),
        "784x500 weight gradient over batch 4096, bf16": matmul_rate(
            784, 4096, 500, jnp.bfloat16, contract_leading=True
        ),
    }
    report = {
        "device": jax.devices()[0].device_kind,
        "platform": platform.platform(),
        "processor": platform.processor(),
        "cpu_count": os.cpu_count(),
        # Whether the CPU multiplies bf16 in hardware: without, the bf16 rows are slower than f32.
        "cpu_bf16_units": models.cpu_has_bf16_units(),
        "versions": {"jax": jax.__version__},
        "matmul_flops_per_second": {
            "2048^3 f32": f32_rate,
            "2048^3 bf16": bf16_rate,
            **shape_rates,
        },
        "results": [],
    }
    if args.torch:
        import torch

        report["versions"]["torch"] = torch.__version__

    for model_name in args.models.split(","):
        config = model_config(model_name, 128)
        forward_flops, train_flops = matmul_flops_per_example(config, images.shape[1:])
        sizes = args.batch_sizes if model_name == "mlp" else args.conv_batch_sizes
        for batch_size in [int(b) for b in sizes.split(",")]:
            steps_per_epoch = images.shape[0] // batch_size
            if model_name == "mlp":
                num_steps = steps_per_epoch
            else:
                num_steps = max(2, min(steps_per_epoch, args.conv_examples // batch_size))
            print(f"{model_name} batch {batch_size}: {num_steps} steps per timing", flush=True)
            variants = {
                "vae_jax": prepare_vae_jax(
                    model_name, batch_size, "float32", images, images_on_device, num_steps
                ),
                "vae_jax_bf16": prepare_vae_jax(
                    model_name, batch_size, "bfloat16", images, images_on_device, num_steps
                ),
                "jax_loop": prepare_jax_loop(
                    model_name, batch_size, images, images_on_device, num_steps
                ),
            }
            if model_name == "mlp":
                variants["products_only"] = prepare_products_only(batch_size, images, num_steps)
                variants["products_only_bf16"] = prepare_products_only(
                    batch_size, images, num_steps, "bfloat16"
                )
            if args.torch:
                for name, compiled in (("torch_eager", False), ("torch_compile", True)):
                    variants[name] = prepare_torch(
                        model_name, batch_size, images, num_steps, compiled
                    )
            seconds = time_interleaved(variants, args.repeats)
            timings = {
                name: {
                    "seconds": min(seconds[name]),
                    "compile_seconds": variant.compile_seconds,
                    **variant.details(),
                }
                for name, variant in variants.items()
            }
            rows = [
                _row(name, result, batch_size, num_steps, train_flops, f32_rate)
                for name, result in timings.items()
            ]
            ours = rows[0]["examples_per_second"]
            for row in rows:
                row["vae_jax_speedup"] = ours / row["examples_per_second"]
            report["results"].append(
                {
                    "model": model_name,
                    "batch_size": batch_size,
                    "steps_timed": num_steps,
                    "matmul_flops_per_example": {"forward": forward_flops, "train": train_flops},
                    "rows": rows,
                }
            )
            _print_block(report["results"][-1])

    report["iwae_evaluation"] = time_iwae(test_images, args.iwae_examples)
    os.makedirs(os.path.dirname(args.output), exist_ok=True)
    with open(args.output, "w") as f:
        json.dump(report, f, indent=2)
    _print_summary(report)
    print(f"wrote {args.output}")


def _print_block(result) -> None:
    print(
        f"  {'variant':<18} {'examples/s':>11} {'steps/s':>9} {'s/epoch':>8} {'compile s':>9} "
        f"{'roofline':>8} {'vae_jax x':>9}"
    )
    for row in result["rows"]:
        compile_s = row["compile_seconds"]
        print(
            f"  {row['variant']:<18} {row['examples_per_second']:>11,.0f} "
            f"{row['steps_per_second']:>9.1f} {row['seconds_per_epoch']:>8.3f} "
            f"{compile_s if compile_s is not None else float('nan'):>9.2f} "
            f"{row['roofline_fraction']:>8.1%} {row['vae_jax_speedup']:>9.2f}"
        )


def _print_summary(report) -> None:
    rates = report["matmul_flops_per_second"]
    print(f"\ndevice: {report['device']} ({report['cpu_count']} cores), {report['versions']}")
    if report["device"] == "cpu":
        units = {True: "yes", False: "no (bf16 is emulated)", None: "unknown"}
        print(f"  CPU bf16 units: {units[report['cpu_bf16_units']]}")
    for name, rate in rates.items():
        print(f"  matmul {name}: {rate / 1e9:.0f} GFLOP/s")
    iwae = report["iwae_evaluation"]
    print(
        f"  IWAE k={iwae['samples']}: {iwae['decodes_per_second']:,.0f} decodes/s; the 10k test "
        f"split would take {iwae['projected_seconds_for_10000']:.0f} s"
    )


if __name__ == "__main__":
    main()
