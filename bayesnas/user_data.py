"""A user's own images: a folder in torchvision's ``ImageFolder`` layout, an ``.npz`` file of arrays, or in-memory
tensors, arrays and map-style ``Dataset`` objects (kept as an ``.npz`` file in the cache, so that a run names a file
like any other data set and ``load_run``, ``train``, ``predict`` and ``torchrun`` ranks find it again).

Forms
-----
Folder (``ImageFolder`` layout)
    ``ROOT/<class>/<image>`` (one sub-folder per class, sorted names give labels 0..K-1), or
    ``ROOT/train/<class>/...`` with optional ``ROOT/val/...`` and ``ROOT/test/...`` holding the same classes. Files
    with an image suffix (``.png .jpg .jpeg .bmp .gif .tif .tiff .webp .pgm .ppm``) are read with Pillow; others
    (``README``, ``.DS_Store``) are ignored. Grey-scale images give one channel; where any image has colour, all
    are read as RGB.
``.npz`` file
    ``x_train``, ``y_train`` and optionally ``x_val``/``y_val``, ``x_test``/``y_test`` (or ``x``, ``y``);
    optionally ``classes`` (the class names, so that labels are checked against them). Images are ``(n, H, W)``,
    ``(n, C, H, W)`` or ``(n, H, W, C)`` with C of 1 or 3 (channels-first where the second axis has 1 or 3
    entries), uint8 or floating point; labels integers 0..K-1.
In memory (Python API)
    ``(x, y)`` of tensors or arrays as in an ``.npz`` file; any map-style ``torch.utils.data.Dataset`` whose items
    are ``(image, label)`` with the image a tensor, array or PIL image; or a dict ``{"train": ..., "val": ...,
    "test": ...}`` of these.

Every image must have the same square size and every class at least one training image; labels lie in 0..K-1, and
arrays hold no NaN or infinity. Each violation is one line (:class:`BadDataError`) raised before anything is
written. The splits a source does not bring are drawn from its training images as for ``digits`` (see
:mod:`bayesnas.data`). A source's :attr:`UserImages.fingerprint` (SHA-256 of its content) is recorded in the run's
``config.json`` (``data_fingerprint``): data that changed since are refused.
"""

from __future__ import annotations

import hashlib
import io
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bayesnas.errors import BayesNASError
from bayesnas.io import atomic_write, cache_dir

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".pgm", ".ppm"})
SPLITS = ("train", "val", "test")


class BadDataError(BayesNASError, ValueError):
    """A user's data set that cannot be searched on (the message says which file or array and why)."""


@dataclass(frozen=True, eq=False)
class UserImages:
    """A user's images by split (``x``: uint8 or float32 ``(n, C, H, W)``, ``y``: int64 ``(n,)``), before the
    missing splits are drawn and the images normalised."""

    splits: dict[str, tuple[np.ndarray, np.ndarray]]
    """``train`` always; ``val`` and ``test`` where the source brings them."""
    classes: tuple[str, ...]
    source: str
    fingerprint: str


def is_user_data(name: str | os.PathLike) -> bool:
    """Whether ``name`` is a path to a user's data set (a folder or an ``.npz`` file) rather than a data set name."""
    path = Path(name)
    return path.is_dir() or (path.suffix.lower() == ".npz" and path.is_file())


def read_user_data(path: str | os.PathLike) -> UserImages:
    """The images of the folder or ``.npz`` file at ``path``, checked (see the module docstring)."""
    path = Path(path)
    return read_image_folder(path) if path.is_dir() else read_npz(path)


def read_image_folder(root: Path) -> UserImages:
    """An ``ImageFolder`` tree (optionally with ``train/``, ``val/``, ``test/`` sub-folders), checked."""
    layout = {s: root / s for s in SPLITS if (root / s).is_dir()} if (root / "train").is_dir() else {"train": root}
    found = {split: _class_files(folder) for split, folder in layout.items()}
    classes = tuple(sorted(found["train"]))
    for split, by_class in found.items():
        if extra := sorted(set(by_class) - set(classes)):
            raise BadDataError(f"{layout[split]}: class folder(s) {', '.join(extra)} have no training images "
                               f"(the train split's classes are {', '.join(classes)})")
    _check_classes(classes, f"{layout['train']}")
    digest = hashlib.sha256()
    files = [(split, label, file) for split, by_class in found.items()
             for label, name in enumerate(classes) for file in by_class.get(name, [])]
    images = []
    for _, _, file in files:
        data = file.read_bytes()
        digest.update(str(file.relative_to(root)).encode() + b"\0" + data)
        images.append(_open_image(file, data))
    colour = any(image.mode not in ("L", "1", "I;16", "I", "F") for image in images)
    arrays = [np.asarray(image.convert("RGB" if colour else "L")) for image in images]
    first = arrays[0].shape[:2]
    for (_, _, file), array in zip(files, arrays, strict=True):
        if array.shape[:2] != first:
            raise BadDataError(f"images of different sizes: {files[0][2]} is {_size(first)}, {file} is "
                               f"{_size(array.shape[:2])}; resize them to one square size")
    if first[0] != first[1]:
        raise BadDataError(f"images must be square, {files[0][2]} is {_size(first)}; crop or pad them")
    splits = {}
    for split in found:
        rows = [i for i, (s, _, _) in enumerate(files) if s == split]
        x = np.stack([arrays[i] for i in rows])
        x = x[:, None] if x.ndim == 3 else x.transpose(0, 3, 1, 2)
        splits[split] = (np.ascontiguousarray(x), np.array([files[i][1] for i in rows], dtype=np.int64))
    return UserImages(splits, classes, f"image folder {root} ({len(files)} images)", digest.hexdigest()[:16])


