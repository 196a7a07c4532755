"""vitkit: Vision Transformers (ViT) and token-based Visual Transformers (VT) for PyTorch."""
from vitkit.errors import VitkitError
from vitkit.registry import create_model, get_config, list_models, register_model

__version__ = "0.1.0"

__all__ = ["create_model", "get_config", "list_models", "register_model", "VitkitError", "__version__"]
