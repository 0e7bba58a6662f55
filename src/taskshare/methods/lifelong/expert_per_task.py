"""Expert per task: a fresh, independently initialised network for every task (pure allocation).

No forgetting by construction and no transfer; parameters grow by one whole network per task. In the
per-task-tensor core every tensor of the network is a slot, so the shared part is empty and a task's
artifact is its whole expert.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from taskshare.core import TaskTensors
from taskshare.methods.base import train_mode, Learner, default_model, make_optimizer, task_seed
from taskshare.models import TaskNet, build_backbone, new_head


def _state_names(net) -> list[str]:
    return [n for n, _ in net.named_parameters()] + [n for n, _ in net.named_buffers()]


class ExpertPerTask(Learner):
    name = "expert-per-task"
    description = "a new network per task: no forgetting, no transfer, parameters grow linearly"

    def __init__(self, cfg, options, input_shape):
        super().__init__(cfg, options, input_shape)
        self.arch = default_model(cfg, input_shape)
        self.net = TaskNet(build_backbone(self.arch, input_shape, task_seed(cfg.seed, 0, salt=1))).to(self.device)
        self.tt = TaskTensors(self.net, _state_names(self.net))

    def begin_task(self, task, index):
        if task.name not in self.tt:  # not already restored from a checkpoint
            self._add_expert(task, index)
        self.tt.activate(task.name)
        self.optimizer = make_optimizer(self.tt.parameters(task.name), self.cfg)

    def _add_expert(self, task, index):
        fresh = TaskNet(build_backbone(self.arch, self.input_shape, task_seed(self.cfg.seed, index, salt=1)))
        gen = torch.Generator().manual_seed(task_seed(self.cfg.seed, index, salt=2))
        init = {**dict(fresh.named_parameters()), **dict(fresh.named_buffers()),
                **new_head(fresh.backbone.out_dim, task.num_classes, gen)}
        self.tt.add_task(task.name, {k: v.to(self.device) for k, v in init.items()})

    def observe(self, x, y):
        train_mode(self.net)
        with self.autocast():
            loss = F.cross_entropy(self.net(x).float(), y)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return loss.detach()

    @torch.inference_mode()
    def predict(self, x, task):
        train_mode(self.net, False)
        with self.tt.use(task), self.autocast():
            return self.net(x).float()
