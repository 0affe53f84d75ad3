"""The benchmark suite's accounting: FLOP counts from the layer shapes, interleaved timing, the
bf16 layout experiment's products, the profile's ranking of trace events, and the accelerator
check run end to end on the CPU."""

import gzip
import itertools
import json
import re

import jax.numpy as jnp
import numpy as np
import pytest

from benchmarks import accelerator, bf16_layouts, profile, run, step_levers
from vae_jax.config import get_config


def test_mlp_flops_per_example_are_counted_from_the_layer_shapes():
    config = get_config()  # 784-500-20: encoder 784x500, heads 500x40; decoder 20x500, 500x784
    shapes = run.mlp_product_shapes(config, 784)
    assert shapes == [(784, 500, True), (500, 40, False), (20, 500, False), (500, 784, False)]
    macs = 784 * 500 + 500 * 40 + 20 * 500 + 500 * 784
    forward, train = run.matmul_flops_per_example(config, (28, 28, 1))
    assert forward == 2 * macs
    # backward: input and weight gradients, less the first layer's input gradient
    assert train == 2 * macs + 4 * macs - 2 * 784 * 500 == 4_100_000


def test_conv64_flops_are_counted_from_the_dsprites_network():
    config = run.model_config("conv64", 128)
    assert (config.conv_features, config.conv_hidden, config.latents) == ((32, 32, 64, 64), 256, 10)
    # 4x4 taps: output pixels x 16 x in x out per stride-2 convolution, 64 -> 32 -> 16 -> 8 -> 4
    encoder_convs = [32 * 32 * 16 * 1 * 32, 16 * 16 * 16 * 32 * 32, 8 * 8 * 16 * 32 * 64]
    encoder_convs.append(4 * 4 * 16 * 64 * 64)
    dense = [4 * 4 * 64 * 256, 256 * 2 * 10, 10 * 256, 256 * 4 * 4 * 64]
    decoder_convs = encoder_convs[::-1]  # the transposed convolutions mirror them
    macs = sum(encoder_convs) + sum(dense) + sum(decoder_convs)
    forward, train = run.matmul_flops_per_example(config, (64, 64, 1))
    assert forward == 2 * macs
    assert train == 3 * forward - 2 * encoder_convs[0]  # no input gradient for the first layer
    with pytest.raises(ValueError, match="model='conv3d'; expected 'mlp', 'conv' or 'conv64'"):
        run.model_config("conv3d", 128)


def _write_trace(path, processes, events, threads=()):
    metadata = [
        {"ph": "M", "pid": pid, "name": "process_name", "args": {"name": name}}
        for pid, name in processes.items()
    ] + [
        {"ph": "M", "pid": pid, "tid": tid, "name": "thread_name", "args": {"name": name}}
        for pid, tid, name in threads
    ]
    with gzip.open(path, "wt") as f:
        json.dump({"traceEvents": metadata + events}, f)


def _event(pid, name, dur, hlo_op=None, tid=0):
    args = {"hlo_op": hlo_op} if hlo_op else {}
    return {"ph": "X", "pid": pid, "tid": tid, "name": name, "dur": dur, "args": args}


