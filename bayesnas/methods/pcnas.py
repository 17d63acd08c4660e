"""PC-NAS (Li et al., "Improving one-shot NAS by suppressing the posterior fading", CVPR 2020, Algorithms 1-2):
single-path training of a super-network under a shrinking partial-model pool, a hard latency limit where the
space has a latency table, then the best of the final pool retrained from scratch.

Any :class:`~bayesnas.spaces.decisions.DecisionSpace`: an architecture is one option per decision, the
super-network runs it in the index form (only the chosen op of each decision), and the pool grows decision by
decision in the space's order (the chain: one mixop after the other, as in the paper; the cells: one edge of a
cell type after the other). Schedule (Algorithm 2), one phase of the shared loop on the whole training split:

- epochs ``[0, T_w)``: warm-up, architectures drawn uniformly (:class:`UniformProposal`);
- then one interval of ``T_i`` epochs per decision ``l = 0 .. L-1``: at its first epoch (``begin_epoch``) the
  pool is extended by every option of decision ``l``, candidates are scored by their potential (Algorithm 1,
  Eq. 11) and the top P kept; the interval trains on a pool member completed uniformly under the latency limit.

So a search lasts ``T_w + L * T_i`` epochs: ``warmup_epochs`` defaults to ``epochs - L * interval_epochs`` (the
cosine schedule spans the whole search), and an explicit value must agree with ``epochs``. The paper quotes
``100 + 20 x 5 = 200`` epochs for 21 mixops; Algorithm 2 runs ``L * T_i`` epochs after warm-up, which we follow
(the ``pcnas-small``/``-large`` presets use 205).

The latency limit (Sec. 3.3, 4.1) needs a per-(decision, option) lookup table (:mod:`bayesnas.spaces.latency`, which
times the chain's modules); on a space without one ``latency_ms`` is refused before anything runs.

``proposal: uniform`` (or the ``oneshot`` method, :mod:`bayesnas.methods.oneshot`) is the One-Shot baseline of
Sec. 4.4: uniform single-path training for every epoch, then the same pool search (Algorithm 1 potentials, top P
per decision) run on the trained super-network without further training (Table 3, "One-shot + Ours").
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure

from bayesnas import diagnostics
from bayesnas.config import ConfigError
from bayesnas.data import Split
from bayesnas.domains import check_domains, setting
from bayesnas.guides.pcnas import Completion, LatencyLimitError, PartialModelPool, UniformProposal
from bayesnas.io import atomic_write, read_jsonl
from bayesnas.methods.base import Phase, SearchMethod, Selection, register
from bayesnas.models.pcnas import PCNASModel, conditioned_nll
from bayesnas.spaces import latency
from bayesnas.spaces.chain import ChainSpace
from bayesnas.spaces.decisions import DecisionSpace, batch_statistics, on_batch_statistics
from bayesnas.spaces.profile import count_params
from bayesnas.training import TrainRecipe, search_recipe

__all__ = ["PCNAS", "Completion", "LatencyLimitError", "OneShotOptions", "PCNASModel", "PCNASOptions",
           "PartialModelPool", "UniformProposal", "conditioned_nll", "has_latency_table", "plot_fading"]


def has_latency_table(space: DecisionSpace) -> bool:
    """Whether :mod:`bayesnas.spaces.latency` can time the space's options (one module per option of each decision:
    the chain's mixops; a cell's edges run inside a cell of several edges, so the cells have no table)."""
    return isinstance(space, ChainSpace)


@dataclass(frozen=True)
class OneShotOptions:
    """Options of the pool search, the latency limit and the retraining (the ``oneshot`` method's options)."""

    pool_size: int = setting(5, "[1, 100000]")
    """P, the partial models kept after each interval (paper: 5)."""
    num_evaluations: int = setting(900, "[1, 10000000]")
    """S, the random completions averaged in one candidate's potential (Algorithm 1; paper: 900)."""
    latency_ms: float | None = setting(None, "> 0 or null")
    """Hard latency limit of the architectures (paper: 10 ms on a GTX 1080Ti at batch 16); null: none. Only on a
    space with a latency table (the chain)."""
    latency_batch_size: int = setting(latency.BATCH_SIZE, "[1, 65536]")
    """Batch size of the latency measurement (paper: 16)."""
    latency_runs: int = setting(latency.RUNS, ">= 1")
    """Timed runs per lookup-table entry (the minimum is kept: a busy machine only adds time)."""
    latency_table: str | None = None
    """A ``latency.json`` measured elsewhere (another run's, or ``bayesnas latency --out``) for this space and batch
    size, used instead of measuring here; null: measure."""
    latency_proxy: str = setting("time", "{time, flops}")
    """``time``: the lookup table's milliseconds; ``flops``: millions of multiply-adds instead (nothing is timed;
    ``latency_ms`` is then a limit in M MACs)."""
    eval_batch_size: int = setting(64, "[1, 65536]")
    """Size of the one validation batch of a potential evaluation."""
    max_resamples: int = setting(100, ">= 1")
    """Uniform redraws of a completion before the exact sampler of :class:`Completion` takes over (both draw
    uniformly among the completions that meet the latency limit; this only trades speed)."""
    accuracy_samples: int = setting(4, ">= 1")
    """Architectures drawn from the current proposal for the per-epoch validation accuracy."""
    retrain_epochs: int = setting(40, "[0, 100000]")
    """Epochs of the from-scratch retraining of the selected architecture (0: report the super-network's)."""
    retrain_lr: float | None = setting(None, "> 0 or null")
    """Learning rate of the retraining (null: the search's; the paper retrains with the search settings)."""

    def __post_init__(self) -> None:
        check_domains(self)


@dataclass(frozen=True)
class PCNASOptions(OneShotOptions):
    proposal: str = setting("pool", "{pool, uniform}")
    """``pool`` (PC-NAS, Algorithm 2) or ``uniform`` (One-Shot, the same as method ``oneshot``)."""
    warmup_epochs: int | None = setting(None, ">= 0 or null")
    """T_w (paper: 100); null: ``epochs - L * interval_epochs``."""
    interval_epochs: int = setting(5, "[1, 100000]")
    """T_i, epochs between pool updates (paper: 5)."""


@register
class PCNAS(SearchMethod):
    """Posterior-convergent NAS: the partial-model pool keeps few architectures sharing the weights."""

    name = "pcnas"
    options_type = PCNASOptions
    preseeded = (latency.LATENCY_FILE,)  # a latency table measured earlier on the same device

    @classmethod
    def summary_lines(cls, summary: dict[str, Any]) -> list[str]:
        """The pick's latency against the limit (on a space with a latency table) and the pool's potentials per
        interval (Eq. 11)."""
        lines = []
        if "latency_ms" in summary:
            limit, source = summary.get("latency_limit_ms"), summary.get("latency_source", "measured")
            unit = "M multiply-adds" if source == "flops proxy" else "ms"
            bound = f"{limit:g} {unit}" if limit else "none"
            lines.append(f"latency {summary['latency_ms']:.3f} {unit} (limit: {bound}; {source}, "
                         f"{summary['latency_device']}, batch {summary['latency_batch_size']}), "
                         f"{summary['flops'] / 1e6:.2f} M multiply-adds")
        if summary.get("potentials"):
            lines.append("partial-model pool potentials per interval (Eq. 11, mean one-batch validation accuracy):")
        for interval in summary.get("potentials", []):
            over = f", {interval['infeasible']} over the limit" if interval["infeasible"] else ""
            lines.append(f"  interval {interval['interval']} (decision {interval['decision']}, "
                         f"{interval['candidates']} candidates{over}): "
                         + "  ".join(f"{p:.3f}" for p in interval["potentials"]))
        return lines

    @property
    def proposal_kind(self) -> str:
        """``pool`` (Algorithm 2) or ``uniform`` (One-Shot: uniform all along)."""
        return self.options.proposal

    def __init__(self, config, data, device) -> None:
        super().__init__(config, data, device)
        o = self.options
        self.space: DecisionSpace = self.build_space()
        self.decisions = self.space.decisions()
        self.num_ops = self.space.num_options()
        if o.latency_ms is not None and not has_latency_table(self.space):
            raise ConfigError(f"method {self.name!r}: latency_ms needs a latency table, which the "
                              f"{self.space.name} space has none of (only the chain has one); drop latency_ms")
        if self.proposal_kind == "pool":
            needed = len(self.num_ops) * o.interval_epochs
            warmup = config.epochs - needed if o.warmup_epochs is None else o.warmup_epochs
            if warmup < 0 or warmup + needed != config.epochs:
                raise ConfigError(
                    f"method {self.name!r}: a search lasts warmup_epochs + L x interval_epochs epochs; with "
                    f"L = {len(self.num_ops)} decisions and interval_epochs = {o.interval_epochs} that is "
                    + (f"{o.warmup_epochs} + {needed} = {o.warmup_epochs + needed}" if o.warmup_epochs is not None
                       else f"at least {needed}") + f", but epochs = {config.epochs}")
            self.warmup_epochs = warmup
        else:
            self.warmup_epochs = config.epochs
        self.num_train = len(data.train)
        self.model = PCNASModel(self.space.supernet(sparse=True), self.space).to(device)
        self.uniform = UniformProposal(self.num_ops)
        self.pool = PartialModelPool(self.num_ops, o.pool_size)
        self.proposal: UniformProposal | PartialModelPool = self.uniform
        self.run_dir: Path | None = None
        self._table: latency.LatencyTable | None = None
        self._table_fresh = False
        self._generator = torch.Generator().manual_seed(self._seed(0))
        self._updated: dict[str, Any] | None = None

    def _seed(self, *parts: int) -> int:
        return (self.config.seed * 1_000_003 + sum(p * 7919 ** (i + 1) for i, p in enumerate(parts))) % 2 ** 62

    # --- latency -----------------------------------------------------------------------------------------
    def prepare(self, run_dir: Path, resume: bool) -> None:
        """Reuse the run folder's ``latency.json`` when it matches, else measure; refuse an unreachable limit."""
        self.run_dir = Path(run_dir)
        if not has_latency_table(self.space):
            return
        o, path = self.options, self.run_dir / latency.LATENCY_FILE
        if o.latency_table is not None:
            table = latency.load_table_file(o.latency_table, self.space, o.latency_batch_size)
        elif o.latency_proxy == "flops":
            table = latency.measure(self.space, self.device, o.latency_batch_size, timed=False)
        else:
            table = latency.load_or_measure(self.space, path, self.device, o.latency_batch_size, o.latency_runs,
                                            write=False)
        if o.latency_proxy == "flops":
            table = table.flops_proxy()
        table = self.world.broadcast(table)  # every rank of a distributed search uses rank 0's measurements
        self._set_table(table, fresh=not table.matches_file(path))

    def _set_table(self, table: latency.LatencyTable, fresh: bool = True) -> None:
        limit = self.options.latency_ms
        if limit is not None and table.fastest() > limit:
            raise LatencyLimitError(
                f"latency limit {limit:g} ms cannot be met: the fastest architecture of this space takes "
                f"{table.fastest():.4g} ms on {table.device} at batch {table.batch_size}")
        self._table = table
        self._table_fresh = fresh
        completion = Completion(self.num_ops, table.costs(self.space), table.fixed_ms, limit,
                                self.options.max_resamples)
        self.pool.completion = completion

    @property
    def table(self) -> latency.LatencyTable | None:
        """The latency table of a space that has one (measured here, cached nothing, when constructed without the
        search loop); None otherwise."""
        if self._table is None and has_latency_table(self.space):
            self._set_table(latency.measure(self.space, self.device, self.options.latency_batch_size,
                                            self.options.latency_runs))
        return self._table

    def _save_table(self) -> None:
        """Write the table into the run folder (once the loop has created it) unless it came from there."""
        if self.run_dir is not None and self._table is not None and self._table_fresh:
            self._table.save(self.run_dir / latency.LATENCY_FILE)
            self._table_fresh = False

    def ops(self, arch) -> list[str]:
        """Option names of a (partial) architecture, one per decision."""
        return [d.options[i] for d, i in zip(self.decisions, arch)]  # noqa: B905 - partial models

    def architecture(self, arch) -> dict[str, torch.Tensor]:
        """The super-network's index form of one option index per decision."""
        return self.space.index_architecture(arch, self.device)

    # --- hooks of the loop -----------------------------------------------------------------------------------
    def modules(self) -> dict[str, torch.nn.Module]:
        return {"model": self.model, "pool": self.pool}

    def phases(self) -> list[Phase]:
        return [Phase.sgd(self.config, "search", "train", [{"name": "supernet", "params":
                                                             list(self.model.parameters())}], self.training_loss)]

    def begin_epoch(self, epoch: int) -> None:
        """Warm-up, then at the first epoch of interval ``l`` the pool update of decision ``l`` (Algorithm 2)."""
        self._generator = torch.Generator().manual_seed(self._seed(1, epoch))
        self._updated = None
        self._save_table()
        if self.proposal_kind == "pool" and epoch >= self.warmup_epochs:
            interval = (epoch - self.warmup_epochs) // self.options.interval_epochs
            if self.pool.depth <= interval:  # not yet done (a resumed run restores the pool with its epoch)
                self._updated = self.update_pool()
            self.proposal = self.pool
        else:
            self.proposal = self.uniform

    def training_loss(self, x, y, index):
        """Draw ``m`` from the proposal, condition the model on it, return its NLL per example."""
        arch = self.proposal.sample(self._generator)
        loss, logits = conditioned_nll(self.model, arch, x, y, index, self.num_train)
        return loss, int((logits.argmax(-1) == y).sum())

    def supernet_state(self) -> dict[str, torch.Tensor]:
        return dict(self.model.net.state_dict())

    @torch.no_grad()
    def supernet_accuracy(self, arch, split: Split, batch_size: int = 512) -> float:
        """Accuracy of one architecture with the shared weights (BatchNorm on batch statistics)."""
        net, value = self.model.net, self.architecture(arch)
        with batch_statistics(net):
            right = sum(int((net(split.x[i:i + batch_size], value).argmax(-1) == split.y[i:i + batch_size]).sum())
                        for i in range(0, len(split), batch_size))
        return right / max(len(split), 1)

    def accuracy(self, split: Split) -> float:
        """Mean super-network accuracy of a few architectures drawn from the current proposal."""
        generator = torch.Generator().manual_seed(self._seed(2))
        archs = [self.proposal.sample(generator) for _ in range(self.options.accuracy_samples)]
        return float(np.mean([self.supernet_accuracy(a, split) for a in archs]))

    def epoch_metrics(self) -> dict[str, Any]:
        """The fading log: effective number of architectures sharing the weights, and the pool's update."""
        effective = self.proposal.effective_architectures()
        row: dict[str, Any] = {
            "stage": "warm-up" if self.proposal is self.uniform and self.proposal_kind == "pool"
            else self.proposal_kind,
            "pool_depth": self.pool.depth if self.proposal is self.pool else 0,
            "effective_architectures": effective, "log10_effective_architectures": float(np.log10(effective))}
        if self._updated is not None:
            row["pool"] = [self.ops(m) for m in self.pool.members]
            row["pool_potentials"] = list(self.pool.potentials)
        return row

    # --- Algorithm 1 ----------------------------------------------------------------------------------------
    @torch.no_grad()
    def potential(self, partial, generator: torch.Generator) -> float:
        """Eq. 11 by Algorithm 1: mean one-batch validation accuracy of S random completions of ``partial``
        that meet the latency limit (each on its own random validation batch). Algorithm 1 draws S completions and
        drops those over the limit, averaging fewer than S; we draw S from the valid ones (uniformly, as Sec. 3.3
        says), which estimates the same expectation with S terms."""
        val = self.data.val
        completion = self.pool.completion
        net = self.model.net
        batch = min(self.options.eval_batch_size, len(val))
        scores = []
        with batch_statistics(net):
            for _ in range(self.options.num_evaluations):
                arch = self.architecture(completion.complete(partial, generator))
                index = torch.randperm(len(val), generator=generator)[:batch].to(val.x.device)
                scores.append(float((net(val.x[index], arch).argmax(-1) == val.y[index]).float().mean()))
        return float(np.mean(scores))

    def update_pool(self) -> dict[str, Any]:
        """Extend the pool by the next decision, score every candidate, keep the top P (Algorithm 2). Each
        candidate's completions and validation batches come from its own seeded generator, so the scores do not
        depend on which rank of a distributed search computes them."""
        self.table  # noqa: B018 - the completions need the latency table (where the space has one)
        depth = self.pool.depth
        return self.pool.update(
            lambda partial: self.potential(partial, torch.Generator().manual_seed(self._seed(3, depth, *partial))),
            self.world)

    # --- selection -----------------------------------------------------------------------------------------
    def intervals(self) -> list[dict[str, Any]]:
        """The pool after each update, with option names, potentials and the number of candidates scored."""
        return [{"interval": r["interval"], "decision": self.decisions[r["decision"]].name,
                 "candidates": r["candidates"], "infeasible": r["infeasible"], "pool": [self.ops(m) for m in r["pool"]],
                 "potentials": [round(p, 5) for p in r["potentials"]]} for r in self.pool.history]

    def select(self, progress: bool = True) -> Selection:
        """The final pool's best member by potential, retrained from scratch (Sec. 4.1)."""
        while not self.pool.complete:  # One-Shot: the pool search on the trained super-network, no training between
            self.update_pool()
        best = list(self.pool.members[0])
        genotype = self.space.genotype_from_indices(best)
        o = self.options
        supernet_val = self.supernet_accuracy(best, self.data.val)
        supernet_test = self.supernet_accuracy(best, self.data.test)
        if o.retrain_epochs:
            net, val_acc, test_acc = self.retrain_selected(self.space, genotype, self.retrain_recipe(), progress)
        else:  # the super-network's figures; the network built (untrained) for its size
            net = self.space.build(genotype).to(self.device)
            val_acc, test_acc = supernet_val, supernet_test
        rows = read_jsonl(self.run_dir / "metrics.jsonl") if self.run_dir else []
        effective = [r["effective_architectures"] for r in rows if "effective_architectures" in r]
        extra = {
            "proposal": self.proposal_kind,
            "retrained": bool(o.retrain_epochs), "retrain_epochs": o.retrain_epochs,
            "flops": self.space.flops(genotype), "supernet_params": count_params(self.model.net),
            "potential": self.pool.potentials[0],
            "supernet_val_accuracy": supernet_val, "supernet_test_accuracy": supernet_test,
            "pool": [{"ops": self.ops(m), "potential": p}
                     for m, p in zip(self.pool.members, self.pool.potentials, strict=True)],
            "potentials": self.intervals(),
            "search_space_size": float(self.space.size()),
            "warmup_epochs": self.warmup_epochs, "interval_epochs": getattr(o, "interval_epochs", None),
            "pool_size": o.pool_size, "num_evaluations": o.num_evaluations,
        }
        table = self.table
        if table is not None:
            extra.update({"latency_ms": round(table.latency(self.ops(best)), 5), "latency_limit_ms": o.latency_ms,
                          "fastest_latency_ms": round(table.fastest(), 5), "latency_device": table.device,
                          "latency_batch_size": table.batch_size, "latency_source": table.source})
            for member in extra["pool"]:
                member["latency_ms"] = round(table.latency(member["ops"]), 5)
        if effective:
            extra["effective_architectures_first"] = effective[0]
            extra["effective_architectures_last"] = effective[-1]
        return Selection(genotype, net, val_acc, test_acc, extra, retrained=o.retrain_epochs > 0)

    def retrain_recipe(self) -> TrainRecipe:
        """The search's settings for ``retrain_epochs`` at ``retrain_lr`` (Sec. 4.1: "the search settings")."""
        return search_recipe(self.config, self.options.retrain_epochs, self.options.retrain_lr)

    def draw_architecture(self) -> list[int]:
        """One option index per decision: a member of the final pool (a completion of it while partial),
        uniformly under the latency limit (Sec. 3.3); One-Shot: a uniform architecture."""
        return list((self.pool if self.proposal_kind == "pool" else self.uniform).sample())

    def draw_genotype(self):
        """:meth:`draw_architecture` as a genotype."""
        return self.space.genotype_from_indices(self.draw_architecture())

    def posterior_network(self):
        """A member of the final pool (a completion of it while partial), uniformly under the latency limit
        (Sec. 3.3); One-Shot: a uniform architecture. BatchNorm on batch statistics, as the potentials use."""
        return on_batch_statistics(self.model.net, self.architecture(self.draw_architecture()))

    # --- export ----------------------------------------------------------------------------------------------
    def option_names(self) -> list[str]:
        """Every option of any decision, in order of first appearance."""
        return list(dict.fromkeys(name for d in self.decisions for name in d.options))

    def one_hot(self, arch) -> np.ndarray:
        names = self.option_names()
        out = np.zeros((len(self.decisions), len(names)))
        for decision, op in enumerate(self.ops(arch)):
            out[decision, names.index(op)] = 1.0
        return out

    def export(self, run_dir: Path) -> list[list[int]]:
        """The final pool as ArviZ draws (``op_chosen`` one-hot per decision and option), its per-decision option
        frequencies, and plots: option frequencies and the fading curve (effective architectures and potentials
        per interval). Returns the pool's members, one per draw: PC-NAS's posterior is uniform over them; One-Shot's
        ``log_likelihood`` so scores its final pool, while :meth:`posterior_network` draws its uniform proposal."""
        decisions = [d.name for d in self.decisions]
        names = self.option_names()
        chosen = np.stack([self.one_hot(m) for m in self.pool.members])[None]
        frequency = chosen[0].mean(0)
        attrs = self.posterior_attrs(proposal=self.proposal_kind,
                                     potentials=[float(p) for p in self.pool.potentials])
        if self.table is not None:
            attrs["latency_ms"] = [float(self.table.latency(self.ops(m))) for m in self.pool.members]
        diagnostics.save_posterior(run_dir, {"op_chosen": chosen}, coords={"decision": decisions, "op": names},
                                   dims=["decision", "op"], constant={"op_frequency": frequency}, attrs=attrs)
        diagnostics.plot_matrix(frequency.T, names, decisions, "op frequency in the final pool (op x decision)",
                                run_dir / "op_frequencies.png")
        plot_fading(run_dir, self.pool.history)
        return [list(m) for m in self.pool.members]

    def draw_network(self, draw: list[int]):
        """The super-network on one member's path, BatchNorm on batch statistics, as :meth:`posterior_network`."""
        return on_batch_statistics(self.model.net, self.architecture(draw))


def plot_fading(run_dir: Path, history: list[dict[str, Any]]) -> Path:
    """Effective number of architectures sharing the weights per epoch, and the candidates' potentials per
    interval (kept pool members highlighted)."""
    rows = read_jsonl(Path(run_dir) / "metrics.jsonl")
    fig = Figure(figsize=(9, 3.2))
    left, right = fig.subplots(1, 2)
    left.plot([r["epoch"] for r in rows], [r.get("log10_effective_architectures", np.nan) for r in rows],
              marker=".")
    left.set(xlabel="epoch", ylabel="log10 architectures sharing weights", title="posterior fading")
    for record in history:
        scores = [s for _, s in record["candidate_potentials"]]
        right.scatter([record["interval"]] * len(scores), scores, s=8, color="0.6")
        right.scatter([record["interval"]] * len(record["potentials"]), record["potentials"], s=14, color="C1")
    right.set_xticks(range(len(history)))
    right.set(xlabel="interval (decision)", ylabel="potential (Eq. 11)", title="candidates (grey) and kept pool")
    fig.tight_layout()
    path = Path(run_dir) / "fading.png"
    atomic_write(path, lambda fh: fig.savefig(fh, format="png", dpi=110))
    return path
