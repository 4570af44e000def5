"""convkit.nn layers: backward vs central finite differences in float64, forward
semantics, lazy building, initialisation and argument errors."""

import numpy as np
import pytest
from _helpers import numerical_gradient

from convkit import nn, reference

FD_RTOL, FD_ATOL = 1e-6, 1e-8


def _built(layer, input_shape, seed=0, dtype=np.float64):
    layer.build(input_shape, np.random.default_rng(seed), dtype)
    return layer


def _perturb_params(layer, rng):
    """Non-zero biases, so their gradients are exercised away from the initial zeros."""
    for value in layer.parameters():
        value += 0.1 * rng.standard_normal(value.shape)


def check_layer_gradients(layer, x, training=False, reset=None):
    """Compare layer.backward with central differences of sum(forward(x) * g).

    ``reset`` runs before every forward (to replay a dropout mask).
    """
    rng = np.random.default_rng(1)

    def run(inp):
        if reset is not None:
            reset()
        return layer.forward(inp, training=training)

    out = run(x)
    upstream = rng.standard_normal(out.shape)
    grad_input = layer.backward(upstream)
    grads = {key: g.copy() for key, g in zip(layer.named_parameters(), layer.gradients())}

    def loss_of_input(inp):
        return float(np.sum(run(inp) * upstream))

    numeric = numerical_gradient(loss_of_input, x, eps=1e-5)
    assert grad_input.shape == x.shape and grad_input.dtype == np.float64
    np.testing.assert_allclose(grad_input, numeric, rtol=FD_RTOL, atol=FD_ATOL)
    for key, param in layer.named_parameters().items():
        original = param.copy()

        def loss_of_param(value, param=param):
            param[...] = value
            return float(np.sum(run(x) * upstream))

        numeric = numerical_gradient(loss_of_param, original, eps=1e-5)
        param[...] = original
        assert grads[key].shape == param.shape, key
        np.testing.assert_allclose(grads[key], numeric, rtol=FD_RTOL, atol=FD_ATOL,
                                   err_msg=key)


CONV_CASES = [
    {"filters": 3, "kernel_size": 3, "activation": "relu"},
    {"filters": 4, "kernel_size": (2, 3), "strides": 2, "padding": "same", "activation": "tanh"},
    {"filters": 4, "kernel_size": 3, "padding": 1, "dilation": 2, "groups": 2,
     "activation": "sigmoid"},
    {"filters": 2, "kernel_size": 1, "use_bias": False},
    {"filters": 3, "kernel_size": 2, "strides": (1, 2), "padding": ((1, 0), (0, 2)),
         "activation": "softmax"},
]


@pytest.mark.parametrize("method", ["direct", "im2col"])
@pytest.mark.parametrize("config", CONV_CASES)
def test_conv2d_gradients(config, method):
    rng = np.random.default_rng(0)
    layer = _built(nn.Conv2D(method=method, **config), (2, 6, 7))
    _perturb_params(layer, rng)
    check_layer_gradients(layer, rng.standard_normal((2, 2, 6, 7)))


@pytest.mark.parametrize("config", CONV_CASES)
def test_conv2d_forward_matches_reference(config):
    rng = np.random.default_rng(2)
    x = rng.standard_normal((3, 2, 6, 7)).astype(np.float32)
    layer = nn.Conv2D(**config)
    layer.build(x.shape[1:], np.random.default_rng(0))
    _perturb_params(layer, rng)
    params = layer.named_parameters()
    z = reference.conv2d(x, params["kernel"], params.get("bias"), layer.strides, layer.padding,
                         layer.dilation, layer.groups)
    activation = config.get("activation")
    expected = {
        None: lambda v: v,
        "relu": lambda v: np.maximum(v, 0),
        "tanh": np.tanh,
        "sigmoid": lambda v: 1 / (1 + np.exp(-v)),
        "softmax": lambda v: np.exp(v) / np.exp(v).sum(axis=1, keepdims=True),
    }[activation](z)
    y = layer.forward(x)
    assert y.shape == (3,) + layer.output_shape
    np.testing.assert_allclose(y, expected, rtol=2e-5, atol=2e-5)


@pytest.mark.parametrize("activation", [None, "relu", "sigmoid", "tanh", "softmax"])
@pytest.mark.parametrize("use_bias", [True, False])
def test_dense_gradients(activation, use_bias):
    rng = np.random.default_rng(0)
    layer = _built(nn.Dense(4, activation=activation, use_bias=use_bias), (5,))
    _perturb_params(layer, rng)
    check_layer_gradients(layer, rng.standard_normal((3, 5)))


