"""Image-classification data sets for the architecture-search experiments.

Every loader returns a :class:`DataBundle` of three disjoint :class:`Split` objects (train, val, test),
each holding a float32 image tensor ``x`` of shape ``(n, C, H, W)`` and an int64 label tensor ``y`` of shape
``(n,)``. All tensors are created on the CPU; ``bundle.to(device)`` moves everything at once.

How the splits are made
-----------------------
``digits``
    scikit-learn's bundled 8x8 digits (1797 images, no files needed). From all images, a stratified random
    ``test_fraction`` goes to *test*, then a stratified random ``val_fraction`` (of all images) goes to *val*;
    the rest is *train*.
``mnist``, ``fashion-mnist``, ``cifar10``, ``cifar100``
    Read from files in ``data_dir`` with torchvision's own loaders. The official test set is *test*; a
    stratified random ``val_fraction`` of the official training set is *val*, the rest *train*
    (``test_fraction`` is not used). CIFAR-100 uses the 100 fine labels.

``fraction < 1`` keeps a stratified random ``fraction`` of the training images for quick runs: on ``digits`` (and a
user's data, :mod:`bayesnas.user_data`) of the training split, after validation and test were drawn, so that both
stay whole; on the torchvision data sets of the official training set, before validation is drawn from it, their
official test set staying whole. Test figures of runs on different fractions are then measured on the same
images. All randomness comes from one ``torch.Generator`` seeded with ``seed``: the same seed gives identical
splits, a different seed different ones. Within a split, images keep the order they have in the source, so
training code should shuffle its mini-batches.

Images are normalised per channel with the mean and standard deviation of the *train* split only; val and test
use the same statistics. :meth:`DataBundle.halves` splits the train part again, stratified and from its own
seed, into a weight half and an architecture half for methods that alternate the two updates.

Files for the torchvision data sets (``DIR`` is ``data_dir``)::

    DIR/MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]   (DIR/FashionMNIST/raw/...)
    DIR/cifar-10-batches-py/{data_batch_1..5,test_batch,batches.meta}  (or DIR/cifar-10-python.tar.gz)
    DIR/cifar-100-python/{train,test,meta}                             (or DIR/cifar-100-python.tar.gz)

Without ``data_dir``, ``fashion-mnist`` is taken from Debian's ``dataset-fashion-mnist`` package when it is
installed (``$XDG_DATA_DIRS/datasets/fashion-mnist``, i.e. ``/usr/share/datasets/fashion-mnist``): its gzipped
files are unpacked once into :func:`cache_dir` and the bundle's ``source`` names both folders.

Gzipped IDX files and the official CIFAR tarballs are unpacked in place on first use. torchvision checks the
MD5 sums of the CIFAR files, so only the official files are accepted.
"""

from __future__ import annotations

import dataclasses
import gzip
import os
import pickle
import shutil
import struct
import tarfile
import tempfile
from dataclasses import dataclass
from typing import Any
from urllib.error import URLError

import numpy as np
import torch

from bayesnas.errors import BayesNASError
from bayesnas.io import cache_dir

__all__ = [
    "DATASETS",
    "DataBundle",
    "DatasetCorruptedError",
    "DatasetNotFoundError",
    "Split",
    "UnknownDatasetError",
    "load_dataset",
]

DATASETS: tuple[str, ...] = ("digits", "mnist", "fashion-mnist", "cifar10", "cifar100")


def _supply_hint(download: bool) -> str:
    return (
        "(`download=True` needs internet access)"
        if download
        else "or pass `download=True` on a machine with internet access"
    )


# Exceptions that torchvision's readers (or pickle / numpy under them) raise on unreadable files.
_READ_ERRORS: tuple[type[BaseException], ...] = (
    RuntimeError,
    OSError,
    ValueError,
    AssertionError,
    KeyError,
    IndexError,
    TypeError,
    EOFError,
    pickle.UnpicklingError,
    URLError,
)


class DatasetNotFoundError(BayesNASError, FileNotFoundError):
    """The files of a data set are not where they were looked for (the message says where and what to do)."""

    def __init__(self, message: str) -> None:
        super().__init__(_one_line(message))


class DatasetCorruptedError(BayesNASError, ValueError):
    """The files of a data set exist but cannot be read or fail torchvision's checks."""

    def __init__(self, message: str) -> None:
        super().__init__(_one_line(message))


