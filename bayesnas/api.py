"""The Python API: the command line's search and train as functions, and finished runs loaded back.

``bayesnas search`` and ``bayesnas train`` call :func:`search` and :func:`train`; a notebook or script calls them
directly with keyword arguments. Errors are the library's own types (:class:`~bayesnas.config.ConfigError`,
:class:`~bayesnas.search_folder.SearchError`, ...) and name the Python arguments in backquotes (```out```,
```resume=True```); the command line shows them as its flags (``--out``, ``--resume``).
"""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bayesnas.config import ConfigError, SearchConfig, build_config
from bayesnas.domains import DomainError
from bayesnas.io import DamagedFileError, read_json
from bayesnas.spaces import Genotype, genotype_path, load_genotype

if TYPE_CHECKING:
    import arviz as az
    import pandas as pd
    import torch

    from bayesnas.data import DataBundle
    from bayesnas.methods import SearchMethod
    from bayesnas.training import StandaloneTraining


TRAINED_WEIGHTS = "model.pt"
"""The network :func:`train` trained, as a weights-only state dict beside ``train_summary.json``."""


@dataclass(frozen=True)
class Run:
    """A search run folder, read back: its configuration, summary and genotype (``None`` while the search has not
    finished), with the metrics, the ArviZ posterior and the trained method loaded on demand."""

    path: Path
    config: SearchConfig
    summary: dict[str, Any] | None
    genotype: Genotype | None

    @property
    def finished(self) -> bool:
        return self.summary is not None

    def metrics(self) -> pd.DataFrame:
        """``metrics.jsonl`` as a table: one row per epoch (nested figures flattened to ``a.b`` columns)."""
        import pandas as pd

        from bayesnas.io import read_jsonl

        return pd.json_normalize(read_jsonl(self.path / "metrics.jsonl"))

    def posterior(self) -> az.InferenceData:
        """The exported posterior (``posterior.nc``) as ArviZ ``InferenceData``."""
        from bayesnas.diagnostics import POSTERIOR_FILE, read_posterior

        return read_posterior(self.path / POSTERIOR_FILE)

    def network(self, *, device: str | torch.device = "cpu", data_dir: str | os.PathLike | None = None,
                download: bool = False) -> torch.nn.Module:
        """The selected architecture with trained weights, in eval mode, for inference on images normalised as the
        run's data (``bayesnas.load_dataset(run.config.dataset, seed=run.config.split_seed, ...)``): the network
        ``bayesnas train`` trained into this folder (``model.pt``, on the run's own data set) where there is one,
        else the search's retrained one (``selected.pt``), else the super-network's inherited weights."""
        from bayesnas.data import dataset_key

        if not self.finished or self.genotype is None:
            raise ConfigError(f"{self.path} is not a finished search (no summary.json): no selected network yet")
        trained = self.path / "train_summary.json"
        if trained.exists() and read_json(trained).get("dataset") == dataset_key(self.config.dataset):
            return load_network(self.path, device=device)
        method = self.trained(device=device, data_dir=data_dir, download=download)
        return _retrained_network(self, method) or method.inherited_network(self.genotype).eval()

    def trained(self, *, device: str | torch.device = "cpu", data_dir: str | os.PathLike | None = None,
                download: bool = False) -> SearchMethod:
        """The search method with its trained modules (super-network, guide or proposal) restored from
        ``checkpoint.pt`` in eval mode, on the run's data split; e.g. ``run.trained().networks()``."""
        import pyro

        from bayesnas.infer import config_data, load_trained, resolve_device

        device = resolve_device(device)
        data = config_data(self.config, device, data_dir, download)
        with pyro.settings.context(module_local_params=True):
            return load_trained(self.config, self.path, data, device)


def load_run(path: str | os.PathLike) -> Run:
    """Read the run folder ``path`` (written by :func:`search` or ``bayesnas search``)."""
    path = Path(path)
    try:
        config = SearchConfig.from_dict(read_json(path / "config.json"), origin=str(path / "config.json"))
    except FileNotFoundError:
        raise ConfigError(f"{path} holds no search run (config.json is missing)") from None
    summary_path = path / "summary.json"
    summary = read_json(summary_path) if summary_path.exists() else None
    if summary is not None and not isinstance(summary.get("genotype"), str):
        raise DamagedFileError(f"{summary_path} names no genotype file: not a summary bayesnas wrote")
    genotype = load_genotype(path / summary["genotype"]) if summary is not None else None
    return Run(path, config, summary, genotype)


