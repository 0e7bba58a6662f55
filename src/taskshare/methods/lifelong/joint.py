"""Joint training: all tasks at once, shared backbone and one head per task (the multi-task upper bound).

An offline learner: the runner hands it every task up front and feeds shuffled batches drawn from the
union of the tasks' training sets (`observe_mixed` with a per-sample task index). The loss is the mean
cross-entropy over the batch, each sample through its own task's head. Its accuracy matrix has a single
row: the accuracy on every task after training on all of them.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from taskshare.methods.base import train_mode, SharedBackboneLearner, make_optimizer
from taskshare.models import head_logits


class Joint(SharedBackboneLearner):
    name = "joint"
    description = "all tasks trained together on their union (upper bound; not a lifelong method)"
    offline = True

    def begin_all(self, tasks) -> None:
        for index, task in enumerate(tasks):
            self.add_head(task.name, task.num_classes, index)
        self.names = [t.name for t in tasks]
        params = self.tt.shared_parameters(trainable_only=True)
        for t in self.names:
            params += self.tt.parameters(t)
        self.optimizer = make_optimizer(params, self.cfg)

    def begin_task(self, task, index):  # single-task use (not called by the runner)
        self.begin_all([task])

    def observe(self, x, y):
        return self.observe_mixed(x, y, torch.zeros_like(y))

    def observe_mixed(self, x: torch.Tensor, y: torch.Tensor, task_ids: torch.Tensor) -> torch.Tensor:
        train_mode(self.net)
        with self.autocast():
            features = self.net.features(x)
            loss = 0.0
            for i in torch.unique(task_ids).tolist():  # one masked head per task present in the batch
                mask = task_ids == i
                logits = head_logits(features[mask], self.tt.tensors(self.names[i])).float()
                loss = loss + F.cross_entropy(logits, y[mask], reduction="sum")
            loss = loss / len(y)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return loss.detach()

    def extra_state(self):
        return {"names": getattr(self, "names", [])}

    def load_extra_state(self, state):
        self.names = list(state["names"])
