"""Backbones (stem + ordered blocks), registered in ``BACKBONES`` on import."""
from mtlbench.backbones import mpnn, resmlp, resnet, segnet  # noqa: F401  (registrations)
from mtlbench.backbones.base import (Backbone, BasicBlock, Block, MLPBlock, ResidualBlock,  # noqa: F401
                                     build_backbone)
