"""What bf16 could gain on XLA:CPU if every product of the step took a form XLA sends to its
bf16 kernels: the default MLP's two large layers (the 784->500 encoder layer and the 500->784
decoder output layer), their five training products per step at the step's shapes, arranged
three ways and timed in one run:

    python -m benchmarks.bf16_layouts                  # batch 128 and 4096
    python -m benchmarks.bf16_layouts --batch_sizes 32,128,512,4096

  f32                 activations stored (batch, features), as vae_jax's f32 step;
  bf16                the same with bf16 operands and f32 sums, as vae_jax's bf16 step: x·W
                      and g·Wᵀ run on YNNPACK's bf16 kernels; the weight gradient xᵀ·g
                      contracts the batch, the leading axis of both operands, a form XLA:CPU
                      multiplies in f32 (so it takes f32 operands: `models.weight_gradient`);
  bf16_feature_major  activations stored (features, batch), so that every product contracts
                      the last axis of its left operand, the form YNNPACK takes in bf16:

                          forward          yᵀ = Wᵀ·xᵀ      with Wᵀ a stored bf16 copy
                          input gradient   ∂xᵀ = W·gᵀ
                          weight gradient  ∂W = xᵀ·(gᵀ)ᵀ

The stored Wᵀ is why vae_jax does not do this. XLA folds a transpose made within the step back
into the product (and with it, the slow form), so the copy has to cross a loop boundary: it is
made from the updated weight at the end of each step and carried to the next one, as here. The
first layer, whose input is the batch as the data pipeline gathers it, (batch, 784), gets its
weight gradient as the transposed (gᵀ·x), so its weight would have to be stored (500, 784):
transposing that gradient in the step makes XLA rewrite the product into the batch-contracting
form, which with bf16 operands then fails at run time (jax 0.10.2: "Unsupported element type
for DotThunk::Execute: BF16 x BF16 = F32"). A model written this way would differ from Flax's
`nn.Dense` layout and carry a second copy of its weights, for a gain only on this backend.

Every step also applies an SGD update to the weights, so that each step depends on the last.
Writes benchmarks/results/bf16_layouts.json.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time

import jax
import jax.numpy as jnp

from vae_jax import models

PIXELS, HIDDEN = 784, 500
F32, BF16 = jnp.float32, jnp.bfloat16
ARRANGEMENTS = ("f32", "bf16", "bf16_feature_major")
FLOPS_PER_EXAMPLE = 5 * 2 * PIXELS * HIDDEN  # five products of 784x500 multiply-adds


def _product(a, b, contracting):
    """a·b contracting axis contracting[0] of a with contracting[1] of b, f32 sums."""
    return jax.lax.dot_general(
        a, b, (((contracting[0],), (contracting[1],)), ((), ())), preferred_element_type=F32
    )


def batch_major_products(x, h, g_hidden, g_out, w_in, w_out, dtype):
    """The five products with (batch, features) activations and `dtype` operands.

    x (B, 784) the batch, h (B, 500) the decoder's hidden activation, g_hidden (B, 500) and
    g_out (B, 784) the gradients at the two layers' outputs, w_in (784, 500) and w_out
    (500, 784) the kernels as `nn.Dense` stores them. Returns the encoder layer's output and
    weight gradient, then the decoder layer's output, input gradient and weight gradient, in
    batch-major form.
    """
    x_low, h_low, g_out_low = x.astype(dtype), h.astype(dtype), g_out.astype(dtype)
    w_in_low, w_out_low = w_in.astype(dtype), w_out.astype(dtype)
    return (
        _product(x_low, w_in_low, (1, 0)),
        models.weight_gradient(x, g_hidden, dtype),
        _product(h_low, w_out_low, (1, 0)),
        _product(g_out_low, w_out_low, (1, 1)),
        models.weight_gradient(h, g_out, dtype),
    )


def feature_major_products(x, h_t, g_hidden_t, g_out_t, w_in_t, w_out, w_out_t_copy):
    """The same five products in bf16 with (features, batch) activations: h_t (500, B),
    g_hidden_t (500, B), g_out_t (784, B); the encoder weight stored transposed, w_in_t
    (500, 784); the decoder kernel w_out (500, 784) and its carried bf16 copy w_out_t_copy
    (784, 500). Every product contracts the last axis of its left operand. Returns what
    `batch_major_products` returns, transposed where the activations are, and the encoder
    weight gradient as (500, 784)."""
    x_low, w_in_t_low, g_hidden_t_low = x.astype(BF16), w_in_t.astype(BF16), g_hidden_t.astype(BF16)
    h_t_low, g_out_t_low = h_t.astype(BF16), g_out_t.astype(BF16)
    return (
        _product(w_in_t_low, x_low, (1, 1)),  # yᵀ (500, B): the batch enters batch-major
        _product(g_hidden_t_low, x_low, (1, 0)),  # ∂W_inᵀ (500, 784)
        _product(w_out_t_copy, h_t_low, (1, 0)),  # logitsᵀ (784, B)
        _product(w_out.astype(BF16), g_out_t_low, (1, 0)),  # ∂hᵀ (500, B)
        _product(h_t_low, g_out_t_low, (1, 1)),  # ∂W_out (500, 784)
    )


def operands(batch_size: int):
    """Random activations, gradients and weights of the MLP's two wide layers at `batch_size`
    (fixed key): the five products' inputs."""
    keys = jax.random.split(jax.random.key(0), 6)
    return {
        "x": jax.random.normal(keys[0], (batch_size, PIXELS)),
        "h": jax.random.normal(keys[1], (batch_size, HIDDEN)),
        "g_hidden": jax.random.normal(keys[2], (batch_size, HIDDEN)),
        "g_out": jax.random.normal(keys[3], (batch_size, PIXELS)),
        "w_in": jax.random.normal(keys[4], (PIXELS, HIDDEN)) / math.sqrt(PIXELS),
        "w_out": jax.random.normal(keys[5], (HIDDEN, PIXELS)) / math.sqrt(HIDDEN),
    }


