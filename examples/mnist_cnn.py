"""Train the tutorial CNN on MNIST with convkit.nn and report its test accuracy.

    python examples/mnist_cnn.py                       # 6 epochs, saves mnist_cnn.npz
    python examples/mnist_cnn.py --epochs 1 --threads 1 --save /tmp/cnn.npz

Conv2D(32, 5, relu) -> MaxPool2D(2) -> Conv2D(64, 5, relu) -> MaxPool2D(2)
-> Flatten -> Dense(128, relu) -> Dense(10), trained with softmax
cross-entropy and Adam whose learning rate falls linearly to zero. The data
come from $CONVKIT_DATA/mnist (default ../shared/data/mnist beside the checkout).
"""

import argparse
import time

import numpy as np

import convkit
from convkit import datasets, nn


def load(directory, split):
    """MNIST as float32 (n, 1, 28, 28) in [0, 1] and uint8 labels (n,)."""
    images, labels = datasets.load_mnist(directory, split=split)
    return images[:, None] * np.float32(1 / 255), labels


def tutorial_cnn(seed):
    return nn.Sequential([
        nn.Conv2D(32, 5, activation="relu"),
        nn.MaxPool2D(2),
        nn.Conv2D(64, 5, activation="relu"),
        nn.MaxPool2D(2),
        nn.Flatten(),
        nn.Dense(128, activation="relu"),
        nn.Dense(10),
    ], input_shape=(1, 28, 28), seed=seed)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-3, help="initial Adam learning rate")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None,
                        help="convkit threads (default: every core, or OMP_NUM_THREADS)")
    parser.add_argument("--data", default=None, help="folder with the MNIST IDX files")
    parser.add_argument("--save", default="mnist_cnn.npz", help="where to save the model")
    args = parser.parse_args()

    if args.threads is not None:
        convkit.set_num_threads(args.threads)
    x_train, y_train = load(args.data, "train")
    x_test, y_test = load(args.data, "test")

    model = tutorial_cnn(args.seed)
    model.summary()
    steps = args.epochs * -(-len(x_train) // args.batch_size)
    model.compile(nn.SoftmaxCrossEntropy(), nn.Adam(nn.LinearDecay(args.lr, steps=steps)))
    print(f"{len(x_train)} training images, batch {args.batch_size}, "
          f"{convkit.get_num_threads()} threads")
    start = time.perf_counter()
    history = model.fit(x_train, y_train, epochs=args.epochs, batch_size=args.batch_size,
                        validation_data=(x_test, y_test))
    total = time.perf_counter() - start

    loss, accuracy = model.evaluate(x_test, y_test)
    per_epoch = np.mean(history["seconds"])
    print(f"test accuracy {accuracy:.4f} ({round(accuracy * len(x_test))}/{len(x_test)}), "
          f"test loss {loss:.4f}")
    print(f"{args.epochs} epochs, {per_epoch:.1f} s per epoch of training "
          f"({len(x_train) / per_epoch:.0f} images/s), {total:.0f} s in all with validation")
    model.save(args.save)
    print(f"saved the model to {args.save}")


if __name__ == "__main__":
    main()