def search(config: SearchConfig | dict[str, Any] | str | os.PathLike | None = None, *,
           out: str | os.PathLike | None = None, preset: str | None = None, method: str | None = None,
           space_name: str | None = None, options: dict[str, Any] | None = None, device: str = "auto",
           resume: bool = False, data_dir: str | os.PathLike | None = None, download: bool = False,
           progress: bool = True, log_epochs: bool = False, **settings: Any) -> Run:
    """Run (or, with ``resume=True``, continue) one search, as ``bayesnas search`` does, and return the run.

    The configuration is built by :func:`bayesnas.config.build_config` from ``config`` (a
    :class:`SearchConfig`, a dict or a JSON file), ``preset``, ``method``, ``space_name``, ``options`` and
    ``settings`` (any other :class:`SearchConfig` key, e.g. ``epochs=5``); ``out`` defaults to
    ``runs/<method>-<dataset>-seed<seed>-<time>``. ``dataset`` may also be a user's own images (a folder, an
    ``.npz`` file, tensors, arrays or a ``Dataset``: :mod:`bayesnas.user_data`). ``progress`` shows bars;
    ``log_epochs`` prints one line per epoch instead (batch-job logs). Example::

        run = bayesnas.search(method="gdas", epochs=5, out="runs/gdas5")
        run.summary["test_accuracy"], run.genotype, run.metrics()
    """
    from bayesnas.infer import run_search
    from bayesnas.user_data import dataset_name

    if settings.get("dataset") is not None:
        settings["dataset"] = dataset_name(settings["dataset"])
    config = build_config(config, preset_name=preset, method=method, space_name=space_name, options=options,
                          **settings)
    if resume and out is None:
        raise ConfigError("`resume=True` needs `out`, the run folder to continue")
    if out is None:
        name = preset or f"{config.method}-{Path(config.dataset).stem}"
        out = f"runs/{name}-seed{config.seed}-{time.strftime('%Y%m%d-%H%M%S')}"
    run_search(config, out, device=device, resume=resume, data_dir=data_dir, download=download, progress=progress,
               log_epochs=log_epochs)
    return load_run(out)


def _retrained_network(run: Run, method: SearchMethod) -> torch.nn.Module | None:
    """The selected network as the search retrained it (``selected.pt``), in eval mode; None where it did not."""
    from bayesnas.io import load_weights
    from bayesnas.search_folder import SELECTED_WEIGHTS

    weights = run.path / SELECTED_WEIGHTS
    if not weights.exists() or run.genotype is None:
        return None
    net = method.space.build(run.genotype, **method.retrain_build_options()).to(method.device)
    try:
        net.load_state_dict(load_weights(weights, method.device))
    except RuntimeError as err:  # weights of another network (another run or method)
        raise DamagedFileError(f"{weights} does not fit this run's network ({str(err).splitlines()[0]})") from None
    return net.eval()


PREDICT_FILE = "predict_{split}.json"


