r"""Trains a reference recipe in Keras 3 itself, on the vendored MNIST files, one seed at a time.

    python experiments/bench/keras_recipe.py --model mlp_dropout --epochs 10 --batch 128 \
        --seeds 0 1 2

The same model, Adam (lr 1e-3) and cross-entropy as the benchmark's Keras rows, fitted with
``validation_split=0.1`` like the reference notebooks; prints one JSON line per seed with its test
accuracy. It answers whether a reference figure that our runs miss is one Keras reaches reliably.
Needs the ``bench`` extra (tensorflow-cpu).
"""

from __future__ import annotations

import argparse
import json

import benchmark as bench


def train_and_test(model_name: str, epochs: int, batch: int, seed: int) -> float:
    """Test accuracy of ``model_name`` after ``epochs`` epochs of the Keras recipe with ``seed``."""
    import keras

    keras.utils.set_random_seed(seed)
    (x, y), (test_x, test_y) = (bench.mnist_arrays(split) for split in ("train", "test"))
    model = bench.compiled_keras_model(model_name)
    x, test_x = x.astype("float32") / 255.0, test_x.astype("float32") / 255.0
    model.fit(x, y, batch_size=batch, epochs=epochs, validation_split=0.1, verbose=0)
    return float(model.evaluate(test_x, test_y, verbose=0)[1])


def main() -> None:
    """Parses the command line and prints one JSON record per seed."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, choices=list(bench.MODELS))
    parser.add_argument("--epochs", type=int, required=True)
    parser.add_argument("--batch", type=int, required=True)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    args = parser.parse_args()
    for seed in args.seeds:
        accuracy = train_and_test(args.model, args.epochs, args.batch, seed)
        record = {"model": args.model, "epochs": args.epochs, "batch": args.batch, "seed": seed}
        print(json.dumps({**record, "test_accuracy": accuracy}), flush=True)


if __name__ == "__main__":
    main()