def test_profile_ranks_the_devices_kernels_by_hlo_op_when_the_trace_has_a_device(tmp_path):
    host_events = [_event(1, "ThunkExecutor::Execute", 500), _event(1, "cudaLaunchKernel", 400)]
    kernels = [
        _event(2, "loop_add_fusion_kernel", 30, "add_fusion.3", tid=7),
        _event(2, "loop_add_fusion_kernel", 40, "add_fusion.3", tid=7),
        _event(2, "nvjet_tst_128x256", 50, "dot.1", tid=7),
        _event(2, "memcpy", 20, tid=8),  # no HLO op: named by the event
    ]
    # XProf's derived lanes span the same time again: the program, and each op once more.
    derived = [
        _event(2, "jit_train_epoch", 140, tid=100),
        _event(2, "add_fusion.3", 70, "add_fusion.3", tid=101),
        _event(2, "dot.1", 50, "dot.1", tid=101),
    ]
    threads = [
        (2, 7, "Stream #15(Compute)"),
        (2, 8, "Stream #14(MemcpyH2D)"),
        (2, 100, "XLA Modules"),
        (2, 101, "XLA Ops"),
    ]
    trace = tmp_path / "gpu.json.gz"
    processes = {1: "/host:CPU", 2: "/device:GPU:0"}
    _write_trace(trace, processes, host_events + kernels + derived, threads)
    ranked, where = profile.ranked_ops(str(trace), steps=2)
    assert where == "device"
    assert ranked == [("add_fusion.3", 35.0, 1.0), ("dot.1", 25.0, 0.5), ("memcpy", 10.0, 0.5)]

    # A device without streams (a TPU): its XLA Ops lane, not the program's span beside it.
    trace = tmp_path / "tpu.json.gz"
    tpu_threads = [(2, 100, "XLA Modules"), (2, 101, "XLA Ops")]
    _write_trace(trace, {1: "/host:CPU", 2: "/device:TPU:0"}, host_events + derived, tpu_threads)
    ranked, where = profile.ranked_ops(str(trace), steps=1)
    assert (ranked, where) == ([("add_fusion.3", 70.0, 1.0), ("dot.1", 50.0, 1.0)], "device")

    # A device process with no named lanes at all: all its events count.
    trace = tmp_path / "plain_device.json.gz"
    _write_trace(trace, {1: "/host:CPU", 2: "/device:GPU:0"}, host_events + kernels)
    ranked, where = profile.ranked_ops(str(trace), steps=1)
    assert where == "device" and [name for name, _, _ in ranked] == [
        "add_fusion.3",
        "dot.1",
        "memcpy",
    ]

    # On CPU the host runs the ops: its events annotated with an HLO op count, and not what
    # wraps them (the jitted call, the executor) or Python's frames.
    trace = tmp_path / "cpu.json.gz"
    cpu_ops = [_event(1, "ynn_fusion.8", 60, "ynn_fusion.8"), _event(1, "dot.36", 20, "dot.36")]
    wrappers = [
        _event(1, "PjitFunction(jit(train_epoch))", 900),
        _event(1, "CommonPjRtLoadedExecutable::ExecuteHelperOnSingleDevice", 800),
        _event(1, "ThunkExecutor::Execute", 500),
        _event(1, "$api.py:2479 block_until_ready", 700),
    ]
    _write_trace(trace, {1: "/host:CPU"}, wrappers + cpu_ops)
    ranked, where = profile.ranked_ops(str(trace), steps=1)
    assert where == "host"
    assert ranked == [("ynn_fusion.8", 60.0, 1.0), ("dot.36", 20.0, 1.0)]

    # A CPU trace without annotations: everything but the known wrappers.
    trace = tmp_path / "cpu_plain.json.gz"
    plain = [_event(1, "ThunkExecutor::Execute", 500), _event(1, "ynn_fusion.8", 60)]
    _write_trace(trace, {1: "/host:CPU"}, plain)
    assert profile.ranked_ops(str(trace), steps=1) == ([("ynn_fusion.8", 60.0, 1.0)], "host")


