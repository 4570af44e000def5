"""Layers: parameters plus calls into convkit's public functions.

Every layer maps a batch ``x`` of shape (N, ...) to (N, ...). ``forward``
remembers what ``backward`` needs; ``backward(grad)`` stores the gradients of
the layer's parameters (overwriting the previous ones) and returns the
gradient with respect to ``x``. Shapes named ``input_shape`` and
``output_shape`` are per sample, without the batch axis.

Layers build themselves from the first input they see (Keras style): input
channels and features are never passed by hand. Building inside a
:class:`~convkit.nn.Sequential` draws the initial weights from the model's
seeded generator.
"""

import numbers

import numpy as np

from convkit import _threads
from convkit import functional as F
from convkit._validation import (
    FLOAT_DTYPES,
    check_method,
    conv_geometry,
    positive_int,
    output_size,
    positive_pair,
    resolve_padding,
)
from convkit.nn.activations import get_activation

INITIALIZERS = ("auto", "glorot_uniform", "he_uniform")


def _padding_config(padding, name="padding"):
    """``padding`` as given, checked: a lower-case string or ((top, bottom), (left, right))."""
    if isinstance(padding, str):
        if padding.lower() not in ("valid", "same"):
            raise ValueError(f"{name} must be 'valid', 'same', an int or a pair, got {padding!r}")
        return padding.lower()
    return resolve_padding(padding, (1, 1), (1, 1), (1, 1), (1, 1), name)


def _uniform(rng, limit, shape, dtype):
    return rng.uniform(-limit, limit, size=shape).astype(dtype)


def _init_kernel(initializer, activation, fan_in, fan_out, shape, rng, dtype):
    """Keras' uniform initialisers: He for ReLU ("auto"), Glorot otherwise."""
    if initializer == "auto":
        initializer = "he_uniform" if activation.name == "relu" else "glorot_uniform"
    if initializer == "he_uniform":
        limit = np.sqrt(6.0 / fan_in)
    else:
        limit = np.sqrt(6.0 / (fan_in + fan_out))
    return _uniform(rng, limit, shape, dtype)


def _check_initializer(initializer):
    if initializer not in INITIALIZERS:
        raise ValueError(f"kernel_initializer must be one of {INITIALIZERS}, got {initializer!r}")
    return initializer


