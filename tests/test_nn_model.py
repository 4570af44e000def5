"""Sequential: building, summary, training, determinism, channels_last, save/load
and the errors users meet first."""

import io
import json
import re
import zipfile

import numpy as np
import pytest
from _helpers import numerical_gradient

import convkit
from convkit import datasets, nn
from convkit.nn import model as model_module


def tutorial_cnn(seed=0, **kwargs):
    return nn.Sequential([
        nn.Conv2D(32, 5, activation="relu"), nn.MaxPool2D(2),
        nn.Conv2D(64, 5, activation="relu"), nn.MaxPool2D(2),
        nn.Flatten(), nn.Dense(128, activation="relu"), nn.Dense(10),
    ], seed=seed, **kwargs)


def small_cnn(seed=0, **kwargs):
    return nn.Sequential([
        nn.Conv2D(8, 3, activation="relu"), nn.MaxPool2D(2), nn.Flatten(),
        nn.Dropout(0.25), nn.Dense(2),
    ], seed=seed, **kwargs)


@pytest.fixture(scope="module")
def xo():
    x, y = datasets.make_xo(256, seed=0)
    return x, y


def test_summary_matches_keras_counts():
    model = tutorial_cnn(input_shape=(1, 28, 28))
    out = io.StringIO()
    model.summary(file=out)
    text = out.getvalue()
    row = re.compile(r"^ (\S+ \(\w+\))\s+(\(None[^)]*\))\s+([\d,]+)$", re.MULTILINE)
    rows = {m.group(1): (m.group(2), m.group(3)) for m in row.finditer(text)}
    assert rows == {
        "conv2d (Conv2D)": ("(None, 32, 24, 24)", "832"),
        "max_pool2d (MaxPool2D)": ("(None, 32, 12, 12)", "0"),
        "conv2d_1 (Conv2D)": ("(None, 64, 8, 8)", "51,264"),
        "max_pool2d_1 (MaxPool2D)": ("(None, 64, 4, 4)", "0"),
        "flatten (Flatten)": ("(None, 1024)", "0"),
        "dense (Dense)": ("(None, 128)", "131,200"),
        "dense_1 (Dense)": ("(None, 10)", "1,290"),
    }
    assert "Total params: 184,586" in text
    assert model.count_params() == 184586
    assert model.output_shape == (10,)


def test_summary_needs_a_built_model():
    with pytest.raises(ValueError, match="not built"):
        tutorial_cnn().summary()


def test_builds_lazily_from_the_first_batch():
    model = small_cnn()
    assert not model.built
    y = model.predict(np.zeros((3, 1, 9, 9), dtype=np.float32))
    assert model.built and model.input_shape == (1, 9, 9)
    assert y.shape == (3, 2) and y.dtype == np.float32
    assert all(p.dtype == np.float32 for p in model.parameters())


def test_inputs_are_cast_once_and_never_modified():
    model = small_cnn(input_shape=(1, 9, 9))
    x = np.random.default_rng(0).integers(0, 2, (4, 1, 9, 9)).astype(np.uint8)
    x.flags.writeable = False
    np.testing.assert_array_equal(model.predict(x), model.predict(x.astype(np.float32)))


def test_whole_model_gradient_matches_finite_differences():
    rng = np.random.default_rng(0)
    model = nn.Sequential([
        nn.Conv2D(3, 3, padding="same", activation="tanh"), nn.AvgPool2D(2),
        nn.Conv2D(4, 2, activation="sigmoid"), nn.GlobalAvgPool2D(), nn.Dense(3),
    ], input_shape=(2, 6, 6), seed=1, dtype="float64")
    x, labels = rng.standard_normal((3, 2, 6, 6)), np.array([0, 2, 1])
    loss = nn.SoftmaxCrossEntropy()
    _, grad = loss.value_and_grad(model.forward(x, training=True), labels)
    grad_input = model.backward(grad, input_grad=True)
    numeric = numerical_gradient(lambda v: loss(model.forward(v), labels), x)
    np.testing.assert_allclose(grad_input, numeric, rtol=1e-6, atol=1e-9)
    kernel = model.layers[2].named_parameters()["kernel"]
    analytic = model.layers[2].gradients()[0].copy()
    original = kernel.copy()

    def loss_of_kernel(value):
        kernel[...] = value
        return loss(model.forward(x), labels)

    numeric = numerical_gradient(loss_of_kernel, original)
    kernel[...] = original
    np.testing.assert_allclose(analytic, numeric, rtol=1e-6, atol=1e-9)