POOL_CASES = [
    {"pool_size": 2},
    {"pool_size": 3, "strides": 1},
    {"pool_size": (2, 3), "strides": (2, 1), "padding": "same"},
    {"pool_size": 3, "strides": 2, "padding": 1},
]


@pytest.mark.parametrize("config", POOL_CASES)
@pytest.mark.parametrize("layer_class", [nn.MaxPool2D, nn.AvgPool2D])
def test_pool_gradients(layer_class, config):
    rng = np.random.default_rng(0)
    # Distinct values far apart, so no finite-difference step changes a window's maximum.
    x = rng.permutation(2 * 3 * 5 * 7).reshape(2, 3, 5, 7) * 0.01
    check_layer_gradients(_built(layer_class(**config), (3, 5, 7)), x)


def _same_pad(size, pool, stride):
    out = -(-size // stride)
    total = max((out - 1) * stride + pool - size, 0)
    return total // 2, total - total // 2, out


def test_pooling_same_follows_keras():
    """Keras "same": padding never wins a max, and is left out of an average's count."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 3, 5, 7)) - 10
    (top, bottom, P), (left, right, Q) = _same_pad(5, 2, 2), _same_pad(7, 3, 2)
    padded = np.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right)), constant_values=np.nan)
    windows = np.stack([padded[:, :, 2 * p:2 * p + 2, 2 * q:2 * q + 3]
                        for p in range(P) for q in range(Q)], axis=2)
    expected_max = np.nanmax(windows, axis=(3, 4)).reshape(2, 3, P, Q)
    expected_avg = np.nanmean(windows, axis=(3, 4)).reshape(2, 3, P, Q)
    max_layer = _built(nn.MaxPool2D((2, 3), strides=2, padding="same"), (3, 5, 7))
    avg_layer = _built(nn.AvgPool2D((2, 3), strides=2, padding="same"), (3, 5, 7))
    np.testing.assert_allclose(max_layer.forward(x), expected_max, rtol=1e-12)
    np.testing.assert_allclose(avg_layer.forward(x), expected_avg, rtol=1e-12)
    assert max_layer.output_shape == (3, P, Q) == avg_layer.output_shape


def test_maxpool_matches_reference():
    rng = np.random.default_rng(4)
    x = rng.standard_normal((2, 4, 9, 8)).astype(np.float32)
    layer = nn.MaxPool2D(3, strides=2)
    np.testing.assert_array_equal(layer.forward(x), reference.max_pool2d(x, 3, 2))


@pytest.mark.parametrize("make_layer, input_shape", [
    (nn.GlobalAvgPool2D, (3, 4, 5)),
    (nn.Flatten, (3, 4, 5)),
    (nn.Flatten, (6,)),
    (nn.ReLU, (3, 4, 5)),
    (lambda: nn.Activation("tanh"), (7,)),
    (lambda: nn.Activation("softmax"), (3, 2, 2)),
])
def test_parameterless_layer_gradients(make_layer, input_shape):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2,) + input_shape)
    layer = _built(make_layer(), input_shape)
    check_layer_gradients(layer, x)


def test_dropout_gradient_and_scaling():
    rng = np.random.default_rng(0)
    layer = _built(nn.Dropout(0.4, seed=7), (50,))

    def replay():
        layer._rng = np.random.default_rng(7)

    x = rng.standard_normal((40, 50))
    check_layer_gradients(layer, x, training=True, reset=replay)
    replay()
    y = layer.forward(x, training=True)
    kept = y != 0
    np.testing.assert_allclose(y[kept], x[kept] / 0.6, rtol=1e-15)
    assert 0.5 < kept.mean() < 0.7
    np.testing.assert_array_equal(layer.forward(x, training=False), x)


def test_dropout_masks_are_seeded():
    x = np.ones((4, 100), dtype=np.float32)
    first = _built(nn.Dropout(0.5, seed=3), (100,), dtype=np.float32).forward(x, training=True)
    again = _built(nn.Dropout(0.5, seed=3), (100,), dtype=np.float32).forward(x, training=True)
    other = _built(nn.Dropout(0.5, seed=4), (100,), dtype=np.float32).forward(x, training=True)
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)
    assert first.dtype == np.float32


def test_global_avg_pool_forward():
    x = np.arange(2 * 3 * 2 * 2, dtype=np.float64).reshape(2, 3, 2, 2)
    np.testing.assert_array_equal(_built(nn.GlobalAvgPool2D(), (3, 2, 2)).forward(x),
                                  x.mean(axis=(2, 3)))


def test_conv_input_grad_can_be_skipped():
    rng = np.random.default_rng(0)
    layer = _built(nn.Conv2D(2, 3), (1, 5, 5))
    x = rng.standard_normal((2, 1, 5, 5))
    grad = rng.standard_normal((2, 2, 3, 3))
    layer.forward(x)
    full = layer.backward(grad)
    kernel_grad = layer.gradients()[0].copy()
    assert layer.backward(grad, input_grad=False) is None
    np.testing.assert_array_equal(layer.gradients()[0], kernel_grad)
    assert full.shape == x.shape


def test_lazy_build_infers_channels_and_features():
    x = np.zeros((2, 3, 10, 10), dtype=np.float32)
    conv = nn.Conv2D(8, 5, activation="relu")
    assert not conv.built
    y = conv.forward(x)
    assert conv.built and conv.input_shape == (3, 10, 10)
    assert conv.named_parameters()["kernel"].shape == (8, 3, 5, 5)
    assert conv.named_parameters()["kernel"].dtype == np.float32
    assert y.shape == (2, 8, 6, 6) and y.dtype == np.float32
    dense = nn.Dense(4)
    dense.forward(np.zeros((2, 11), dtype=np.float32))
    assert dense.named_parameters()["kernel"].shape == (11, 4)
    assert dense.count_params() == 11 * 4 + 4


@pytest.mark.parametrize("activation, initializer, fan_in, fan_out", [
    ("relu", "auto", 3 * 25, 64 * 25),
    ("tanh", "auto", 3 * 25, 64 * 25),
    (None, "he_uniform", 3 * 25, 64 * 25),
])
def test_conv_initialisation_follows_keras(activation, initializer, fan_in, fan_out):
    layer = nn.Conv2D(64, 5, activation=activation, kernel_initializer=initializer)
    layer.build((3, 12, 12), np.random.default_rng(0))
    kernel = layer.named_parameters()["kernel"]
    he = initializer == "he_uniform" or (initializer == "auto" and activation == "relu")
    limit = np.sqrt(6 / fan_in) if he else np.sqrt(6 / (fan_in + fan_out))
    assert np.abs(kernel).max() <= limit
    assert np.abs(kernel).max() > 0.99 * limit
    # A uniform on [-limit, limit] has variance limit^2 / 3.
    assert abs(kernel.var() / (limit ** 2 / 3) - 1) < 0.05
    np.testing.assert_array_equal(layer.named_parameters()["bias"], np.zeros(64))


def test_dense_glorot_initialisation():
    layer = nn.Dense(300)
    layer.build((200,), np.random.default_rng(0))
    kernel = layer.named_parameters()["kernel"]
    limit = np.sqrt(6 / 500)
    assert limit * 0.99 < np.abs(kernel).max() <= limit


def test_same_generator_same_weights():
    def weights(seed):
        layer = nn.Conv2D(4, 3)
        layer.build((2, 5, 5), np.random.default_rng(seed))
        return layer.named_parameters()["kernel"]

    np.testing.assert_array_equal(weights(5), weights(5))
    assert not np.array_equal(weights(5), weights(6))


def test_forward_never_modifies_input():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 6, 6)).astype(np.float32)
    x.flags.writeable = False
    for layer in [nn.Conv2D(2, 3, activation="relu"), nn.MaxPool2D(), nn.AvgPool2D(),
                  nn.GlobalAvgPool2D(), nn.Flatten(), nn.ReLU(), nn.Activation("sigmoid"),
                  nn.Dropout(0.5, seed=0)]:
        y = layer.forward(x, training=True)
        assert not np.shares_memory(x, y), layer
        layer.backward(np.ones_like(y))


def test_reprs():
    assert repr(nn.Conv2D(32, 5, activation="relu")) == \
        "Conv2D(32, kernel_size=(5, 5), activation='relu')"
    assert repr(nn.Conv2D(8, 3, strides=2, padding="same", use_bias=False, name="c")) == \
        "Conv2D(8, kernel_size=(3, 3), strides=(2, 2), padding='same', use_bias=False, name='c')"
    assert repr(nn.MaxPool2D(2)) == "MaxPool2D(pool_size=(2, 2))"
    assert repr(nn.AvgPool2D(3, strides=1)) == "AvgPool2D(pool_size=(3, 3), strides=(1, 1))"
    assert repr(nn.Dense(10)) == "Dense(10)"
    assert repr(nn.Dense(128, activation="relu")) == "Dense(128, activation='relu')"
    assert repr(nn.Dropout(0.5)) == "Dropout(0.5)"
    assert repr(nn.Flatten()) == "Flatten()"
    assert repr(nn.ReLU()) == "ReLU()"
    assert repr(nn.Activation("tanh")) == "Activation('tanh')"


@pytest.mark.parametrize("make, error, match", [
    (lambda: nn.Conv2D(0, 3), ValueError, "filters"),
    (lambda: nn.Conv2D(2.5, 3), TypeError, "filters"),
    (lambda: nn.Conv2D(4, 0), ValueError, "kernel_size"),
    (lambda: nn.Conv2D(4, 3, padding="full"), ValueError, "padding"),
    (lambda: nn.Conv2D(4, 3, padding=-1), ValueError, "padding"),
    (lambda: nn.Conv2D(4, 3, activation="gelu"), ValueError, "activation"),
    (lambda: nn.Conv2D(4, 3, groups=3), ValueError, "groups"),
    (lambda: nn.Conv2D(4, 3, method="fft"), ValueError, "method"),
    (lambda: nn.Conv2D(4, 3, kernel_initializer="zeros"), ValueError, "kernel_initializer"),
    (lambda: nn.MaxPool2D(0), ValueError, "pool_size"),
    (lambda: nn.AvgPool2D(2, strides=(1, 0)), ValueError, "strides"),
    (lambda: nn.Dense(-1), ValueError, "units"),
    (lambda: nn.Dropout(1.0), ValueError, "rate"),
    (lambda: nn.Dropout("0.5"), TypeError, "rate"),
    (lambda: nn.Activation("swish"), ValueError, "activation"),
])
def test_bad_constructor_arguments(make, error, match):
    with pytest.raises(error, match=match):
        make()


def test_bad_inputs_raise_clear_errors():
    conv = nn.Conv2D(4, 3)
    with pytest.raises(ValueError, match=r"\(C, H, W\).*\(28, 28\)"):
        conv.forward(np.zeros((2, 28, 28), dtype=np.float32))
    conv.forward(np.zeros((1, 3, 8, 8), dtype=np.float32))
    with pytest.raises(ValueError, match="3-channel"):
        conv.forward(np.zeros((1, 2, 8, 8), dtype=np.float32))
    with pytest.raises(TypeError, match="float64"):
        conv.forward(np.zeros((1, 3, 8, 8), dtype=np.float64))
    with pytest.raises(ValueError, match="larger than the padded input"):
        conv.forward(np.zeros((1, 3, 2, 2), dtype=np.float32))
    with pytest.raises(ValueError, match="Flatten"):
        nn.Dense(3).forward(np.zeros((2, 3, 4, 4), dtype=np.float32))
    with pytest.raises(TypeError, match="float32 or float64"):
        nn.Dense(3).forward(np.zeros((2, 4), dtype=np.int64))
    with pytest.raises(ValueError, match=r"\(C, H, W\)"):
        nn.MaxPool2D().forward(np.zeros((2, 4), dtype=np.float32))
    with pytest.raises(RuntimeError, match="before forward"):
        nn.Dense(3).backward(np.zeros((2, 3)))
    with pytest.raises(ValueError, match="half the pool size"):
        nn.MaxPool2D(2, padding=2).build((1, 8, 8))


def test_float32_layers_stay_float32():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 1, 8, 8)).astype(np.float32)
    layers = [nn.Conv2D(3, 3, activation="sigmoid"), nn.MaxPool2D(), nn.AvgPool2D(1),
              nn.Flatten(), nn.Dropout(0.2, seed=0), nn.Dense(4, activation="softmax")]
    for layer in layers:
        x = layer.forward(x, training=True)
        assert x.dtype == np.float32, layer
    grad = np.ones_like(x)
    for layer in reversed(layers):
        grad = layer.backward(grad)
        assert grad.dtype == np.float32, layer
        assert all(g.dtype == np.float32 for g in layer.gradients()), layer
