"""Save a picture of a CNN's first-layer filters and of one image's feature maps.

    python examples/mnist_cnn.py --save mnist_cnn.npz    # train and save first
    python examples/show_filters.py --model mnist_cnn.npz --out filters.png

Without a saved model it trains the tutorial CNN for one epoch on 5,000
MNIST images first (a few seconds). Needs matplotlib (pip install matplotlib).
"""

import argparse
import os
import sys

import numpy as np

from convkit import datasets, nn


def quick_model(x_train, y_train):
    model = nn.Sequential([
        nn.Conv2D(32, 5, activation="relu"), nn.MaxPool2D(2),
        nn.Conv2D(64, 5, activation="relu"), nn.MaxPool2D(2),
        nn.Flatten(), nn.Dense(128, activation="relu"), nn.Dense(10),
    ], input_shape=(1, 28, 28), seed=0)
    model.compile(nn.SoftmaxCrossEntropy(), nn.Adam(nn.LinearDecay(2e-3, steps=313)))
    model.fit(x_train[:5000], y_train[:5000], epochs=1, batch_size=16)
    return model


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="mnist_cnn.npz", help="a model saved by mnist_cnn.py")
    parser.add_argument("--out", default="filters.png")
    parser.add_argument("--image", type=int, default=0, help="index of the test image to show")
    args = parser.parse_args()
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        sys.exit("show_filters.py needs matplotlib: pip install matplotlib")

    x_test, y_test = datasets.load_mnist(split="test")
    x_test = x_test[:, None] * np.float32(1 / 255)
    if os.path.exists(args.model):
        model = nn.Sequential.load(args.model)
    else:
        print(f"{args.model} not found: training the tutorial CNN for one epoch on 5,000 images")
        x_train, y_train = datasets.load_mnist(split="train")
        model = quick_model(x_train[:, None] * np.float32(1 / 255), y_train)

    conv = next(layer for layer in model.layers if isinstance(layer, nn.Conv2D))
    kernels = conv.named_parameters()["kernel"]
    image = x_test[args.image:args.image + 1]
    maps = conv.forward(image)[0]

    count = kernels.shape[0]
    columns = 8
    rows = -(-count // columns)
    figure, axes = plt.subplots(2 * rows + 1, columns,
                                figsize=(columns * 1.2, (2 * rows + 1) * 1.2))
    for axis in axes.flat:
        axis.axis("off")
    for index in range(count):
        axes[index // columns, index % columns].imshow(kernels[index, 0], cmap="gray")
    axes[rows, 0].imshow(image[0, 0], cmap="gray_r")
    axes[rows, 0].set_title(f"digit {y_test[args.image]}", fontsize=8)
    for index in range(count):
        axes[rows + 1 + index // columns, index % columns].imshow(maps[index], cmap="viridis")
    figure.suptitle(f"{conv.name}: {count} learned {kernels.shape[2]}x{kernels.shape[3]} "
                    f"filters (top) and their feature maps for one test image (bottom)",
                    fontsize=9)
    figure.savefig(args.out, dpi=120, bbox_inches="tight")
    print(f"saved {args.out}")


if __name__ == "__main__":
    main()