def test_fit_learns_xo(xo):
    x, y = xo
    model = small_cnn(seed=1)
    model.compile(nn.SoftmaxCrossEntropy(), nn.Adam(1e-2))
    x_test, y_test = datasets.make_xo(200, seed=99)
    history = model.fit(x, y, epochs=4, batch_size=16, validation_data=(x_test, y_test),
                        verbose=0)
    assert set(history) == {"loss", "accuracy", "val_loss", "val_accuracy", "seconds"}
    assert history.history is history
    assert all(len(v) == 4 for v in history.values())
    assert history["loss"][-1] < 0.3 * history["loss"][0]
    loss, accuracy = model.evaluate(x_test, y_test)
    assert accuracy >= 0.9
    assert history["val_accuracy"][-1] == accuracy and history["val_loss"][-1] == loss
    predicted = model.predict(x_test, batch_size=7).argmax(axis=1)
    assert np.mean(predicted == y_test) == accuracy


def test_fit_with_mse_and_sgd_reduces_the_loss():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((128, 6)).astype(np.float32)
    targets = (x @ rng.standard_normal((6, 2))).astype(np.float32)
    model = nn.Sequential([nn.Dense(16, activation="tanh"), nn.Dense(2)], seed=0)
    model.compile("mse", nn.SGD(0.05, momentum=0.9))
    history = model.fit(x, targets, epochs=10, batch_size=16, verbose=0)
    assert "accuracy" not in history
    assert history["loss"][-1] < 0.2 * history["loss"][0]
    assert model.evaluate(x, targets)[1] is None


def _train_weights(seed, threads, xo):
    x, y = xo
    with convkit.num_threads(threads):
        model = small_cnn(seed=seed)
        model.compile(nn.SoftmaxCrossEntropy(), nn.Adam(1e-2))
        model.fit(x[:96], y[:96], epochs=2, batch_size=16, verbose=0)
    return model.parameters()


@pytest.mark.parametrize("threads", [1, 2])
def test_same_seed_same_threads_same_weights(threads, xo):
    first, second = _train_weights(3, threads, xo), _train_weights(3, threads, xo)
    for a, b in zip(first, second):
        assert a.tobytes() == b.tobytes()
    other = _train_weights(4, threads, xo)
    assert any(not np.array_equal(a, b) for a, b in zip(first, other))


def test_channels_last_matches_channels_first():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((5, 1, 9, 9)).astype(np.float32)
    first = small_cnn(seed=2, input_shape=(1, 9, 9))
    last = small_cnn(seed=2, input_shape=(9, 9, 1), data_format="channels_last")
    for a, b in zip(first.parameters(), last.parameters()):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(first.predict(x), last.predict(x.transpose(0, 2, 3, 1)))
    conv = nn.Sequential([nn.Conv2D(3, 3)], input_shape=(8, 8, 2), seed=0,
                         data_format="channels_last")
    assert conv.output_shape == (6, 6, 3)
    x_nhwc = rng.standard_normal((2, 8, 8, 2)).astype(np.float32)
    out = conv.forward(x_nhwc)
    assert out.shape == (2, 6, 6, 3)
    grad_input = conv.backward(np.ones_like(out), input_grad=True)
    assert grad_input.shape == x_nhwc.shape
    out_text = io.StringIO()
    conv.summary(file=out_text)
    assert "(None, 6, 6, 3)" in out_text.getvalue()


def test_channels_last_fit(xo):
    x, y = xo
    model = small_cnn(seed=1, data_format="channels_last")
    model.compile(nn.SoftmaxCrossEntropy(), nn.Adam(1e-2))
    history = model.fit(x.transpose(0, 2, 3, 1), y, epochs=2, batch_size=16, verbose=0)
    assert history["loss"][-1] < history["loss"][0]


# ---------------------------------------------------------------- progress output

