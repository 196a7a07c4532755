"""Model families. Importing this package registers every preset."""
from vitkit.models import vit  # noqa: F401
from vitkit.models import resnet  # noqa: F401
from vitkit.models import vt_resnet  # noqa: F401
from vitkit.models import segmentation  # noqa: F401
from vitkit.models.base import FeatureInfo, VitkitModel
from vitkit.models.vit import DistilledOutput, ViTConfig, VisionTransformer

__all__ = ["FeatureInfo", "VitkitModel", "DistilledOutput", "ViTConfig", "VisionTransformer"]
