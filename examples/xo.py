"""Tell X from O: the toy problem the CNN tutorials start with.

    python examples/xo.py

9x9 images with pixels +1 (ink) and -1, an X or an O of varying size,
position and stroke thickness with a few flipped pixels
(convkit.datasets.make_xo). A two-layer CNN learns them from 2,000 examples
and is scored on 1,000 images it has never seen.
"""

import argparse

from convkit import datasets, nn


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    x_train, y_train = datasets.make_xo(2000, seed=args.seed)
    x_test, y_test = datasets.make_xo(1000, seed=args.seed + 1)
    model = nn.Sequential([
        nn.Conv2D(8, 3, padding="same", activation="relu"),
        nn.MaxPool2D(2),
        nn.Conv2D(16, 3, activation="relu"),
        nn.Flatten(),
        nn.Dense(2),
    ], input_shape=(1, 9, 9), seed=args.seed)
    model.summary()
    model.compile(nn.SoftmaxCrossEntropy(), nn.Adam(3e-3))
    model.fit(x_train, y_train, epochs=args.epochs, batch_size=32, verbose=2)

    _, accuracy = model.evaluate(x_test, y_test)
    wrong = (model.predict(x_test).argmax(axis=1) != y_test).nonzero()[0]
    print(f"held-out accuracy {accuracy:.4f} ({len(x_test) - len(wrong)}/{len(x_test)})")
    for index in wrong[:3]:
        print(f"misread image {index} (an {'XO'[y_test[index]]}):")
        print("\n".join("".join("#" if v > 0 else "." for v in row) for row in x_test[index, 0]))


if __name__ == "__main__":
    main()
