"""The after-training pictures: what each tile decodes, and that the chart and PNGs come out.

Latent codes are compared exactly. Tiles are compared exactly with the same codes decoded by
hand in a batch of the same size; otherwise within 1e-6, since XLA may round a float32 a unit
differently with another batch size (matrix-product kernels) or inside a fused jit.
"""

import math
import statistics

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from vae_jax import curves, drawing, models, objectives, pictures
from vae_jax.config import get_config

SHAPE = (8, 8, 1)
TRAIN_COLOUR, EVAL_COLOUR = drawing.PALETTE[0], drawing.PALETTE[1]


def _tiny_vae(latents: int):
    config = get_config()
    config.hidden_sizes = (16,)
    config.latents = latents
    model = models.build_model(config, SHAPE)
    init = jax.jit(model.init)  # one compilation rather than many small ones
    params = init(jax.random.key(0), jnp.zeros((1, *SHAPE)), jnp.zeros((1, latents)))
    return model, params


@pytest.fixture(scope="module")
def vae2():
    return _tiny_vae(2)


@pytest.fixture(scope="module")
def vae3():
    return _tiny_vae(3)


@pytest.fixture(scope="module")
def images():
    return np.asarray(jax.random.uniform(jax.random.key(1), (4, *SHAPE)))


def _decode(model, params, z):
    """E[x|z] of a (N, latents) batch, by hand, outside any jit."""
    location, log_scale = model.apply(params, jnp.asarray(z), method="decode")
    return np.asarray(objectives.likelihood_mean(location, log_scale))


def _mean(model, params, batch):
    return np.asarray(model.apply(params, jnp.asarray(batch), method="encode")[0])


def test_traversal_rows_vary_one_dimension_from_the_posterior_mean(vae3, images):
    model, params = vae3
    traversal = pictures.latent_traversals(model, params, images[0], num_steps=9, span=3.0)
    assert traversal.shape == (3 * 9, *SHAPE) and traversal.dtype == np.float32
    assert traversal.min() >= 0.0 and traversal.max() <= 1.0

    mean = _mean(model, params, images[:1])[0]
    values = np.linspace(-3.0, 3.0, 9).astype(np.float32)  # all exact in float32
    codes = np.tile(mean, (3, 9, 1))
    for d in range(3):
        codes[d, :, d] = values
    codes = codes.reshape((27, 3))
    np.testing.assert_array_equal(pictures.traversal_latents(jnp.asarray(mean), 9, 3.0), codes)
    np.testing.assert_array_equal(traversal, _decode(model, params, codes))
    # Row 1, step 2: dimension 1 at -1.5, the others at the posterior mean.
    point = mean.copy()
    point[1] = -1.5
    np.testing.assert_allclose(traversal[9 + 2], _decode(model, params, point[None])[0], atol=1e-6)
    assert not np.array_equal(traversal[0], traversal[8])  # the ends of a row differ


def test_a_dimension_the_decoder_ignores_gives_a_constant_row(vae3, images):
    model, params = vae3
    kernel = params["params"]["decoder"]["Dense_0"]["kernel"]
    deaf = jax.tree.map(lambda x: x, params)
    deaf["params"]["decoder"]["Dense_0"]["kernel"] = kernel.at[1].set(0.0)
    rows = pictures.latent_traversals(model, deaf, images[0], num_steps=5).reshape((3, 5, *SHAPE))
    for step in range(1, 5):
        np.testing.assert_array_equal(rows[1, step], rows[1, 0])
        for d in (0, 2):
            assert not np.array_equal(rows[d, step], rows[d, 0])


def test_traversal_dimensions_choose_and_order_the_rows(vae3, images):
    model, params = vae3
    every = pictures.latent_traversals(model, params, images[1], num_steps=4).reshape((3, 4, -1))
    chosen = pictures.latent_traversals(model, params, images[1], 4, dimensions=[2, 0])
    np.testing.assert_allclose(chosen.reshape((2, 4, -1)), every[[2, 0]], atol=1e-6)
    for bad in ([3], [-1], [], [0.5]):
        with pytest.raises(ValueError, match="dimensions"):
            pictures.latent_traversals(model, params, images[1], 4, dimensions=bad)
    with pytest.raises(ValueError, match="num_steps"):
        pictures.latent_traversals(model, params, images[1], num_steps=1)


