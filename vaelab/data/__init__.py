"""Datasets: the embedded ``mnist5k`` and ``digits``, any image folder, and the torchvision sets.

Every source becomes a ``DataSplits`` of three ``ImageSet`` (train, validation, test) (``splits``); ``sources`` knows where each
dataset comes from, ``folders`` and ``labels_csv`` read a user's images, ``images`` is the one image decode path, and
``batches`` yields float32 batches in [0, 1].
"""

from .batches import epoch_batches, first_images, image_chunks, iterate_batches, spaced_images, spaced_indices
from .images import IMAGE_EXTENSIONS, decode_image, image_tensor, read_image_files, scan_folder
from .sources import DATASETS, load_data
from .splits import SPLITS, DataSplits, ImageSet, holdout_split, reshape_uint8

__all__ = ["DATASETS", "SPLITS", "IMAGE_EXTENSIONS", "DataSplits", "ImageSet", "decode_image", "epoch_batches", "first_images",
           "image_chunks",
           "holdout_split", "image_tensor", "iterate_batches", "load_data", "read_image_files", "reshape_uint8",
           "scan_folder", "spaced_images", "spaced_indices"]
