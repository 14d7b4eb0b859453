"""Hard parameter sharing: one backbone shared by all tasks, one head per task."""
from mtlbench.core.model import MTLModel, make_heads
from mtlbench.core.registry import ARCHS


@ARCHS.register("hard_sharing")
class HardSharing(MTLModel):
    def __init__(self, backbone_fn, tasks):
        super().__init__(tasks)
        self.backbone = backbone_fn()
        self.heads = make_heads(self.backbone, tasks)

    def forward_tasks(self, x, tasks):
        feats = self.backbone(x)
        self.shared_representation = feats
        return {t: self.heads[t](feats) for t in tasks}

    def shared_parameters(self):
        return list(self.backbone.parameters())

    def task_parameters(self, task):
        return list(self.backbone.parameters()) + list(self.heads[task].parameters())
