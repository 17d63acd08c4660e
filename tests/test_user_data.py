"""A user's own images: an ImageFolder tree of PNGs, an .npz file, tensors and a Dataset, searched by every method
and retrained; bad data refused in one line with nothing written; transfer of a genotype to other data; the trained
network read back."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import bayesnas
from bayesnas.cli import EXIT_ERROR, main
from bayesnas.data import load_dataset
from bayesnas.infer import config_data
from bayesnas.training import accuracy
from bayesnas.user_data import BadDataError, dataset_name, read_image_folder

CLASSES = 3
PER_CLASS = 40
TINY = {  # each method's digits preset, narrowed, with a one-epoch retraining where the method retrains
    "pgnas": {"space": {"stem_channels": 8, "widths": [8, 16], "depths": [1, 1], "kernel_sizes": [1, 3]},
              "options": {"num_candidates": 4}},
    "gdas": {"space": {"channels": 4, "layout": "NR", "states": 2},
             "options": {"warmup_epochs": 0, "retrain_epochs": 1}},
    "vinnas": {"space": {"channels": 2, "layout": "R", "states": 1},
               "options": {"warmup_epochs": 0, "retrain_epochs": 1}},
    "pcnas": {"space": {"stem_channels": 4, "widths": [4, 8, 8], "depths": [1, 1, 1]},
              "options": {"warmup_epochs": 1, "interval_epochs": 1, "pool_size": 2, "num_evaluations": 3,
                          "retrain_epochs": 1}},
    "oneshot": {"space": {"stem_channels": 4, "widths": [4, 8, 8], "depths": [1, 1, 1]},
                "options": {"pool_size": 2, "num_evaluations": 3, "retrain_epochs": 1}},
    "random": {"space": {"channels": 4, "layout": "NR", "states": 2},
               "options": {"num_samples": 2, "retrain_epochs": 1}},
}


def _pattern(label: int, rng: np.random.Generator, size: int = 8) -> np.ndarray:
    """A grey image whose bright rows say its class, over noise."""
    image = rng.integers(0, 60, (size, size)).astype(np.uint8)
    image[3 * label: 3 * label + 2] = 250
    return image


def make_folder(root: Path, sizes: dict[int, int] | None = None, per_class: int = PER_CLASS) -> Path:
    """``root/class<c>/<i>.png``: ``CLASSES`` classes of ``per_class`` PNGs (8x8, or ``sizes[i]`` for image i)."""
    rng = np.random.default_rng(0)
    for c in range(CLASSES):
        (root / f"class{c}").mkdir(parents=True)
        for i in range(per_class):
            size = (sizes or {}).get(i, 8)
            Image.fromarray(_pattern(c, rng, size)).save(root / f"class{c}" / f"{i}.png")
    return root


def arrays(n_per_class: int = PER_CLASS, size: int = 8) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(1)
    y = np.repeat(np.arange(CLASSES), n_per_class)
    return np.stack([_pattern(int(c), rng, size) for c in y]), y


@pytest.fixture
def cache(tmp_path, monkeypatch):
    folder = tmp_path / "cache"
    monkeypatch.setenv("BAYESNAS_CACHE", str(folder))
    return folder


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_an_image_folder_is_read_as_its_classes_and_split_with_whole_val_and_test(tmp_path):
    root = make_folder(tmp_path / "imgs")
    images = read_image_folder(root)
    assert images.classes == ("class0", "class1", "class2") and set(images.splits) == {"train"}
    x, y = images.splits["train"]
    assert x.shape == (CLASSES * PER_CLASS, 1, 8, 8) and x.dtype == np.uint8 and np.bincount(y).tolist() == [40] * 3
    expected = np.asarray(Image.open(root / "class1" / "0.png"))
    assert np.array_equal(x[PER_CLASS, 0], expected)  # class1's first file, in sorted order
    full = load_dataset(str(root), seed=3)
    thinned = load_dataset(str(root), seed=3, fraction=0.5)
    assert (len(full.test), len(full.val)) == (round(0.2 * 120), round(0.1 * 120))
    assert torch.equal(thinned.test.y, full.test.y) and len(thinned.val) == len(full.val)  # only train is thinned
    assert len(thinned.train) == round(0.5 * len(full.train))
    mean = full.train.x.mean(dim=(0, 2, 3))
    assert torch.allclose(mean, torch.zeros(1), atol=1e-5)  # normalised by the training split's statistics
    assert full.name == str(root) and full.classes == images.classes and len(full.fingerprint) == 16


def test_a_folder_with_train_val_test_subfolders_keeps_its_splits(tmp_path):
    for split, n in (("train", 30), ("val", 5), ("test", 7)):
        make_folder(tmp_path / "imgs" / split, per_class=n)
    data = load_dataset(str(tmp_path / "imgs"), seed=0)
    assert (len(data.train), len(data.val), len(data.test)) == (90, 15, 21)


@pytest.mark.slow
@pytest.mark.parametrize("method", list(TINY))
def test_every_method_searches_an_image_folder_and_retrains(method, tmp_path):
    root = make_folder(tmp_path / "imgs")
    out = tmp_path / "run"
    assert main(["search", "--method", method, "--data", str(root), "--epochs", "2", "--config",
                 _config_file(tmp_path, TINY[method]), "--device", "cpu", "--out", str(out), "--no-progress"]) == 0
    config = json.loads((out / "config.json").read_text())
    summary = json.loads((out / "summary.json").read_text())
    assert config["dataset"] == str(root) and config["data_fingerprint"] == read_image_folder(root).fingerprint
    assert 0 <= summary["test_accuracy"] <= 1
    trained = bayesnas.train(out, epochs=1, device="cpu", progress=False)
    assert trained["dataset"] == str(root) and (out / "model.pt").is_file()
    # the saved weights give the network back, and it scores the reported test accuracy exactly
    run = bayesnas.load_run(out)
    data = config_data(run.config, torch.device("cpu"))
    assert accuracy(run.network(), data.test) == trained["test_accuracy"]


def _config_file(tmp_path: Path, settings: dict) -> str:
    path = tmp_path / "tiny.json"
    path.write_text(json.dumps(settings))
    return str(path)


def test_tensors_arrays_and_a_dataset_through_the_api(tmp_path, cache):
    x, y = arrays()
    forms = {"arrays": (x, y), "tensors": (torch.from_numpy(x), torch.from_numpy(y)),
             "dataset": torch.utils.data.TensorDataset(torch.from_numpy(x)[:, None].float(), torch.from_numpy(y))}
    names = {}
    for form, data in forms.items():
        run = bayesnas.search(dataset=data, method="pgnas", epochs=1, out=tmp_path / form, device="cpu",
                              progress=False, **TINY["pgnas"])
        names[form] = run.config.dataset
        assert run.finished and run.summary["dataset"] == run.config.dataset
    assert names["arrays"] == names["tensors"] and Path(names["arrays"]).parent == cache / "data"
    assert names["dataset"] != names["arrays"]  # float images: other content, another file
    kept = np.load(names["arrays"])
    assert np.array_equal(kept["x_train"][:, 0], x) and np.array_equal(kept["y_train"], y)
    split = {"train": (x[::2], y[::2]), "val": (x[1::4], y[1::4]), "test": (x[3::4], y[3::4])}
    data = load_dataset(dataset_name(split), seed=0)  # splits given in memory are kept as given
    assert (len(data.train), len(data.val), len(data.test)) == (60, 30, 30)


def test_an_npz_file_from_the_command_line(tmp_path):
    x, y = arrays()
    path = tmp_path / "mine.npz"
    np.savez(path, x=x.astype(np.float32) / 255, y=y)
    out = tmp_path / "run"
    assert main(["search", "--method", "pgnas", "--data", str(path), "--epochs", "1", "--config",
                 _config_file(tmp_path, TINY["pgnas"]), "--device", "cpu", "--out", str(out), "--no-progress"]) == 0
    assert json.loads((out / "config.json").read_text())["dataset"] == str(path)


def _mixed_sizes(root: Path) -> None:
    make_folder(root, sizes={5: 10})


def _one_class(root: Path) -> None:
    make_folder(root)
    for c in (1, 2):
        for f in (root / f"class{c}").iterdir():
            f.unlink()
        (root / f"class{c}").rmdir()


def _empty_class(root: Path) -> None:
    make_folder(root)
    (root / "class3").mkdir()


def _unreadable(root: Path) -> None:
    make_folder(root)
    (root / "class1" / "7.png").write_bytes(b"not a png")


def _not_square(root: Path) -> None:
    make_folder(root)
    rng = np.random.default_rng(0)
    for c in range(CLASSES):
        for f in (root / f"class{c}").iterdir():
            Image.fromarray(rng.integers(0, 255, (8, 6)).astype(np.uint8)).save(f)


def _labels_out_of_range(root: Path) -> None:
    x, y = arrays()
    np.savez(root.with_suffix(".npz"), x_train=x, y_train=y, classes=np.array(["a", "b"]))


def _nan(root: Path) -> None:
    x, y = arrays()
    x = x.astype(np.float32)
    x[3, 2, 2] = np.nan
    np.savez(root.with_suffix(".npz"), x=x, y=y)


@pytest.mark.parametrize(("make", "message"), [
    (_mixed_sizes, "images of different sizes"),
    (_one_class, "at least 2 classes"),
    (_empty_class, "class3 holds no images"),
    (_unreadable, "7.png as an image"),
    (_not_square, "must be square"),
    (_labels_out_of_range, "labels 0..2, outside 0..1"),
    (_nan, "NaN or infinite"),
])
def test_bad_data_is_one_line_and_nothing_is_written(make, message, tmp_path, capsys):
    root = tmp_path / "imgs"
    make(root)
    path = root if root.is_dir() else root.with_suffix(".npz")
    before = _files(tmp_path)
    out = tmp_path / "run"
    assert main(["search", "--method", "pgnas", "--data", str(path), "--out", str(out), "--no-progress"]) == EXIT_ERROR
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not out.exists() and _files(tmp_path) == before


def test_bad_in_memory_data_writes_nothing_to_the_cache(tmp_path, cache):
    x, y = arrays()
    with pytest.raises(BadDataError, match="images of different shapes"):
        bayesnas.search(dataset=[(torch.zeros(1, 8, 8), 0), (torch.zeros(1, 6, 6), 1)], out=tmp_path / "run")
    with pytest.raises(BadDataError, match="expected 120 integer labels"):
        bayesnas.search(dataset=(x, y[:-1]), out=tmp_path / "run")
    assert not cache.exists() and not (tmp_path / "run").exists()


def test_changed_data_is_refused_by_the_run_that_used_it(tmp_path):
    root = make_folder(tmp_path / "imgs")
    run = bayesnas.search(dataset=root, method="pgnas", epochs=1, out=tmp_path / "run", device="cpu", progress=False,
                          **TINY["pgnas"])
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(root / "class0" / "0.png")
    with pytest.raises(BadDataError, match="changed since this run used it"):
        run.network()


def test_a_digits_cell_genotype_trains_on_other_data(tmp_path):
    """The DARTS practice: a cell found on 8x8 grey digits rebuilt for 12x12 colour images of 3 classes."""
    run = bayesnas.search(method="gdas", epochs=1, data_fraction=0.3, out=tmp_path / "run", device="cpu",
                          progress=False, **{**TINY["gdas"], "options": {"warmup_epochs": 0, "retrain_epochs": 0}})
    rng = np.random.default_rng(2)
    y = np.repeat(np.arange(3), 20)
    x = rng.random((60, 12, 12, 3)).astype(np.float32)
    np.savez(tmp_path / "colour.npz", x=x, y=y)
    trained = bayesnas.train(run.genotype, dataset=tmp_path / "colour.npz", epochs=1, device="cpu", progress=False,
                             out=tmp_path / "colour")
    built = trained["network_genotype"]
    assert (built["config"]["in_channels"], built["config"]["num_classes"], built["config"]["image_size"]) == (3, 3, 12)
    assert built["choices"] == run.genotype.choices and trained.network(torch.zeros(2, 3, 12, 12)).shape == (2, 3)
    wider = bayesnas.train(run.genotype, dataset=tmp_path / "colour.npz", epochs=1, device="cpu", progress=False,
                           space_options={"eval_channels": 8, "eval_layout": "NNR"})  # DARTS-style scaling
    assert wider["network_genotype"]["config"]["eval_channels"] == 8 and wider["params"] > trained["params"]
    with pytest.raises(bayesnas.GenotypeError):  # a searched cell has no place in a space of fewer states
        bayesnas.train(run.genotype, dataset=tmp_path / "colour.npz", epochs=1, space_options={"states": 1})
    with pytest.raises(bayesnas.ConfigError, match=r"`data_fraction` must be \(0, 1\]"):
        bayesnas.train(run.genotype, dataset=tmp_path / "colour.npz", data_fraction=0.0)
    net = bayesnas.load_network(tmp_path / "colour")
    data = load_dataset(str(tmp_path / "colour.npz"), seed=0)
    assert accuracy(net, data.test) == trained["test_accuracy"]