def test_dimensions_by_kl_sorts_the_per_dimension_kl(vae3, images):
    model, params = vae3
    kl = pictures.latent_kl(model, params, images)
    mean, log_variance = model.apply(params, jnp.asarray(images), method="encode")
    total = objectives.gaussian_kl_to_standard_normal(mean, log_variance)
    np.testing.assert_allclose(kl.sum(), float(jnp.mean(total)), rtol=1e-5)
    order = pictures.dimensions_by_kl(model, params, images)
    assert sorted(order.tolist()) == [0, 1, 2]
    assert np.all(np.diff(kl[order]) <= 0)


def test_interpolation_runs_from_mean_a_to_mean_b(vae3, images):
    model, params = vae3
    line = pictures.interpolation(model, params, images[0], images[1], num_steps=10)
    assert line.shape == (10, *SHAPE)

    means = _mean(model, params, images[:2])  # one batch of both, as the picture encodes them
    codes = np.asarray(pictures.interpolation_latents(jnp.asarray(means[0]), means[1], 10))
    np.testing.assert_array_equal(codes[0], means[0])
    np.testing.assert_array_equal(codes[-1], means[1])
    np.testing.assert_allclose(codes[4], means[0] + 4 / 9 * (means[1] - means[0]), atol=1e-6)
    by_hand = _decode(model, params, codes)
    np.testing.assert_array_equal(line[[0, -1]], by_hand[[0, -1]])  # the same codes exactly
    np.testing.assert_allclose(line, by_hand, atol=1e-6)
    # The ends, against each image encoded and decoded alone.
    for end, image in ((line[0], images[0]), (line[-1], images[1])):
        alone = _decode(model, params, _mean(model, params, image[None]))[0]
        np.testing.assert_allclose(end, alone, atol=1e-6)


def test_interpolation_of_batches_matches_single_pairs(vae3, images):
    model, params = vae3
    batch = pictures.interpolation(model, params, images[:2], images[2:], num_steps=3)
    assert batch.shape == (2, 3, *SHAPE)
    single = pictures.interpolation(model, params, images[1], images[3], num_steps=3)
    np.testing.assert_allclose(batch[1], single, atol=1e-6)
    with pytest.raises(ValueError, match="shape"):
        pictures.interpolation(model, params, images[0], images[:2])


