"""Hard parameter sharing: one backbone shared by all tasks, one head per task (Caruana 1997).
The backbone's output is the shared representation every head reads."""
from mtlbench.core.model import MTLModel, make_heads
from mtlbench.core.registry import ARCHS


@ARCHS.register("hard_sharing")
class HardSharing(MTLModel):
    def __init__(self, backbone_fn, tasks):
        super().__init__(tasks)
        self.backbone = backbone_fn()
        self.heads = make_heads(self.backbone, tasks)

    def forward_representation(self, x, tasks):
        feats = self.backbone(x)
        return {t: self.heads[t](feats) for t in tasks}, feats

    def shared_parameters(self):
        return list(self.backbone.parameters())

    def task_parameters(self, task):
        return list(self.backbone.parameters()) + list(self.heads[task].parameters())

    def last_shared_parameters(self):
        return list(self.backbone.blocks[-1].parameters())

    def parameter_groups(self):
        return {"backbone": list(self.backbone.parameters()),
                **{f"head:{t}": list(h.parameters()) for t, h in self.heads.items()}}
