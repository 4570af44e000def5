"""Sequential: a stack of layers with training, evaluation, summary and saving."""

import json
import math
import numbers
import os
import sys
import time
import warnings
import zipfile
import zlib

import numpy as np

from convkit._validation import FLOAT_DTYPES, positive_int
from convkit.nn.activations import ACTIVATIONS
from convkit.nn.layers import LAYERS, Layer
from convkit.nn.losses import SoftmaxCrossEntropy, get_loss
from convkit.nn.optim import get_optimizer

FILE_FORMAT = "convkit.nn.Sequential"
FILE_VERSION = 1
DATA_FORMATS = ("channels_first", "channels_last")
_READ_ERRORS = (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error)


class History(dict):
    """Per-epoch metrics of :meth:`Sequential.fit`: ``history["loss"][epoch]``.

    Keys: "loss", "accuracy" (losses that define it), "val_loss",
    "val_accuracy" (with validation data) and "seconds" (wall time of each
    epoch's training). ``history.history`` is the dict itself, as in Keras.
    """

    @property
    def history(self):
        return self


def _tqdm():
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm


class Sequential:
    """A linear stack of layers.

    Parameters
    ----------
    layers : iterable of Layer
    input_shape : per-sample input shape, e.g. (1, 28, 28), or None to build
        from the first batch. Given in ``data_format``.
    seed : int or None; seeds the initial weights, the dropout masks and the
        shuffling in ``fit``. The same seed and thread count give the same
        trained weights bit for bit.
    data_format : "channels_first" (NCHW, the default) or "channels_last"
        (NHWC as Keras users have it: 4-D inputs and outputs are transposed
        once at the model's boundary; the layers work in NCHW).
    dtype : "float32" (default) or "float64"; inputs are cast to it once.
    name : shown by ``summary()``.
    """

    def __init__(self, layers=(), input_shape=None, seed=None, data_format="channels_first",
                 dtype="float32", name="sequential"):
        if seed is not None and (isinstance(seed, (bool, np.bool_))
                                 or not isinstance(seed, numbers.Integral) or seed < 0):
            raise TypeError(f"seed must be a non-negative int or None, got {seed!r}")
        if data_format not in DATA_FORMATS:
            raise ValueError(f"data_format must be one of {DATA_FORMATS}, got {data_format!r}")
        try:
            dtype = np.dtype(dtype)
        except TypeError:
            raise TypeError(f"dtype must be float32 or float64, got {dtype!r}") from None
        if dtype not in FLOAT_DTYPES:
            raise TypeError(f"dtype must be float32 or float64, got {dtype}")
        self.seed = None if seed is None else int(seed)
        self.data_format = data_format
        self.dtype = dtype
        self.name = str(name)
        self.layers = []
        self.loss = None
        self.optimizer = None
        self.input_shape = None
        self.output_shape = None
        init_seed, shuffle_seed = np.random.SeedSequence(self.seed).spawn(2)
        self._init_rng = np.random.default_rng(init_seed)
        self._shuffle_rng = np.random.default_rng(shuffle_seed)
        for layer in layers:
            self.add(layer)
        if input_shape is not None:
            self.build(input_shape)

    # ---- structure
    @property
    def built(self):
        return self.input_shape is not None

    def add(self, layer):
        """Append ``layer``; it is built at once when the model already is."""
        if not isinstance(layer, Layer):
            raise TypeError(f"Sequential takes Layer instances, got {type(layer).__name__}")
        if any(existing is layer for existing in self.layers):
            raise ValueError(f"{layer.describe()} is already in this model")
        names = {existing.name for existing in self.layers}
        if layer.name is None:
            base, count = layer.default_name, 0
            layer.name = base
            while layer.name in names:
                count += 1
                layer.name = f"{base}_{count}"
        elif layer.name in names:
            raise ValueError(f"two layers are named {layer.name!r}; names must be unique")
        self.layers.append(layer)
        if self.built:
            try:
                shape = self._build_layers(len(self.layers) - 1,
                                           self._internal_shape(self.output_shape))
            except ValueError:
                self.layers.pop()
                raise
            self.output_shape = self._external_shape(shape)

    def _internal_shape(self, shape):
        if self.data_format == "channels_last" and len(shape) == 3:
            return (shape[2], shape[0], shape[1])
        return tuple(shape)

    def _external_shape(self, shape):
        if self.data_format == "channels_last" and len(shape) == 3:
            return (shape[1], shape[2], shape[0])
        return tuple(shape)

    def _output_shape(self, index, shape):
        """Layer ``index``'s output shape for input ``shape``, checked before building."""
        layer = self.layers[index]
        try:
            if layer.built and (layer.input_shape != shape or layer.dtype != self.dtype):
                raise ValueError(f"{layer.describe()} was already built for {layer.dtype} "
                                 f"input {layer.input_shape}, here it gets {self.dtype} {shape}")
            return layer.compute_output_shape(shape)
        except ValueError as error:
            raise ValueError(f"layer {index} of {self.name!r}: {error}") from None

    def _build_layers(self, first, shape):
        """Build layers[first:] from input ``shape``; nothing is built unless all fit."""
        shapes = []
        for index in range(first, len(self.layers)):
            shapes.append(shape)
            shape = self._output_shape(index, shape)
        for index, input_shape in zip(range(first, len(self.layers)), shapes):
            if not self.layers[index].built:
                self.layers[index].build(input_shape, self._init_rng, self.dtype)
        return shape

    def build(self, input_shape):
        """Build every layer for per-sample ``input_shape`` (in ``data_format``)."""
        try:
            input_shape = tuple(positive_int(v, "input_shape") for v in input_shape)
        except TypeError:
            raise TypeError(f"input_shape must be a tuple of positive ints, got "
                            f"{input_shape!r}") from None
        if self.built:
            if input_shape != self.input_shape:
                raise ValueError(f"{self.name!r} is built for input {self.input_shape}, "
                                 f"got {input_shape}")
            return
        if not self.layers:
            raise ValueError("the model has no layers")
        shape = self._build_layers(0, self._internal_shape(input_shape))
        self.input_shape = input_shape
        self.output_shape = self._external_shape(shape)

    def parameters(self):
        """Every parameter array, layer by layer (optimizers update them in place)."""
        return [p for layer in self.layers for p in layer.parameters()]

    def gradients(self):
        """The gradients from the last backward, in parameters() order."""
        return [g for layer in self.layers for g in layer.gradients()]

    def count_params(self):
        return sum(layer.count_params() for layer in self.layers)

    # ---- forward / backward
    def _prepare(self, x, name="x"):
        """Cast x to the model dtype and NCHW, building the model on first use."""
        if not isinstance(x, np.ndarray):
            x = np.asarray(x)
        if x.dtype.kind not in "fiu":
            raise TypeError(f"{name} must be a numeric array, got dtype {x.dtype}")
        if x.ndim < 2:
            raise ValueError(f"{name} must be a batch (N, ...) of samples, got shape {x.shape}")
        if not self.built:
            self.build(x.shape[1:])
        if x.shape[1:] != self.input_shape:
            hint = ""
            if x.ndim == 4 and sorted(x.shape[1:]) == sorted(self.input_shape):
                hint = " (channels on the wrong axis? see data_format)"
            raise ValueError(f"{self.name!r} expects {name} of shape (N, "
                             f"{', '.join(map(str, self.input_shape))}) in {self.data_format}, "
                             f"got {x.shape}{hint}")
        if self.data_format == "channels_last" and x.ndim == 4:
            return np.ascontiguousarray(x.transpose(0, 3, 1, 2), dtype=self.dtype)
        return x.astype(self.dtype, copy=False)

    def _to_external(self, array):
        if self.data_format == "channels_last" and array.ndim == 4:
            return array.transpose(0, 2, 3, 1)
        return array

    def _to_internal(self, array):
        if self.data_format == "channels_last" and array.ndim == 4:
            return array.transpose(0, 3, 1, 2)
        return array

    def _forward(self, x, training):
        for layer in self.layers:
            x = layer.forward(x, training=training)
        return x

    def _backward(self, grad, input_grad):
        last = len(self.layers) - 1
        for index, layer in enumerate(reversed(self.layers)):
            grad = layer.backward(grad, input_grad=input_grad or index < last)
        return grad

    def forward(self, x, training=False):
        """x: (N, *input_shape) -> outputs (N, *output_shape), both in ``data_format``."""
        return self._to_external(self._forward(self._prepare(x), training))

    def backward(self, grad, input_grad=False):
        """Backpropagate ``grad`` (N, *output_shape) through the last forward.

        Stores every layer's parameter gradients; returns the gradient w.r.t.
        the input when ``input_grad`` is True (else None, and the first layer
        skips computing it).
        """
        grad = np.asarray(grad, dtype=self.dtype)
        result = self._backward(self._to_internal(grad), input_grad)
        return None if result is None else self._to_external(result)

    __call__ = forward

    # ---- training
    def compile(self, loss="softmax_cross_entropy", optimizer="adam"):
        """Choose the loss (Loss or name) and optimizer (Optimizer or name) for fit."""
        self.loss = get_loss(loss)
        self.optimizer = get_optimizer(optimizer)
        activation = getattr(self.layers[-1], "activation", None) if self.layers else None
        if isinstance(self.loss, SoftmaxCrossEntropy) and activation is ACTIVATIONS["softmax"]:
            warnings.warn("SoftmaxCrossEntropy takes logits, but the last layer applies softmax; "
                          "remove that activation", stacklevel=2)
        return self

    def _check_compiled(self):
        if self.loss is None or self.optimizer is None:
            raise RuntimeError("call compile(loss, optimizer) before fit / evaluate")

    def _check_xy(self, x, y, name="x", y_name="y"):
        x = self._prepare(x, name)
        y = np.asarray(y)
        if y.ndim == 0 or len(y) != len(x):
            raise ValueError(f"{name} has {len(x)} samples but {y_name} has "
                             f"{len(y) if y.ndim else 'none (a scalar)'}")
        return x, self.loss.check_targets(y, self.output_shape)

    def train_on_batch(self, x, y):
        """One optimisation step on a batch; returns (loss, number of correct answers or None).

        x must already be in the model's dtype and NCHW layout (fit prepares it).
        """
        out = self._to_external(self._forward(x, training=True))
        loss, grad = self.loss.value_and_grad(out, y)
        if not math.isfinite(loss):
            return loss, None
        self._backward(self._to_internal(grad), input_grad=False)
        self.optimizer.step(self.parameters(), self.gradients())
        return loss, self.loss.correct(out, y)

    def fit(self, x, y, epochs=1, batch_size=32, validation_data=None, shuffle=True, verbose=1):
        """Train for ``epochs`` passes over (x, y) in mini-batches.

        x: (N, *input_shape); y: (N,) integer labels for SoftmaxCrossEntropy,
        (N, *output_shape) targets for MeanSquaredError. ``validation_data``
        is an (x_val, y_val) pair evaluated after each epoch. ``verbose``: 0
        silent, 1 a progress bar per epoch (tqdm when installed, else one
        line per epoch), 2 one line per epoch.

        Returns a :class:`History` of per-epoch metrics. Raises
        FloatingPointError, naming the epoch and batch, as soon as the loss is
        NaN or infinite; that batch's update is not applied.
        """
        self._check_compiled()
        epochs = positive_int(epochs, "epochs")
        batch_size = positive_int(batch_size, "batch_size")
        x, y = self._check_xy(x, y)
        if len(x) == 0:
            raise ValueError("x is empty")
        if validation_data is not None:
            try:
                x_val, y_val = validation_data
            except (TypeError, ValueError):
                raise TypeError("validation_data must be a pair (x_val, y_val)") from None
            self._check_xy(x_val, y_val, "x_val", "y_val")
        tqdm = _tqdm() if verbose == 1 else None
        history = History()
        n, steps = len(x), -(-len(x) // batch_size)
        for epoch in range(1, epochs + 1):
            order = self._shuffle_rng.permutation(n) if shuffle else None
            bar = tqdm(total=n, desc=f"Epoch {epoch}/{epochs}", unit="img",
                       dynamic_ncols=True, mininterval=0.5) if tqdm else None
            total_loss, total_correct, start = 0.0, 0, time.perf_counter()
            for step in range(steps):
                first, seen = step * batch_size, min(n, (step + 1) * batch_size)
                rows = slice(first, seen) if order is None else order[first:seen]
                loss, correct = self.train_on_batch(x[rows], y[rows])
                if not math.isfinite(loss):
                    if bar is not None:
                        bar.close()
                    raise FloatingPointError(
                        f"the loss became {loss} at epoch {epoch}, batch {step + 1} of {steps}; "
                        f"training stopped before applying that batch. Check the inputs for "
                        f"NaN/inf, scale them (e.g. images / 255) or lower the learning rate")
                total_loss += loss * (seen - first)
                if correct is not None:
                    total_correct += correct
                if bar is not None:
                    bar.update(seen - first)
                    postfix = {"loss": f"{total_loss / seen:.4f}"}
                    if correct is not None:
                        postfix["accuracy"] = f"{total_correct / seen:.4f}"
                    bar.set_postfix(postfix, refresh=False)
            seconds = time.perf_counter() - start
            metrics = {"loss": total_loss / n}
            if correct is not None:
                metrics["accuracy"] = total_correct / n
            if bar is not None:
                # Closed before validating, so its img/s counts training only.
                bar.set_postfix({key: f"{value:.4f}" for key, value in metrics.items()})
                bar.close()
            if validation_data is not None:
                val_loss, val_accuracy = self.evaluate(*validation_data)
                metrics["val_loss"] = val_loss
                if val_accuracy is not None:
                    metrics["val_accuracy"] = val_accuracy
            if bar is not None and validation_data is not None:
                tqdm.write(" - ".join(f"{key}: {value:.4f}" for key, value in metrics.items()
                                      if key.startswith("val_")), file=sys.stderr)
            elif bar is None and verbose:
                parts = [f"Epoch {epoch}/{epochs}", f"{seconds:.1f}s", f"{n / seconds:.0f} img/s"]
                parts += [f"{key}: {value:.4f}" for key, value in metrics.items()]
                print(" - ".join(parts), flush=True)
            metrics["seconds"] = seconds
            for key, value in metrics.items():
                history.setdefault(key, []).append(value)
        return history

    def evaluate(self, x, y, batch_size=256):
        """Mean loss and accuracy over (x, y): returns (loss, accuracy or None)."""
        self._check_compiled()
        batch_size = positive_int(batch_size, "batch_size")
        x, y = self._check_xy(x, y)
        if len(x) == 0:
            raise ValueError("x is empty")
        total_loss, total_correct = 0.0, 0
        for start in range(0, len(x), batch_size):
            out = self._to_external(self._forward(x[start:start + batch_size], training=False))
            target = y[start:start + batch_size]
            loss, _ = self.loss.value_and_grad(out, target)
            total_loss += loss * len(out)
            correct = self.loss.correct(out, target)
            total_correct = None if correct is None else total_correct + correct
        accuracy = None if total_correct is None else total_correct / len(x)
        return total_loss / len(x), accuracy

    def predict(self, x, batch_size=256):
        """Outputs (N, *output_shape) for x (N, *input_shape), in inference mode."""
        batch_size = positive_int(batch_size, "batch_size")
        x = self._prepare(x)
        outputs = [self._to_external(self._forward(x[start:start + batch_size], training=False))
                   for start in range(0, len(x), batch_size)]
        if not outputs:
            return np.empty((0,) + self.output_shape, dtype=self.dtype)
        return np.concatenate(outputs)

    # ---- description
    def summary(self, file=None):
        """Print each layer's name, type, output shape and parameter count, as Keras does."""
        if not self.built:
            raise ValueError(f"{self.name!r} is not built yet: pass input_shape, call "
                             f"build(input_shape) or run it on data first")
        width = 65
        rows = [f'Model: "{self.name}"', "_" * width,
                f" {'Layer (type)':<28}{'Output Shape':<26}Param #", "=" * width]
        for index, layer in enumerate(self.layers):
            shape = f"(None, {', '.join(map(str, self._external_shape(layer.output_shape)))})"
            rows.append(f" {f'{layer.name} ({type(layer).__name__})':<28}{shape:<26}"
                        f"{layer.count_params():,}")
            rows.append("=" * width if index == len(self.layers) - 1 else "")
        total = self.count_params()
        rows += [f"Total params: {total:,}", f"Trainable params: {total:,}",
                 "Non-trainable params: 0", "_" * width]
        print("\n".join(rows), file=file or sys.stdout)

    def __repr__(self):
        inner = ",\n".join(f"    {layer!r}" for layer in self.layers)
        return f"Sequential([\n{inner}\n])" if self.layers else "Sequential([])"

    def __len__(self):
        return len(self.layers)

    def __getitem__(self, index):
        return self.layers[index]

    # ---- saving
    def save(self, path):
        """Write the architecture (JSON) and the weights to one .npz file at ``path``.

        ``path`` is used as given (no suffix is added). The file is written
        under a temporary name and renamed, so a crash never leaves a
        half-written model at ``path``. The optimizer's state is not saved.
        """
        if not self.built:
            raise ValueError(f"{self.name!r} is not built yet; nothing to save")
        layers = []
        arrays = {}
        for index, layer in enumerate(self.layers):
            if LAYERS.get(type(layer).__name__) is not type(layer):
                raise TypeError(f"cannot save {layer.describe()}: only convkit.nn's own layer "
                                f"classes can be saved")
            layers.append({"class": type(layer).__name__, "config": layer.get_config()})
            for key, value in layer.named_parameters().items():
                arrays[f"layer{index}.{key}"] = value
        architecture = {"format": FILE_FORMAT, "version": FILE_VERSION, "name": self.name,
                        "input_shape": list(self.input_shape), "data_format": self.data_format,
                        "dtype": self.dtype.name, "seed": self.seed, "layers": layers}
        arrays["architecture"] = np.array(json.dumps(architecture))
        path = os.fspath(path)
        temporary = f"{path}.tmp{os.getpid()}"
        try:
            with open(temporary, "wb") as file:
                np.savez(file, **arrays)
            os.replace(temporary, path)
        finally:
            if os.path.exists(temporary):
                os.remove(temporary)

    @classmethod
    def load(cls, path):
        """Rebuild a model written by :meth:`save`, weights bit for bit.

        Raises FileNotFoundError when ``path`` does not exist and ValueError
        when it is not an intact file written by ``save`` (truncated, corrupt,
        another kind of .npz or .npy, a pickle).
        """
        path = os.fspath(path)

        def invalid(reason):
            return ValueError(f"{path!r} is not a model written by Sequential.save: {reason}")

        try:
            archive = np.load(path, allow_pickle=False)
        except (FileNotFoundError, IsADirectoryError, PermissionError):
            raise
        except _READ_ERRORS as error:
            raise invalid(f"{type(error).__name__}: {error}") from error
        if not isinstance(archive, np.lib.npyio.NpzFile):
            raise invalid("it is a single .npy array, not an .npz archive")
        with archive:
            if "architecture" not in archive.files:
                raise invalid(f"it has no 'architecture' entry (entries: {archive.files[:5]})")
            try:
                model, expected = cls._from_archive(archive)
                extra = sorted(set(archive.files) - expected - {"architecture"})
                if extra:
                    raise ValueError(f"unexpected entries {extra}")
            except _READ_ERRORS + (KeyError, TypeError) as error:
                raise invalid(f"{type(error).__name__}: {error}") from error
        return model

    @classmethod
    def _from_archive(cls, archive):
        text = archive["architecture"]
        if text.dtype.kind != "U" or text.ndim != 0:
            raise ValueError("its 'architecture' entry is not a JSON string")
        architecture = json.loads(str(text))
        if not isinstance(architecture, dict) or architecture.get("format") != FILE_FORMAT:
            raise ValueError("its architecture does not name the convkit format")
        if architecture.get("version") != FILE_VERSION:
            raise ValueError(f"format version {architecture.get('version')!r} is not "
                             f"{FILE_VERSION} (saved by another convkit version)")
        layers = []
        for spec in architecture["layers"]:
            layer_class = LAYERS.get(spec["class"])
            if layer_class is None:
                raise ValueError(f"unknown layer class {spec['class']!r}")
            layers.append(layer_class.from_config(spec["config"]))
        model = cls(layers, input_shape=architecture["input_shape"], seed=architecture["seed"],
                    data_format=architecture["data_format"], dtype=architecture["dtype"],
                    name=architecture["name"])
        expected = set()
        for index, layer in enumerate(model.layers):
            weights = {}
            for key in layer.named_parameters():
                entry = f"layer{index}.{key}"
                if entry not in archive.files:
                    raise ValueError(f"the weight {entry!r} is missing")
                weights[key] = archive[entry]
                expected.add(entry)
            layer.set_weights(weights)
        return model, expected
