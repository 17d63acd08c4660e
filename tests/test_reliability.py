"""Nothing lost, nothing silent: files that are not ours are never overwritten, inputs the operating system
refuses are one-line errors, and a search folder holds one search at a time. Each case asserts a non-zero exit,
one line on stderr without a traceback, and the folder's files unchanged (hashes)."""

import contextlib
import hashlib
import json
import os
import re
import stat
import subprocess
import sys

import pytest

from bayesnas.cli import EXIT_ERROR, main
from bayesnas.io import atomic_write_text, orphaned_temporaries
from bayesnas.run_folder import LOCK, RUN_MARKER

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny networks

TINY = {"epochs": 1, "batch_size": 64, "lr": 0.05, "data_fraction": 0.3,
        "space": {"stem_channels": 8, "widths": [8, 16], "depths": [1, 1], "kernel_sizes": [1, 3]},
        "options": {"num_candidates": 4, "posterior_draws": 8}}


def _config(tmp_path) -> str:
    path = tmp_path / "tiny.json"
    path.write_text(json.dumps(TINY))
    return str(path)


def _hashes(folder) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _one_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in err[0], err
    return err[0]


FOREIGN = {
    "user files": {"notes.txt": "mine"},
    "a summary.json we did not write": {"summary.json": '{"mine": 1}'},
    "a metrics.jsonl we did not write": {"metrics.jsonl": '{"epoch": 0}\n'},
    "a genotype.json and a plot we did not write": {"genotype.json": "{}", "training.png": "png"},
}


