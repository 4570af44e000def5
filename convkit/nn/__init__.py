"""A small Keras-style layer API over convkit's kernels.

>>> from convkit import nn
>>> model = nn.Sequential([
...     nn.Conv2D(32, 5, activation="relu"), nn.MaxPool2D(2),
...     nn.Conv2D(64, 5, activation="relu"), nn.MaxPool2D(2),
...     nn.Flatten(), nn.Dense(128, activation="relu"), nn.Dense(10),
... ], input_shape=(1, 28, 28), seed=0)
>>> model.compile(nn.SoftmaxCrossEntropy(), nn.Adam(1e-3))
>>> history = model.fit(x_train, y_train, epochs=3, batch_size=64)
"""

from convkit.nn.activations import ACTIVATIONS
from convkit.nn.layers import (
    Activation,
    AvgPool2D,
    Conv2D,
    Dense,
    Dropout,
    Flatten,
    GlobalAvgPool2D,
    Layer,
    MaxPool2D,
    ReLU,
)
from convkit.nn.losses import Loss, MeanSquaredError, SoftmaxCrossEntropy
from convkit.nn.model import History, Sequential
from convkit.nn.optim import SGD, Adam, LinearDecay, Optimizer

__all__ = [
    "ACTIVATIONS",
    "SGD",
    "Activation",
    "Adam",
    "AvgPool2D",
    "Conv2D",
    "Dense",
    "Dropout",
    "Flatten",
    "GlobalAvgPool2D",
    "History",
    "Layer",
    "LinearDecay",
    "Loss",
    "MaxPool2D",
    "MeanSquaredError",
    "Optimizer",
    "ReLU",
    "Sequential",
    "SoftmaxCrossEntropy",
]
