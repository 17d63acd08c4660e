"""Tests for bayesnas.data: digits splits, and tiny real-format MNIST / CIFAR files read by torchvision."""

from __future__ import annotations

import gzip
import io
import os
import pickle
import struct
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.datasets.cifar as tv_cifar
import torchvision.datasets.utils as tv_utils
from sklearn.datasets import load_digits

from bayesnas.data import (
    DATASETS,
    DataBundle,
    DatasetCorruptedError,
    DatasetNotFoundError,
    Split,
    UnknownDatasetError,
    load_dataset,
)

# ----------------------------------------------------------------------------------------------- helpers


def _rows(split: Split) -> set[bytes]:
    return {row.numpy().tobytes() for row in split.x.reshape(len(split), -1)}


def _same(a: Split, b: Split) -> bool:
    return a.x.shape == b.x.shape and torch.equal(a.x, b.x) and torch.equal(a.y, b.y)


def _channel_corr(x: torch.Tensor, raw: np.ndarray) -> list[float]:
    """Correlation, per channel, between normalised images x (n,C,H,W) and the written bytes raw (n,C,H,W)."""
    out = []
    for c in range(x.shape[1]):
        out.append(float(np.corrcoef(x[:, c].reshape(-1).double().numpy(), raw[:, c].reshape(-1))[0, 1]))
    return out


def _recover_bytes(x: torch.Tensor, x_ref: torch.Tensor, raw_ref: np.ndarray) -> list[bytes]:
    """Undo the per-channel normalisation of x using the affine map fitted on (x_ref, raw_ref)."""
    out = np.empty(tuple(x.shape), dtype=np.uint8)
    for c in range(x.shape[1]):
        slope, intercept = np.polyfit(x_ref[:, c].reshape(-1).double().numpy(), raw_ref[:, c].reshape(-1), 1)
        out[:, c] = np.rint(x[:, c].double().numpy() * slope + intercept).clip(0, 255)
    return [row.tobytes() for row in out.reshape(len(out), -1)]


def _write_idx(path: Path, magic: int, data: np.ndarray) -> None:
    header = struct.pack(">" + "I" * (1 + data.ndim), magic, *data.shape)
    path.write_bytes(header + data.astype(np.uint8).tobytes())