@pytest.mark.parametrize("case", FOREIGN)
def test_search_refuses_a_folder_that_is_not_a_run_of_ours(case, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    for name, text in FOREIGN[case].items():
        (out / name).write_text(text)
    before = _hashes(out)
    assert main(["search", "--config", _config(tmp_path), "--out", str(out), "--no-progress"]) == EXIT_ERROR
    assert "not a bayesnas run folder" in _one_line(capsys)
    assert _hashes(out) == before


@pytest.mark.parametrize("resume", [False, True])
def test_search_out_that_is_a_file(resume, tmp_path, capsys):
    out = tmp_path / "out"
    out.write_text("mine")
    args = ["search", "--config", _config(tmp_path), "--out", str(out), "--no-progress"] + ["--resume"] * resume
    assert main(args) == EXIT_ERROR
    assert "is a file" in _one_line(capsys)
    assert out.read_text() == "mine"


@pytest.mark.parametrize("existing", [False, True])
def test_resume_where_there_is_no_run(existing, tmp_path, capsys):
    out = tmp_path / "typo"
    if existing:
        out.mkdir()
        (out / "notes.txt").write_text("mine")
    assert main(["search", "--config", _config(tmp_path), "--out", str(out), "--resume", "--no-progress"]) \
        == EXIT_ERROR
    assert f"nothing to resume at {out}" in _one_line(capsys)
    assert _hashes(out) == ({"notes.txt": hashlib.sha256(b"mine").hexdigest()} if existing else {})
    assert out.exists() == existing


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("run")
    run = folder / "run"
    assert main(["search", "--config", _config(folder), "--out", str(run), "--no-progress"]) == 0
    return run


def test_a_run_has_our_marker_and_no_lock_when_done(finished_run):
    assert (finished_run / RUN_MARKER).exists() and (finished_run / "config.json").exists()
    assert not (finished_run / LOCK).exists()


@contextlib.contextmanager
def _locked_by_a_live_process(folder):
    """``folder``'s lock held by another live process (its id is yielded); the lock is removed afterwards."""
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (folder / LOCK).write_text(str(sleeper.pid))
        yield sleeper.pid
    finally:
        sleeper.kill()
        sleeper.wait()
        (folder / LOCK).unlink()


def test_a_running_search_refuses_a_second_resume(finished_run, tmp_path, capsys):
    with _locked_by_a_live_process(finished_run) as pid:
        before = _hashes(finished_run)
        assert main(["search", "--config", _config(tmp_path), "--out", str(finished_run), "--resume",
                     "--no-progress"]) == EXIT_ERROR
        assert f"in use by a running search (process {pid})" in _one_line(capsys)
        assert _hashes(finished_run) == before


def test_a_stale_lock_and_orphaned_temporaries_are_cleaned_on_resume(tmp_path):
    run = tmp_path / "run"
    config = _config(tmp_path)
    assert main(["search", "--config", config, "--out", str(run), "--no-progress", "--epochs", "1"]) == 0
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (run / LOCK).write_text(str(dead.pid))
    (run / ".checkpoint.pt.abc123.tmp").write_bytes(b"half a checkpoint")
    (run / "summary.json").unlink()  # so that --resume has a search to finish
    assert main(["search", "--config", config, "--out", str(run), "--resume", "--no-progress"]) == 0
    assert not (run / LOCK).exists() and orphaned_temporaries(run) == []


def test_train_refuses_to_replace_an_earlier_result_without_force(finished_run, capsys):
    genotype = str(finished_run / "genotype.json")
    assert main(["train", genotype, "--epochs", "1", "--no-progress"]) == 0
    before = _hashes(finished_run)
    capsys.readouterr()
    assert main(["train", genotype, "--epochs", "1", "--no-progress"]) == EXIT_ERROR
    assert "--force" in _one_line(capsys)
    assert _hashes(finished_run) == before
    assert main(["train", genotype, "--epochs", "1", "--no-progress", "--force"]) == 0


@pytest.mark.parametrize("where", ["under a file", "a file"])
def test_train_checks_its_output_folder_before_training(where, finished_run, tmp_path, capsys):
    blocker = tmp_path / "file.txt"
    blocker.write_text("mine")
    out = blocker / "sub" if where == "under a file" else blocker
    assert main(["train", str(finished_run / "genotype.json"), "--epochs", "1", "--no-progress",
                 "--out", str(out)]) == EXIT_ERROR
    line = _one_line(capsys)
    assert "--debug" in line and str(blocker) in line
    assert blocker.read_text() == "mine"


@pytest.mark.parametrize("command", ["search --config", "train"])
def test_an_input_path_that_is_a_folder_is_one_line(command, tmp_path, capsys):
    folder = tmp_path / "a-folder"
    folder.mkdir()
    args = command.split() + [str(folder), "--no-progress", "--out", str(tmp_path / "out")]
    assert main(args) == EXIT_ERROR
    _one_line(capsys)
    assert not (tmp_path / "out").exists()


def test_debug_shows_the_traceback(tmp_path):
    folder = tmp_path / "a-folder"
    folder.mkdir()
    from bayesnas.spaces import GenotypeError

    with pytest.raises(GenotypeError, match="is a folder without a genotype.json"):  # propagated, not one line
        main(["--debug", "train", str(folder)])


@pytest.mark.parametrize("mode", [0o444, 0o640, 0o604])
def test_replaced_files_keep_their_permissions(mode, tmp_path):
    path = tmp_path / "summary.json"
    path.write_text("{}")
    path.chmod(mode)
    atomic_write_text(path, '{"a": 1}')
    assert stat.S_IMODE(path.stat().st_mode) == mode and path.read_text() == '{"a": 1}'


def test_new_files_follow_the_umask(tmp_path):
    old = os.umask(0o027)
    try:
        atomic_write_text(tmp_path / "new.json", "{}")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "new.json").stat().st_mode) == 0o640


