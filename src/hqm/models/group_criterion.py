"""The group criterion shared by every detector: learnable queries plus mined query groups.

What is generic lives here; what a detector's losses are lives in its ``LossTerms`` (QPIC's and
CDN's: ``hqm.models.hoi_losses``)::

    outputs ──matcher (every layer)──> learnable assignment ──> terms.layer_losses ──> alpha * L_learn
    outputs["groups"][g] ──FixedAssignment / LearnableAssignment──> terms.layer_losses ──> w_g * L_g
    idle miner parameters ──> + 0 * sum(p)      (DDP: every parameter takes part in every step)

* **Assignments** (typed, produced by the miners): :class:`FixedAssignment` -- query j of image i is
  supervised by GT pair ``indices[i][1][j]`` on every decoder layer (GBS, CJL);
  :class:`LearnableAssignment` -- the group's queries are copies of the learnable ones and take
  their per-layer Hungarian assignment (AMM; ``query_map[i][c]`` = learnable query of copy c);
  :class:`HungarianAssignment` -- the group is matched on its own and supervised like the learnable
  queries (Group DETR's extra query groups, ``model.group_detr``).
* **Normalisers**: every loss denominator is counted from the targets by the loss terms
  (``local_counts``), summed over the micro-batches of an accumulation window and over ranks (one
  all-reduce) and divided by the world size (:meth:`GroupCriterion.normalisers`). DDP's gradient
  average then equals the gradient of one process holding the whole global batch, and
  ``batch 2 x accumulate 2`` equals ``batch 4``. The trainer asks the criterion for them once per
  optimiser step; the criterion computes the batch's own when none are given.
* **Idle miners**: miners that are attached but not active this step (AJL alternates) get a zero
  ``0 * sum(p)`` in the loss, so DDP runs without ``find_unused_parameters``.

Group losses are logged as ``<group>/<term>[_<layer>]`` and weighted by ``group_weights[group]``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import Tensor, nn

from hqm.distributed import all_reduce_sum, get_world_size
from hqm.models.matcher import Indices


@dataclass(frozen=True)
class FixedAssignment:
    """Query ``indices[i][0][j]`` of image i <-> GT pair ``indices[i][1][j]``, on every layer."""

    indices: Indices


@dataclass(frozen=True)
class LearnableAssignment:
    """The group's queries are copies of the learnable queries and take their per-layer assignment.

    query_map: None (copy c is learnable query c) or per image the learnable query of each copy.
    """

    query_map: list[Tensor] | None = None


@dataclass(frozen=True)
class HungarianAssignment:
    """The group is matched to the GT pairs on its own, by the criterion's matcher on every layer, and
    all its queries are supervised, unmatched ones towards "no object": the one-to-one assignment
    within each group of Group DETR (``model.group_detr``). ``repeat``: the group's batch stacks this
    many copies of the images, copy-major (row ``c * B + i`` is image i), so its loss is the sum of
    the copies' losses, each normalised like the learnable queries'."""

    repeat: int = 1


Assignment = FixedAssignment | LearnableAssignment | HungarianAssignment


@dataclass
class MinedGroup:
    """A decoded extra query group (hard queries, or Group DETR's groups): ``outputs`` (the ``decode``
    contract) and how to supervise it.

    learnable_indices: the learnable queries' Hungarian assignment (last layer first) when the miner
    solved it inside forward (``MiningContext.learnable_indices``), so the criterion reuses it."""

    outputs: dict
    assignment: Assignment
    learnable_indices: list[Indices] | None = None


class LossTerms(Protocol):
    """A detector's loss terms for one decoder layer (``hqm.models.hoi_losses.HOILossTerms``).

    ``weights``: term name -> coefficient. ``local_counts``: the denominators' counts of one
    (micro-)batch, by name. ``normalisers``: the loss terms' normaliser object from the counts summed
    over micro-batches and ranks. ``layer_losses``: unweighted terms of one layer's predictions under
    an assignment; ``all_queries`` is True for the learnable queries (unassigned ones are negatives)
    and False for mined groups (only assigned queries are supervised).
    """

    weights: dict[str, float]

    def local_counts(self, targets: list[dict], num_queries: int) -> dict[str, float]: ...

    def normalisers(self, totals: dict[str, float], world_size: int) -> Any: ...

    def layer_losses(
        self, out: dict, targets: list[dict], indices: Indices, norms: Any, all_queries: bool
    ) -> dict[str, Tensor]: ...


def layers_of(outputs: dict) -> list[dict]:
    """The last layer's outputs first, then the auxiliary layers from the last to the first."""
    return [outputs] + list(outputs.get("aux_outputs", []))[::-1]