def predict(run: Run | str | os.PathLike, *, samples: int = 32, split: str = "test", seed: int = 0,
            out: str | os.PathLike | None = None, device: str = "auto", data_dir: str | os.PathLike | None = None,
            download: bool = False) -> dict[str, Any]:
    """Bayesian model averaging over ``samples`` networks drawn from a finished run's trained posterior or
    proposal (:mod:`bayesnas.predictive`) against the single selected architecture, on the run's ``split``
    (``val`` or ``test``); returns and writes ``predict_<split>.json``, ``reliability_<split>.png`` and
    ``samples_<split>.png`` into ``out`` (default: the run folder).

    Scores (:mod:`bayesnas.calibration`: accuracy, NLL, Brier, ECE with 15 bins) of: ``bma``; ``inherited``, the
    selected genotype with the super-network's weights (VINNAS: its posterior-mean network); ``retrained``, the
    selected network as the search retrained it (``selected.pt``), where it did. ``curve``: BMA's scores for
    S = 1, 2, 4, ..., ``samples``. Draws are seeded by ``seed``."""
    import pyro

    from bayesnas.diagnostics import save_figure
    from bayesnas.infer import config_data, load_trained, resolve_device
    from bayesnas.io import check_writable, write_json
    from bayesnas.predictive import SPLITS, plot_reliability, plot_sample_curve, predict_method

    run = run if isinstance(run, Run) else load_run(run)
    if split not in SPLITS:
        raise ConfigError(f"`split` must be one of {', '.join(SPLITS)}, got {split!r}")
    if not isinstance(samples, int) or isinstance(samples, bool) or samples < 1:
        raise ConfigError(f"`samples` must be an integer >= 1, got {samples!r}")
    if not run.finished or run.genotype is None:
        raise ConfigError(f"{run.path} is not a finished search (no summary.json): nothing to predict with")
    folder = Path(out) if out is not None else run.path
    check_writable(folder)
    device = resolve_device(device)
    data = config_data(run.config, device, data_dir, download)
    with pyro.settings.context(module_local_params=True):
        method = load_trained(run.config, run.path, data, device)
        single = {"inherited": method.inherited_network(run.genotype), "retrained": _retrained_network(run, method)}
        pyro.set_rng_seed(seed)
        result = predict_method(method, getattr(data, split), samples, single)
    result = {"run": str(run.path), "method": run.config.method, "split": split, "samples": samples, "seed": seed,
              **result}
    title = f"{run.config.method}, {split}"
    write_json(folder / PREDICT_FILE.format(split=split), result)
    save_figure(plot_reliability(result, title), folder / f"reliability_{split}.png")
    save_figure(plot_sample_curve(result, title), folder / f"samples_{split}.png")
    return result


def ensemble(run: Run | str | os.PathLike, *, members: int = 5, strategy: str = "draws", candidates: int = 64,
             epochs: int | None = None, seed: int = 0, resamples: int = 1000, out: str | os.PathLike | None = None,
             device: str = "auto", data_dir: str | os.PathLike | None = None, download: bool = False,
             progress: bool = True) -> dict[str, Any] | None:
    """An architecture ensemble of a finished run (:mod:`bayesnas.ensembles`): ``members`` distinct architectures
    drawn from its posterior or proposal by ``strategy`` (``draws``, ``top`` or ``greedy``, from at most
    ``candidates`` draws), each retrained from scratch by the method's retraining recipe (``epochs`` overrides its
    epochs), against the selected architecture retrained with ``members`` seeds (deep ensemble) and alone, scored on
    the test split, its corrupted copies and an out-of-distribution set. Writes ``ensemble.json``, ``ensemble.md``,
    ``shift.png``, ``reliability.png`` and the members' weights into ``out`` (default
    ``<run>/ensemble-<strategy>-<members>``); a folder of the same settings resumes with the members it holds.
    Returns ``ensemble.json``'s content (None on a ``torchrun`` launch's other processes). Example::

        result = bayesnas.ensemble("runs/gdas5", members=5, epochs=10)
        result["predictors"]["posterior"]["test"]["nll"]    # value and 95 % bootstrap interval
    """
    from bayesnas.ensembles import EnsembleSettings, build_ensemble

    run = run if isinstance(run, Run) else load_run(run)
    try:
        settings = EnsembleSettings(members=members, strategy=strategy, candidates=candidates, epochs=epochs,
                                    seed=seed, resamples=resamples)
    except DomainError as err:
        raise ConfigError(f"`{err.name}` {err.requirement}") from None
    folder = Path(out) if out is not None else run.path / f"ensemble-{strategy}-{members}"
    return build_ensemble(run, settings, folder, device, None if data_dir is None else str(data_dir), download,
                          progress)


class TrainedNetwork(dict):
    """What :func:`train` returns: its ``train_summary.json`` content (a dict) and the trained ``network`` (eval
    mode, on the device it trained on)."""

    def __init__(self, summary: dict[str, Any], network: torch.nn.Module) -> None:
        super().__init__(summary)
        self.network = network