BAD_SEARCH_SETTINGS = {
    "negative seed": ["--seed", "-1"],
    "seed beyond 2**32": ["--seed", "99999999999999999999"],
    "zero batch size": ["--batch-size", "0"],
    "zero epochs": ["--epochs", "0"],
    "negative learning rate": ["--lr", "-1"],
    "negative temperature": ["--option", "temperature=-1"],
    "drop rate above 1": ["--option", "init_drop_rate=1.5"],
    "zero KL dataset size": ["--option", "kl_dataset_size=0"],
    "negative spike probability": ["--option", "spike_prob=-0.1"],
    "negative drop-rate learning rate": ["--option", "drop_rate_lr=-1"],
    "zero candidates": ["--option", "num_candidates=0"],
    "an option of another method": ["--option", "tau_max=1"],
    "a device torch knows but we do not support (mps)": ["--device", "mps"],
    "a device torch knows but we do not support (meta)": ["--device", "meta"],
    "an unknown device": ["--device", "tpu"],
}
BAD_CONFIG_VALUES = {
    "negative momentum": {"momentum": -0.5},
    "validation fraction of 0": {"val_fraction": 0.0},
    "validation fraction of 1": {"val_fraction": 1.0},
    "negative test fraction": {"test_fraction": -0.1},
    "fractions summing to 1": {"val_fraction": 0.5, "test_fraction": 0.5},
    "data fraction above 1": {"data_fraction": 1.5},
    "negative data seed": {"data_seed": -3},
    "a string where a number belongs": {"epochs": "ten"},
}


def _refused(args, tmp_path, capsys) -> str:
    out = tmp_path / "out"
    assert main(args + ["--out", str(out), "--no-progress"]) == EXIT_ERROR
    assert not out.exists()  # validated before anything is written
    return _one_line(capsys)


@pytest.mark.parametrize("case", BAD_SEARCH_SETTINGS)
def test_bad_search_settings_are_one_line_before_anything_is_written(case, tmp_path, capsys):
    _refused(["search", "--config", _config(tmp_path)] + BAD_SEARCH_SETTINGS[case], tmp_path, capsys)


@pytest.mark.parametrize("case", BAD_CONFIG_VALUES)
def test_bad_config_file_values_are_one_line(case, tmp_path, capsys):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({**TINY, **BAD_CONFIG_VALUES[case]}))
    line = _refused(["search", "--config", str(path)], tmp_path, capsys)
    assert next(iter(BAD_CONFIG_VALUES[case])) in line


BAD_TRAIN_SETTINGS = {
    "zero epochs": ["--epochs", "0"],
    "drop-path of 1": ["--drop-path", "1"],
    "zero learning rate": ["--lr", "0"],
    "zero batch size": ["--batch-size", "0"],
    "negative weight decay": ["--weight-decay", "-1"],
    "negative seed": ["--seed", "-2"],
}


@pytest.mark.parametrize("case", BAD_TRAIN_SETTINGS)
def test_bad_train_settings_are_one_line_before_training(case, finished_run, tmp_path, capsys):
    _refused(["train", str(finished_run / "genotype.json")] + BAD_TRAIN_SETTINGS[case], tmp_path, capsys)


def test_bench_methods_naming_no_method(tmp_path, capsys):
    assert main(["bench", "fashion-mnist", "--methods", ",", "--out", str(tmp_path / "b")]) == EXIT_ERROR
    _one_line(capsys)
    assert not (tmp_path / "b").exists()


def _damage(run, case, tmp_path):
    """A copy of ``run`` whose posterior.nc is damaged as ``case`` says; returns the runs to diagnose."""
    import shutil

    import arviz as az

    copy = tmp_path / "copy"
    shutil.copytree(run, copy)
    posterior = copy / "posterior.nc"
    if case == "empty posterior.nc":
        posterior.write_bytes(b"")
    elif case == "truncated posterior.nc":
        posterior.write_bytes((run / "posterior.nc").read_bytes()[:200])
    elif case == "a text file as posterior.nc":
        posterior.write_text("not netcdf")
    elif case == "NetCDF without a posterior group":
        import xarray as xr

        xr.Dataset({"x": ("a", [1.0, 2.0])}).to_netcdf(posterior)
    elif case == "the same run twice":
        return [str(run), str(run)]
    elif case == "runs whose coordinates differ":
        idata = az.from_netcdf(str(run / "posterior.nc"))
        dims = [d for d in idata.posterior.dims if d not in ("chain", "draw")]
        renamed = idata.posterior.assign_coords({dims[0]: [f"other{i}" for i in range(idata.posterior.sizes[dims[0]])]})
        az.InferenceData(posterior=renamed).to_netcdf(str(posterior))
    return [str(run), str(copy)]


