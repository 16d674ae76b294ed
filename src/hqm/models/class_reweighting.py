"""CDN's dynamic re-weighting of object and verb classes (the decoupled fine-tuning stage).

Facts from the CDN paper and its released code (YueLiao/CDN, ``SetCriterionHOI``):

* class weights from label counts n_c (the last entry is the background: "no object" queries for
  objects, queries without any positive verb for verbs): w_c = (N / n_c)^p for every foreground class
  with n_c > 0 (0 otherwise), N = the foreground total; the foreground weights are divided by their
  mean over the classes with a positive weight; the background weight is (N / n_bg)^p, not rescaled;
* initial weights from the training set's counts, the background count set to 3x the foreground total;
* dynamic weights from a queue of the last ``queue_size`` loss calls' label counts (every layer's call
  pushes, as in the released code), blended as w = a * w_init + (1 - a) * w_queue with
  a = min(0.999^len(queue), 0.9); ``static`` keeps w_init;
* objects: the weights replace the cross-entropy class weights (background included); verbs: the
  foreground weights multiply the positive term of the focal loss, exponent p = 0.7 for both.

The queue is training state of the criterion (not of the model): it is not checkpointed, a resumed
fine-tuning run restarts it (the blend then starts again from the initial weights).
"""

from __future__ import annotations

from collections import deque

import torch
from torch import Tensor, nn


def class_weights(counts: Tensor, p: float) -> Tensor:
    """counts (C + 1,) with the background last -> weights (C + 1,) (see the module docstring)."""
    counts = counts.double()
    fg = counts[:-1]
    total = fg.sum()
    w = torch.zeros_like(counts)
    pos = fg > 0
    w[:-1][pos] = (total / fg[pos]) ** p
    if pos.any():
        w[:-1] = w[:-1] / w[:-1][pos].mean()
    if counts[-1] > 0:
        w[-1] = (total / counts[-1]) ** p
    return w.float()


class ClassReweighting(nn.Module):
    """Object CE weights and verb positive-term weights for one loss call.

    obj_counts (C_obj,) / verb_counts (C_verb,): training-set label counts of GT pairs;
    reweight_obj / reweight_verb: which classes are re-weighted (the other keep QPIC's weights:
    ``eos_coef`` for no-object, 1 for verbs); p_obj / p_verb: exponents; queue_size: loss calls kept.
    """

    def __init__(
        self,
        obj_counts,
        verb_counts,
        reweight_obj: bool = True,
        reweight_verb: bool = True,
        eos_coef: float = 0.1,
        p_obj: float = 0.7,
        p_verb: float = 0.7,
        queue_size: int = 4704,
        static: bool = False,
    ):
        super().__init__()
        obj = torch.as_tensor(obj_counts, dtype=torch.float64)
        verb = torch.as_tensor(verb_counts, dtype=torch.float64)
        self.reweight_obj, self.reweight_verb = reweight_obj, reweight_verb
        self.p_obj, self.p_verb = p_obj, p_verb
        self.static = static
        self.obj_init = class_weights(torch.cat([obj, 3 * obj.sum()[None]]), p_obj)
        self.verb_init = class_weights(torch.cat([verb, 3 * verb.sum()[None]]), p_verb)
        self.plain_obj = torch.ones(len(obj) + 1)
        self.plain_obj[-1] = eos_coef
        self.queues = {"obj": deque(maxlen=int(queue_size)), "verb": deque(maxlen=int(queue_size))}
        self.sums = {
            "obj": torch.zeros(len(obj) + 1, dtype=torch.float64),
            "verb": torch.zeros(len(verb) + 1, dtype=torch.float64),
        }

    def _push(self, kind: str, counts: Tensor) -> Tensor:
        """Add one call's counts; returns the blended weights."""
        queue = self.queues[kind]
        if len(queue) == queue.maxlen:
            self.sums[kind] -= queue[0]
        queue.append(counts)
        self.sums[kind] += counts
        init = self.obj_init if kind == "obj" else self.verb_init
        dynamic = class_weights(self.sums[kind], self.p_obj if kind == "obj" else self.p_verb)
        a = min(0.999 ** len(queue), 0.9)
        return a * init + (1 - a) * dynamic

    @torch.no_grad()
    def forward(self, cls_t: Tensor, verb_t: Tensor, training: bool = True) -> tuple[Tensor, Tensor]:
        """cls_t (B, Q) object class per query (no-object = C_obj); verb_t (B, Q, C_verb) multi-hot.

        Returns (object CE weights (C_obj + 1,), verb positive-term weights (C_verb,))."""
        obj_w, verb_w = self.plain_obj, torch.ones(verb_t.shape[-1])
        if self.reweight_obj:
            if self.static or not training:
                obj_w = self.obj_init
            else:
                counts = torch.bincount(cls_t.flatten().cpu(), minlength=len(self.obj_init)).double()
                obj_w = self._push("obj", counts)
        if self.reweight_verb:
            if self.static or not training:
                verb_w = self.verb_init[:-1]
            else:
                rows = verb_t.flatten(0, 1).cpu().double()
                counts = torch.cat([rows.sum(0), (rows.sum(1) == 0).sum()[None].double()])
                verb_w = self._push("verb", counts)[:-1]
        return obj_w, verb_w
