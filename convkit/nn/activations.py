"""Element-wise activations by name: "linear", "relu", "sigmoid", "tanh", "softmax".

Each activation maps a fresh pre-activation array to its output (in place, the
array is the layer's own) and maps the gradient of the output back using only
that output, so a layer keeps one array per activation for its backward pass.
Softmax normalises over axis 1: the features of (N, F) or the channels of
(N, C, H, W).
"""

import numpy as np


class _Activation:
    name = None

    def forward_(self, z):
        """Return act(z), computed in place in ``z`` (the caller's own buffer)."""
        raise NotImplementedError

    def backward(self, grad, y):
        """Gradient w.r.t. the pre-activation given ``grad`` w.r.t. ``y = act(z)``."""
        raise NotImplementedError

    def __repr__(self):
        return self.name


class _Linear(_Activation):
    name = "linear"

    def forward_(self, z):
        return z

    def backward(self, grad, y):
        return grad


class _ReLU(_Activation):
    name = "relu"

    def forward_(self, z):
        return np.maximum(z, 0, out=z)

    def backward(self, grad, y):
        return grad * (y > 0)


class _Sigmoid(_Activation):
    name = "sigmoid"

    def forward_(self, z):
        # 0.5 * (1 + tanh(z / 2)) never overflows, unlike 1 / (1 + exp(-z)).
        z *= 0.5
        np.tanh(z, out=z)
        z += 1
        z *= 0.5
        return z

    def backward(self, grad, y):
        return grad * y * (1 - y)


class _Tanh(_Activation):
    name = "tanh"

    def forward_(self, z):
        return np.tanh(z, out=z)

    def backward(self, grad, y):
        return grad * (1 - y * y)


class _Softmax(_Activation):
    name = "softmax"

    def forward_(self, z):
        z -= z.max(axis=1, keepdims=True)
        np.exp(z, out=z)
        z /= z.sum(axis=1, keepdims=True)
        return z

    def backward(self, grad, y):
        return y * (grad - (grad * y).sum(axis=1, keepdims=True))


ACTIVATIONS = {cls.name: cls() for cls in (_Linear, _ReLU, _Sigmoid, _Tanh, _Softmax)}


def get_activation(name):
    """The activation called ``name`` (None means "linear")."""
    if name is None:
        return ACTIVATIONS["linear"]
    if isinstance(name, _Activation):
        return name
    if not isinstance(name, str) or name.lower() not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)} or None, "
                         f"got {name!r}")
    return ACTIVATIONS[name.lower()]