DAMAGED = ["empty posterior.nc", "truncated posterior.nc", "a text file as posterior.nc",
           "NetCDF without a posterior group", "the same run twice", "runs whose coordinates differ"]


@pytest.mark.parametrize("case", DAMAGED)
def test_diagnose_refuses_damaged_foreign_repeated_or_mismatched_runs(case, finished_run, tmp_path, capsys):
    runs = _damage(finished_run, case, tmp_path)
    before = {run: _hashes(tmp_path.__class__(run)) for run in set(runs)}
    assert main(["diagnose", *runs, "--out", str(tmp_path / "plots")]) == EXIT_ERROR
    _one_line(capsys)
    assert {run: _hashes(tmp_path.__class__(run)) for run in set(runs)} == before


def test_a_network_too_large_for_memory_is_one_line(tmp_path, capsys):
    from bayesnas.spaces.cell import CellSpace

    space = CellSpace.from_dict({"channels": 10**10, "layout": "NRN", "states": 2, "in_channels": 1, "image_size": 8})
    genotype = space.genotype({k: [[["sep_conv_3x3", 0], ["skip_connect", 1]]] * 2 for k in ("normal", "reduce")})
    genotype.save(tmp_path / "huge.json")
    assert main(["train", str(tmp_path / "huge.json"), "--dataset", "digits", "--epochs", "1", "--no-progress", "--out",
                 str(tmp_path / "out")]) == EXIT_ERROR
    assert "out of memory" in _one_line(capsys)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(("epoch", "why"), [(-1, "epoch -1 is outside"), (10**6, "epoch 1000000 is outside"),
                                            ("3", "'epoch' entry is missing or not a int"),
                                            (True, "'epoch' entry is missing or not a int")])
def test_a_checkpoint_with_a_damaged_epoch_is_refused_before_anything_is_truncated(epoch, why, tmp_path, capsys):
    """A checkpoint whose epoch is negative emptied metrics.jsonl on resume; a huge one "finished" the search
    without training. Both are one line now, with the run's files untouched."""
    import torch

    run = tmp_path / "run"
    config = _config(tmp_path)
    assert main(["search", "--config", config, "--out", str(run), "--no-progress", "--epochs", "2"]) == 0
    state = torch.load(run / "checkpoint.pt", weights_only=True)
    state["epoch"] = epoch
    torch.save(state, run / "checkpoint.pt")
    (run / "summary.json").unlink()  # so that --resume has a search to finish
    before = _hashes(run)
    capsys.readouterr()
    assert main(["search", "--config", config, "--out", str(run), "--resume", "--no-progress", "--epochs", "2"]) \
        == EXIT_ERROR
    line = _one_line(capsys)
    assert "is damaged" in line and why in line
    assert _hashes(run) == before


def test_a_leftover_temporary_link_is_never_followed(tmp_path):
    """A dangling link named like an export's old fixed temporary (``.posterior.nc.tmp``) pointed the export
    outside the run folder; temporaries are fresh, exclusively created files now, and such links are cleaned up."""
    import numpy as np

    from bayesnas.diagnostics import save_posterior

    run = tmp_path / "run"
    run.mkdir()
    outside = tmp_path / "outside.nc"
    (run / ".posterior.nc.tmp").symlink_to(outside)
    save_posterior(run, {"x": np.zeros((1, 3))}, coords={}, dims=[])
    assert not outside.exists() and (run / "posterior.nc").is_file()
    assert orphaned_temporaries(run) == [run / ".posterior.nc.tmp"]  # dangling: found, to be removed


