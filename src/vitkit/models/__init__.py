"""Model families. Importing this package registers every preset."""
from vitkit.models import resnet, segmentation, vit, vt_resnet  # noqa: F401  (importing registers them)
from vitkit.models.base import FeatureInfo, VitkitModel
from vitkit.models.vit import DistilledOutput, VisionTransformer, ViTConfig

__all__ = ["FeatureInfo", "VitkitModel", "DistilledOutput", "ViTConfig", "VisionTransformer"]