class UnknownDatasetError(BayesNASError, ValueError):
    """The requested data set name is not one of :data:`DATASETS`."""


@dataclass(frozen=True, eq=False)
class Split:
    """Images ``x`` (float32, ``(n, C, H, W)``, normalised) and labels ``y`` (int64, ``(n,)``)."""

    x: torch.Tensor
    y: torch.Tensor

    def __post_init__(self) -> None:
        if self.x.dim() != 4 or self.y.dim() != 1 or self.x.shape[0] != self.y.shape[0]:
            raise ValueError(
                f"Split needs x of shape (n, C, H, W) and y of shape (n,), got {tuple(self.x.shape)} "
                f"and {tuple(self.y.shape)}"
            )

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def __repr__(self) -> str:
        return f"Split(n={len(self)}, x={tuple(self.x.shape)}, device={self.x.device})"

    def to(self, device: torch.device | str) -> Split:
        """The same split with both tensors on ``device`` and the images in torch's default float dtype (float32
        unless ``torch.set_default_dtype`` chose another), so that data and freshly built networks agree."""
        return Split(self.x.to(device, torch.get_default_dtype()), self.y.to(device))

    def subset(self, index: torch.Tensor) -> Split:
        """The rows selected by ``index`` (integer indices or a boolean mask), in that order."""
        index = torch.as_tensor(index).to(self.x.device)
        return Split(self.x[index], self.y[index])


