"""The training-curves chart: the per-epoch ELBO (or reconstruction loss) of `metrics.jsonl`.

Kept apart from `pictures` because it is a different kind of picture: it reads the host-side
records of a run, not a model, and draws a line chart with PIL on the host, with no JAX at all.
`training_curves` returns the chart as an array; `save_training_curves` writes it as a PNG
through `drawing.save_png` (atomically). Read the records with
`workdir.MetricsLog(path).read()`.

The chart is drawn in parts, each reading one `_Layout` computed from the data and the size
first: the plot area (grid and series, on its own image so that lines are clipped at its edges),
then the frame, ticks, axis labels and title, then the legend, in the corner that hides the
fewest points.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from vae_jax import drawing

__all__ = ["curve_y_range", "save_training_curves", "training_curves"]

_TRAIN_COLOUR = drawing.PALETTE[0]  # blue
_EVAL_COLOUR = drawing.PALETTE[1]  # orange
_AXIS_COLOUR = (0, 0, 0)
_GRID_COLOUR = (225, 225, 225)
_TEXT_COLOUR = (30, 30, 30)
_OUTLIER_FENCE = 3.0  # interquartile ranges beyond the quartiles
_Y_MARGIN = 0.08  # of the y span, above and below
_CLAMP = 1000  # plot heights: how far off the plot a clipped point is drawn


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, ImportError, OSError):  # Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def _number(value) -> float | None:
    """A record's value as a float (NaN for NaN or infinite), or None for anything else."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else math.nan


def _curve_series(records: list[dict], split: str) -> tuple[str, list[tuple]]:
    """The quantity to plot ('elbo', else 'recon') and its series (name, (n,) values, (n,)
    present): a value not a finite number is NaN; one missing (or not a number) is not
    `present`."""
    for quantity in ("elbo", "recon"):
        series = []
        for name in ("train", split):
            numbers = [_number(r.get(f"{name}_{quantity}")) for r in records]
            values = np.array(numbers, dtype=float)  # None: NaN
            present = np.array([number is not None for number in numbers])
            if np.isfinite(values).any():
                series.append((name, values, present))
        if series:
            return quantity, series
    raise ValueError(
        f"the records have no finite train_elbo, {split}_elbo, train_recon or {split}_recon to plot"
    )


def _epochs(records: list[dict]) -> np.ndarray:
    epochs = np.array([_number(r.get("epoch")) for r in records], dtype=float)  # None: NaN
    return np.where(np.isfinite(epochs), epochs, np.arange(1, len(records) + 1))


def curve_y_range(values: np.ndarray, keep: np.ndarray | None = None) -> tuple[float, float]:
    """The y range of the training curves: the data's, without its outliers, plus a margin.

    A value more than 3 interquartile ranges below the lower quartile or above the upper
    quartile of all the (finite) `values` is an outlier, typically the first epoch or two, far
    below (ELBO) or above (reconstruction loss) the rest: it is left off the plot, and its line
    runs off the edge, so that it does not squash the rest of the curves into a few pixels. The
    `keep` values (the last epoch's) are always inside. The range is then widened by 8% of its
    span on each side, and to at least a small span around a constant series.
    """
    finite = values[np.isfinite(values)]
    lower_quartile, upper_quartile = np.percentile(finite, [25, 75])
    fence = _OUTLIER_FENCE * (upper_quartile - lower_quartile)
    inside = finite[(finite >= lower_quartile - fence) & (finite <= upper_quartile + fence)]
    low, high = float(inside.min()), float(inside.max())
    if keep is not None and np.isfinite(keep).any():
        low = min(low, float(np.nanmin(keep)))
        high = max(high, float(np.nanmax(keep)))
    span = high - low
    if span <= 1e-9 * max(1.0, abs(high)):
        span = max(abs(high) * 0.02, 1e-3)
        return low - span, high + span
    return low - _Y_MARGIN * span, high + _Y_MARGIN * span


def _nice_ticks(low: float, high: float, count: int, integer: bool = False):
    """About `count` round tick values (1, 2, 2.5 or 5 times a power of ten apart) inside
    [low, high], and their labels."""
    raw = (high - low) / max(count, 1)
    magnitude = 10.0 ** math.floor(math.log10(raw))
    multiple = next(m for m in (1.0, 2.0, 2.5, 5.0, 10.0) if m * magnitude >= raw * (1 - 1e-9))
    step = multiple * magnitude
    if integer:
        step = max(1.0, float(round(step)))
    decimals = 0 if integer else max(0, -math.floor(math.log10(step) + 1e-9))
    if multiple == 2.5 and not integer and step < 10:
        decimals += 1
    first = math.ceil(low / step - 1e-9)
    last = math.floor(high / step + 1e-9)
    ticks = [i * step for i in range(first, last + 1)]
    labels = [f"{t:.{decimals}f}" for t in ticks]
    labels = ["0" if float(label) == 0 else label for label in labels]
    return ticks, labels