def test_accelerator_check_runs_end_to_end_and_its_figures_agree(tmp_path):
    output = tmp_path / "accelerator.json"
    # fmt: off
    report = accelerator.main([
        "--peak_size", "128", "--mlp_steps", "2", "--conv_images", "32",
        "--conv_batch_sizes", "16", "--conv_dtypes", "bfloat16", "--repeats", "1", "--top", "30",
        "--trace_dir", str(tmp_path / "trace"), "--output", str(output),
    ])
    # fmt: on
    assert json.loads(output.read_text()) == json.loads(json.dumps(report))
    assert report["environment"]["platform"] == "cpu"
    assert report["environment"]["versions"]["jax"]
    peak = report["peak"]
    assert peak["n"] == 128 and peak["bf16"] > 0 and peak["f32"] > 0

    mlp = report["mlp"]
    for name in ("vae_jax", "vae_jax_bf16", "jax_loop"):
        row = mlp[name]
        # 2 steps of 128 scaled to a 50,000-example epoch
        assert row["seconds_per_epoch"] == pytest.approx(row["ms_per_step"] / 1e3 * 50_000 / 128)
        assert row["compile_seconds"] > 0
    assert mlp["meets_target"] == (mlp["vae_jax"]["seconds_per_epoch"] < 0.025)

    _, train_flops = run.matmul_flops_per_example(run.model_config("conv64", 16), (64, 64, 1))
    assert [(r["batch_size"], r["dtype"]) for r in report["conv64"]] == [(16, "bfloat16")]
    for row in report["conv64"]:
        assert row["steps_timed"] == 2  # one pass over the 32 images
        assert row["examples_per_second"] == pytest.approx(16_000 / row["ms_per_step"])
        achieved = row["examples_per_second"] * train_flops
        assert row["fraction_of_bf16_peak"] * peak["bf16"] == pytest.approx(achieved)
        assert row["fraction_of_f32_peak"] * peak["f32"] == pytest.approx(achieved)

    traced = report["profile"]
    assert traced["events_from"] == "host" and len(traced["ops"]) == 30
    assert (traced["batch_size"], traced["dtype"], traced["steps"]) == (16, "bfloat16", 2)
    assert traced["ops"][0]["us_per_step"] >= traced["ops"][-1]["us_per_step"] > 0
    # every op ranked is an HLO instruction (no wrapper such as "PjitFunction(jit(...))" or
    # "ThunkExecutor::Execute"), the convolutions among them. (Which op is largest depends on
    # the build: at the suite's LLVM level 0 elementwise fusions can outrank them.)
    assert all(re.fullmatch(r"[\w.\-]+", op["op"]) for op in traced["ops"])
    assert any("conv_general_dilated" in op["traced_at"] for op in traced["ops"])


def test_step_levers_time_every_variant_and_equal_variants_agree(tmp_path):
    # The MLP part only: the conv part's two forms are one program on a CPU (each form against
    # Flax: tests/test_models.py), and its compilations would double the test's time.
    output = tmp_path / "levers.json"
    # fmt: off
    report = step_levers.main([
        "--parts", "mlp", "--mlp_steps", "3", "--mlp_variants", "unmasked,cond,chunks",
        "--repeats", "1", "--output", str(output),
    ])
    # fmt: on
    assert json.loads(output.read_text()) == json.loads(json.dumps(report))
    mlp = {row["variant"]: row for row in report["mlp"]}
    assert list(mlp) == ["unmasked", "cond", "chunks"] and "conv" not in report
    for row in mlp.values():
        assert row["examples_per_second"] == pytest.approx(3 * 128 / row["seconds_per_call"])
        assert row["ms_per_50k_epoch"] == pytest.approx(50_000 / row["examples_per_second"] * 1e3)
    # A full call masked either way computes what the unmasked one does, bit for bit.
    assert mlp["unmasked"]["final_loss"] == mlp["cond"]["final_loss"] == mlp["chunks"]["final_loss"]


