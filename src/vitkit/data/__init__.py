"""Data sets, transforms and image loading: ``build_data(DataConfig(...)) -> DataBundle``.

Data sets: ``digits`` (scikit-learn, built in), ``fashion-mnist`` (IDX files), ``imagefolder``,
``seg-canvas`` (Fashion-MNIST items composited on canvases, per-pixel masks), ``seg-folder``.
"""
from vitkit.data.build import build_data
from vitkit.data.config import DATASETS, IGNORE_INDEX, DataBundle, DataConfig
from vitkit.data.images import list_image_files, load_image

__all__ = ["DATASETS", "IGNORE_INDEX", "DataBundle", "DataConfig", "build_data", "list_image_files", "load_image"]
