"""Losses: a scalar mean over the batch and its gradient w.r.t. the predictions.

``value_and_grad(y_pred, y_true)`` returns ``(loss, grad)`` in one pass; calling
the loss returns the value alone. ``correct(y_pred, y_true)`` counts right
answers for the accuracy metric (None when the loss has no notion of one).
"""

import numpy as np


class Loss:
    """Base class of the losses."""

    name = None

    def __call__(self, y_pred, y_true):
        return self.value_and_grad(y_pred, y_true)[0]

    def value_and_grad(self, y_pred, y_true):
        raise NotImplementedError

    def check_targets(self, y_true, output_shape):
        """Validate targets for a model whose per-sample output shape is ``output_shape``."""
        raise NotImplementedError

    def correct(self, y_pred, y_true):
        return None

    def get_config(self):
        return {}

    def __repr__(self):
        return f"{type(self).__name__}()"


def _check_predictions(y_pred):
    if not isinstance(y_pred, np.ndarray) or y_pred.dtype.kind != "f":
        raise TypeError(f"predictions must be a float array, got {type(y_pred).__name__} "
                        f"{getattr(y_pred, 'dtype', '')}")
    return y_pred


class SoftmaxCrossEntropy(Loss):
    """Cross-entropy of softmax(logits) against integer class labels (Keras'
    ``SparseCategoricalCrossentropy(from_logits=True)``).

    logits: (N, classes) float; labels: (N,) ints in [0, classes).
    loss = mean_n(logsumexp(logits[n]) - logits[n, labels[n]]), computed with a
    stable log-softmax; the gradient is the fused (softmax(logits) - onehot) / N.
    """

    name = "softmax_cross_entropy"

    def check_targets(self, y_true, output_shape):
        labels = np.asarray(y_true)
        if labels.dtype.kind not in "iu":
            raise TypeError(f"labels must be integers (class ids), got dtype {labels.dtype}")
        if labels.ndim != 1:
            raise ValueError(f"labels must be 1-D (N,) class ids, got shape {labels.shape}")
        if len(output_shape) != 1:
            raise ValueError(f"{self.name} needs logits (N, classes), but the model outputs "
                             f"per-sample shape {tuple(output_shape)}")
        classes = output_shape[0]
        if labels.size and (labels.min() < 0 or labels.max() >= classes):
            raise ValueError(f"labels must be in [0, {classes}) for {classes} classes, got "
                             f"values from {labels.min()} to {labels.max()}")
        return labels

    def value_and_grad(self, y_pred, y_true):
        """logits (N, classes), labels (N,) -> (mean loss as float, grad (N, classes))."""
        logits = _check_predictions(y_pred)
        if logits.ndim != 2:
            raise ValueError(f"logits must be 2-D (N, classes), got shape {logits.shape}")
        labels = self.check_targets(y_true, logits.shape[1:])
        if labels.shape[0] != logits.shape[0]:
            raise ValueError(f"logits have {logits.shape[0]} rows but labels have "
                             f"{labels.shape[0]}")
        n = logits.shape[0]
        if n == 0:
            raise ValueError("cannot compute a loss over an empty batch")
        shifted = logits - logits.max(axis=1, keepdims=True)
        exp = np.exp(shifted)
        total = exp.sum(axis=1)
        rows = np.arange(n)
        loss = float(np.mean(np.log(total) - shifted[rows, labels]))
        grad = exp
        grad /= total[:, None]
        grad[rows, labels] -= 1
        grad /= n
        return loss, grad

    def correct(self, y_pred, y_true):
        return int(np.count_nonzero(np.argmax(y_pred, axis=1) == np.asarray(y_true)))


class MeanSquaredError(Loss):
    """mean((y_pred - y_true) ** 2) over every element; grad 2 (y_pred - y_true) / size."""

    name = "mean_squared_error"

    def check_targets(self, y_true, output_shape):
        targets = np.asarray(y_true)
        if targets.dtype.kind not in "fiu":
            raise TypeError(f"targets must be numbers, got dtype {targets.dtype}")
        if targets.shape[1:] != tuple(output_shape):
            raise ValueError(f"targets must have per-sample shape {tuple(output_shape)} like "
                             f"the predictions, got {targets.shape[1:]}")
        return targets

    def value_and_grad(self, y_pred, y_true):
        """y_pred, y_true (N, ...) -> (mean loss as float, grad of y_pred's shape)."""
        y_pred = _check_predictions(y_pred)
        targets = self.check_targets(y_true, y_pred.shape[1:])
        if targets.shape != y_pred.shape:
            raise ValueError(f"targets {targets.shape} and predictions {y_pred.shape} differ")
        if y_pred.size == 0:
            raise ValueError("cannot compute a loss over an empty batch")
        diff = y_pred - targets.astype(y_pred.dtype, copy=False)
        loss = float(np.mean(np.square(diff, dtype=np.float64)))
        diff *= 2 / y_pred.size
        return loss, diff


LOSSES = {
    "softmax_cross_entropy": SoftmaxCrossEntropy,
    "sparse_categorical_crossentropy": SoftmaxCrossEntropy,
    "mean_squared_error": MeanSquaredError,
    "mse": MeanSquaredError,
}


def get_loss(loss):
    """A Loss instance from an instance or a name in ``LOSSES``."""
    if isinstance(loss, Loss):
        return loss
    if isinstance(loss, str) and loss.lower() in LOSSES:
        return LOSSES[loss.lower()]()
    raise ValueError(f"loss must be a Loss instance or one of {sorted(LOSSES)}, got {loss!r}")