@pytest.mark.parametrize(
    "command, flags, message",
    [
        (step_levers, ["--parts", "mlp,gpu"], "--parts=mlp,gpu: expected mlp and/or conv"),
        (
            step_levers,
            ["--mlp_variants", "cond,fast"],
            "--mlp_variants=cond,fast: expected some of",
        ),
        (step_levers, ["--conv_dtypes", "fp8"], "--conv_dtypes=fp8: expected bfloat16"),
        (
            step_levers,
            ["--conv_batch_size", "0"],
            "--conv_batch_size=0 must be in [1, --conv_images]",
        ),
        (step_levers, ["--repeats", "0"], "--repeats=0 must be at least 1"),
        (
            accelerator,
            ["--conv_images", "32", "--conv_batch_sizes", "16,64"],
            "--conv_batch_sizes=16,64: each must be in [1, --conv_images=32]",
        ),
        (
            accelerator,
            ["--conv_dtypes", "bfloat16,fp8"],
            "--conv_dtypes=bfloat16,fp8: expected bfloat16",
        ),
        (accelerator, ["--mlp_steps", "391"], "--mlp_steps=391 must be in [1, 390]"),
        (
            accelerator,
            ["--conv_batch_sizes", "1024,4k"],
            "--conv_batch_sizes=1024,4k: expected integers",
        ),
        (accelerator, ["--repeats", "0"], "--repeats=0 must be at least 1"),
        (accelerator, ["--peak_size", "0"], "--peak_size=0 must be at least 1"),
        (
            accelerator,
            ["--output", "/proc/no/such/report.json"],
            "--output=/proc/no/such/report.json: its folder",
        ),
    ],
)
def test_benchmark_commands_reject_bad_flags_before_any_work(
    command, flags, message, capsys, monkeypatch
):
    def no_work(*args, **kwargs):
        raise AssertionError("work started before the flags were checked")

    monkeypatch.setattr(accelerator, "environment", no_work)  # step_levers reports it too
    with pytest.raises(SystemExit):
        command.main(flags)
    assert message in capsys.readouterr().err


def test_interleaved_timing_runs_every_variant_once_per_round_in_turn():
    calls = []
    durations = {"a": itertools.cycle([3.0, 1.0, 2.0]), "b": itertools.cycle([5.0, 6.0, 4.0])}

    def variant(name):
        def timed_run():
            calls.append(name)
            return next(durations[name])

        return run.Timed(timed_run)

    seconds = run.time_interleaved({"a": variant("a"), "b": variant("b")}, rounds=3)
    assert calls == ["a", "b"] * 3
    assert seconds == {"a": [3.0, 1.0, 2.0], "b": [5.0, 6.0, 4.0]}


def test_bf16_layouts_arrange_the_same_five_products():
    o = bf16_layouts.operands(8)
    exact = bf16_layouts.batch_major_products(*o.values(), jnp.float32)
    batch_major = bf16_layouts.batch_major_products(*o.values(), jnp.bfloat16)
    w_out_t_copy = o["w_out"].T.astype(jnp.bfloat16)
    feature_major = bf16_layouts.feature_major_products(
        o["x"], o["h"].T, o["g_hidden"].T, o["g_out"].T, o["w_in"].T, o["w_out"], w_out_t_copy
    )
    # back to batch-major; the encoder weight gradient comes out as (500, 784)
    feature_major = [out.T for out in feature_major[:4]] + [feature_major[4]]
    for exact_out, batch_out, feature_out in zip(exact, batch_major, feature_major, strict=True):
        assert exact_out.shape == batch_out.shape == feature_out.shape
        for out in (batch_out, feature_out):
            relative = float(jnp.linalg.norm(out - exact_out) / jnp.linalg.norm(exact_out))
            assert relative < 1e-2  # bf16 operands, f32 sums
        assert float(jnp.linalg.norm(feature_out - exact_out)) > 0  # rounded: really bf16
    # on CPU the batch-major weight gradients keep f32 operands (models.weight_gradient)
    np.testing.assert_array_equal(batch_major[1], exact[1])
    np.testing.assert_array_equal(batch_major[4], exact[4])


def test_bf16_layouts_epochs_run_and_carry_the_transposed_copy():
    for arrangement in bf16_layouts.ARRANGEMENTS:
        program, carry = bf16_layouts.make_epoch(arrangement, batch_size=8, num_steps=3)
        (_, w_out, w_out_t_copy), total = program(carry)
        assert np.isfinite(float(total))
        assert not np.array_equal(w_out, carry[0][1])  # the weights did move
        if arrangement == "bf16_feature_major":
            np.testing.assert_array_equal(w_out_t_copy, w_out.T.astype(jnp.bfloat16))
        else:
            assert w_out_t_copy is None