@dataclass(frozen=True)
class Pixels:
    """How a bundle's images map back to pixels: ``x = (pixel - mean) / std`` per channel, pixels in ``[0, white]``
    (255 for 8-bit images, 16 for the digits)."""

    mean: tuple[float, ...]
    std: tuple[float, ...]
    white: float

    def to_unit(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised images as pixel intensities in ``[0, 1]``."""
        mean, std = (torch.tensor(v, dtype=x.dtype, device=x.device).view(1, -1, 1, 1) for v in (self.mean, self.std))
        return (x * std + mean) / self.white

    def from_unit(self, unit: torch.Tensor) -> torch.Tensor:
        """Pixel intensities in ``[0, 1]`` normalised as the bundle's images."""
        mean, std = (torch.tensor(v, dtype=unit.dtype, device=unit.device).view(1, -1, 1, 1)
                     for v in (self.mean, self.std))
        return (unit * self.white - mean) / std


def _pixels(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, white: float | None = None) -> Pixels:
    white = white if white is not None else 255.0 if x.dtype == torch.uint8 else max(float(x.max()), 1.0)
    return Pixels(tuple(mean.tolist()), tuple(std.tolist()), white)


@dataclass(frozen=True, eq=False)
class DataBundle:
    """A data set split into train / val / test, with what a model needs to know about it."""

    name: str
    train: Split
    val: Split
    test: Split
    num_classes: int
    in_channels: int
    image_size: int
    source: str
    fingerprint: str | None = None
    """SHA-256 (16 hex digits) of a user's data set's content (:mod:`bayesnas.user_data`); None for named ones."""
    classes: tuple[str, ...] = ()
    """Class names of a user's data set (its class folders), label order."""
    pixels: Pixels | None = None
    """The images' normalisation (:mod:`bayesnas.shift` corrupts images in pixel space)."""

    def halves(self, seed: int) -> tuple[Split, Split]:
        """Split the training part into a weight split and an architecture split of (nearly) equal size.

        The split is stratified by class and deterministic in ``seed``; the weight split gets the extra image
        when the training part has odd size. Returns ``(weight_split, architecture_split)``.
        """
        gen = torch.Generator().manual_seed(int(seed))
        arch_idx, weight_idx = _stratified_take(self.train.y.cpu(), len(self.train) // 2, gen)
        return self.train.subset(weight_idx), self.train.subset(arch_idx)

    def to(self, device: torch.device | str) -> DataBundle:
        """The same bundle with every split on ``device``."""
        return dataclasses.replace(
            self, train=self.train.to(device), val=self.val.to(device), test=self.test.to(device)
        )


def dataset_key(name: str | os.PathLike[str]) -> str:
    """The name a bundle of ``name`` carries: a known data set's lower-case name (``Fashion_MNIST`` ->
    ``fashion-mnist``), a user's folder or ``.npz`` file's absolute path, else ``name`` as given."""
    from bayesnas.user_data import is_user_data

    key = str(name).strip().lower().replace("_", "-")
    if key in DATASETS:
        return key
    return os.path.abspath(name) if is_user_data(name) else os.fspath(name)


def load_dataset(
    name: str,
    *,
    data_dir: str | os.PathLike[str] | None = None,
    download: bool = False,
    seed: int = 0,
    val_fraction: float = 0.1,
    test_fraction: float = 0.2,
    fraction: float = 1.0,
) -> DataBundle:
    """Load data set ``name`` (one of :data:`DATASETS`) and split it as described in the module docstring.

    ``data_dir`` is required for all data sets except ``digits``; ``download=True`` lets torchvision fetch
    missing files (needs internet access). Raises :class:`UnknownDatasetError` for an unknown name,
    :class:`DatasetNotFoundError` when files are missing, :class:`DatasetCorruptedError` when they are
    unreadable and ``ValueError`` for invalid fractions.
    """
    from bayesnas.user_data import is_user_data

    key = dataset_key(name)
    if key not in DATASETS and not is_user_data(key):
        raise UnknownDatasetError(f"unknown data set {name!r}; choose one of: {', '.join(DATASETS)}, or a folder of "
                                  "images (ImageFolder layout) or an .npz file of your own")
    _check_fraction("val_fraction", val_fraction, upper_inclusive=False)
    _check_fraction("fraction", fraction, upper_inclusive=True)
    if key not in DATASETS:
        return _load_user_data(key, seed, val_fraction, test_fraction, fraction)
    if key == "digits":
        _check_fraction("test_fraction", test_fraction, upper_inclusive=False)
        if val_fraction + test_fraction >= 1.0:
            raise ValueError(
                f"val_fraction + test_fraction must be < 1 so that training images remain, "
                f"got {val_fraction} + {test_fraction}"
            )
    gen = torch.Generator().manual_seed(int(seed))

    if key == "digits":
        x_all, y_all, num_classes, source = _read_digits()
        n = len(y_all)
        test_idx, rest = _stratified_take(y_all, _count(test_fraction, n, key, "test"), gen)
        val_pos, train_pos = _stratified_take(y_all[rest], _count(val_fraction, n, key, "val"), gen)
        train_idx, val_idx = rest[train_pos], rest[val_pos]
        if fraction < 1.0:  # after the splits: validation and test stay whole
            train_idx = train_idx[_take_fraction(y_all[train_idx], fraction, gen, key, "training images")]
        if len(train_idx) == 0:
            raise ValueError(f"{key}: no training images left with these fractions")
        parts = [(x_all[i], y_all[i]) for i in (train_idx, val_idx, test_idx)]
    else:
        x_tr, y_tr, x_te, y_te, num_classes, source = _read_torchvision(key, data_dir, download)
        if fraction < 1.0:
            keep = _take_fraction(y_tr, fraction, gen, key, "training images")
            x_tr, y_tr = x_tr[keep], y_tr[keep]
        val_idx, train_idx = _stratified_take(y_tr, _count(val_fraction, len(y_tr), key, "val"), gen)
        if len(train_idx) == 0:
            raise ValueError(f"{key}: no training images left with val_fraction={val_fraction}")
        parts = [(x_tr[train_idx], y_tr[train_idx]), (x_tr[val_idx], y_tr[val_idx]), (x_te, y_te)]

    mean, std = _channel_stats(parts[0][0])
    train, val, test = (Split(_normalise(x, mean, std), y.to(torch.int64).contiguous()) for x, y in parts)
    return DataBundle(
        name=key,
        train=train,
        val=val,
        test=test,
        num_classes=num_classes,
        in_channels=int(train.x.shape[1]),
        image_size=int(train.x.shape[2]),
        source=source,
        pixels=_pixels(parts[0][0], mean, std, 16.0 if key == "digits" else None),
    )


def _load_user_data(path: str, seed: int, val_fraction: float, test_fraction: float, fraction: float) -> DataBundle:
    """A user's folder or ``.npz`` file (:mod:`bayesnas.user_data`), split: the splits it does not bring are drawn
    stratified from its training images (test first, ``test_fraction`` of them, then ``val_fraction``), and only
    then does ``fraction`` thin the training images, so that val and test stay whole."""
    from bayesnas.user_data import BadDataError, read_user_data

    images = read_user_data(path)
    gen = torch.Generator().manual_seed(int(seed))
    given = {split: (torch.from_numpy(x), torch.from_numpy(y)) for split, (x, y) in images.splits.items()}
    x_tr, y_tr = given.pop("train")
    n = len(y_tr)
    try:
        for split, share in (("test", test_fraction), ("val", val_fraction)):
            if split not in given:
                taken, rest = _stratified_take(y_tr, _count(share, n, path, split), gen)
                given[split] = (x_tr[taken], y_tr[taken])
                x_tr, y_tr = x_tr[rest], y_tr[rest]
        if fraction < 1.0:
            keep = _take_fraction(y_tr, fraction, gen, path, "training images")
            x_tr, y_tr = x_tr[keep], y_tr[keep]
    except ValueError as err:
        raise BadDataError(f"too few images to split: {err}") from None
    if len(y_tr) == 0 or len(torch.unique(y_tr)) < len(images.classes):
        raise BadDataError(f"{path}: too few images to split: after val and test, some class has no training image "
                           f"({len(y_tr)} training images, {len(images.classes)} classes)")
    mean, std = _channel_stats(x_tr)
    train, val, test = (Split(_normalise(x, mean, std), y.contiguous())
                        for x, y in ((x_tr, y_tr), given["val"], given["test"]))
    return DataBundle(name=path, train=train, val=val, test=test,
                      num_classes=len(images.classes), in_channels=int(train.x.shape[1]),
                      image_size=int(train.x.shape[2]), source=images.source, fingerprint=images.fingerprint,
                      classes=images.classes, pixels=_pixels(x_tr, mean, std))


# --------------------------------------------------------------------------------------------- helpers


def _one_line(message: str) -> str:
    return " ".join(str(message).split())


def _check_fraction(label: str, value: float, *, upper_inclusive: bool) -> None:
    ok = 0.0 < value <= 1.0 if upper_inclusive else 0.0 < value < 1.0
    if not ok:
        interval = "(0, 1]" if upper_inclusive else "(0, 1)"
        raise ValueError(f"{label} must be in {interval}, got {value!r}")


def _count(frac: float, n: int, name: str, what: str) -> int:
    k = int(round(frac * n))
    if k < 1:
        raise ValueError(f"{name}: the {what} split would be empty ({frac} of {n} images)")
    return k


def _take_fraction(
    y: torch.Tensor, fraction: float, gen: torch.Generator, name: str, what: str
) -> torch.Tensor:
    k = _count(fraction, len(y), name, f"fraction={fraction} subset of the {what}")
    return _stratified_take(y, k, gen)[0]


def _stratified_take(y: torch.Tensor, k: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Randomly pick ``k`` of the ``len(y)`` positions, with class proportions as in ``y``.

    Returns ``(taken, rest)``, both sorted index tensors. Each class gets ``floor(k * n_c / n)`` images; the
    remaining ones go to the classes with the largest remainders (ties broken at random).
    """
    y = y.cpu()
    n = int(y.shape[0])
    if not 0 <= k <= n:
        raise ValueError(f"cannot take {k} of {n} items")
    classes, inverse, counts = torch.unique(y, return_inverse=True, return_counts=True)
    quota, remainder = torch.div(counts * k, n, rounding_mode="floor"), (counts * k) % n
    short = k - int(quota.sum())
    if short > 0:
        tie_break = torch.randperm(len(classes), generator=gen)
        by_remainder = tie_break[torch.argsort(remainder[tie_break], descending=True, stable=True)]
        quota[by_remainder[:short]] += 1
    # Group positions by class, in random order within each class, then take the first quota of each group.
    perm = torch.randperm(n, generator=gen)
    grouped = perm[torch.argsort(inverse[perm], stable=True)]
    starts = torch.cumsum(counts, 0) - counts
    cls_of_grouped = inverse[grouped]
    rank = torch.arange(n) - starts[cls_of_grouped]
    chosen = rank < quota[cls_of_grouped]
    return torch.sort(grouped[chosen]).values, torch.sort(grouped[~chosen]).values


def _channel_stats(x: torch.Tensor, chunk: int = 4096) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and standard deviation of ``x`` (any dtype), accumulated in float64 in chunks."""
    channels = x.shape[1]
    total = torch.zeros(channels, dtype=torch.float64)
    total_sq = torch.zeros(channels, dtype=torch.float64)
    for i in range(0, x.shape[0], chunk):
        block = x[i : i + chunk].to(torch.float64)
        total += block.sum(dim=(0, 2, 3))
        total_sq += (block * block).sum(dim=(0, 2, 3))
    count = x.shape[0] * x.shape[2] * x.shape[3]
    mean = total / count
    var = (total_sq / count - mean * mean).clamp_min(0.0)
    std = var.sqrt()
    std = torch.where(std > 1e-12, std, torch.ones_like(std))
    return mean, std


def _normalise(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, chunk: int = 4096) -> torch.Tensor:
    out = torch.empty(x.shape, dtype=torch.float32)
    m = mean.view(1, -1, 1, 1)
    s = std.view(1, -1, 1, 1)
    for i in range(0, x.shape[0], chunk):
        out[i : i + chunk] = ((x[i : i + chunk].to(torch.float64) - m) / s).to(torch.float32)
    return out


def _read_digits() -> tuple[torch.Tensor, torch.Tensor, int, str]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = torch.as_tensor(np.asarray(digits.images, dtype=np.float32)).unsqueeze(1)
    y = torch.as_tensor(np.asarray(digits.target, dtype=np.int64))
    return x, y, 10, "scikit-learn digits"


# --------------------------------------------------------------------------------------------- torchvision

# name -> (torchvision class name, number of classes)
_TORCHVISION: dict[str, tuple[str, int]] = {
    "mnist": ("MNIST", 10),
    "fashion-mnist": ("FashionMNIST", 10),
    "cifar10": ("CIFAR10", 10),
    "cifar100": ("CIFAR100", 100),
}


def _read_torchvision(
    name: str, data_dir: str | os.PathLike[str] | None, download: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, int, str]:
    """Official (train x, train y, test x, test y) as uint8 NCHW / int64 tensors, class count and source."""
    import torchvision.datasets as tvd

    cls_name, num_classes = _TORCHVISION[name]
    cls = getattr(tvd, cls_name)
    system_source = None
    if data_dir is None and name in SYSTEM_DATASETS:
        data_dir, system_source = _system_copy(name, cls) or (None, None)
    if data_dir is None:
        system = ""
        if name in SYSTEM_DATASETS:
            package, folder = SYSTEM_DATASETS[name]
            looked = ", ".join(os.path.join(d, folder) for d in _system_dataset_dirs())
            system = f" (looked for Debian's {package} files in {looked}: not found; apt-get install -y {package})"
        raise DatasetNotFoundError(
            f"{name}: no data folder given{system}; pass `data_dir` pointing at the folder "
            f"that holds (or should receive, with `download=True`) the {cls_name} files"
        )
    root = os.path.abspath(os.fspath(data_dir))
    if name.startswith("cifar"):
        train, test, source = _open_cifar(name, cls, root, download)
        # torchvision keeps CIFAR as (n, 32, 32, 3) uint8 numpy arrays
        x_tr, x_te = (
            torch.from_numpy(np.ascontiguousarray(d.data)).permute(0, 3, 1, 2) for d in (train, test)
        )
        expected = (3, 32, 32)
    else:
        train, test, source = _open_mnist_like(name, cls, root, download)
        x_tr, x_te = (torch.as_tensor(d.data).unsqueeze(1) for d in (train, test))
        expected = (1, 28, 28)
    y_tr, y_te = (torch.as_tensor(np.asarray(d.targets), dtype=torch.int64).view(-1) for d in (train, test))
    for part, x, y in (("training", x_tr, y_tr), ("test", x_te, y_te)):
        problem = None
        if tuple(x.shape[1:]) != expected or x.dtype != torch.uint8:
            problem = f"images have shape {tuple(x.shape)}, dtype {x.dtype}; expected (n, *{expected}) uint8"
        elif x.shape[0] != y.shape[0]:
            problem = f"{x.shape[0]} images but {y.shape[0]} labels"
        elif x.shape[0] == 0:
            problem = "no images"
        elif int(y.min()) < 0 or int(y.max()) >= num_classes:
            problem = f"labels outside 0..{num_classes - 1} (found {int(y.min())}..{int(y.max())})"
        if problem:
            raise DatasetCorruptedError(f"{name}: the {part} set in {source} is unusable: {problem}")
    source = system_source or source
    return x_tr.contiguous(), y_tr, x_te.contiguous(), y_te, num_classes, f"torchvision {cls_name}: {source}"


# Data sets that Linux distributions package: name -> (Debian package, folder under a shared datasets dir).
SYSTEM_DATASETS: dict[str, tuple[str, str]] = {"fashion-mnist": ("dataset-fashion-mnist", "fashion-mnist")}


def _system_dataset_dirs() -> list[str]:
    """Where distribution packages put data sets: ``$XDG_DATA_DIRS/datasets`` (default
    ``/usr/local/share:/usr/share``), as Debian's ``dataset-*`` packages do (``/usr/share/datasets``)."""
    data_dirs = os.environ.get("XDG_DATA_DIRS") or "/usr/local/share:/usr/share"
    return [os.path.join(d, "datasets") for d in data_dirs.split(os.pathsep) if d]


def _system_copy(name: str, cls: Any) -> tuple[str, str] | None:
    """``(torchvision root, description)`` of the distribution's copy of ``name``; None when none is installed.

    Debian's package ships the original gzipped IDX files; torchvision reads only unpacked ones from
    ``ROOT/<class>/raw``, so they are unpacked once (``extract_archive``, then an atomic rename) into
    ``cache_dir()/<name>``, which becomes the root. The description (the bundle's ``source``) names both folders.
    """
    from torchvision.datasets.utils import extract_archive

    package, folder = SYSTEM_DATASETS[name]
    files = [os.path.basename(url) for url, _ in cls.resources]
    found = next((os.path.join(d, folder) for d in _system_dataset_dirs()
                  if all(os.path.isfile(os.path.join(d, folder, f)) for f in files)), None)
    if found is None:
        return None
    root = os.path.join(cache_dir(), name)
    raw = os.path.join(root, cls.__name__, "raw")
    for packed in files:
        target = os.path.join(raw, os.path.splitext(packed)[0])
        if os.path.isfile(target):
            continue
        try:
            os.makedirs(raw, exist_ok=True)
            scratch = tempfile.mkdtemp(dir=raw, prefix=".unpack-")
        except OSError as err:
            raise DatasetNotFoundError(f"{name}: found Debian's {package} files in {found} but cannot unpack them "
                                       f"into {raw} ({err}); set BAYESNAS_CACHE to a writable folder") from err
        try:
            os.replace(extract_archive(os.path.join(found, packed), scratch), target)
        except (EOFError, OSError, gzip.BadGzipFile) as err:
            raise DatasetCorruptedError(f"{name}: cannot unpack {os.path.join(found, packed)} (from the Debian "
                                        f"package {package}) into {raw}: {err}") from err
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
    return root, f"Debian package {package} at {found}, unpacked into {raw}"


def _open_mnist_like(name: str, cls: Any, root: str, download: bool) -> tuple[Any, Any, str]:
    raw = os.path.join(root, cls.__name__, "raw")
    files = [os.path.splitext(os.path.basename(url))[0] for url, _ in cls.resources]
    _gunzip_missing(name, raw, files)
    try:
        return cls(root, train=True, download=download), cls(root, train=False, download=False), raw
    except _READ_ERRORS as err:
        missing = [f for f in files if not os.path.isfile(os.path.join(raw, f))]
        if missing:
            what = "no MNIST-format files" if len(missing) == len(files) else "missing " + ", ".join(missing)
            looked = ", ".join(f + "[.gz]" for f in files)
            raise DatasetNotFoundError(
                f"{name}: {what} under {raw} (looked for {looked}){_download_note(download, err)}; "
                f"copy the IDX files there {_supply_hint(download)}"
            ) from err
        details = [p for p in (_idx_problem(os.path.join(raw, f)) for f in files) if p]
        reason = "; ".join(details) if details else f"torchvision could not read them: {_one_line(str(err))}"
        raise DatasetCorruptedError(
            f"{name}: unreadable IDX files in {raw}: {reason}; replace them with the official files"
        ) from err


def _gunzip_missing(name: str, raw: str, files: list[str]) -> None:
    """Unpack ``f.gz`` next to every missing IDX file ``f`` (torchvision itself reads only unpacked files)."""
    for fname in files:
        target = os.path.join(raw, fname)
        packed = target + ".gz"
        if os.path.isfile(target) or not os.path.isfile(packed):
            continue
        fd, tmp = tempfile.mkstemp(dir=raw, prefix=f".{fname}.", suffix=".part")
        try:
            with os.fdopen(fd, "wb") as out, gzip.open(packed, "rb") as src:
                while block := src.read(1 << 20):
                    out.write(block)
            os.replace(tmp, target)
        except (EOFError, gzip.BadGzipFile) as err:
            raise DatasetCorruptedError(f"{name}: cannot unpack {packed}: {err}") from err
        except OSError as err:
            raise DatasetNotFoundError(
                f"{name}: found {packed} but could not unpack it next to itself ({err}); gunzip it by hand"
            ) from err
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)


def _idx_problem(path: str) -> str | None:
    """Why the IDX file at ``path`` is unusable (checked against its own header), or None if it looks fine."""
    fname = os.path.basename(path)
    size = os.path.getsize(path)
    with open(path, "rb") as fh:
        head = fh.read(16)
    if head[:2] == b"\x1f\x8b":
        return f"{fname} is gzip-compressed (name it {fname}.gz or gunzip it)"
    images = "images" in fname
    want_magic, ndim = (2051, 3) if images else (2049, 1)
    header_len = 4 + 4 * ndim
    if size < header_len:
        return f"{fname} has {size} bytes, less than its {header_len}-byte header (truncated?)"
    magic, *dims = struct.unpack(">" + "I" * (1 + ndim), head[:header_len])
    if magic != want_magic:
        return f"{fname} starts with magic number {magic}, expected {want_magic}"
    expected = header_len + int(np.prod(dims))
    if size != expected:
        shape = "x".join(str(d) for d in dims)
        return f"{fname} header declares {shape} bytes of data ({expected} in all) but the file has {size}"
    return None


def _open_cifar(name: str, cls: Any, root: str, download: bool) -> tuple[Any, Any, str]:
    from torchvision.datasets.utils import check_integrity

    base = os.path.join(root, cls.base_folder)
    files = [(f, md5) for f, md5 in cls.train_list + cls.test_list]
    files.append((cls.meta["filename"], cls.meta["md5"]))
    tarball = os.path.join(root, cls.filename)
    absent = [f for f, _ in files if not os.path.isfile(os.path.join(base, f))]
    if absent and not download and os.path.isfile(tarball):
        if not check_integrity(tarball, cls.tgz_md5):  # before a byte is unpacked: a crafted archive writes nothing
            raise DatasetCorruptedError(f"{name}: {tarball} fails the official archive's MD5 check (corrupted or "
                                        f"not the official {cls.filename}); nothing was unpacked")
        _safe_extract(name, tarball, root)
    try:
        return cls(root, train=True, download=download), cls(root, train=False, download=False), base
    except _READ_ERRORS as err:
        missing = [f for f, _ in files if not os.path.isfile(os.path.join(base, f))]
        if missing:
            what = "no CIFAR files" if len(missing) == len(files) else "missing " + ", ".join(missing)
            raise DatasetNotFoundError(
                f"{name}: {what} under {base} (looked for {', '.join(f for f, _ in files)})"
                f"{_download_note(download, err)}; unpack {cls.filename} into {root} (or put it there) "
                f"{_supply_hint(download)}"
            ) from err
        bad = [f for f, md5 in files if not check_integrity(os.path.join(base, f), md5)]
        if bad:
            reason = f"{', '.join(bad)} fail torchvision's MD5 check (corrupted or not the official files)"
        else:
            reason = f"torchvision could not read them: {_one_line(str(err))}"
        raise DatasetCorruptedError(
            f"{name}: unusable files in {base}: {reason}; re-extract the official {cls.filename}"
        ) from err


def _safe_extract(name: str, tarball: str, root: str) -> None:
    """Unpack ``tarball`` into ``root``, refusing (before anything is written) any member that would land outside
    ``root``, links and special files; then extracts with tarfile's ``data`` filter, which refuses the same."""
    target = os.path.realpath(root)
    try:
        with tarfile.open(tarball) as archive:
            for member in archive.getmembers():
                path = os.path.realpath(os.path.join(target, member.name))
                if os.path.commonpath([target, path]) != target or not (member.isfile() or member.isdir()):
                    raise DatasetCorruptedError(f"{name}: {tarball} holds {member.name!r}, which is not a file "
                                                f"inside {root}; nothing was unpacked")
            archive.extractall(target, filter="data")
    except (tarfile.TarError, EOFError, OSError) as err:
        raise DatasetCorruptedError(f"{name}: cannot unpack {tarball}: {_one_line(str(err))}") from err


def _download_note(download: bool, err: BaseException) -> str:
    if not download:
        return ""
    text = _one_line(str(err))
    return f" and the download failed ({text[:200]}{'...' if len(text) > 200 else ''})"