def test_progress_bar_shows_loss_accuracy_and_rate(xo, capsys):
    pytest.importorskip("tqdm")
    model = small_cnn()
    model.compile()
    model.fit(*xo, epochs=1, batch_size=64, verbose=1, validation_data=xo)
    err = capsys.readouterr().err
    assert "Epoch 1/1" in err and "img/s" in err and "loss=" in err and "accuracy=" in err
    assert re.search(r"^val_loss: [\d.]+ - val_accuracy: [\d.]+$", err, re.MULTILINE)


def test_plain_line_without_tqdm(xo, capsys, monkeypatch):
    monkeypatch.setattr(model_module, "_tqdm", lambda: None)
    model = small_cnn()
    model.compile()
    model.fit(*xo, epochs=2, batch_size=64, verbose=1)
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2
    assert re.match(r"Epoch 2/2 - [\d.]+s - \d+ img/s - loss: [\d.]+ - accuracy: [\d.]+$",
                    lines[1])


def test_verbose_zero_is_silent(xo, capsys):
    model = small_cnn()
    model.compile()
    model.fit(*xo, epochs=1, verbose=0)
    assert capsys.readouterr() == ("", "")


# ---------------------------------------------------------------- bad input

def test_wrong_input_shape_for_the_first_layer():
    model = tutorial_cnn()
    model.compile()
    with pytest.raises(ValueError, match=r"layer 0 .*Conv2D 'conv2d' expects \(C, H, W\)"):
        model.fit(np.zeros((4, 28, 28)), np.zeros(4, dtype=int))
    built = tutorial_cnn(input_shape=(1, 28, 28))
    with pytest.raises(ValueError, match=r"expects x of shape \(N, 1, 28, 28\).*data_format"):
        built.predict(np.zeros((4, 28, 28, 1)))
    mlp = nn.Sequential([nn.Dense(10)])
    with pytest.raises(ValueError, match="Flatten"):
        mlp.build((1, 28, 28))


def test_labels_out_of_range_and_mismatched_lengths(xo):
    x, y = xo
    model = small_cnn()
    model.compile()
    with pytest.raises(ValueError, match=r"labels must be in \[0, 2\).*to 2"):
        model.fit(x, np.where(y == 1, 2, 0))
    with pytest.raises(ValueError, match="x has 256 samples but y has 255"):
        model.fit(x, y[:-1])
    with pytest.raises(ValueError, match="x_val has 10 samples but y_val has 9"):
        model.fit(x, y, validation_data=(x[:10], y[:9]))
    with pytest.raises(TypeError, match="integers"):
        model.fit(x, y.astype(np.float32))
    with pytest.raises(ValueError, match="x has 256 samples but y has 255"):
        model.evaluate(x, y[:-1])


def test_fit_before_compile_and_bad_arguments(xo):
    model = small_cnn()
    with pytest.raises(RuntimeError, match="compile"):
        model.fit(*xo)
    model.compile()
    with pytest.raises(ValueError, match="batch_size"):
        model.fit(*xo, batch_size=0)
    with pytest.raises(TypeError, match="epochs"):
        model.fit(*xo, epochs=1.5)
    with pytest.raises(ValueError, match="loss must be"):
        model.compile(loss="hinge")
    with pytest.raises(ValueError, match="optimizer must be"):
        model.compile(optimizer="rmsprop")
    with pytest.raises(ValueError, match="data_format"):
        nn.Sequential([], data_format="NHWC")
    with pytest.raises(TypeError, match="Layer"):
        nn.Sequential([np.zeros(3)])
    with pytest.raises(ValueError, match="named 'a'"):
        nn.Sequential([nn.Dense(2, name="a"), nn.Dense(2, name="a")])


def test_softmax_output_with_logit_loss_warns():
    model = nn.Sequential([nn.Dense(3, activation="softmax")])
    with pytest.warns(UserWarning, match="logits"):
        model.compile(nn.SoftmaxCrossEntropy())


def test_nan_in_the_data_stops_fit_naming_epoch_and_batch(xo):
    x, y = xo
    x = x.copy()
    x[40] = np.nan  # batch 3 of 16 images
    model = small_cnn(seed=0)
    model.compile(nn.SoftmaxCrossEntropy(), nn.SGD(0.01))
    model.build(x.shape[1:])
    with pytest.raises(FloatingPointError, match=r"nan at epoch 1, batch 3 of 16"):
        model.fit(x, y, epochs=2, batch_size=16, shuffle=False, verbose=0)
    # The bad batch's update was not applied: every weight is still finite.
    assert all(np.all(np.isfinite(p)) for p in model.parameters())