def _text_size(draw: ImageDraw.ImageDraw, text: str, font) -> tuple[int, int]:
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    return right - left, bottom - top


def _text(draw: ImageDraw.ImageDraw, xy, text: str, font, anchor: str = "lt") -> None:
    """Draws `text` with its bounding box's left/middle/right ('l', 'm', 'r') and top/middle
    ('t', 'm') at `xy`. Placed by measuring, which works for bitmap fonts too (PIL's own anchors
    need FreeType)."""
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    x = xy[0] - {"l": left, "m": (left + right) / 2, "r": right}[anchor[0]]
    y = xy[1] - {"t": top, "m": (top + bottom) / 2}[anchor[1]]
    draw.text((x, y), text, fill=_TEXT_COLOUR, font=font)


@dataclasses.dataclass(frozen=True)
class _Layout:
    """Where each part of the chart goes (pixels on the canvas), its fonts and sizes, and the
    scales from data to the plot area: computed once, before anything is drawn, so that the
    plot area, the frame and the legend agree on them."""

    text_font: object
    title_font: object
    title: str
    line_height: int
    pad: int
    tick: int
    inset: int  # keeps the end points off the frame
    line_width: int
    radius: int  # of a point's mark
    swatch: int  # the legend's line sample
    left: int
    right: int
    top: int
    bottom: int
    x_low: float
    x_high: float
    y_low: float
    y_high: float
    x_ticks: list
    x_labels: list
    y_ticks: list
    y_labels: list
    y_label_image: Image.Image  # "nats per example", turned sideways

    @property
    def plot_width(self) -> int:
        return self.right - self.left

    @property
    def plot_height(self) -> int:
        return self.bottom - self.top

    def to_x(self, epoch):
        """Epochs to x pixels in the plot area."""
        span = self.plot_width - 2 * self.inset
        return self.inset + (np.asarray(epoch) - self.x_low) / (self.x_high - self.x_low) * span

    def to_y(self, value):
        """Values to y pixels in the plot area, clipped to `_CLAMP` plot heights beyond its
        edges: an outlier's line still runs off the plot, but from a coordinate of a sane size."""
        y = (self.y_high - np.asarray(value)) / (self.y_high - self.y_low) * self.plot_height
        return np.clip(y, -_CLAMP * self.plot_height, (_CLAMP + 1) * self.plot_height)


