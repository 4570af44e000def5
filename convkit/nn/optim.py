"""Optimizers: update a list of parameter arrays in place from their gradients.

``step(params, grads)`` takes two equally long lists of arrays (a model's
``parameters()`` and ``gradients()``); the state (momentum, moments) is kept
per position, so the same list must be passed at every step. The updates
follow PyTorch's ``torch.optim.SGD`` and ``torch.optim.Adam`` exactly,
including ``weight_decay`` as an L2 term added to the gradient.
"""

import math
import numbers

import numpy as np


def _non_negative(value, name, upper=None):
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number, got {value!r}")
    value = float(value)
    if not value >= 0 or (upper is not None and not value < upper):
        bound = f"[0, {upper})" if upper is not None else ">= 0"
        raise ValueError(f"{name} must be {bound}, got {value!r}")
    return value


class LinearDecay:
    """Learning-rate schedule: ``initial`` at step 0 falling linearly to ``final``
    at step ``steps`` (and staying there). Pass it as an optimizer's ``lr``.

    >>> Adam(lr=LinearDecay(2e-3, steps=epochs * batches_per_epoch))
    """

    def __init__(self, initial, steps, final=0.0):
        self.initial = _non_negative(initial, "initial")
        self.final = _non_negative(final, "final")
        if isinstance(steps, (bool, np.bool_)) or not isinstance(steps, numbers.Integral):
            raise TypeError(f"steps must be a positive int, got {steps!r}")
        if steps < 1:
            raise ValueError(f"steps must be a positive int, got {steps!r}")
        self.steps = int(steps)

    def __call__(self, step):
        """Learning rate for 0-based ``step``."""
        return self.initial + (self.final - self.initial) * min(step, self.steps) / self.steps

    def __repr__(self):
        return f"LinearDecay({self.initial!r}, steps={self.steps}, final={self.final!r})"


def _learning_rate(lr):
    return lr if callable(lr) else _non_negative(lr, "lr")


class Optimizer:
    """Base class: argument checks and the per-parameter state.

    ``lr`` is a number or a schedule: a callable mapping the 0-based step
    number to the learning rate (e.g. :class:`LinearDecay`).
    """

    def __init__(self, lr, weight_decay):
        self.lr = _learning_rate(lr)
        self.weight_decay = _non_negative(weight_decay, "weight_decay")
        self.iterations = 0
        self._state = None

    def reset(self):
        """Forget the state (moments, step count)."""
        self.iterations = 0
        self._state = None

    def step(self, params, grads):
        """Update each array of ``params`` in place from the matching array of ``grads``."""
        params, grads = list(params), list(grads)
        if len(params) != len(grads):
            raise ValueError(f"got {len(params)} parameters but {len(grads)} gradients")
        for i, (param, grad) in enumerate(zip(params, grads)):
            if grad is None or grad.shape != param.shape:
                raise ValueError(f"gradient {i} has shape {getattr(grad, 'shape', None)} but "
                                 f"parameter {i} has shape {param.shape}")
        if self._state is None:
            self._state = [self._new_state(param) for param in params]
        elif [s[0].shape for s in self._state] != [p.shape for p in params]:
            raise ValueError("step() got a different list of parameters than before; "
                             "call reset() to start over with new parameters")
        lr = _non_negative(self.lr(self.iterations), "lr") if callable(self.lr) else self.lr
        self.iterations += 1
        for param, grad, state in zip(params, grads, self._state):
            if self.weight_decay:
                grad = grad + self.weight_decay * param
            self._update(param, grad, state, lr)

    def _new_state(self, param):
        raise NotImplementedError

    def _update(self, param, grad, state, lr):
        raise NotImplementedError

    def get_config(self):
        return {"lr": self.lr, "weight_decay": self.weight_decay}

    def __repr__(self):
        args = ", ".join(f"{key}={value!r}" for key, value in self.get_config().items())
        return f"{type(self).__name__}({args})"


class SGD(Optimizer):
    """Stochastic gradient descent with optional (Nesterov) momentum.

    v = momentum * v + g;  p -= lr * (g + momentum * v if nesterov else v),
    with g = grad + weight_decay * p (v starts at g, as in PyTorch).
    """

    def __init__(self, lr=0.01, momentum=0.0, nesterov=False, weight_decay=0.0):
        super().__init__(lr, weight_decay)
        self.momentum = _non_negative(momentum, "momentum")
        self.nesterov = bool(nesterov)
        if self.nesterov and self.momentum == 0:
            raise ValueError("nesterov=True needs a momentum > 0")

    def _new_state(self, param):
        return [np.zeros_like(param)]

    def _update(self, param, grad, state, lr):
        if self.momentum == 0:
            param -= lr * grad
            return
        velocity = state[0]
        if self.iterations == 1:
            velocity[...] = grad
        else:
            velocity *= self.momentum
            velocity += grad
        step = grad + self.momentum * velocity if self.nesterov else velocity
        param -= lr * step

    def get_config(self):
        return {"lr": self.lr, "momentum": self.momentum, "nesterov": self.nesterov,
                "weight_decay": self.weight_decay}


class Adam(Optimizer):
    """Adam (Kingma & Ba) with bias correction, as ``torch.optim.Adam``.

    m = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) g^2;
    p -= lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps).
    """

    def __init__(self, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0):
        super().__init__(lr, weight_decay)
        try:
            beta1, beta2 = betas
        except (TypeError, ValueError):
            raise TypeError(f"betas must be a pair of floats, got {betas!r}") from None
        self.betas = (_non_negative(beta1, "betas[0]", 1.0), _non_negative(beta2, "betas[1]", 1.0))
        self.eps = _non_negative(eps, "eps")

    def _new_state(self, param):
        return [np.zeros_like(param), np.zeros_like(param)]

    def _update(self, param, grad, state, lr):
        beta1, beta2 = self.betas
        mean, var = state
        mean *= beta1
        mean += (1 - beta1) * grad
        var *= beta2
        var += (1 - beta2) * grad * grad
        correction1 = 1 - beta1 ** self.iterations
        correction2 = 1 - beta2 ** self.iterations
        denom = np.sqrt(var)
        denom /= math.sqrt(correction2)
        denom += self.eps
        param -= (lr / correction1) * mean / denom

    def get_config(self):
        return {"lr": self.lr, "betas": list(self.betas), "eps": self.eps,
                "weight_decay": self.weight_decay}


OPTIMIZERS = {"sgd": SGD, "adam": Adam}


def get_optimizer(optimizer):
    """An Optimizer from an instance or a name ("sgd", "adam") with default arguments."""
    if isinstance(optimizer, Optimizer):
        return optimizer
    if isinstance(optimizer, str) and optimizer.lower() in OPTIMIZERS:
        return OPTIMIZERS[optimizer.lower()]()
    raise ValueError(f"optimizer must be an Optimizer instance or one of {sorted(OPTIMIZERS)}, "
                     f"got {optimizer!r}")
