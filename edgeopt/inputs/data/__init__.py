"""Data: the built-in digits, image folders (lazy, stratified, streamed through torch DataLoaders), the
user's batches/Datasets/DataLoaders, .npy inputs, the one `--data` resolver over all of them, and the training
feed (reshuffled per epoch, sharded per rank).

Every source ends as `Batches` (in memory) or `StreamBatches` (read batch by batch) with one interface."""

from edgeopt.inputs.data.batches import Batches, DataSplits, StreamBatches, default_workers
from edgeopt.inputs.data.digits import DIGITS_SIZE, DIGITS_VAL_FRACTION, batchify, digits_data, digits_splits
from edgeopt.inputs.data.epochs import TrainFeed
from edgeopt.inputs.data.folder import IMAGE_SUFFIXES, ImageFiles, folder_splits, image_folder
from edgeopt.inputs.data.resolve import data_form, resolve_data
from edgeopt.inputs.data.transforms import Preprocess, make_preprocess
from edgeopt.inputs.data.user import as_batches, calibration_sample, from_function

__all__ = ["DIGITS_SIZE", "DIGITS_VAL_FRACTION", "IMAGE_SUFFIXES", "Batches", "DataSplits", "ImageFiles",
           "Preprocess", "StreamBatches", "TrainFeed", "as_batches", "batchify", "calibration_sample",
           "data_form", "default_workers", "digits_data", "digits_splits", "folder_splits", "from_function",
           "image_folder", "make_preprocess", "resolve_data"]