def read_npz(path: Path) -> UserImages:
    """Arrays of an ``.npz`` file (``x_train``/``y_train``... or ``x``/``y``; optional ``classes``), checked."""
    data = path.read_bytes()
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as archive:
            arrays = {key: archive[key] for key in archive.files}
    except (OSError, ValueError, EOFError) as err:
        raise BadDataError(f"cannot read {path} as an .npz file of arrays: {' '.join(str(err).split())}") from None
    if "x" in arrays and "x_train" not in arrays:
        arrays = {**arrays, "x_train": arrays.pop("x"), "y_train": arrays.pop("y", None)}
    if arrays.get("x_train") is None or arrays.get("y_train") is None:
        raise BadDataError(f"{path} holds {', '.join(sorted(arrays)) or 'no arrays'}; expected x_train and y_train "
                           "(optionally x_val, y_val, x_test, y_test and classes), or x and y")
    names = tuple(str(c) for c in arrays["classes"]) if "classes" in arrays else None
    pairs = {split: (arrays[f"x_{split}"], arrays.get(f"y_{split}")) for split in SPLITS if f"x_{split}" in arrays}
    return from_arrays(pairs, f"{path}", hashlib.sha256(data).hexdigest()[:16], names)


def from_arrays(pairs: Mapping[str, tuple[Any, Any]], source: str, fingerprint: str,
                classes: tuple[str, ...] | None = None) -> UserImages:
    """:class:`UserImages` of ``(x, y)`` pairs by split (arrays or tensors, shapes as in the module docstring)."""
    splits = {split: (_images(x, f"{source}: x_{split}"), _labels(y, f"{source}: y_{split}", len(x)))
              for split, (x, y) in pairs.items()}
    shape = splits["train"][0].shape[1:]
    for split, (x, _) in splits.items():
        if x.shape[1:] != shape:
            raise BadDataError(f"{source}: x_{split} has images of shape {x.shape[1:]}, x_train {shape}")
    if shape[1] != shape[2]:
        raise BadDataError(f"{source}: images must be square, got {shape[1]}x{shape[2]}")
    k = len(classes) if classes is not None else int(splits["train"][1].max()) + 1
    for split, (_, y) in splits.items():
        if int(y.min()) < 0 or int(y.max()) >= k:
            raise BadDataError(f"{source}: y_{split} holds labels {int(y.min())}..{int(y.max())}, outside 0..{k - 1}"
                               + (f" ({k} classes named)" if classes is not None else " (the training labels' range)"))
    names = classes if classes is not None else tuple(str(i) for i in range(k))
    counts = np.bincount(splits["train"][1], minlength=k)
    if (counts == 0).any():
        raise BadDataError(f"{source}: class {names[int(np.argmin(counts))]} has no training images")
    _check_classes(names, source)
    return UserImages(splits, names, source, fingerprint)


def from_memory(data: Any) -> UserImages:
    """:class:`UserImages` of in-memory data: ``(x, y)``, a map-style ``Dataset`` or a dict of them by split."""
    parts = data if isinstance(data, Mapping) else {"train": data}
    unknown = set(parts) - set(SPLITS)
    if unknown or "train" not in parts:
        raise BadDataError(f"in-memory data by split takes the keys train (needed), val and test; got "
                           f"{', '.join(map(str, parts))}")
    pairs = {split: part if isinstance(part, tuple) else _dataset_arrays(part, split) for split, part in parts.items()}
    for split, pair in pairs.items():
        if len(pair) != 2:
            raise BadDataError(f"in-memory {split} data: expected (images, labels), got a tuple of {len(pair)}")
    images = from_arrays(pairs, "in-memory data", "")
    digest = hashlib.sha256()
    for split, (x, y) in images.splits.items():
        digest.update(split.encode() + str(x.dtype).encode() + str(x.shape).encode() + x.tobytes() + y.tobytes())
    return UserImages(images.splits, images.classes, images.source, digest.hexdigest()[:16])


def dataset_name(dataset: Any) -> str:
    """What a configuration's ``dataset`` holds for ``dataset``: a data set's name as given; a path to a user's data
    set as its absolute path; in-memory data (:func:`from_memory`) as the ``.npz`` file in the cache folder that
    keeps it, written once per content (``<cache>/data/<fingerprint>.npz``) after its checks passed."""
    if isinstance(dataset, str | os.PathLike):
        return os.path.abspath(dataset) if is_user_data(dataset) else os.fspath(dataset)
    images = from_memory(dataset)
    path = Path(cache_dir()) / "data" / f"{images.fingerprint}.npz"
    if not path.is_file():
        write_npz(images, path)
    return str(path)


