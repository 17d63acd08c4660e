"""Data under shift: corrupted copies of a test split (``<dataset>-c``) and an out-of-distribution image set.

Corruptions follow Hendrycks & Dietterich, "Benchmarking neural network robustness to common corruptions and
perturbations", ICLR 2019 (CIFAR-10-C) and Mu & Gilmer, "MNIST-C: A robustness benchmark for computer vision",
2019: each of :data:`CORRUPTIONS` at severities 1-5, applied to the test images in pixel space (intensities in
``[0, 1]``, clipped after the corruption), then normalised as the data set's images. ``fashion-mnist-c`` is
``corrupted(bundle, name, severity, seed)`` of the Fashion-MNIST test split: deterministic for a seed (noise and
rotation directions come from a generator seeded by ``(seed, corruption, severity)``), built on the fly, never
stored.

- ``gaussian_noise``: ``+ N(0, sigma^2)`` per pixel, sigma 0.08, 0.12, 0.18, 0.26, 0.38 (CIFAR-10-C's).
- ``gaussian_blur``: a Gaussian kernel of sigma 0.4, 0.6, 0.8, 1.0, 1.5 pixels.
- ``rotation``: by 10, 20, 30, 45, 60 degrees, clockwise or not at random per image (zero fill).
- ``contrast``: ``(p - m) * c + m`` with ``m`` the image's mean, c 0.6, 0.45, 0.3, 0.2, 0.1.
- ``pixelate``: down to a fraction 0.8, 0.65, 0.5, 0.4, 0.3 of the side by area averaging and back by nearest.

Out of distribution (:func:`out_of_distribution`): scikit-learn's 1797 handwritten digits (8 x 8, 17 grey levels),
resized bilinearly to the data set's image size and channels and normalised as its images, for every data set but
the digits themselves, whose out-of-distribution set is every fifth image of the Fashion-MNIST test split (2,000,
resized to 8 x 8) when its files are installed. :func:`auroc` scores how well a score (predictive entropy) tells
the two apart.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

from bayesnas.data import DataBundle, Pixels, Split

SEVERITIES = (1, 2, 3, 4, 5)

_LEVELS: dict[str, tuple[float, ...]] = {
    "gaussian_noise": (0.08, 0.12, 0.18, 0.26, 0.38),
    "gaussian_blur": (0.4, 0.6, 0.8, 1.0, 1.5),
    "rotation": (10.0, 20.0, 30.0, 45.0, 60.0),
    "contrast": (0.6, 0.45, 0.3, 0.2, 0.1),
    "pixelate": (0.8, 0.65, 0.5, 0.4, 0.3),
}


def _noise(unit: torch.Tensor, sigma: float, generator: torch.Generator) -> torch.Tensor:
    return unit + sigma * torch.randn(unit.shape, generator=generator).to(unit.device, unit.dtype)


def _blur(unit: torch.Tensor, sigma: float, generator: torch.Generator) -> torch.Tensor:
    radius = max(1, math.ceil(3 * sigma))
    offsets = torch.arange(-radius, radius + 1, dtype=unit.dtype, device=unit.device)
    kernel = torch.exp(-offsets ** 2 / (2 * sigma ** 2))
    kernel = kernel / kernel.sum()
    channels = unit.shape[1]
    rows = kernel.view(1, 1, -1, 1).expand(channels, 1, -1, 1)
    padded = F.pad(unit, (radius, radius, radius, radius), mode="replicate")
    blurred = F.conv2d(padded, rows, groups=channels)
    return F.conv2d(blurred, rows.transpose(2, 3), groups=channels)


def _rotation(unit: torch.Tensor, degrees: float, generator: torch.Generator) -> torch.Tensor:
    sign = torch.randint(0, 2, (len(unit),), generator=generator).to(unit.device, unit.dtype) * 2 - 1
    angle = sign * math.radians(degrees)
    cos, sin = torch.cos(angle), torch.sin(angle)
    zero = torch.zeros_like(cos)
    theta = torch.stack([torch.stack([cos, -sin, zero], 1), torch.stack([sin, cos, zero], 1)], 1)
    grid = F.affine_grid(theta, list(unit.shape), align_corners=False)
    return F.grid_sample(unit, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def _contrast(unit: torch.Tensor, factor: float, generator: torch.Generator) -> torch.Tensor:
    mean = unit.mean((1, 2, 3), keepdim=True)
    return (unit - mean) * factor + mean


def _pixelate(unit: torch.Tensor, fraction: float, generator: torch.Generator) -> torch.Tensor:
    size = unit.shape[-2:]
    small = [max(1, round(s * fraction)) for s in size]
    return F.interpolate(F.adaptive_avg_pool2d(unit, small), size=list(size), mode="nearest")


_CORRUPT: dict[str, Callable[[torch.Tensor, float, torch.Generator], torch.Tensor]] = {
    "gaussian_noise": _noise, "gaussian_blur": _blur, "rotation": _rotation, "contrast": _contrast,
    "pixelate": _pixelate,
}
CORRUPTIONS: tuple[str, ...] = tuple(_CORRUPT)


def _pixels(bundle: DataBundle) -> Pixels:
    if bundle.pixels is None:
        raise ValueError(f"{bundle.name}: the bundle does not say how its images map to pixels")
    return bundle.pixels


def corrupted(bundle: DataBundle, corruption: str, severity: int, seed: int = 0, split: Split | None = None) -> Split:
    """``split`` (default: the bundle's test split) under ``corruption`` at ``severity`` (1-5), the labels kept;
    deterministic in ``seed``."""
    if corruption not in _CORRUPT:
        raise ValueError(f"unknown corruption {corruption!r}; choose one of: {', '.join(CORRUPTIONS)}")
    if severity not in SEVERITIES:
        raise ValueError(f"severity must be one of {SEVERITIES}, got {severity!r}")
    split = split if split is not None else bundle.test
    generator = torch.Generator().manual_seed(seed * 1_000_003 + CORRUPTIONS.index(corruption) * 10 + severity)
    unit = _pixels(bundle).to_unit(split.x.float())
    unit = _CORRUPT[corruption](unit, _LEVELS[corruption][severity - 1], generator).clamp(0.0, 1.0)
    return Split(_pixels(bundle).from_unit(unit).to(split.x.dtype), split.y)


def resized_unit_images(unit: torch.Tensor, bundle: DataBundle) -> torch.Tensor:
    """``(n, c, h, w)`` intensities in ``[0, 1]`` at the bundle's image size (bilinear) and channels (grey images
    repeated, colour ones averaged), normalised as its images."""
    if unit.shape[1] != bundle.in_channels:
        unit = unit.mean(1, keepdim=True).expand(-1, bundle.in_channels, -1, -1)
    unit = F.interpolate(unit, size=(bundle.image_size, bundle.image_size), mode="bilinear", align_corners=False,
                         antialias=unit.shape[-1] > bundle.image_size)
    return _pixels(bundle).from_unit(unit.clamp(0.0, 1.0)).contiguous()


def out_of_distribution(bundle: DataBundle, data_dir: str | None = None) -> tuple[torch.Tensor, str] | None:
    """Images of another kind, normalised as the bundle's, and their name: the digits for every data set but the
    digits, every fifth Fashion-MNIST test image for the digits (None where its files are not installed)."""
    from bayesnas.data import DatasetNotFoundError, load_dataset

    if bundle.name != "digits":
        digits = load_dataset("digits")
        unit = _pixels(digits).to_unit(torch.cat([digits.train.x, digits.val.x, digits.test.x]))
        return resized_unit_images(unit, bundle).to(bundle.test.x.device), "digits (scikit-learn, resized)"
    try:
        fashion = load_dataset("fashion-mnist", data_dir=data_dir)
    except DatasetNotFoundError:
        return None
    unit = _pixels(fashion).to_unit(fashion.test.x[::5])
    return resized_unit_images(unit, bundle).to(bundle.test.x.device), "fashion-mnist test, every fifth (resized)"


def auroc(negatives: torch.Tensor, positives: torch.Tensor) -> float:
    """Area under the ROC curve of a score that should be higher on ``positives``: the probability that a random
    positive scores above a random negative, ties counting one half (the Mann-Whitney U statistic over n m)."""
    scores = torch.cat([negatives, positives]).double().cpu()
    _, inverse, counts = torch.unique(scores, return_inverse=True, return_counts=True)
    last = counts.cumsum(0).double()
    ranks = ((last - counts + 1 + last) / 2)[inverse]  # mid-ranks of ties
    n, m = len(negatives), len(positives)
    return float((ranks[n:].sum() - m * (m + 1) / 2) / (n * m))
