"""Datamodules: every dataset behind the ``GenerativeDataModule`` contract (see ``base``)."""

from lit_gen.datamodules.base import SPLITS, GenerativeDataModule
from lit_gen.datamodules.binarized_mnist import BinarizedMNISTDataModule
from lit_gen.datamodules.cifar10 import CIFAR10DataModule
from lit_gen.datamodules.digits import DigitsDataModule
from lit_gen.datamodules.folder import ImageFolderDataModule
from lit_gen.datamodules.idx import FashionMNISTDataModule, MNISTDataModule, read_idx
from lit_gen.datamodules.toy2d import DENSITIES, Toy2DDataModule

__all__ = [
    "DENSITIES",
    "SPLITS",
    "BinarizedMNISTDataModule",
    "CIFAR10DataModule",
    "DigitsDataModule",
    "FashionMNISTDataModule",
    "GenerativeDataModule",
    "ImageFolderDataModule",
    "MNISTDataModule",
    "Toy2DDataModule",
    "read_idx",
]