def make_epoch(arrangement: str, batch_size: int, num_steps: int):
    """A compiled scan of `num_steps` steps of the five products and an SGD update, and the
    carry it starts from. The activations shift with the step so nothing can be hoisted."""
    o = operands(batch_size)
    learning_rate = 1e-9

    if arrangement == "bf16_feature_major":
        activations = (o["x"], o["h"].T, o["g_hidden"].T, o["g_out"].T)
        weights = (o["w_in"].T, o["w_out"], o["w_out"].T.astype(BF16))

        def products(activations, weights):
            return feature_major_products(*activations, *weights)
    else:
        dtype = F32 if arrangement == "f32" else BF16
        activations = (o["x"], o["h"], o["g_hidden"], o["g_out"])
        weights = (o["w_in"], o["w_out"], None)  # no copy

        def products(activations, weights):
            return batch_major_products(*activations, *weights[:2], dtype)

    def step(carry, index):
        (w_in, w_out, w_out_t_copy), total = carry
        shift = index.astype(F32) * 1e-6
        outputs = products([a + shift for a in activations], (w_in, w_out, w_out_t_copy))
        w_in = w_in - learning_rate * outputs[1]  # (500, 784) when feature-major
        w_out = w_out - learning_rate * outputs[4]
        if w_out_t_copy is not None:
            # the copy for the next step, made here so that it crosses the loop boundary
            w_out_t_copy = w_out.T.astype(BF16)
        total += sum(jnp.sum(out) for out in (outputs[0], outputs[2], outputs[3]))
        return ((w_in, w_out, w_out_t_copy), total), None

    carry = (weights, jnp.zeros(()))

    def epoch(carry):
        return jax.lax.scan(step, carry, jnp.arange(num_steps))[0]

    return jax.jit(epoch).lower(carry).compile(), carry


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch_sizes", default="128,4096")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--output", default="benchmarks/results/bf16_layouts.json")
    args = parser.parse_args()
    try:
        batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
        if any(b < 1 or b > 50_000 for b in batch_sizes):
            raise ValueError
    except ValueError:
        parser.error(f"--batch_sizes={args.batch_sizes!r}: comma-separated integers in [1, 50000]")

    results = []
    print(f"{jax.devices()[0].device_kind}, jax {jax.__version__}: seconds per 50,000 examples")
    for batch_size in batch_sizes:
        num_steps = 50_000 // batch_size
        programs = {name: make_epoch(name, batch_size, num_steps) for name in ARRANGEMENTS}
        for program, carry in programs.values():
            jax.block_until_ready(program(carry))  # warm-up
        best = dict.fromkeys(ARRANGEMENTS, math.inf)
        for _ in range(args.repeats):  # interleaved: a slow spell touches every arrangement
            for name, (program, carry) in programs.items():
                started = time.perf_counter()
                jax.block_until_ready(program(carry))
                best[name] = min(best[name], time.perf_counter() - started)
        row = {"batch_size": batch_size, "steps": num_steps}
        for name in ARRANGEMENTS:
            seconds = best[name] * 50_000 / (num_steps * batch_size)
            row[name] = {
                "seconds_per_epoch": seconds,
                "flops_per_second": FLOPS_PER_EXAMPLE * 50_000 / seconds,
                "speedup_over_f32": best["f32"] / best[name],
            }
        results.append(row)
        print(
            f"batch {batch_size:>5}: "
            + ", ".join(
                f"{name} {row[name]['seconds_per_epoch']:.3f} s "
                f"({row[name]['speedup_over_f32']:.2f}x f32)"
                for name in ARRANGEMENTS
            )
        )
    os.makedirs(os.path.dirname(args.output) or ".", exist_ok=True)
    with open(args.output, "w") as f:
        json.dump(
            {"device": jax.devices()[0].device_kind, "jax": jax.__version__, "results": results},
            f,
            indent=1,
        )
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