def _layout(draw: ImageDraw.ImageDraw, size: tuple[int, int], title: str, x_range, y_range):
    """The `_Layout` of a chart of `size` (width, height): the title on top; the y-axis label,
    tick labels and ticks on the left; ticks, tick labels and the x-axis label below. Text is
    measured with `draw`, the canvas's."""
    width, height = size
    (x_low, x_high), (y_low, y_high) = x_range, y_range
    scale = min(width / 640, height / 400)
    text_font = _font(max(10, round(12 * scale)))
    title_font = _font(max(12, round(15 * scale)))
    line_height = _text_size(draw, "0123456789-.Hg", text_font)[1]
    pad = max(4, round(6 * scale))
    tick = max(3, round(4 * scale))
    title_height = _text_size(draw, title, title_font)[1]
    top = pad + title_height + 2 * pad
    bottom = height - (tick + pad + line_height + pad + line_height + pad)
    y_ticks, y_labels = _nice_ticks(y_low, y_high, max(2, (bottom - top) // 50))
    label_width = max(_text_size(draw, label, text_font)[0] for label in y_labels + ["0"])
    y_label = "nats per example"  # drawn sideways, left of the tick labels
    y_label_width, _ = _text_size(draw, y_label, text_font)
    label_image = Image.new("RGB", (y_label_width + 4, line_height + 6), (255, 255, 255))
    _text(ImageDraw.Draw(label_image), (2, 3), y_label, text_font)
    label_image = label_image.rotate(90, expand=True)
    left = pad + label_image.width + pad + label_width + tick + pad // 2
    right = width - 2 * pad
    x_ticks, x_labels = _nice_ticks(x_low, x_high, max(2, (right - left) // 80), integer=True)
    return _Layout(
        text_font=text_font,
        title_font=title_font,
        title=title,
        line_height=line_height,
        pad=pad,
        tick=tick,
        inset=max(4, round(8 * scale)),
        line_width=max(1, round(2 * scale)),
        radius=max(2, round(3 * scale)),
        swatch=max(14, round(20 * scale)),
        left=left,
        right=right,
        top=top,
        bottom=bottom,
        x_low=x_low,
        x_high=x_high,
        y_low=y_low,
        y_high=y_high,
        x_ticks=x_ticks,
        x_labels=x_labels,
        y_ticks=y_ticks,
        y_labels=y_labels,
        y_label_image=label_image,
    )


def _plot_area(layout: _Layout, series, epochs: np.ndarray, colours: dict):
    """The plot area as its own image, which clips the lines at its edges: the grid, then each
    series. Returns it and the (n, 2) pixel positions of the finite points, for the legend."""
    plot_width, plot_height = layout.plot_width, layout.plot_height
    plot = Image.new("RGB", (plot_width, plot_height), (255, 255, 255))
    plot_draw = ImageDraw.Draw(plot)
    for value in layout.y_ticks:
        y = float(layout.to_y(value))
        plot_draw.line([(0, y), (plot_width, y)], fill=_GRID_COLOUR)
    for epoch in layout.x_ticks:
        x = float(layout.to_x(epoch))
        plot_draw.line([(x, 0), (x, plot_height)], fill=_GRID_COLOUR)
    radius = layout.radius
    mark_points = len(epochs) <= plot_width / 12
    pixel_points = []
    for series_name, values, present in series:
        # Epochs without the value are skipped (the line joins its neighbours); a NaN value
        # breaks the line: each run of finite values is one polyline.
        xs, ys = layout.to_x(epochs[present]), layout.to_y(values[present])
        values = values[present]
        finite = np.isfinite(values)
        pixel_points.append(np.stack([xs[finite], ys[finite]], axis=1))
        edges = np.flatnonzero(np.diff(np.concatenate([[0], finite.astype(np.int8), [0]])))
        for start, stop in zip(edges[::2], edges[1::2]):
            points = [(float(x), float(y)) for x, y in zip(xs[start:stop], ys[start:stop])]
            colour = colours[series_name]
            if len(points) > 1:
                plot_draw.line(points, fill=colour, width=layout.line_width, joint="curve")
            if mark_points or len(points) == 1:
                for x, y in points:
                    plot_draw.ellipse([x - radius, y - radius, x + radius, y + radius], fill=colour)
    return plot, np.concatenate(pixel_points)


def _frame(canvas: Image.Image, draw: ImageDraw.ImageDraw, layout: _Layout) -> None:
    """The frame round the plot area, the ticks and their labels, the axis labels and the
    title, drawn on the canvas after the plot area is pasted in."""
    left, right, top, bottom = layout.left, layout.right, layout.top, layout.bottom
    tick, pad, font = layout.tick, layout.pad, layout.text_font
    draw.rectangle([left - 1, top - 1, right, bottom], outline=_AXIS_COLOUR)
    for value, label in zip(layout.y_ticks, layout.y_labels):
        y = top + float(layout.to_y(value))
        draw.line([(left - 1 - tick, y), (left - 1, y)], fill=_AXIS_COLOUR)
        _text(draw, (left - 1 - tick - pad // 2, y), label, font, "rm")
    for epoch, label in zip(layout.x_ticks, layout.x_labels):
        x = left + float(layout.to_x(epoch))
        draw.line([(x, bottom), (x, bottom + tick)], fill=_AXIS_COLOUR)
        _text(draw, (x, bottom + tick + pad), label, font, "mt")
    x_label_top = bottom + tick + pad + layout.line_height + pad
    _text(draw, ((left + right) / 2, x_label_top), "epoch", font, "mt")
    label_image = layout.y_label_image
    canvas.paste(label_image, (pad, round((top + bottom - label_image.height) / 2)))
    _text(draw, ((left + right) / 2, pad), layout.title, layout.title_font, "mt")


def _legend(draw: ImageDraw.ImageDraw, layout: _Layout, entries, points: np.ndarray) -> None:
    """The legend: a swatch and a text per (text, colour) entry, in a box in the corner of the
    plot area that covers the fewest of the (n, 2) pixel `points` (the first such corner of
    top right, bottom right, top left, bottom left), so that it hides as little as it can."""
    pad, inset, font, line_height = layout.pad, layout.inset, layout.text_font, layout.line_height
    entry_height = line_height + pad
    box_width = pad + layout.swatch + pad + max(_text_size(draw, t, font)[0] for t, _ in entries)
    box_width += pad
    box_height = pad + len(entries) * entry_height
    corners = [
        (layout.plot_width - inset - box_width, inset),
        (layout.plot_width - inset - box_width, layout.plot_height - inset - box_height),
        (inset, inset),
        (inset, layout.plot_height - inset - box_height),
    ]

    def covered(corner):
        x, y = corner
        inside_x = (points[:, 0] >= x) & (points[:, 0] <= x + box_width)
        return int(np.sum(inside_x & (points[:, 1] >= y) & (points[:, 1] <= y + box_height)))

    box_x, box_y = min(corners, key=covered)  # the first corner among the least covered
    box_x, box_y = layout.left + box_x, layout.top + box_y
    draw.rectangle(
        [box_x, box_y, box_x + box_width, box_y + box_height],
        fill=(255, 255, 255),
        outline=(160, 160, 160),
    )
    for index, (text, colour) in enumerate(entries):
        middle = box_y + pad + index * entry_height + line_height / 2
        draw.line(
            [(box_x + pad, middle), (box_x + pad + layout.swatch, middle)],
            fill=colour,
            width=max(3, layout.line_width + 1),
        )
        _text(draw, (box_x + 2 * pad + layout.swatch, middle), text, font, "lm")


def training_curves(
    records: list[dict],
    split: str = "test",
    size: tuple[int, int] = (640, 400),
    title: str | None = None,
) -> np.ndarray:
    """A line chart of the training curves: per epoch, the training split's and `split`'s ELBO.

    Runs without an ELBO (the autoencoders) plot the reconstruction loss -log p(x|z) instead.
    Both are in nats per example. The x axis is the epoch; the y range is the data's with its
    outliers left off (see `curve_y_range`), so a first epoch far from the rest runs off the
    plot. A series missing from the records (no `split` evaluation) is left out; an epoch
    without a value is skipped, its neighbours joined (evaluation every few epochs), while a NaN
    value breaks the line. Points are marked when there are few (a single record is a dot per
    series). The legend shows each series' last finite value, in the corner of the plot that
    covers the fewest points.

    Args:
      records: the lines of `metrics.jsonl`, in order (`workdir.MetricsLog(path).read()`).
      split: the evaluation split's name in the records: 'test' or 'valid'.
      size: (width, height) in pixels, at least (200, 150).
      title: the chart's title; None for one naming the quantity.

    Returns:
      (height, width, 3) uint8 RGB.
    """
    width, height = (int(s) for s in size)
    if width < 200 or height < 150:
        raise ValueError(f"size must be at least (200, 150) pixels; got {tuple(size)}")
    if not records:
        raise ValueError("no records to plot")
    quantity, series = _curve_series(records, split)
    name = "ELBO" if quantity == "elbo" else "reconstruction loss"
    colours = {"train": _TRAIN_COLOUR, split: _EVAL_COLOUR}
    epochs = _epochs(records)
    all_values = np.concatenate([values for _, values, _ in series])
    last_values = np.array([values[np.isfinite(values)][-1] for _, values, _ in series])
    y_range = curve_y_range(all_values, last_values)
    x_low, x_high = float(epochs.min()), float(epochs.max())
    if x_high - x_low < 1:
        x_low, x_high = x_low - 1, x_high + 1

    canvas = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    title = f"{name} per epoch" if title is None else title
    layout = _layout(draw, (width, height), title, (x_low, x_high), y_range)
    plot, pixel_points = _plot_area(layout, series, epochs, colours)
    canvas.paste(plot, (layout.left, layout.top))
    _frame(canvas, draw, layout)
    short_name = "ELBO" if quantity == "elbo" else "recon"  # "<split> <quantity>  <last value>"
    entries = [
        (f"{series_name} {short_name}  {last:.2f}", colours[series_name])
        for (series_name, _, _), last in zip(series, last_values)
    ]
    _legend(draw, layout, entries, pixel_points)
    return np.asarray(canvas)


def save_training_curves(
    path: str, records: list[dict], split: str = "test", size: tuple[int, int] = (640, 400)
) -> None:
    """`training_curves` as a PNG."""
    drawing.save_png(path, training_curves(records, split, size))
