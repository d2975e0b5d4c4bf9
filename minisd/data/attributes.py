"""Attributes measured on each image, and the fixed bins that turn them into caption words.

Digits (in the spirit of Morpho-MNIST, Castro et al. 2019) get a stroke thickness, a slant and a width;
clothing gets a brightness and a size. Every measure is a vectorised torch function of the pixels, so
the SAME function that writes "thick" into a training caption later checks whether a generated
"thick 7" is thick.

Each measure has three bins: 0 low ("thin", "left-slanted", "narrow", "dark", "small"), 1 middle,
2 high ("thick", "right-slanted", "wide", "light", "large"). The thresholds are per class, the
terciles of the measure among the train images of that class: a "wide 1" is a 1 wider than most 1s
(with one threshold for all classes every 1 would be narrow and every 0 wide, and the words would only
repeat the class). Slant alone has fixed angles, the same for every class (see SLANT_UPRIGHT_RADIANS).

    measures = measure_digit(images)            # images (N, 1, 28, 28) in [0, 1]
    bins = attribute_bins(measures, labels, DIGIT_THRESHOLDS)   # {"thickness": (N,) int64 in {0, 1, 2}, ...}
    bins = digit_attribute_bins(images, labels)                 # the same, in one call

Measures are in pixels of a 28x28 image, as the thresholds are: score a generated image of another
size after resizing it to 28x28.
"""

from __future__ import annotations

import torch

from minisd.errors import ConfigError

DIGIT_ATTRIBUTES = ("thickness", "slant", "width")
CLOTHING_ATTRIBUTES = ("brightness", "size")
NUM_BINS = 3  # low, middle, high

# Digit ink: intensity above a haze of 0.1, so a sampler's faint background noise adds no mass.
_DIGIT_HAZE = 0.1
# Digit outline: a steep ramp from 0.25 to 0.75, about Morpho-MNIST's binarisation at 0.5, so the
# outline's length does not depend on how bright the stroke is.
_OUTLINE_LOW, _OUTLINE_HIGH = 0.25, 0.75
# Clothing ink: anything above 0.05 (13/255). Fashion-MNIST's background is exactly 0, and its darkest
# garments sit around 0.05-0.1, so a higher cut would lose their outline and call them small.
_CLOTHING_INK = 0.05

# Slant bins are fixed angles, not terciles: most MNIST digits lean right (median +0.10 rad), so a
# class's lowest third would include digits leaning right and still be called "left-slanted".
# Beyond 0.1 rad (6 degrees) either way a digit is slanted; within it, upright. On the train split
# that gives 22% left, 28% upright, 50% right.
SLANT_UPRIGHT_RADIANS = 0.1

# The other measures' bins are the terciles per class (rows: classes 0-9; pairs: the low/middle and
# middle/high thresholds), from tercile_thresholds() on the train split. tests/test_captioned_data.py
# recomputes them and checks they agree to 2 decimals.
DIGIT_THRESHOLDS: dict[str, tuple[tuple[float, float], ...]] = {
    "thickness": (
        (2.329, 2.906), (2.106, 2.572), (2.233, 2.758), (2.113, 2.549), (2.074, 2.520),
        (1.983, 2.373), (2.148, 2.679), (2.118, 2.560), (2.126, 2.609), (2.042, 2.463),
    ),
    "slant": ((-SLANT_UPRIGHT_RADIANS, SLANT_UPRIGHT_RADIANS),) * 10,
    "width": (
        (15.029, 17.859), (2.930, 3.750), (12.886, 15.001), (11.009, 13.090), (11.907, 14.471),
        (11.681, 13.572), (10.769, 13.432), (10.692, 13.047), (9.899, 11.868), (9.917, 11.972),
    ),
}
CLOTHING_THRESHOLDS: dict[str, tuple[tuple[float, float], ...]] = {
    "brightness": (
        (0.512, 0.717), (0.620, 0.741), (0.519, 0.735), (0.588, 0.751), (0.648, 0.764),
        (0.446, 0.547), (0.453, 0.681), (0.503, 0.602), (0.615, 0.720), (0.645, 0.728),
    ),
    "size": (
        (0.529, 0.575), (0.311, 0.339), (0.592, 0.654), (0.362, 0.436), (0.552, 0.611),
        (0.222, 0.300), (0.570, 0.635), (0.281, 0.320), (0.497, 0.592), (0.408, 0.476),
    ),
}


def _check_images(images: torch.Tensor) -> torch.Tensor:
    if images.dim() != 4 or images.shape[1] != 1:
        raise ConfigError(f"attributes are measured on grey images (N, 1, H, W), got shape {tuple(images.shape)}")
    return images[:, 0].float()