def test_divergence_stops_fit_naming_epoch_and_batch():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((64, 4)).astype(np.float32) * 100
    model = nn.Sequential([nn.Dense(4), nn.Dense(1)], seed=0)
    model.compile("mse", nn.SGD(10.0))
    with np.errstate(all="ignore"), pytest.raises(
            FloatingPointError, match=r"(inf|nan) at epoch \d+, batch \d+ of 8"):
        model.fit(x, x[:, :1] * 3, epochs=50, batch_size=8, verbose=0)


# ---------------------------------------------------------------- save / load

def every_layer_model():
    return nn.Sequential([
        nn.Conv2D(4, 3, strides=1, padding="same", activation="relu", method="direct"),
        nn.MaxPool2D(2, padding="same"),
        nn.Conv2D(6, (2, 3), padding=((1, 0), (1, 1)), dilation=(1, 2), groups=2,
                  use_bias=False, kernel_initializer="glorot_uniform"),
        nn.ReLU(), nn.AvgPool2D(2, strides=1), nn.Activation("tanh"),
        nn.Conv2D(4, 1), nn.GlobalAvgPool2D(), nn.Dropout(0.3, seed=5),
        nn.Dense(8, activation="sigmoid"), nn.Flatten(), nn.Dense(3),
    ], input_shape=(9, 9, 2), seed=7, data_format="channels_last", name="every")


def test_save_load_round_trip(tmp_path, xo):
    model = every_layer_model()
    model.compile()
    rng = np.random.default_rng(0)
    x = rng.standard_normal((20, 9, 9, 2)).astype(np.float32)
    model.fit(x, rng.integers(0, 3, 20), epochs=1, batch_size=8, verbose=0)
    path = tmp_path / "model.npz"
    model.save(path)
    loaded = nn.Sequential.load(path)
    assert loaded.name == "every" and loaded.data_format == "channels_last"
    assert loaded.input_shape == model.input_shape and loaded.seed == 7
    assert [repr(a) for a in loaded.layers] == [repr(b) for b in model.layers]
    assert [a.get_config() for a in loaded.layers] == [b.get_config() for b in model.layers]
    for a, b in zip(loaded.parameters(), model.parameters()):
        assert a.dtype == b.dtype and a.tobytes() == b.tobytes()
    assert loaded.predict(x).tobytes() == model.predict(x).tobytes()
    texts = []
    for m in (model, loaded):
        out = io.StringIO()
        m.summary(file=out)
        texts.append(out.getvalue())
    assert texts[0] == texts[1]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.npz"]


def test_save_load_float64_tutorial_model(tmp_path):
    model = tutorial_cnn(input_shape=(1, 28, 28), dtype="float64")
    model.save(tmp_path / "cnn")
    loaded = nn.Sequential.load(tmp_path / "cnn")
    assert loaded.dtype == np.float64
    x = np.random.default_rng(1).random((2, 1, 28, 28))
    np.testing.assert_array_equal(loaded.predict(x), model.predict(x))


def test_save_needs_a_built_model(tmp_path):
    with pytest.raises(ValueError, match="not built"):
        small_cnn().save(tmp_path / "m.npz")


@pytest.fixture()
def saved(tmp_path):
    path = tmp_path / "good.npz"
    small_cnn(input_shape=(1, 9, 9)).save(path)
    return path


def _rewrite(source, target, change):
    """Copy the archive at ``source`` to ``target`` with ``change(dict)`` applied."""
    with np.load(source) as data:
        arrays = {key: data[key] for key in data.files}
    change(arrays)
    np.savez(target, **arrays)


def _npy_bytes(array):
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def _set_architecture(arrays, edit):
    architecture = json.loads(str(arrays["architecture"]))
    edit(architecture)
    arrays["architecture"] = np.array(json.dumps(architecture))