def train(genotype: Genotype | str | os.PathLike, *, dataset: Any = None, out: str | os.PathLike | None = None,
          force: bool = False, epochs: int = 30, batch_size: int = 64, lr: float = 0.05, weight_decay: float = 3e-4,
          cutout: int = 0, auxiliary: float = 0.0, drop_path: float = 0.0, precision: str = "fp32",
          channels_last: bool = False, seed: int = 0, data_fraction: float = 1.0,
          space_options: dict[str, Any] | None = None, device: str = "auto",
          data_dir: str | os.PathLike | None = None, download: bool = False,
          progress: bool = True) -> TrainedNetwork:
    """Train ``genotype``'s network from scratch (SGD with Nesterov momentum and a cosine schedule, weight decay,
    optional cutout, auxiliary head and drop-path: :class:`bayesnas.training.TrainRecipe`) and return its
    ``train_summary.json`` content (accuracies, parameters, the per-epoch history) with the trained network
    (:class:`TrainedNetwork`).

    ``dataset`` (a name, a user's folder or ``.npz`` file, or in-memory data as :func:`search` takes them) defaults
    to the one the genotype was searched on. On another data set the architecture is rebuilt for its channels,
    classes and image size, as DARTS evaluates a searched cell on other data (``network_genotype`` in the summary);
    ``space_options`` scale it where the space allows (cells: ``eval_channels``, ``eval_layout``; chain: ``widths``,
    ``stem_channels``; choices the new settings cannot hold are refused); ``data_fraction`` thins the training
    images only. ``out`` (default: the genotype file's folder, or nothing
    written for a :class:`Genotype` object; ``genotype`` may also name a run folder) receives
    ``train_summary.json`` (an earlier one is replaced only with ``force=True``), the trained network's weights
    (:data:`TRAINED_WEIGHTS`, weights only; :func:`load_network` rebuilds the network with them) and a drawing of
    the architecture, ``architecture.png`` (a file of that name that bayesnas did not write is left as it is)."""
    import torch

    from bayesnas.data import load_dataset
    from bayesnas.infer import resolve_device
    from bayesnas.io import check_writable
    from bayesnas.methods import DATA_SHAPE, shaped_space
    from bayesnas.run_folder import LOCK, RunLock, folder_kind
    from bayesnas.speed import resolve_mode
    from bayesnas.training import StandaloneTraining
    from bayesnas.user_data import dataset_name

    try:
        recipe = StandaloneTraining(epochs=epochs, batch_size=batch_size, lr=lr, weight_decay=weight_decay,
                                    cutout=cutout, aux_weight=auxiliary, precision=precision,
                                    channels_last=channels_last, drop_path=drop_path, seed=seed,
                                    data_fraction=data_fraction)
    except DomainError as err:  # named as the argument (and so the command line's flag) that set it
        argument = "auxiliary" if err.name == "aux_weight" else err.name
        raise ConfigError(f"`{argument}` {err.requirement}") from None
    source = None
    if not isinstance(genotype, Genotype):
        source = genotype_path(genotype)
        genotype = load_genotype(genotype)
    dataset = dataset_name(dataset) if dataset is not None else genotype.dataset
    if dataset is None:
        raise ConfigError("the genotype does not record the data set it was searched on; pass `dataset`")
    device = resolve_device(device)
    out = Path(out) if out is not None else (source.parent if source is not None else None)
    if out is not None and (out / "train_summary.json").exists() and not force:
        raise ConfigError(f"{out / 'train_summary.json'} holds an earlier result; pass `force=True` to replace it "
                          "or choose another `out`")
    if out is not None and (out / TRAINED_WEIGHTS).exists() and not (out / "train_summary.json").exists():
        raise ConfigError(f"{out / TRAINED_WEIGHTS} was not written by bayesnas train; choose another `out`")
    data = load_dataset(dataset, data_dir=data_dir, download=download, seed=seed,
                        fraction=recipe.data_fraction).to(device)
    # the DARTS practice: the searched architecture rebuilt for this data's channels, classes and image size
    options = {**{k: v for k, v in genotype.config.items() if k not in DATA_SHAPE}, **(space_options or {})}
    space = shaped_space(genotype.space, data, options, origin="space_options")
    built = Genotype(genotype.space, space.config.to_dict(), genotype.choices, data.name)
    net = space.build(built, auxiliary=auxiliary > 0, drop_path=drop_path).to(device)
    try:
        with torch.no_grad():
            net.eval()(data.train.x[:2])
    except RuntimeError as err:
        raise ConfigError(f"the {genotype.space} network of this genotype cannot take {data.name}'s "
                          f"{data.in_channels}x{data.image_size}x{data.image_size} images: "
                          f"{' '.join(str(err).split())[:200]}") from None
    precision, layout = resolve_mode(precision, channels_last, device)
    recipe = replace(recipe, precision=precision, channels_last=layout)
    if out is not None:
        check_writable(out)  # before the training, not after it
    # while it trains, a second training (or a search) into the same folder is refused
    with RunLock(out / LOCK, folder_kind(out) or "training") if out is not None else contextlib.nullcontext():
        result = _train_and_write(genotype, built, source, net, data, recipe, progress, out)
    return TrainedNetwork(result, net.eval())