def measure_digit(images: torch.Tensor) -> dict[str, torch.Tensor]:
    """Stroke thickness, slant and width of each digit, as (N,) float32 tensors.

    ``images``: (N, 1, H, W) in [0, 1], white ink on black (MNIST). The ink is the intensity above a
    haze of 0.1; the outline is the image ramped from 0.25 to 0.75 (about a 0.5 threshold). With x to
    the right and y up, weighted by the ink:

    - thickness (pixels) = 2 * ink / perimeter. A stroke of length L and width w holds L w of ink and
      has perimeter 2 (L + w), about 2 L, so the ratio is its width (Morpho-MNIST divides the area by a
      skeleton's length instead; a skeleton is a loop over pixels, this is a few sums). The perimeter
      is the total variation sum |grad outline| (central differences), by the co-area formula the
      length of the outline, which stays close to the true length for diagonal strokes where counting
      pixel edges would overshoot by up to sqrt(2). Ink is measured without a threshold, so half a
      pixel more stroke measures half a pixel thicker.
    - slant (radians) = atan(cov(x, y) / var(y)), Morpho-MNIST's shear: how far x moves right per pixel
      up; positive when the top leans right (a slanted, italic "/" digit), negative when it leans left.
    - width (pixels) = sqrt(12 var(x - shear y)): the horizontal spread left once the slant is taken
      out, scaled so a uniform band of width W measures W. Second moments, unlike a bounding box,
      ignore a stray pixel.

    An image with no ink measures 0 for all three.
    """
    grey = _check_images(images)
    ink = ((grey - _DIGIT_HAZE) / (1 - _DIGIT_HAZE)).clamp_(0, 1)
    area = ink.sum((1, 2))

    outline = ((grey - _OUTLINE_LOW) / (_OUTLINE_HIGH - _OUTLINE_LOW)).clamp_(0, 1)
    padded = torch.nn.functional.pad(outline, (1, 1, 1, 1))
    grad_x = (padded[:, 1:-1, 2:] - padded[:, 1:-1, :-2]) / 2
    grad_y = (padded[:, 2:, 1:-1] - padded[:, :-2, 1:-1]) / 2
    perimeter = torch.hypot(grad_x, grad_y).sum((1, 2))
    thickness = torch.where(perimeter > 0, 2 * area / perimeter.clamp_min(1e-6), torch.zeros_like(area))

    # Moments from the row and column sums (and one matrix product for x y): the same numbers as
    # weighting every pixel, at a fraction of the cost on 60,000 images.
    xs = torch.arange(grey.shape[2], dtype=torch.float32)
    ys = -torch.arange(grey.shape[1], dtype=torch.float32)  # y up: a positive slant leans right, as read
    column_ink, row_ink = ink.sum(1), ink.sum(2)  # (N, W), (N, H)
    mass = area.clamp_min(1e-6)
    mean_x, mean_y = column_ink @ xs / mass, row_ink @ ys / mass
    var_x = column_ink @ xs.square() / mass - mean_x.square()
    var_y = row_ink @ ys.square() / mass - mean_y.square()
    cov_xy = (ink @ xs) @ ys / mass - mean_x * mean_y
    shear = cov_xy / var_y.clamp_min(1e-6)
    slant = torch.atan(shear)
    # var(x - shear y) = var_x - 2 shear cov + shear^2 var_y = var_x - cov^2 / var_y
    width = torch.sqrt(12 * (var_x - shear * cov_xy).clamp_min(0))
    has_ink = area > 0
    return {name: torch.where(has_ink, value, torch.zeros_like(value))
            for name, value in (("thickness", thickness), ("slant", slant), ("width", width))}


def measure_clothing(images: torch.Tensor) -> dict[str, torch.Tensor]:
    """Brightness and size of each garment, as (N,) float32 tensors.

    ``images``: (N, 1, H, W) in [0, 1] (Fashion-MNIST: the garment light on a black background). The
    garment is every pixel above 0.05. brightness = its mean intensity (0 when there is none); size = the
    fraction of the image it covers.
    """
    grey = _check_images(images)
    garment = (grey > _CLOTHING_INK).float()
    area = garment.sum((1, 2))
    brightness = (grey * garment).sum((1, 2)) / area.clamp_min(1)
    size = area / (grey.shape[1] * grey.shape[2])
    return {"brightness": brightness, "size": size}


def tercile_thresholds(
    measures: dict[str, torch.Tensor], labels: torch.Tensor, num_classes: int = 10
) -> dict[str, tuple[tuple[float, float], ...]]:
    """Per class, the 1/3 and 2/3 quantiles of each measure: ``{name: ((low, high) for each class)}``.

    How DIGIT_THRESHOLDS and CLOTHING_THRESHOLDS were made, from the train split (kept to 3 decimals).
    """
    quantiles = torch.tensor([1 / 3, 2 / 3])
    thresholds = {}
    for name, values in measures.items():
        per_class = []
        for label in range(num_classes):
            low, high = torch.quantile(values[labels == label].double(), quantiles.double()).tolist()
            per_class.append((low, high))
        thresholds[name] = tuple(per_class)
    return thresholds


def attribute_bins(
    measures: dict[str, torch.Tensor],
    labels: torch.Tensor,
    thresholds: dict[str, tuple[tuple[float, float], ...]],
) -> dict[str, torch.Tensor]:
    """Each measure's bin, (N,) int64 in {0, 1, 2}: below the class's low threshold, between, above the high one.

    ``labels`` (N,) int64 picks each image's row of ``thresholds``; to score a generated image, pass
    the class its prompt asked for.
    """
    bins = {}
    for name, values in measures.items():
        table = torch.tensor(thresholds[name], dtype=values.dtype)  # (classes, 2)
        low, high = table[labels].unbind(-1)
        bins[name] = (values >= low).long() + (values >= high).long()
    return bins


def digit_attribute_bins(images: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
    """thickness, slant and width bins (N,) int64 of digits ``images`` (N, 1, 28, 28) of classes ``labels`` (N,)."""
    return attribute_bins(measure_digit(images), labels, DIGIT_THRESHOLDS)


def clothing_attribute_bins(images: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
    """brightness and size bins (N,) int64 of garments ``images`` (N, 1, 28, 28) of classes ``labels`` (N,)."""
    return attribute_bins(measure_clothing(images), labels, CLOTHING_THRESHOLDS)