def test_train_leaves_a_drawing_it_did_not_write(finished_run, tmp_path, capsys):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "genotype.json").write_text((finished_run / "genotype.json").read_text())
    (folder / "architecture.png").write_text("my own picture")
    assert main(["train", str(folder / "genotype.json"), "--epochs", "1", "--no-progress"]) == 0
    assert (folder / "architecture.png").read_text() == "my own picture"
    assert (folder / "train_summary.json").exists()


def _copy_run(run, folder):
    import shutil

    shutil.copytree(run, folder)
    return folder


class _Payload:
    """Pickled into a 'weights' file: unpickling it would run ``os.system`` (the weights-only loader refuses)."""

    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


DAMAGED = {  # file -> (content writer, command, words of the one line)
    "binary config.json": ("config.json", lambda p: p.write_bytes(b"\x89PNG\x00\xff"), "resume", "not a text file"),
    "a list as config.json": ("config.json", lambda p: p.write_text("[1, 2]"), "resume", "holds a JSON list"),
    "deeply nested config.json": ("config.json", lambda p: p.write_text("[" * 100000 + "]" * 100000), "resume",
                                  "nests its JSON too deeply"),
    "truncated metrics.jsonl": ("metrics.jsonl", lambda p: p.write_text('{"epoch": 0, "loss": 1.0}\n{"epoch": 1, "lo'),
                                "resume", "metrics.jsonl, line 2, is not valid JSON"),
    "metrics rows without epochs": ("metrics.jsonl", lambda p: p.write_text('{"loss": 1.0}\n'), "resume",
                                    "without an integer epoch"),
    "a list as summary.json": ("summary.json", lambda p: p.write_text("[]"), "predict", "holds a JSON list"),
    "a summary.json naming no genotype": ("summary.json", lambda p: p.write_text('{"genotype": 3}'), "predict",
                                          "names no genotype file"),
    "a malicious selected.pt": ("selected.pt", lambda p: p.write_bytes(__import__("pickle").dumps(_Payload())),
                                "predict", "objects other than tensors"),
    "weights of another network in selected.pt": (
        "selected.pt", lambda p: __import__("torch").save({"w": __import__("torch").zeros(2)}, p), "predict",
        "does not fit this run's network"),
}


@pytest.mark.parametrize("case", DAMAGED)
def test_damaged_run_files_are_one_line(case, finished_run, tmp_path, capsys):
    name, write, command, words = DAMAGED[case]
    run = _copy_run(finished_run, tmp_path / "run")
    if command == "resume":
        (run / "summary.json").unlink()
    write(run / name)
    before = _hashes(run)
    args = (["search", "--config", _config(tmp_path), "--out", str(run), "--resume", "--no-progress"]
            if command == "resume" else ["predict", str(run), "--samples", "2", "--out", str(tmp_path / "pred")])
    assert main(args) == EXIT_ERROR
    line = _one_line(capsys)
    assert words in line and name in line and "weights_only=False" not in line
    assert _hashes(run) == before


def test_a_config_path_that_is_a_fifo_is_refused_at_once(tmp_path, capsys):
    fifo = tmp_path / "config.json"
    os.mkfifo(fifo)
    assert main(["search", "--config", str(fifo), "--out", str(tmp_path / "run"), "--no-progress"]) == EXIT_ERROR
    assert "is not a regular file" in _one_line(capsys)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("args", [["search", "--bogus"], ["bench", "compare"], ["search", "--epochs", "many"]])
def test_a_usage_error_is_two_lines(args, capsys):
    with pytest.raises(SystemExit) as info:
        main(args)
    assert info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "error:" in err[0] and err[1].endswith("--help' for the options")