def _mnist_files(root: Path, folder: str, n_train: int = 60, n_test: int = 20, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    raw = root / folder / "raw"
    raw.mkdir(parents=True)
    data = {
        "train_x": rng.integers(0, 256, size=(n_train, 28, 28), dtype=np.uint8),
        "train_y": (np.arange(n_train) * 7 % 10).astype(np.uint8),
        "test_x": rng.integers(0, 256, size=(n_test, 28, 28), dtype=np.uint8),
        "test_y": (np.arange(n_test) * 3 % 10).astype(np.uint8),
    }
    _write_idx(raw / "train-images-idx3-ubyte", 2051, data["train_x"])
    _write_idx(raw / "train-labels-idx1-ubyte", 2049, data["train_y"])
    _write_idx(raw / "t10k-images-idx3-ubyte", 2051, data["test_x"])
    _write_idx(raw / "t10k-labels-idx1-ubyte", 2049, data["test_y"])
    return data


def _pickle(path: Path, obj: dict) -> None:
    with open(path, "wb") as fh:
        pickle.dump(obj, fh)


def _cifar10_files(root: Path, per_batch: int = 20, n_test: int = 20) -> dict:
    rng = np.random.default_rng(1)
    base = root / "cifar-10-batches-py"
    base.mkdir(parents=True)
    xs, ys = [], []
    for b in range(1, 6):
        x = rng.integers(0, 256, size=(per_batch, 3072), dtype=np.uint8)
        y = [int(v) for v in (np.arange(per_batch) + b) % 10]
        _pickle(base / f"data_batch_{b}", {"batch_label": f"training batch {b} of 5", "data": x, "labels": y})
        xs.append(x)
        ys += y
    test_x = rng.integers(0, 256, size=(n_test, 3072), dtype=np.uint8)
    test_y = [int(v) for v in np.arange(n_test) % 10]
    _pickle(base / "test_batch", {"batch_label": "testing batch 1 of 1", "data": test_x, "labels": test_y})
    _pickle(base / "batches.meta", {"label_names": [f"class{i}" for i in range(10)], "num_vis": 3072})
    return {"train_x": np.concatenate(xs), "train_y": ys, "test_x": test_x, "test_y": test_y}


def _cifar100_files(root: Path, n_train: int = 200, n_test: int = 100) -> dict:
    rng = np.random.default_rng(2)
    base = root / "cifar-100-python"
    base.mkdir(parents=True)
    out = {}
    for part, n in (("train", n_train), ("test", n_test)):
        x = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
        fine = [int(v) for v in np.arange(n) % 100]
        coarse = [v // 5 for v in fine]
        _pickle(base / part, {"data": x, "fine_labels": fine, "coarse_labels": coarse, "filenames": []})
        out[f"{part}_x"], out[f"{part}_y"] = x, fine
    _pickle(base / "meta", {"fine_label_names": [f"f{i}" for i in range(100)], "coarse_label_names": []})
    return out


@pytest.fixture
def skip_cifar_md5(monkeypatch: pytest.MonkeyPatch) -> None:
    """torchvision checks the MD5 sums of the official CIFAR files; for our tiny ones check existence only."""
    real = tv_cifar.check_integrity
    monkeypatch.setattr(tv_cifar, "check_integrity", lambda fpath, md5=None: real(fpath, None))
    monkeypatch.setattr(tv_utils, "check_integrity", lambda fpath, md5=None: real(fpath, None))  # the archive's


@pytest.fixture(scope="module")
def digits() -> DataBundle:
    return load_dataset("digits", seed=0)


# ----------------------------------------------------------------------------------------------- digits


def test_digits_shapes_and_metadata(digits: DataBundle) -> None:
    assert digits.name == "digits"
    assert (digits.num_classes, digits.in_channels, digits.image_size) == (10, 1, 8)
    assert "digits" in digits.source
    for split in (digits.train, digits.val, digits.test):
        assert split.x.dtype == torch.float32 and split.y.dtype == torch.int64
        assert split.x.shape[1:] == (1, 8, 8) and split.x.device.type == "cpu"
        assert split.y.shape == (len(split),)
    assert (len(digits.test), len(digits.val)) == (round(0.2 * 1797), round(0.1 * 1797))
    assert len(digits.train) + len(digits.val) + len(digits.test) == 1797


def test_digits_splits_disjoint_and_complete(digits: DataBundle) -> None:
    train, val, test = _rows(digits.train), _rows(digits.val), _rows(digits.test)
    assert len(train) == len(digits.train) and len(val) == len(digits.val) and len(test) == len(digits.test)
    assert not (train & val) and not (train & test) and not (val & test)
    labels = torch.cat([digits.train.y, digits.val.y, digits.test.y])
    assert torch.bincount(labels).tolist() == np.bincount(load_digits().target).tolist()


def test_digits_stratified(digits: DataBundle) -> None:
    all_counts = torch.bincount(torch.cat([digits.train.y, digits.val.y, digits.test.y]), minlength=10)
    for split, frac in ((digits.test, 0.2), (digits.val, 0.1)):
        counts = torch.bincount(split.y, minlength=10)
        assert (counts > 0).all()
        assert ((counts - all_counts * frac).abs() <= 1.5).all()


def test_digits_normalised_with_train_statistics(digits: DataBundle) -> None:
    x = digits.train.x
    assert abs(float(x.mean())) < 1e-4
    assert abs(float(x.std(unbiased=False)) - 1.0) < 1e-4
    assert abs(float(digits.test.x.mean())) < 0.2  # same statistics, so close to but not exactly 0


def test_digits_seeds(digits: DataBundle) -> None:
    again = load_dataset("digits", seed=0)
    other = load_dataset("digits", seed=1)
    for a, b in ((digits.train, again.train), (digits.val, again.val), (digits.test, again.test)):
        assert _same(a, b)
    assert _rows(digits.test) != _rows(other.test)


def test_digits_fraction_and_invalid_fractions() -> None:
    small, whole = load_dataset("digits", fraction=0.5, seed=3), load_dataset("digits", seed=3)
    assert (len(small.val), len(small.test)) == (round(0.1 * 1797), round(0.2 * 1797))  # they stay whole
    assert torch.equal(small.test.y, whole.test.y) and torch.equal(small.val.y, whole.val.y)  # the same images
    assert len(small.train) == round(0.5 * len(whole.train))
    with pytest.raises(ValueError, match="val_fraction"):
        load_dataset("digits", val_fraction=0.0)
    with pytest.raises(ValueError, match="test_fraction"):
        load_dataset("digits", test_fraction=1.0)
    with pytest.raises(ValueError, match="< 1"):
        load_dataset("digits", val_fraction=0.5, test_fraction=0.5)
    with pytest.raises(ValueError, match="fraction"):
        load_dataset("digits", fraction=1.5)


def test_halves(digits: DataBundle) -> None:
    weight, arch = digits.halves(seed=5)
    assert len(weight) + len(arch) == len(digits.train)
    assert abs(len(weight) - len(arch)) <= 1
    w, a = _rows(weight), _rows(arch)
    assert not (w & a) and (w | a) == _rows(digits.train)
    assert (torch.bincount(arch.y, minlength=10) > 0).all()
    w2, a2 = digits.halves(seed=5)
    assert _same(weight, w2) and _same(arch, a2)
    assert _rows(digits.halves(seed=6)[1]) != a


def test_split_and_bundle_helpers(digits: DataBundle) -> None:
    sub = digits.train.subset(torch.tensor([2, 0]))
    assert torch.equal(sub.x[1], digits.train.x[0]) and torch.equal(sub.y, digits.train.y[[2, 0]])
    moved = digits.to("cpu")
    assert isinstance(moved, DataBundle) and moved.num_classes == 10 and len(moved.test) == len(digits.test)
    assert "Split(n=" in repr(digits.train)
    with pytest.raises(ValueError):
        Split(torch.zeros(3, 1, 2, 2), torch.zeros(2, dtype=torch.int64))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_to_cuda(digits: DataBundle) -> None:
    moved = digits.to("cuda")
    assert moved.train.x.is_cuda and moved.test.y.is_cuda
    weight, arch = moved.halves(0)
    assert weight.x.is_cuda and len(weight) + len(arch) == len(digits.train)


def test_unknown_name() -> None:
    with pytest.raises(UnknownDatasetError) as info:
        load_dataset("imagenet")
    assert "imagenet" in str(info.value)
    assert all(name in str(info.value) for name in DATASETS)
    assert isinstance(info.value, ValueError)


# ----------------------------------------------------------------------------------------------- MNIST


@pytest.mark.parametrize(("name", "folder"), [("mnist", "MNIST"), ("fashion-mnist", "FashionMNIST")])
def test_mnist_like_round_trip(tmp_path: Path, name: str, folder: str) -> None:
    data = _mnist_files(tmp_path, folder)
    bundle = load_dataset(name, data_dir=tmp_path, seed=0, val_fraction=0.2)
    assert (bundle.num_classes, bundle.in_channels, bundle.image_size) == (10, 1, 28)
    assert str(tmp_path / folder / "raw") in bundle.source
    assert bundle.train.x.shape == (48, 1, 28, 28) and len(bundle.val) == 12
    assert bundle.test.x.shape == (20, 1, 28, 28) and bundle.test.x.dtype == torch.float32
    # Official test set, in file order: labels identical and pixels an increasing affine map of the bytes.
    assert bundle.test.y.tolist() == data["test_y"].tolist()
    assert min(_channel_corr(bundle.test.x, data["test_x"][:, None])) > 0.99999
    assert sorted(torch.cat([bundle.train.y, bundle.val.y]).tolist()) == sorted(data["train_y"].tolist())
    assert abs(float(bundle.train.x.mean())) < 1e-4 and abs(float(bundle.train.x.std()) - 1) < 1e-2
    other = load_dataset(name, data_dir=tmp_path, seed=1, val_fraction=0.2)
    assert not torch.equal(bundle.val.x, other.val.x)
    assert _same(bundle.val, load_dataset(name, data_dir=tmp_path, seed=0, val_fraction=0.2).val)


def test_mnist_gz_files_are_unpacked(tmp_path: Path) -> None:
    data = _mnist_files(tmp_path, "MNIST")
    raw = tmp_path / "MNIST" / "raw"
    for f in list(raw.iterdir()):
        with gzip.open(f"{f}.gz", "wb") as out:
            out.write(f.read_bytes())
        f.unlink()
    bundle = load_dataset("mnist", data_dir=tmp_path)
    assert bundle.test.y.tolist() == data["test_y"].tolist()
    assert (raw / "train-images-idx3-ubyte").is_file()


def test_mnist_corrupt_gz(tmp_path: Path) -> None:
    _mnist_files(tmp_path, "MNIST")
    path = tmp_path / "MNIST" / "raw" / "train-labels-idx1-ubyte"
    with gzip.open(f"{path}.gz", "wb") as out:
        out.write(path.read_bytes())
    Path(f"{path}.gz").write_bytes(Path(f"{path}.gz").read_bytes()[:20])
    path.unlink()
    with pytest.raises(DatasetCorruptedError, match="cannot unpack"):
        load_dataset("mnist", data_dir=tmp_path)
    assert not path.exists() and [p.name for p in path.parent.glob(".*")] == []


def test_mnist_fraction(tmp_path: Path) -> None:
    _mnist_files(tmp_path, "MNIST", n_train=100, n_test=40)
    bundle = load_dataset("mnist", data_dir=tmp_path, fraction=0.5, val_fraction=0.2)
    assert (len(bundle.train), len(bundle.val), len(bundle.test)) == (40, 10, 40)  # the test set stays whole


def test_mnist_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(DatasetNotFoundError) as info:
        load_dataset("mnist", data_dir=tmp_path / "nowhere")
    msg = str(info.value)
    assert "\n" not in msg and str(tmp_path / "nowhere" / "MNIST" / "raw") in msg
    assert "train-images-idx3-ubyte" in msg and "`download=True`" in msg
    assert isinstance(info.value, FileNotFoundError)


def test_mnist_partly_missing(tmp_path: Path) -> None:
    _mnist_files(tmp_path, "MNIST")
    (tmp_path / "MNIST" / "raw" / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(DatasetNotFoundError, match="missing t10k-labels-idx1-ubyte"):
        load_dataset("mnist", data_dir=tmp_path)


def test_mnist_needs_data_dir() -> None:
    with pytest.raises(DatasetNotFoundError, match="`data_dir`"):
        load_dataset("mnist")
    with pytest.raises(DatasetNotFoundError, match="`data_dir`"):
        load_dataset("cifar10", download=True)


def test_mnist_truncated_file(tmp_path: Path) -> None:
    _mnist_files(tmp_path, "MNIST")
    path = tmp_path / "MNIST" / "raw" / "train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(DatasetCorruptedError) as info:
        load_dataset("mnist", data_dir=tmp_path)
    msg = str(info.value)
    assert "\n" not in msg and "train-images-idx3-ubyte" in msg and "60x28x28" in msg
    assert isinstance(info.value, ValueError)


def test_mnist_label_count_mismatch(tmp_path: Path) -> None:
    _mnist_files(tmp_path, "MNIST")
    _write_idx(tmp_path / "MNIST" / "raw" / "t10k-labels-idx1-ubyte", 2049, np.zeros(5, dtype=np.uint8))
    with pytest.raises(DatasetCorruptedError, match="20 images but 5 labels"):
        load_dataset("mnist", data_dir=tmp_path)


# ----------------------------------------------------------------------------------------------- CIFAR


def test_cifar10_round_trip(tmp_path: Path, skip_cifar_md5: None) -> None:
    data = _cifar10_files(tmp_path)
    bundle = load_dataset("cifar10", data_dir=tmp_path, val_fraction=0.1, seed=0)
    assert (bundle.num_classes, bundle.in_channels, bundle.image_size) == (10, 3, 32)
    assert str(tmp_path / "cifar-10-batches-py") in bundle.source
    assert bundle.train.x.shape == (90, 3, 32, 32) and bundle.val.x.shape == (10, 3, 32, 32)
    assert bundle.test.y.tolist() == data["test_y"]
    raw = data["test_x"].reshape(-1, 3, 32, 32)  # CIFAR rows are R plane, G plane, B plane, row-major
    assert min(_channel_corr(bundle.test.x, raw)) > 0.99999
    means = bundle.train.x.mean(dim=(0, 2, 3))
    assert means.abs().max() < 1e-4
    assert sorted(torch.cat([bundle.train.y, bundle.val.y]).tolist()) == sorted(data["train_y"])
    # Undo the normalisation (fitted on the test split): train + val are exactly the written training images,
    # and train keeps the file order.
    file_rows = [row.tobytes() for row in data["train_x"]]
    train_rows = _recover_bytes(bundle.train.x, bundle.test.x, raw)
    val_rows = _recover_bytes(bundle.val.x, bundle.test.x, raw)
    assert sorted(train_rows + val_rows) == sorted(file_rows)
    positions = [file_rows.index(r) for r in train_rows]
    assert positions == sorted(positions)


def test_cifar100_fine_labels(tmp_path: Path, skip_cifar_md5: None) -> None:
    data = _cifar100_files(tmp_path)
    bundle = load_dataset("cifar100", data_dir=tmp_path, val_fraction=0.5)
    assert (bundle.num_classes, bundle.in_channels, bundle.image_size) == (100, 3, 32)
    assert bundle.test.y.tolist() == data["test_y"]
    assert len(bundle.train) == len(bundle.val) == 100
    assert min(_channel_corr(bundle.test.x, data["test_x"].reshape(-1, 3, 32, 32))) > 0.99999


def test_cifar10_tarball_is_unpacked(tmp_path: Path, skip_cifar_md5: None) -> None:
    src = tmp_path / "src"
    data = _cifar10_files(src)
    with tarfile.open(tmp_path / "cifar-10-python.tar.gz", "w:gz") as tar:
        tar.add(src / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    bundle = load_dataset("cifar10", data_dir=tmp_path)
    assert bundle.test.y.tolist() == data["test_y"]


def _crafted_archive(path: Path, member: str, link: bool = False) -> None:
    with tarfile.open(path, "w:gz") as tar:
        info = tarfile.TarInfo(member)
        if link:
            info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
            tar.addfile(info)
        else:
            payload = b"overwritten"
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))


@pytest.mark.parametrize(("member", "link"), [("../victim.txt", False), ("/tmp/../victim.txt", False),
                                              ("cifar-10-batches-py/data_batch_1", True)])
def test_a_crafted_cifar_archive_writes_nothing(tmp_path: Path, skip_cifar_md5: None, member: str,
                                                link: bool) -> None:
    """A member outside the data folder (or a link) is refused before anything is unpacked, even where the
    archive's MD5 check is skipped (as here, for tiny files)."""
    root = tmp_path / "data"
    root.mkdir()
    victim = tmp_path / "victim.txt"
    victim.write_text("mine")
    _crafted_archive(root / "cifar-10-python.tar.gz", member, link)
    with pytest.raises(DatasetCorruptedError, match="nothing was unpacked") as info:
        load_dataset("cifar10", data_dir=root)
    assert "\n" not in str(info.value)
    assert victim.read_text() == "mine" and sorted(p.name for p in root.iterdir()) == ["cifar-10-python.tar.gz"]


def test_a_foreign_cifar_archive_fails_the_md5_check_before_unpacking(tmp_path: Path) -> None:
    _crafted_archive(tmp_path / "cifar-10-python.tar.gz", "../victim.txt")
    with pytest.raises(DatasetCorruptedError, match="MD5 check .* nothing was unpacked"):
        load_dataset("cifar10", data_dir=tmp_path / ".")
    assert not (tmp_path.parent / "victim.txt").exists()


def test_cifar_md5_is_enforced(tmp_path: Path) -> None:
    _cifar10_files(tmp_path)  # not the official files, and here torchvision's MD5 check is left in place
    with pytest.raises(DatasetCorruptedError) as info:
        load_dataset("cifar10", data_dir=tmp_path)
    assert "MD5" in str(info.value) and "data_batch_1" in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("name", "folder"), [("cifar10", "cifar-10-batches-py"), ("cifar100", "cifar-100-python")]
)
def test_cifar_missing(tmp_path: Path, name: str, folder: str) -> None:
    with pytest.raises(DatasetNotFoundError) as info:
        load_dataset(name, data_dir=tmp_path)
    msg = str(info.value)
    assert "\n" not in msg and os.path.join(str(tmp_path), folder) in msg and "`download=True`" in msg


# ----------------------------------------------------------------------------------- Debian's Fashion-MNIST


def _debian_package(share: Path) -> dict:
    """The layout of Debian's dataset-fashion-mnist: gzipped IDX files in <share>/datasets/fashion-mnist."""
    data = _mnist_files(share / "staging", "FashionMNIST")
    folder = share / "datasets" / "fashion-mnist"
    folder.mkdir(parents=True)
    for f in (share / "staging" / "FashionMNIST" / "raw").iterdir():
        with gzip.open(folder / f"{f.name}.gz", "wb") as out:
            out.write(f.read_bytes())
    return data


def test_fashion_mnist_found_in_debian_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = _debian_package(tmp_path / "share")
    monkeypatch.setenv("XDG_DATA_DIRS", f"{tmp_path / 'elsewhere'}:{tmp_path / 'share'}")
    monkeypatch.setenv("BAYESNAS_CACHE", str(tmp_path / "cache"))
    bundle = load_dataset("fashion-mnist", val_fraction=0.2)
    assert bundle.test.y.tolist() == data["test_y"].tolist()
    raw = tmp_path / "cache" / "fashion-mnist" / "FashionMNIST" / "raw"
    # The source names the package, the folder it was found in and the cache it was unpacked into.
    assert "dataset-fashion-mnist" in bundle.source
    assert str(tmp_path / "share" / "datasets" / "fashion-mnist") in bundle.source and str(raw) in bundle.source
    unpacked = raw / "train-images-idx3-ubyte"
    assert unpacked.read_bytes()[:4] == b"\x00\x00\x08\x03" and not list(raw.glob(".unpack-*"))
    stamp = unpacked.stat().st_mtime_ns
    again = load_dataset("fashion-mnist", val_fraction=0.2)  # unpacked once, then reused
    assert unpacked.stat().st_mtime_ns == stamp and torch.equal(again.train.x, bundle.train.x)
    # An explicit --data-dir wins over the system copy.
    _mnist_files(tmp_path / "mine", "FashionMNIST", n_train=30, n_test=10, seed=3)
    assert len(load_dataset("fashion-mnist", data_dir=tmp_path / "mine").test) == 10


def test_fashion_mnist_debian_folder_missing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_DATA_DIRS", str(tmp_path / "share"))
    monkeypatch.setenv("BAYESNAS_CACHE", str(tmp_path / "cache"))
    with pytest.raises(DatasetNotFoundError) as info:
        load_dataset("fashion-mnist")
    msg = str(info.value)
    assert "\n" not in msg and str(tmp_path / "share" / "datasets" / "fashion-mnist") in msg
    assert "apt-get install -y dataset-fashion-mnist" in msg and "`data_dir`" in msg
    assert not (tmp_path / "cache").exists()


def test_fashion_mnist_debian_corrupt_gz(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _debian_package(tmp_path / "share")
    packed = tmp_path / "share" / "datasets" / "fashion-mnist" / "t10k-labels-idx1-ubyte.gz"
    packed.write_bytes(packed.read_bytes()[:15])
    monkeypatch.setenv("XDG_DATA_DIRS", str(tmp_path / "share"))
    monkeypatch.setenv("BAYESNAS_CACHE", str(tmp_path / "cache"))
    with pytest.raises(DatasetCorruptedError, match="cannot unpack .*t10k-labels-idx1-ubyte.gz"):
        load_dataset("fashion-mnist")
    raw = tmp_path / "cache" / "fashion-mnist" / "FashionMNIST" / "raw"
    assert not (raw / "t10k-labels-idx1-ubyte").exists() and not list(raw.glob(".unpack-*"))


DEBIAN_FASHION = Path("/usr/share/datasets/fashion-mnist")


@pytest.mark.skipif(not DEBIAN_FASHION.is_dir(), reason="Debian's dataset-fashion-mnist is not installed "
                    "(.ci/run installs it)")
def test_fashion_mnist_real_debian_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("XDG_DATA_DIRS", raising=False)
    monkeypatch.setenv("BAYESNAS_CACHE", str(tmp_path / "cache"))
    bundle = load_dataset("fashion-mnist", fraction=0.05, val_fraction=0.1)
    assert str(DEBIAN_FASHION) in bundle.source
    assert (len(bundle.train) + len(bundle.val), len(bundle.test)) == (3000, 10000)  # the official test set, whole
    assert bundle.train.x.shape[1:] == (1, 28, 28) and bundle.num_classes == 10
    assert torch.bincount(bundle.test.y, minlength=10).tolist() == [1000] * 10


def test_fashion_mnist_debian_cache_not_writable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _debian_package(tmp_path / "share")
    (tmp_path / "cache").write_text("a file where the cache folder should be")
    monkeypatch.setenv("XDG_DATA_DIRS", str(tmp_path / "share"))
    monkeypatch.setenv("BAYESNAS_CACHE", str(tmp_path / "cache"))
    with pytest.raises(DatasetNotFoundError, match="cannot unpack them into .*set BAYESNAS_CACHE"):
        load_dataset("fashion-mnist")