def _train_and_write(genotype: Genotype, built: Genotype, source: Path | None, net: torch.nn.Module,
                     data: DataBundle, recipe: StandaloneTraining, progress: bool, out: Path | None) -> dict[str, Any]:
    """:func:`train`'s training, result and files (into ``out``, held by the caller)."""
    from bayesnas.drawing import ARCHITECTURE_FILE, draw_genotype
    from bayesnas.io import write_json
    from bayesnas.run_folder import RUN_MARKER
    from bayesnas.search_folder import save_tensors
    from bayesnas.spaces.profile import count_params
    from bayesnas.training import accuracy, train_network

    history = train_network(net, data.train, data.val, recipe, recipe.seed, progress=progress)
    result = {"genotype": str(source) if source is not None else genotype.to_dict(), "dataset": data.name,
              "network_genotype": built.to_dict(), "auxiliary": recipe.aux_weight, "drop_path": recipe.drop_path,
              "seed": recipe.seed, "train_images": len(data.train),
              "params": count_params(net), "params_with_auxiliary": count_params(net, auxiliary=True),
              "val_accuracy": accuracy(net, data.val, **recipe.evaluation()),
              "test_accuracy": accuracy(net, data.test, **recipe.evaluation()),
              "epochs": recipe.epochs, "precision": recipe.precision, "channels_last": recipe.channels_last,
              "history": history}
    if out is not None:
        drawing = out / ARCHITECTURE_FILE
        # a drawing already there is replaced only where we wrote it: in a run folder, or beside our own result
        ours = not drawing.exists() or (out / RUN_MARKER).exists() or (out / "train_summary.json").exists()
        save_tensors(out / TRAINED_WEIGHTS, {k: v.detach().cpu() for k, v in net.state_dict().items()})
        write_json(out / "train_summary.json", result)
        if ours and not drawing.is_symlink():
            draw_genotype(genotype, drawing)
    return result


def load_network(folder: str | os.PathLike, *, device: str | torch.device = "cpu") -> torch.nn.Module:
    """The network :func:`train` (``bayesnas train``) trained into ``folder``: rebuilt from ``train_summary.json``'s
    ``network_genotype`` with the weights of :data:`TRAINED_WEIGHTS`, in eval mode on ``device``. It takes images
    normalised as that training's data split did (``load_dataset(summary["dataset"], seed=summary["seed"])``)."""
    from bayesnas.infer import resolve_device
    from bayesnas.io import load_weights
    from bayesnas.spaces import get_space

    folder = Path(folder)
    try:
        summary = read_json(folder / "train_summary.json")
    except FileNotFoundError:
        raise ConfigError(f"{folder} holds no trained network (train_summary.json is missing)") from None
    if not isinstance(summary.get("network_genotype"), dict) or not (folder / TRAINED_WEIGHTS).is_file():
        raise ConfigError(f"{folder} holds no network that bayesnas train saved (no network_genotype or "
                          f"{TRAINED_WEIGHTS}; train it again)")
    genotype = Genotype.from_dict(summary["network_genotype"])
    device = resolve_device(device)
    net = get_space(genotype.space, genotype.config).build(genotype, auxiliary=summary["auxiliary"] > 0,
                                                           drop_path=summary["drop_path"]).to(device)
    try:
        net.load_state_dict(load_weights(folder / TRAINED_WEIGHTS, device))
    except RuntimeError as err:
        raise DamagedFileError(f"{folder / TRAINED_WEIGHTS} does not fit the network of "
                               f"{folder / 'train_summary.json'} ({str(err).splitlines()[0]})") from None
    return net.eval()