CORRUPTIONS = {
    "truncated": lambda src, dst: dst.write_bytes(src.read_bytes()[: len(src.read_bytes()) // 2]),
    "empty": lambda src, dst: dst.write_bytes(b""),
    "random bytes": lambda src, dst: dst.write_bytes(np.random.default_rng(0).bytes(5000)),
    "flipped byte": lambda src, dst: dst.write_bytes(
        src.read_bytes()[:200] + bytes([src.read_bytes()[200] ^ 0xFF]) + src.read_bytes()[201:]),
    "foreign npz": lambda src, dst: np.savez(dst, weights=np.zeros(3)),
    "npy": lambda src, dst: dst.write_bytes(_npy_bytes(np.zeros(3))),
    "pickled object": lambda src, dst: np.savez(dst, architecture=np.array([{}], dtype=object)),
    "text file": lambda src, dst: dst.write_text("not a model\n"),
    "architecture not JSON": lambda src, dst: _rewrite(
        src, dst, lambda a: a.update(architecture=np.array("{oops"))),
    "architecture not a string": lambda src, dst: _rewrite(
        src, dst, lambda a: a.update(architecture=np.zeros(3))),
    "other format": lambda src, dst: _rewrite(
        src, dst, lambda a: _set_architecture(a, lambda d: d.update(format="keras"))),
    "future version": lambda src, dst: _rewrite(
        src, dst, lambda a: _set_architecture(a, lambda d: d.update(version=99))),
    "unknown layer": lambda src, dst: _rewrite(
        src, dst, lambda a: _set_architecture(a, lambda d: d["layers"][0].update(
            {"class": "LSTM"}))),
    "bad layer config": lambda src, dst: _rewrite(
        src, dst, lambda a: _set_architecture(a, lambda d: d["layers"][0]["config"].update(
            filters=-4))),
    "unknown layer argument": lambda src, dst: _rewrite(
        src, dst, lambda a: _set_architecture(a, lambda d: d["layers"][0]["config"].update(
            colour="red"))),
    "missing weight": lambda src, dst: _rewrite(src, dst, lambda a: a.pop("layer0.bias")),
    "wrong weight shape": lambda src, dst: _rewrite(
        src, dst, lambda a: a.update({"layer0.kernel": np.zeros((8, 1, 3, 2), np.float32)})),
    "wrong weight dtype": lambda src, dst: _rewrite(
        src, dst, lambda a: a.update({"layer0.bias": a["layer0.bias"].astype(np.float64)})),
    "extra entry": lambda src, dst: _rewrite(src, dst, lambda a: a.update(extra=np.zeros(1))),
}


@pytest.mark.parametrize("corruption", CORRUPTIONS)
def test_load_refuses_corrupt_or_foreign_files(corruption, saved, tmp_path):
    target = tmp_path / "bad.npz"
    CORRUPTIONS[corruption](saved, target)
    with pytest.raises(ValueError, match=r"bad\.npz' is not a model written by Sequential\.save"):
        nn.Sequential.load(target)


def test_load_of_a_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError):
        nn.Sequential.load(tmp_path / "missing.npz")


def test_saved_file_is_a_plain_npz(saved):
    with zipfile.ZipFile(saved) as archive:
        names = sorted(archive.namelist())
    assert names == ["architecture.npy", "layer0.bias.npy", "layer0.kernel.npy",
                     "layer4.bias.npy", "layer4.kernel.npy"]
    with np.load(saved, allow_pickle=False) as data:
        architecture = json.loads(str(data["architecture"]))
    assert architecture["format"] == "convkit.nn.Sequential"
    assert [layer["class"] for layer in architecture["layers"]] == [
        "Conv2D", "MaxPool2D", "Flatten", "Dropout", "Dense"]


def test_a_failed_build_leaves_the_model_usable():
    model = nn.Sequential([nn.Conv2D(4, 3), nn.Flatten(), nn.Conv2D(2, 1)], seed=0)
    with pytest.raises(ValueError, match=r"layer 2 .*\(C, H, W\)"):
        model.build((1, 6, 6))
    assert not any(layer.built for layer in model.layers)
    model.layers.pop()
    model.build((1, 6, 6))
    reference = nn.Sequential([nn.Conv2D(4, 3), nn.Flatten()], input_shape=(1, 6, 6), seed=0)
    for a, b in zip(model.parameters(), reference.parameters()):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match=r"layer 2 .*\(C, H, W\).*\(64,\)"):
        model.add(nn.Conv2D(2, 1))
    assert len(model) == 2
    model.add(nn.Dense(3))
    assert model.output_shape == (3,)