class Layer:
    """Base class: lazy building, parameters and their gradients, config for saving.

    Subclasses implement ``compute_output_shape`` (which also validates the
    input shape), ``_create_parameters`` when they have weights, ``forward``,
    ``backward`` and ``get_config``.
    """

    default_name = "layer"

    def __init__(self, name=None):
        if name is not None and not isinstance(name, str):
            raise TypeError(f"name must be a string, got {name!r}")
        self.name = name
        self.built = False
        self.input_shape = None
        self.output_shape = None
        self.dtype = None
        self._params = {}
        self._grads = {}
        self._cache = None

    # ---- building
    def build(self, input_shape, rng=None, dtype=np.float32):
        """Create the parameters for per-sample ``input_shape``; return the output shape.

        ``rng`` is the numpy Generator the initial weights come from
        (a fresh unseeded one when None).
        """
        dtype = np.dtype(dtype)
        if dtype not in FLOAT_DTYPES:
            raise TypeError(f"dtype must be float32 or float64, got {dtype}")
        input_shape = tuple(int(v) for v in input_shape)
        output_shape = self.compute_output_shape(input_shape)
        self.dtype = dtype
        self._create_parameters(input_shape, np.random.default_rng() if rng is None else rng)
        self._grads = {key: np.zeros_like(value) for key, value in self._params.items()}
        self.input_shape, self.output_shape = input_shape, output_shape
        self.built = True
        return output_shape

    def compute_output_shape(self, input_shape):
        """Per-sample output shape for per-sample ``input_shape`` (ValueError if unfit)."""
        return tuple(input_shape)

    def _create_parameters(self, input_shape, rng):
        pass

    def _input_error(self, expected, input_shape, hint=""):
        return ValueError(f"{self.describe()} expects {expected} input, got per-sample shape "
                          f"{tuple(input_shape)}{hint}")

    def _accept(self, x):
        """Check a forward input, building the layer on first use."""
        if not isinstance(x, np.ndarray):
            raise TypeError(f"{self.describe()} takes a NumPy array, got {type(x).__name__}")
        if x.ndim < 1:
            raise ValueError(f"{self.describe()} takes a batch (N, ...), got a scalar")
        if not self.built:
            if x.dtype not in FLOAT_DTYPES:
                raise TypeError(f"{self.describe()} takes float32 or float64 input, "
                                f"got {x.dtype}")
            self.build(x.shape[1:], dtype=x.dtype)
        if x.dtype != self.dtype:
            raise TypeError(f"{self.describe()} was built for {self.dtype} but got {x.dtype} "
                            f"input; convert it (convkit never mixes precisions silently)")
        self.compute_output_shape(x.shape[1:])
        return x

    def _cached(self):
        if self._cache is None:
            raise RuntimeError(f"{self.describe()}: backward() called before forward()")
        return self._cache

    # ---- parameters
    def parameters(self):
        """The parameter arrays (updated in place by optimizers)."""
        return list(self._params.values())

    def gradients(self):
        """Gradients of the parameters from the last backward, in parameters() order."""
        return list(self._grads.values())

    def named_parameters(self):
        """dict name -> parameter array ("kernel", "bias")."""
        return dict(self._params)

    def count_params(self):
        return int(sum(p.size for p in self._params.values()))

    def set_weights(self, weights):
        """Copy ``weights`` (dict name -> array, shapes and dtypes equal) into the parameters."""
        if set(weights) != set(self._params):
            raise ValueError(f"{self.describe()} has parameters {sorted(self._params)}, "
                             f"got {sorted(weights)}")
        for key, value in weights.items():
            target = self._params[key]
            value = np.asarray(value)
            if value.shape != target.shape or value.dtype != target.dtype:
                raise ValueError(f"{self.describe()} parameter {key!r} is {target.dtype} "
                                 f"{target.shape}, got {value.dtype} {value.shape}")
            target[...] = value

    # ---- forward / backward
    def forward(self, x, training=False):
        raise NotImplementedError

    def backward(self, grad, input_grad=True):
        raise NotImplementedError

    def __call__(self, x, training=False):
        return self.forward(x, training=training)

    # ---- description
    def get_config(self):
        """Constructor arguments as JSON-friendly values: ``type(self)(**config)`` rebuilds it."""
        return {"name": self.name}

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    def describe(self):
        return f"{type(self).__name__} {self.name!r}" if self.name else type(self).__name__

    def _repr_args(self):
        return []

    def __repr__(self):
        args = self._repr_args()
        if self.name:
            args.append(f"name={self.name!r}")
        return f"{type(self).__name__}({', '.join(args)})"


