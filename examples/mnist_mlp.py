"""A Dense-only network on MNIST, for comparison with the CNN of mnist_cnn.py.

    python examples/mnist_mlp.py
    python examples/mnist_mlp.py --epochs 10 --units 256

Flatten -> Dense(128, relu) -> Dense(10): every pixel is its own input, so
the network knows nothing about which pixels are neighbours. The tutorials
report about 96% for such a network, against 99% for the CNN.
"""

import argparse
import time

import numpy as np

import convkit
from convkit import datasets, nn


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--units", type=int, default=128)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--data", default=None, help="folder with the MNIST IDX files")
    args = parser.parse_args()

    if args.threads is not None:
        convkit.set_num_threads(args.threads)
    (x_train, y_train), (x_test, y_test) = (
        datasets.load_mnist(args.data, split=split) for split in ("train", "test"))
    x_train = x_train[:, None] * np.float32(1 / 255)
    x_test = x_test[:, None] * np.float32(1 / 255)

    model = nn.Sequential([
        nn.Flatten(),
        nn.Dense(args.units, activation="relu"),
        nn.Dense(10),
    ], input_shape=(1, 28, 28), seed=args.seed)
    model.summary()
    model.compile(nn.SoftmaxCrossEntropy(), nn.Adam(args.lr))
    start = time.perf_counter()
    history = model.fit(x_train, y_train, epochs=args.epochs, batch_size=args.batch_size,
                        validation_data=(x_test, y_test))
    total = time.perf_counter() - start
    loss, accuracy = model.evaluate(x_test, y_test)
    print(f"test accuracy {accuracy:.4f}, test loss {loss:.4f} after {args.epochs} epochs "
          f"({np.mean(history['seconds']):.1f} s per epoch, {total:.0f} s in all)")


if __name__ == "__main__":
    main()