def test_fractional_or_boolean_genotype_fields_are_refused():
    from bayesnas.spaces import GenotypeError, get_space

    with pytest.raises(GenotypeError, match="whole numbers, got 1.5"):
        get_space("chain", {"depths": [1.5, 1, 1, 1, 1, 1]})
    with pytest.raises(GenotypeError, match="whole numbers, got True"):
        get_space("branches", {"widths": [True, 8], "depths": [1, 1]})
    assert get_space("branches", {"widths": [8.0, 16], "depths": [1, 1]}).config.widths == (8, 16)
    from bayesnas.spaces import Genotype

    cells = get_space("cells", {"layout": "N", "states": 2})
    with pytest.raises(GenotypeError, match="input must be an integer"):  # as a genotype file holds it
        cells.validate(Genotype("cells", cells.config.to_dict(), {
            "normal": [[["skip_connect", True], ["sep_conv_3x3", 0]], [["skip_connect", 0]]]}))


def test_a_population_larger_than_its_space_is_refused_at_once(tmp_path, capsys):
    options = tmp_path / "pop.json"
    options.write_text(json.dumps({"data_fraction": 0.25, "space": {
        "stem_channels": 8, "stem_stride": 1, "first_block_channels": 0, "widths": [8], "depths": [2],
        "strides": [1], "head_channels": 0, "ops": ["MBConv_1_3", "Identity"], "transition_op": "MBConv_1_3"}}))
    assert main(["bench", "population", "--space", "chain", "--config", str(options), "--n", "1000000",
                 "--out", str(tmp_path / "pop"), "--no-progress"]) == EXIT_ERROR
    assert re.search("has [0-9]+ architectures, fewer than the 1000000 asked for", _one_line(capsys))
    assert not (tmp_path / "pop").exists()


def test_a_second_training_into_a_folder_in_use_is_refused(finished_run, tmp_path, capsys):
    """``train`` holds its output folder's lock while it trains: a second one (or a running search) there is refused
    with one line, and the folder is left as it was."""
    folder = tmp_path / "trained"
    folder.mkdir()
    (folder / "genotype.json").write_text((finished_run / "genotype.json").read_text())
    with _locked_by_a_live_process(folder) as pid:
        before = _hashes(folder)
        assert main(["train", str(folder / "genotype.json"), "--epochs", "1", "--no-progress"]) == EXIT_ERROR
        assert f"in use by a running training (process {pid})" in _one_line(capsys)
        assert _hashes(folder) == before
    assert main(["train", str(folder / "genotype.json"), "--epochs", "1", "--no-progress"]) == 0
    assert not (folder / LOCK).exists() and (folder / "train_summary.json").exists()


@pytest.mark.parametrize("case", ["user folder", "other settings", "a search"])
def test_rank_shares_the_folder_life_cycle(case, tmp_path, capsys):
    """``bayesnas rank`` refuses a user's folder, a folder of another kind and a ranking of other settings (naming
    the keys) before it trains anything."""
    from bayesnas.config import preset
    from bayesnas.experiments.rank import RANK_SETTINGS

    out = tmp_path / "rank"
    out.mkdir()
    if case == "user folder":
        (out / "notes.txt").write_text("mine")
        expected = "is not empty and is not a bayesnas run folder"
    elif case == "a search":
        (out / RUN_MARKER).write_text('{"kind": "search"}')
        expected = "holds a bayesnas search, not a rank"
    else:
        (out / RUN_MARKER).write_text('{"kind": "rank"}')
        settings = {**preset("pcnas-digits").to_dict(), "num_archs": 5, "train_epochs": 1,
                    "population": "pool"}
        (out / RANK_SETTINGS).write_text(json.dumps(settings))
        expected = "holds a ranking of other settings (differ in: epochs, num_archs;"
    before = _hashes(out)
    assert main(["rank", "--out", str(out), "-n", "4", "--train-epochs", "1", "--epochs", "1",
                 "--no-progress"]) == EXIT_ERROR
    assert expected in _one_line(capsys)
    assert _hashes(out) == before and sorted(p.name for p in out.iterdir()) == sorted(before)