class Conv2D(Layer):
    """2-D convolution layer over NCHW input, with an optional fused activation.

    x: (N, C, H, W) -> y: (N, filters, P, Q). The kernel has shape
    (filters, C // groups, kh, kw) and is created on the first call, He
    uniform for ``activation="relu"`` and Glorot uniform otherwise (Keras'
    fan-in / fan-out rule); the bias starts at zero. ``padding`` is "valid",
    "same" (Keras: output ceil(H / stride)), an int, a pair or a pair of
    pairs; ``method`` is passed to :func:`convkit.conv2d`.
    """

    default_name = "conv2d"

    def __init__(self, filters, kernel_size, strides=1, padding="valid", dilation=1, groups=1,
                 activation=None, use_bias=True, method="auto", kernel_initializer="auto",
                 name=None):
        super().__init__(name)
        self.filters = positive_int(filters, "filters")
        self.kernel_size = positive_pair(kernel_size, "kernel_size")
        self.strides = positive_pair(strides, "strides")
        self.padding = _padding_config(padding)
        self.dilation = positive_pair(dilation, "dilation")
        self.groups = positive_int(groups, "groups")
        if self.filters % self.groups:
            raise ValueError(f"groups={self.groups} must divide filters={self.filters}")
        self.activation = get_activation(activation)
        self.use_bias = bool(use_bias)
        self.method = check_method(method)
        self.kernel_initializer = _check_initializer(kernel_initializer)

    def _geometry(self, input_shape):
        if len(input_shape) != 3:
            raise self._input_error("(C, H, W)", input_shape,
                                    "; NCHW batches are 4-D (N, C, H, W)")
        C, H, W = input_shape
        if self.input_shape is not None and C != self.input_shape[0]:
            raise self._input_error(f"{self.input_shape[0]}-channel", input_shape)
        if C % self.groups:
            raise ValueError(f"{self.describe()}: groups={self.groups} must divide the "
                             f"{C} input channels of per-sample shape {tuple(input_shape)}")
        weight_shape = (self.filters, C // self.groups) + self.kernel_size
        try:
            return conv_geometry((1, C, H, W), weight_shape, self.strides, self.padding,
                                 self.dilation, self.groups)
        except ValueError as error:
            raise ValueError(f"{self.describe()}: {error}") from None

    def compute_output_shape(self, input_shape):
        g = self._geometry(tuple(input_shape))
        return (g.K, g.P, g.Q)

    def _create_parameters(self, input_shape, rng):
        C = input_shape[0]
        receptive = self.kernel_size[0] * self.kernel_size[1]
        shape = (self.filters, C // self.groups) + self.kernel_size
        self._params["kernel"] = _init_kernel(
            self.kernel_initializer, self.activation, C // self.groups * receptive,
            self.filters * receptive, shape, rng, self.dtype)
        if self.use_bias:
            self._params["bias"] = np.zeros(self.filters, dtype=self.dtype)

    def forward(self, x, training=False):
        """x: (N, C, H, W) -> (N, filters, P, Q)."""
        x = self._accept(x)
        y = F.conv2d(x, self._params["kernel"], self._params.get("bias"), self.strides,
                     self.padding, self.dilation, self.groups, method=self.method)
        y = self.activation.forward_(y)
        self._cache = (x, y)
        return y

    def backward(self, grad, input_grad=True):
        """grad: (N, filters, P, Q) -> (N, C, H, W), or None when ``input_grad`` is False."""
        x, y = self._cached()
        grad = self.activation.backward(grad, y)
        grad_input, grad_kernel, grad_bias = F.conv2d_backward(
            grad, x, self._params["kernel"], self.strides, self.padding, self.dilation,
            self.groups, method=self.method, output_mask=(input_grad, True, self.use_bias))
        self._grads["kernel"] = grad_kernel
        if self.use_bias:
            self._grads["bias"] = grad_bias
        return grad_input

    def get_config(self):
        return {"filters": self.filters, "kernel_size": list(self.kernel_size),
                "strides": list(self.strides),
                "padding": self.padding if isinstance(self.padding, str)
                else [list(p) for p in self.padding],
                "dilation": list(self.dilation), "groups": self.groups,
                "activation": self.activation.name, "use_bias": self.use_bias,
                "method": self.method, "kernel_initializer": self.kernel_initializer,
                "name": self.name}

    def _repr_args(self):
        args = [str(self.filters), f"kernel_size={self.kernel_size}"]
        if self.strides != (1, 1):
            args.append(f"strides={self.strides}")
        if self.padding != "valid":
            args.append(f"padding={self.padding!r}")
        if self.dilation != (1, 1):
            args.append(f"dilation={self.dilation}")
        if self.groups != 1:
            args.append(f"groups={self.groups}")
        if self.activation.name != "linear":
            args.append(f"activation={self.activation.name!r}")
        if not self.use_bias:
            args.append("use_bias=False")
        return args


class _Pool2D(Layer):
    """Shared arguments of MaxPool2D and AvgPool2D."""

    def __init__(self, pool_size=2, strides=None, padding="valid", name=None):
        super().__init__(name)
        self.pool_size = positive_pair(pool_size, "pool_size")
        self.strides = self.pool_size if strides is None else positive_pair(strides, "strides")
        self.padding = _padding_config(padding)

    def _pads(self, input_shape):
        if len(input_shape) != 3:
            raise self._input_error("(C, H, W)", input_shape,
                                    "; NCHW batches are 4-D (N, C, H, W)")
        return resolve_padding(self.padding, input_shape[1:], self.pool_size, self.strides,
                               (1, 1))

    def compute_output_shape(self, input_shape):
        pads = self._pads(tuple(input_shape))
        C, H, W = input_shape
        for (before, after), k in zip(pads, self.pool_size):
            if max(before, after) > k // 2:
                raise ValueError(f"{self.describe()}: padding {pads} must be at most half "
                                 f"the pool size {self.pool_size}")
        P = output_size(H, self.pool_size[0], self.strides[0], *pads[0])
        Q = output_size(W, self.pool_size[1], self.strides[1], *pads[1])
        if P < 1 or Q < 1:
            raise ValueError(f"{self.describe()}: pool size {self.pool_size} is larger than "
                             f"the padded input of per-sample shape {tuple(input_shape)}")
        return (C, P, Q)

    def get_config(self):
        return {"pool_size": list(self.pool_size), "strides": list(self.strides),
                "padding": self.padding if isinstance(self.padding, str)
                else [list(p) for p in self.padding],
                "name": self.name}

    def _repr_args(self):
        args = [f"pool_size={self.pool_size}"]
        if self.strides != self.pool_size:
            args.append(f"strides={self.strides}")
        if self.padding != "valid":
            args.append(f"padding={self.padding!r}")
        return args


class MaxPool2D(_Pool2D):
    """Max pooling over NCHW input: (N, C, H, W) -> (N, C, P, Q).

    ``strides`` defaults to ``pool_size``; "same" padding never lets the
    padding win (as in Keras), the gradient goes to the first maximum.
    """

    default_name = "max_pool2d"

    def forward(self, x, training=False):
        """x: (N, C, H, W) -> (N, C, P, Q)."""
        x = self._accept(x)
        pads = self._pads(x.shape[1:])
        y, indices = F.max_pool2d(x, self.pool_size, self.strides, pads, return_indices=True)
        self._cache = (x.shape, indices)
        return y

    def backward(self, grad, input_grad=True):
        """grad: (N, C, P, Q) -> (N, C, H, W)."""
        input_shape, indices = self._cached()
        if not input_grad:
            return None
        return F.max_pool2d_backward(grad, indices, input_shape)


class AvgPool2D(_Pool2D):
    """Average pooling over NCHW input: (N, C, H, W) -> (N, C, P, Q).

    Padded cells are left out of each window's count (Keras' "same").
    """

    default_name = "avg_pool2d"

    def forward(self, x, training=False):
        """x: (N, C, H, W) -> (N, C, P, Q)."""
        x = self._accept(x)
        pads = self._pads(x.shape[1:])
        self._cache = (x.shape, pads)
        return F.avg_pool2d(x, self.pool_size, self.strides, pads, count_include_pad=False)

    def backward(self, grad, input_grad=True):
        """grad: (N, C, P, Q) -> (N, C, H, W)."""
        input_shape, pads = self._cached()
        if not input_grad:
            return None
        return F.avg_pool2d_backward(grad, input_shape, self.pool_size, self.strides, pads,
                                     count_include_pad=False)


class GlobalAvgPool2D(Layer):
    """Mean over the spatial axes: (N, C, H, W) -> (N, C)."""

    default_name = "global_avg_pool2d"

    def compute_output_shape(self, input_shape):
        if len(input_shape) != 3:
            raise self._input_error("(C, H, W)", input_shape,
                                    "; NCHW batches are 4-D (N, C, H, W)")
        return (input_shape[0],)

    def forward(self, x, training=False):
        """x: (N, C, H, W) -> (N, C)."""
        x = self._accept(x)
        self._cache = x.shape
        return x.mean(axis=(2, 3))

    def backward(self, grad, input_grad=True):
        """grad: (N, C) -> (N, C, H, W)."""
        input_shape = self._cached()
        if not input_grad:
            return None
        H, W = input_shape[2:]
        grad_input = np.empty(input_shape, dtype=grad.dtype)
        grad_input[...] = (grad / (H * W))[:, :, None, None]
        return grad_input


class Flatten(Layer):
    """(N, d1, d2, ...) -> (N, d1 * d2 * ...), in C order."""

    default_name = "flatten"

    def compute_output_shape(self, input_shape):
        return (int(np.prod(input_shape, dtype=np.int64)),)

    def forward(self, x, training=False):
        """x: (N, ...) -> (N, prod(...)), a copy."""
        x = self._accept(x)
        self._cache = x.shape
        return x.reshape(x.shape[0], -1).copy()

    def backward(self, grad, input_grad=True):
        """grad: (N, F) -> (N, ...)."""
        input_shape = self._cached()
        if not input_grad:
            return None
        return grad.reshape(input_shape).copy()


class Dense(Layer):
    """Fully connected layer: (N, features) -> (N, units), y = act(x @ kernel + bias).

    The kernel (features, units) is He uniform for ``activation="relu"`` and
    Glorot uniform otherwise; the bias starts at zero. The products run in
    NumPy's BLAS, held to convkit's thread count.
    """

    default_name = "dense"

    def __init__(self, units, activation=None, use_bias=True, kernel_initializer="auto",
                 name=None):
        super().__init__(name)
        self.units = positive_int(units, "units")
        self.activation = get_activation(activation)
        self.use_bias = bool(use_bias)
        self.kernel_initializer = _check_initializer(kernel_initializer)

    def compute_output_shape(self, input_shape):
        if len(input_shape) != 1:
            raise self._input_error("(features,)", input_shape,
                                    "; put Flatten() before Dense")
        if self.input_shape is not None and tuple(input_shape) != self.input_shape:
            raise self._input_error(f"{self.input_shape[0]}-feature", input_shape)
        return (self.units,)

    def _create_parameters(self, input_shape, rng):
        features = input_shape[0]
        self._params["kernel"] = _init_kernel(self.kernel_initializer, self.activation,
                                              features, self.units, (features, self.units),
                                              rng, self.dtype)
        if self.use_bias:
            self._params["bias"] = np.zeros(self.units, dtype=self.dtype)

    def forward(self, x, training=False):
        """x: (N, features) -> (N, units)."""
        x = self._accept(x)
        with _threads.blas_threads_for(x.shape[0] * self._params["kernel"].size):
            y = x @ self._params["kernel"]
        if self.use_bias:
            y += self._params["bias"]
        y = self.activation.forward_(y)
        self._cache = (x, y)
        return y

    def backward(self, grad, input_grad=True):
        """grad: (N, units) -> (N, features), or None when ``input_grad`` is False."""
        x, y = self._cached()
        grad = self.activation.backward(grad, y)
        with _threads.blas_threads_for(2 * x.shape[0] * self._params["kernel"].size):
            self._grads["kernel"] = x.T @ grad
            grad_input = grad @ self._params["kernel"].T if input_grad else None
        if self.use_bias:
            self._grads["bias"] = grad.sum(axis=0)
        return grad_input

    def get_config(self):
        return {"units": self.units, "activation": self.activation.name,
                "use_bias": self.use_bias, "kernel_initializer": self.kernel_initializer,
                "name": self.name}

    def _repr_args(self):
        args = [str(self.units)]
        if self.activation.name != "linear":
            args.append(f"activation={self.activation.name!r}")
        if not self.use_bias:
            args.append("use_bias=False")
        return args


class Activation(Layer):
    """An activation by name ("relu", "sigmoid", "tanh", "softmax", "linear") as a layer."""

    default_name = "activation"

    def __init__(self, activation, name=None):
        super().__init__(name)
        self.activation = get_activation(activation)

    def forward(self, x, training=False):
        """x: (N, ...) -> act(x), same shape (softmax over axis 1)."""
        x = self._accept(x)
        y = self.activation.forward_(x.copy())
        self._cache = y
        return y

    def backward(self, grad, input_grad=True):
        """grad: (N, ...) -> (N, ...)."""
        y = self._cached()
        if not input_grad:
            return None
        return self.activation.backward(grad, y)

    def get_config(self):
        return {"activation": self.activation.name, "name": self.name}

    def _repr_args(self):
        return [repr(self.activation.name)]


class ReLU(Activation):
    """max(x, 0), element-wise."""

    default_name = "re_lu"

    def __init__(self, name=None):
        super().__init__("relu", name)

    def get_config(self):
        return {"name": self.name}

    def _repr_args(self):
        return []


class Dropout(Layer):
    """Inverted dropout: in training, zero each value with probability ``rate``
    and scale the rest by 1 / (1 - rate); the identity at inference.

    The mask comes from ``seed`` when given, else from the generator the
    layer is built with (the model's seed inside a Sequential).
    """

    default_name = "dropout"

    def __init__(self, rate, seed=None, name=None):
        super().__init__(name)
        if isinstance(rate, (bool, np.bool_)) or not isinstance(rate, numbers.Real):
            raise TypeError(f"rate must be a float in [0, 1), got {rate!r}")
        if not 0 <= rate < 1:
            raise ValueError(f"rate must be in [0, 1), got {rate!r}")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, numbers.Integral)):
            raise TypeError(f"seed must be an int or None, got {seed!r}")
        self.rate = float(rate)
        self.seed = None if seed is None else int(seed)
        self._rng = None

    def _create_parameters(self, input_shape, rng):
        self._rng = np.random.default_rng(self.seed) if self.seed is not None else rng.spawn(1)[0]

    def forward(self, x, training=False):
        """x: (N, ...) -> (N, ...), a new array."""
        x = self._accept(x)
        if not training or self.rate == 0:
            self._cache = None
            return x.copy()
        keep = self._rng.random(x.shape, dtype=x.dtype) >= self.rate
        mask = keep.astype(x.dtype) / x.dtype.type(1 - self.rate)
        self._cache = mask
        return x * mask

    def backward(self, grad, input_grad=True):
        """grad: (N, ...) -> (N, ...)."""
        if not input_grad:
            return None
        return grad.copy() if self._cache is None else grad * self._cache

    def get_config(self):
        return {"rate": self.rate, "seed": self.seed, "name": self.name}

    def _repr_args(self):
        return [str(self.rate)]


LAYERS = {cls.__name__: cls for cls in (Conv2D, MaxPool2D, AvgPool2D, GlobalAvgPool2D, Flatten,
                                         Dense, Activation, ReLU, Dropout)}