def write_npz(images: UserImages, path: Path) -> None:
    """Write ``images`` as an ``.npz`` file :func:`read_npz` reads back (atomically)."""
    arrays = {f"{part}_{split}": a for split, pair in images.splits.items() for part, a in zip("xy", pair, strict=True)}
    atomic_write(path, lambda file: np.savez(file, classes=np.array(images.classes), **arrays))


def _class_files(folder: Path) -> dict[str, list[Path]]:
    """The image files of each class sub-folder of ``folder`` (sorted); an empty class folder is refused."""
    by_class = {}
    for sub in sorted(p for p in folder.iterdir() if p.is_dir()):
        files = sorted(f for f in sub.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise BadDataError(f"class folder {sub} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
        by_class[sub.name] = files
    if not by_class:
        raise BadDataError(f"{folder} has no class sub-folders; expected {folder}/<class>/<image> "
                           "(torchvision's ImageFolder layout)")
    return by_class


def _check_classes(classes: tuple[str, ...], source: str) -> None:
    if len(classes) < 2:
        raise BadDataError(f"{source}: a classifier needs at least 2 classes, found {len(classes)} "
                           f"({', '.join(classes)})")


def _open_image(file: Path, data: bytes) -> Any:
    from PIL import Image, UnidentifiedImageError

    try:
        image = Image.open(io.BytesIO(data))
        image.load()
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as err:
        raise BadDataError(f"cannot read {file} as an image: {' '.join(str(err).split())}") from None
    return image


def _size(shape: tuple[int, ...]) -> str:
    return f"{shape[1]}x{shape[0]}"


def _images(x: Any, what: str) -> np.ndarray:
    """``x`` as a ``(n, C, H, W)`` array (uint8 kept, anything else float32), checked."""
    x = np.asarray(x.detach().cpu() if hasattr(x, "detach") else x)
    if x.dtype.kind not in "uif" or x.dtype == np.bool_:
        raise BadDataError(f"{what}: images must be numbers, got dtype {x.dtype}")
    if x.ndim == 3:
        x = x[:, None]
    elif x.ndim == 4 and x.shape[1] not in (1, 3) and x.shape[3] in (1, 3):
        x = x.transpose(0, 3, 1, 2)
    if x.ndim != 4 or x.shape[1] not in (1, 3):
        raise BadDataError(f"{what}: expected images of shape (n, H, W), (n, C, H, W) or (n, H, W, C) with C of 1 or "
                           f"3, got {x.shape}")
    if len(x) == 0:
        raise BadDataError(f"{what}: no images")
    if x.dtype != np.uint8:
        x = x.astype(np.float32)
        if not np.isfinite(x).all():
            raise BadDataError(f"{what}: images hold NaN or infinite values")
    return np.ascontiguousarray(x)


def _labels(y: Any, what: str, n: int) -> np.ndarray:
    if y is None:
        raise BadDataError(f"{what}: labels missing")
    y = np.asarray(y.detach().cpu() if hasattr(y, "detach") else y)
    if y.dtype.kind == "f":
        if not np.isfinite(y).all() or (y != np.round(y)).any():
            raise BadDataError(f"{what}: labels must be integers 0..K-1")
        y = y.astype(np.int64)
    if y.dtype.kind not in "iu" or y.ndim != 1 or len(y) != n:
        raise BadDataError(f"{what}: expected {n} integer labels (one per image), got shape {y.shape}, dtype {y.dtype}")
    return y.astype(np.int64)


def _dataset_arrays(dataset: Any, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Images and labels of a map-style ``Dataset`` (items ``(image, label)``), stacked."""
    if not hasattr(dataset, "__getitem__") or not hasattr(dataset, "__len__"):
        raise BadDataError(f"in-memory {split} data: expected (images, labels) or a map-style Dataset, got "
                           f"{type(dataset).__name__}")
    images, labels = [], []
    for i in range(len(dataset)):
        item = dataset[i]
        if not isinstance(item, tuple | list) or len(item) != 2:
            raise BadDataError(f"in-memory {split} data: item {i} is not an (image, label) pair")
        image = np.asarray(item[0].detach().cpu() if hasattr(item[0], "detach") else item[0])
        if image.ndim == 3 and image.shape[0] not in (1, 3) and image.shape[2] in (1, 3):
            image = image.transpose(2, 0, 1)  # (H, W, C), as PIL images and arrays come
        images.append(image)
        labels.append(int(item[1]))
    shapes = {image.shape for image in images}
    if len(shapes) > 1:
        raise BadDataError(f"in-memory {split} data: images of different shapes {sorted(shapes)[:2]}; resize them "
                           "to one square size")
    return np.stack(images) if images else np.zeros((0, 1, 1, 1)), np.array(labels, dtype=np.int64)
