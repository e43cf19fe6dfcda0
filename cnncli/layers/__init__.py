"""Layers, one family per module; importing this package registers them all."""

from cnncli.layers.base import LAYERS, Layer, layer_class, register
from cnncli.layers import activations, conv, dense, norm, pool, residual  # noqa: F401  (registers the layers)
from cnncli.layers.activations import ReLU, Sigmoid, Softmax, Tanh
from cnncli.layers.conv import Conv2D
from cnncli.layers.dense import Dense, Flatten
from cnncli.layers.norm import BatchNorm, Dropout
from cnncli.layers.pool import AvgPool2D, GlobalAvgPool2D, MaxPool2D
from cnncli.layers.residual import Residual

__all__ = ["LAYERS", "Layer", "layer_class", "register", "Conv2D", "Dense", "Flatten", "ReLU",
           "Sigmoid", "Tanh", "Softmax", "MaxPool2D", "AvgPool2D",
           "GlobalAvgPool2D", "BatchNorm", "Dropout", "Residual"]