def test_manifold_codes_are_normal_quantiles_z2_decreasing_downwards():
    side = 7
    codes = np.asarray(pictures.manifold_latents(side)).reshape((side, side, 2))
    quantiles = [statistics.NormalDist().inv_cdf((i + 0.5) / side) for i in range(side)]
    for row in range(side):
        np.testing.assert_allclose(codes[row, :, 0], quantiles, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(codes[row, :, 1], quantiles[side - 1 - row], rtol=1e-5)
    np.testing.assert_array_equal(codes[::-1, ::-1], -codes)  # exactly antisymmetric
    assert codes[3, 3, 0] == codes[3, 3, 1] == 0.0


def test_manifold_grid_decodes_the_codes_in_one_batch(vae2):
    model, params = vae2
    grid = pictures.manifold_grid(model, params, side=20)
    assert grid.shape == (400, *SHAPE)
    np.testing.assert_allclose(
        grid, _decode(model, params, pictures.manifold_latents(20)), atol=1e-6
    )
    # Top-left corner: z1 lowest, z2 highest.
    lowest = statistics.NormalDist().inv_cdf(0.5 / 20)
    corner = _decode(model, params, np.array([[lowest, -lowest]], np.float32))[0]
    np.testing.assert_allclose(grid[0], corner, atol=1e-5)
    chunked = pictures.manifold_grid(model, params, side=20, chunk_size=64)  # 7 chunks, padded
    np.testing.assert_allclose(chunked, grid, atol=1e-6)


def test_manifold_grid_needs_two_latents(vae3):
    model, params = vae3
    with pytest.raises(ValueError, match="3 latents"):
        pictures.manifold_grid(model, params)


def _records(count, split="test", autoencoder=False, far_first=True):
    records = []
    for epoch in range(1, count + 1):
        bound = -90.0 - 200.0 / epoch - (400.0 if far_first and epoch == 1 else 0.0)
        record = {"epoch": epoch, "step": 390 * epoch, "train_seconds": 1.9}
        if autoencoder:
            record.update({"train_recon": -bound, f"{split}_recon": -bound + 2, "train_loss": 1})
        else:
            record.update({"train_elbo": bound, f"{split}_elbo": bound - 2, "train_kl": 20.0})
        records.append(record)
    return records


def _colour_pixels(image, colour):
    return int(np.all(image == np.array(colour, np.uint8), axis=-1).sum())


@pytest.mark.parametrize(
    "records, split",
    [
        (_records(1), "test"),
        (_records(12), "test"),
        (_records(5000), "test"),
        (_records(30, "valid", autoencoder=True), "valid"),
    ],
    ids=["one", "twelve", "five-thousand", "autoencoder-valid"],
)
def test_training_curves_draw_both_lines(records, split):
    chart = curves.training_curves(records, split)
    assert chart.shape == (400, 640, 3) and chart.dtype == np.uint8
    minimum = 30 if len(records) == 1 else 300  # a dot, or a line across the plot
    assert _colour_pixels(chart, TRAIN_COLOUR) > minimum
    assert _colour_pixels(chart, EVAL_COLOUR) > minimum
    assert (chart == 255).all(axis=-1).mean() > 0.5  # mostly white background


def test_training_curves_size_and_missing_series():
    records = [{k: v for k, v in r.items() if k != "test_elbo"} for r in _records(8)]
    chart = curves.training_curves(records, "test", size=(300, 200))
    assert chart.shape == (200, 300, 3)
    assert _colour_pixels(chart, TRAIN_COLOUR) > 0
    assert _colour_pixels(chart, EVAL_COLOUR) == 0
    records[3]["train_elbo"] = math.nan  # a gap, not a crash
    curves.training_curves(records)
    # Evaluated every 10th epoch: joined up, unless the other epochs say NaN (dots only).
    sparse = [
        {k: v for k, v in r.items() if k != "test_elbo" or r["epoch"] % 10 == 0}
        for r in _records(200)
    ]
    broken = [{**r, "test_elbo": r.get("test_elbo", math.nan)} for r in sparse]
    joined_pixels = _colour_pixels(curves.training_curves(sparse), EVAL_COLOUR)
    assert joined_pixels > _colour_pixels(curves.training_curves(broken), EVAL_COLOUR) + 100
    # The ELBO when there is one: the reconstruction loss beside it changes nothing.
    with_recon = [{**r, "train_recon": 50.0} for r in _records(8)]
    np.testing.assert_array_equal(
        curves.training_curves(with_recon), curves.training_curves(_records(8))
    )
    with pytest.raises(ValueError, match="train_elbo"):
        curves.training_curves([{"epoch": 1, "train_loss": 3.0}])
    with pytest.raises(ValueError, match="no records"):
        curves.training_curves([])


@pytest.mark.parametrize("sign", [1.0, -1.0], ids=["elbo-rising", "loss-falling"])
def test_curve_y_range_leaves_out_a_far_first_epoch(sign):
    values = sign * np.array([-900.0, -150, -120, -110, -105, -102, -100, -99, -98.5, -98])
    low, high = curves.curve_y_range(values, values[-1:])
    kept = values[1:]
    assert low < kept.min() and high > kept.max()  # all but the first are inside
    assert not low < values[0] < high
    np.testing.assert_allclose(high - low, 1.16 * (kept.max() - kept.min()))  # 8% margins
    low, high = curves.curve_y_range(np.array([-95.0]))  # one value: a small span around it
    assert low < -95.0 < high


def test_save_functions_write_pngs_of_the_grid_size(vae2, vae3, images, tmp_path):
    model, params = vae3
    pictures.save_traversals(str(tmp_path / "traversals.png"), model, params, images[0])
    pictures.save_interpolation(
        str(tmp_path / "interpolation.png"), model, params, images[0], images[1], num_steps=10
    )
    pictures.save_interpolation(
        str(tmp_path / "pairs.png"), model, params, images[:2], images[2:], num_steps=4
    )
    pictures.save_manifold(str(tmp_path / "manifold.png"), *vae2, side=5)
    curves.save_training_curves(str(tmp_path / "curves.png"), _records(20), "test")
    expected = {
        "traversals.png": ((9 * 9 + 1, 3 * 9 + 1), "L"),
        "interpolation.png": ((12 * 9 + 1, 9 + 1), "L"),
        "pairs.png": ((6 * 9 + 1, 2 * 9 + 1), "L"),
        "manifold.png": ((5 * 9 + 1, 5 * 9 + 1), "L"),
        "curves.png": ((640, 400), "RGB"),
    }
    for name, (size, mode) in expected.items():
        with Image.open(tmp_path / name) as png:
            assert (png.size, png.mode) == (size, mode), name
    # The interpolation row starts with image_a itself and ends with image_b.
    row = np.asarray(Image.open(tmp_path / "interpolation.png"))
    pixels = np.rint(images[:2, ..., 0] * 255).astype(np.uint8)
    np.testing.assert_array_equal(row[1:9, 1:9], pixels[0])
    np.testing.assert_array_equal(row[1:9, 1 + 11 * 9 : 9 + 11 * 9], pixels[1])