class GroupCriterion(nn.Module):
    """total = alpha * L_learnable + sum_g group_weights[g] * L_g (+ 0 * idle miner parameters)."""

    def __init__(self, terms: LossTerms, matcher: nn.Module):
        super().__init__()
        self.terms = terms
        self.matcher = matcher

    @property
    def weights(self) -> dict[str, float]:
        return self.terms.weights

    def normalisers(self, batches: Sequence[list[dict]], num_queries: int, reduce: bool = True) -> Any:
        """Global normalisers of one optimiser step: ``batches`` = the targets of each micro-batch of
        the window; counts summed over them and (``reduce``) over ranks, divided by the world size."""
        counts: dict[str, float] = {}
        for targets in batches:
            for k, v in self.terms.local_counts(targets, num_queries).items():
                counts[k] = counts.get(k, 0.0) + v
        keys = sorted(counts)
        totals = all_reduce_sum([counts[k] for k in keys]) if reduce else [counts[k] for k in keys]
        return self.terms.normalisers(dict(zip(keys, totals)), get_world_size() if reduce else 1)

    def match_all_layers(self, outputs: dict, targets: list[dict]) -> list[Indices]:
        """Hungarian assignment for the last layer and every aux layer (last layer first)."""
        return [self.matcher(o, targets) for o in layers_of(outputs)]

    def _all_layers(
        self,
        outputs: dict,
        targets: list[dict],
        layer_indices: list[Indices],
        norms: Any,
        all_queries: bool,
        prefix: str,
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """Weighted sum over layers and terms, and every unweighted term keyed
        ``<prefix><term>[_<layer>]``."""
        layers = layers_of(outputs)
        logs: dict[str, Tensor] = {}
        total: Tensor | float = 0.0
        for i, (out, idx) in enumerate(zip(layers, layer_indices)):
            suffix = "" if i == 0 else f"_{len(layers) - 1 - i}"
            for k, v in self.terms.layer_losses(out, targets, idx, norms, all_queries).items():
                logs[f"{prefix}{k}{suffix}"] = v
                total = total + self.weights[k] * v
        return total, logs

    def forward(
        self,
        outputs: dict,
        targets: list[dict],
        alpha: float = 1.0,
        group_weights: dict[str, float] | None = None,
        norms: Any = None,
        idle_params: Iterable[nn.Parameter] = (),
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """Returns (total loss, dict of every unweighted term for logging).

        ``norms``: the step's global denominators (default: this batch's, all-reduced over ranks);
        ``idle_params``: parameters of miners attached but idle this step (touched with a zero).
        """
        nq = outputs["pred_obj_logits"].shape[1]
        norms = norms if norms is not None else self.normalisers([targets], nq)
        groups: dict[str, MinedGroup] = outputs.get("groups") or {}
        known = [g.learnable_indices for g in groups.values() if g.learnable_indices is not None]
        learn_idx = known[0] if known else self.match_all_layers(outputs, targets)
        total, logs = self._all_layers(outputs, targets, learn_idx, norms, True, "")
        total = alpha * total
        for name, group in groups.items():
            n_layers = len(layers_of(group.outputs))
            assign = group.assignment
            g_targets, all_queries = targets, False
            if isinstance(assign, FixedAssignment):
                g_idx = [assign.indices] * n_layers
            elif isinstance(assign, HungarianAssignment):
                g_targets, all_queries = list(targets) * assign.repeat, True
                g_idx = self.match_all_layers(group.outputs, g_targets)
            else:
                g_idx = [remap_copies(idx, assign.query_map, nq) for idx in learn_idx[:n_layers]]
            g_total, g_logs = self._all_layers(
                group.outputs, g_targets, g_idx, norms, all_queries, f"{name}/"
            )
            logs.update(g_logs)
            total = total + (group_weights or {}).get(name, 1.0) * g_total
        idle = list(idle_params)
        if idle:
            total = total + sum(p.sum() for p in idle) * 0.0
        if not torch.is_tensor(total):  # no layer at all: a graph-less zero
            total = outputs["pred_obj_logits"].sum() * 0.0
        return total, logs


def remap_copies(indices: Indices, query_map: list[Tensor] | None, num_queries: int) -> Indices:
    """Learnable assignment -> assignment of the copies. ``query_map[i][c]`` is the learnable query
    that copy ``c`` of image ``i`` was made from; matched learnable queries without a copy drop out."""
    if query_map is None:
        return indices
    out = []
    for (q, t), qmap in zip(indices, query_map):
        inv = torch.full((num_queries,), -1, dtype=torch.int64)
        inv[qmap.cpu()] = torch.arange(len(qmap))
        c = inv[q]
        keep = c >= 0
        out.append((c[keep], t[keep]))
    return out
