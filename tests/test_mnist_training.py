"""The tutorial CNN learns real MNIST: one epoch on 5,000 training images reaches
at least 95% on 2,000 test images (skipped when the data folder is absent)."""

import time

import numpy as np
import pytest

import convkit
from convkit import datasets, nn

TRAIN, TEST, BATCH = 5000, 2000, 4


@pytest.fixture(scope="module")
def mnist():
    try:
        x_train, y_train = datasets.load_mnist(split="train")
        x_test, y_test = datasets.load_mnist(split="test")
    except FileNotFoundError as error:
        pytest.skip(f"MNIST files not available ({error})")
    scale = np.float32(1 / 255)
    return ((x_train[:TRAIN, None] * scale, y_train[:TRAIN]),
            (x_test[:TEST, None] * scale, y_test[:TEST]))


def test_tutorial_cnn_one_epoch_on_5000_images(mnist):
    (x_train, y_train), (x_test, y_test) = mnist
    model = nn.Sequential([
        nn.Conv2D(32, 5, activation="relu"), nn.MaxPool2D(2),
        nn.Conv2D(64, 5, activation="relu"), nn.MaxPool2D(2),
        nn.Flatten(), nn.Dense(128, activation="relu"), nn.Dense(10),
    ], input_shape=(1, 28, 28), seed=0)
    steps = -(-TRAIN // BATCH)
    model.compile(nn.SoftmaxCrossEntropy(), nn.Adam(nn.LinearDecay(1e-3, steps=steps)))
    start = time.perf_counter()
    # One thread: the result for this seed does not depend on the machine's core count.
    with convkit.num_threads(1):
        history = model.fit(x_train, y_train, epochs=1, batch_size=BATCH, verbose=0)
        loss, accuracy = model.evaluate(x_test, y_test)
    seconds = time.perf_counter() - start
    print(f"1 epoch on {TRAIN} images: train loss {history['loss'][0]:.3f}, "
          f"test loss {loss:.3f}, accuracy {accuracy:.4f} on {TEST}, {seconds:.1f} s")
    assert history["loss"][0] < 0.5
    assert accuracy >= 0.95
