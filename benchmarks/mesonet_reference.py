"""Reference outputs of the official MesoNet models (Keras), for tests/test_mesonet.py.

Rebuilds ``Meso4`` and ``MesoInception4`` layer for layer as in the official
code (github.com/DariusAf/MesoNet, ``classifiers.py``, Apache-2.0; Afchar et
al., WIFS 2018), loads the official ``.h5`` weights with Keras's own
``model.load_weights`` (the official ``Classifier.load``), reads the test images
with the official preprocessing (``example.py``: ``ImageDataGenerator(rescale=1/255)
.flow_from_directory(..., target_size=(256, 256))``, i.e. Keras ``load_img``'s
PIL nearest-neighbour resize) and prints the official output (probability that
the face is REAL) and its logit.

This script needs TensorFlow with Keras 2 and must not be imported by deepsift
or its tests. In a throwaway environment::

    python3 -m venv /tmp/kerasenv
    /tmp/kerasenv/bin/pip install tensorflow-cpu tf_keras h5py pillow
    /tmp/kerasenv/bin/python benchmarks/mesonet_reference.py ../shared/data/mesonet

(``TF_USE_LEGACY_KERAS=1`` is set below so that ``tensorflow.keras`` is Keras 2,
as the official code expects; Keras 3 reads these files too but is not what the
weights were written with.)

Besides the topological load of the official code, the weights are loaded a
second time by layer name (the names Keras 2.1.5 gave the layers in the file),
and the two must agree: it checks that today's Keras orders the layers with
weights as Keras 2.1.5 did (MesoInception's 3x3 branch convolutions all have
the same shapes, so an order mismatch would load silently).
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import argparse
import re
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path

import h5py
import numpy as np
import tensorflow as tf
from tensorflow.keras import Model as KerasModel
from tensorflow.keras.layers import (
    BatchNormalization,
    Concatenate,
    Conv2D,
    Dense,
    Dropout,
    Flatten,
    Input,
    LeakyReLU,
    MaxPooling2D,
)
from tensorflow.keras.preprocessing.image import ImageDataGenerator

IMGWIDTH = 256
WEIGHTS = {
    "Meso4_DF": "meso4",
    "Meso4_F2F": "meso4",
    "MesoInception_DF": "mesoinception4",
    "MesoInception_F2F": "mesoinception4",
}

Namer = Callable[[str], dict]


def no_names(kind: str) -> dict:
    """The official code: Keras picks the layer names."""
    return {}


def file_namer(path: Path) -> Namer:
    """Names in creation order, as Keras 2.1.5 numbered them when the file was written."""
    with h5py.File(path, "r") as f:
        names = [n.decode() if isinstance(n, bytes) else n for n in f.attrs["layer_names"]]
    by_kind: dict[str, list[tuple[int, str]]] = defaultdict(list)
    for name in names:
        match = re.fullmatch(r"(conv2d|batch_normalization|dense)(?:_(\d+))?", name)
        if match:
            by_kind[match.group(1)].append((int(match.group(2) or 0), name))
    queues: dict[str, Iterator[str]] = {
        k: iter(n for _, n in sorted(v)) for k, v in by_kind.items()
    }
    return lambda kind: {"name": next(queues[kind])}


# -- the official architectures (classifiers.py), layer for layer --------------------
def meso4(names: Namer = no_names) -> KerasModel:
    x = Input(shape=(IMGWIDTH, IMGWIDTH, 3))

    x1 = Conv2D(8, (3, 3), padding="same", activation="relu", **names("conv2d"))(x)
    x1 = BatchNormalization(**names("batch_normalization"))(x1)
    x1 = MaxPooling2D(pool_size=(2, 2), padding="same")(x1)

    x2 = Conv2D(8, (5, 5), padding="same", activation="relu", **names("conv2d"))(x1)
    x2 = BatchNormalization(**names("batch_normalization"))(x2)
    x2 = MaxPooling2D(pool_size=(2, 2), padding="same")(x2)

    x3 = Conv2D(16, (5, 5), padding="same", activation="relu", **names("conv2d"))(x2)
    x3 = BatchNormalization(**names("batch_normalization"))(x3)
    x3 = MaxPooling2D(pool_size=(2, 2), padding="same")(x3)

    x4 = Conv2D(16, (5, 5), padding="same", activation="relu", **names("conv2d"))(x3)
    x4 = BatchNormalization(**names("batch_normalization"))(x4)
    x4 = MaxPooling2D(pool_size=(4, 4), padding="same")(x4)

    y = Flatten()(x4)
    y = Dropout(0.5)(y)
    y = Dense(16, **names("dense"))(y)
    y = LeakyReLU(alpha=0.1)(y)
    y = Dropout(0.5)(y)
    y = Dense(1, activation="sigmoid", **names("dense"))(y)
    return KerasModel(inputs=x, outputs=y)


def inception_layer(a: int, b: int, c: int, d: int, names: Namer) -> Callable:
    def func(x):
        x1 = Conv2D(a, (1, 1), padding="same", activation="relu", **names("conv2d"))(x)

        x2 = Conv2D(b, (1, 1), padding="same", activation="relu", **names("conv2d"))(x)
        x2 = Conv2D(b, (3, 3), padding="same", activation="relu", **names("conv2d"))(x2)

        x3 = Conv2D(c, (1, 1), padding="same", activation="relu", **names("conv2d"))(x)
        x3 = Conv2D(
            c,
            (3, 3),
            dilation_rate=2,
            strides=1,
            padding="same",
            activation="relu",
            **names("conv2d"),
        )(x3)

        x4 = Conv2D(d, (1, 1), padding="same", activation="relu", **names("conv2d"))(x)
        x4 = Conv2D(
            d,
            (3, 3),
            dilation_rate=3,
            strides=1,
            padding="same",
            activation="relu",
            **names("conv2d"),
        )(x4)

        return Concatenate(axis=-1)([x1, x2, x3, x4])

    return func


def mesoinception4(names: Namer = no_names) -> KerasModel:
    x = Input(shape=(IMGWIDTH, IMGWIDTH, 3))

    x1 = inception_layer(1, 4, 4, 2, names)(x)
    x1 = BatchNormalization(**names("batch_normalization"))(x1)
    x1 = MaxPooling2D(pool_size=(2, 2), padding="same")(x1)

    x2 = inception_layer(2, 4, 4, 2, names)(x1)
    x2 = BatchNormalization(**names("batch_normalization"))(x2)
    x2 = MaxPooling2D(pool_size=(2, 2), padding="same")(x2)

    x3 = Conv2D(16, (5, 5), padding="same", activation="relu", **names("conv2d"))(x2)
    x3 = BatchNormalization(**names("batch_normalization"))(x3)
    x3 = MaxPooling2D(pool_size=(2, 2), padding="same")(x3)

    x4 = Conv2D(16, (5, 5), padding="same", activation="relu", **names("conv2d"))(x3)
    x4 = BatchNormalization(**names("batch_normalization"))(x4)
    x4 = MaxPooling2D(pool_size=(4, 4), padding="same")(x4)

    y = Flatten()(x4)
    y = Dropout(0.5)(y)
    y = Dense(16, **names("dense"))(y)
    y = LeakyReLU(alpha=0.1)(y)
    y = Dropout(0.5)(y)
    y = Dense(1, activation="sigmoid", **names("dense"))(y)
    return KerasModel(inputs=x, outputs=y)


BUILDERS = {"meso4": meso4, "mesoinception4": mesoinception4}


def official_logits(model: KerasModel, images: np.ndarray) -> np.ndarray:
    """Pre-sigmoid output of the last Dense (float64 from its float32 input)."""
    last = model.layers[-1]
    hidden = KerasModel(model.inputs, last.input).predict(images, verbose=0).astype(np.float64)
    kernel, bias = (w.astype(np.float64) for w in last.get_weights())
    return (hidden @ kernel + bias)[:, 0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", type=Path, help="the mesonet folder (weights/, test_images/)")
    args = parser.parse_args()
    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    print(f"tensorflow {tf.__version__}, keras {tf.keras.__name__}, h5py {h5py.__version__}")

    # official preprocessing (example.py), without shuffling so the order is known
    generator = ImageDataGenerator(rescale=1.0 / 255).flow_from_directory(
        str(args.data / "test_images"),
        target_size=(256, 256),
        batch_size=64,
        class_mode="binary",
        shuffle=False,
    )
    images, labels = next(generator)
    names = generator.filenames
    print("class_indices", generator.class_indices)

    for arch in ("meso4", "mesoinception4"):
        model = BUILDERS[arch]()
        trainable = sum(int(np.prod(w.shape)) for w in model.trainable_weights)
        frozen = sum(int(np.prod(w.shape)) for w in model.non_trainable_weights)
        print(f"{arch}: trainable params {trainable}, non-trainable {frozen}")

    for stem, arch in WEIGHTS.items():
        path = args.data / "weights" / f"{stem}.h5"
        model = BUILDERS[arch]()
        model.load_weights(str(path))  # the official Classifier.load
        probs = model.predict(images, verbose=0)[:, 0].astype(np.float64)
        logits = official_logits(model, images)

        by_name = BUILDERS[arch](file_namer(path))
        by_name.load_weights(str(path), by_name=True)
        check = by_name.predict(images, verbose=0)[:, 0].astype(np.float64)
        agree = np.max(np.abs(check - probs))
        print(f"{stem} (topological vs by-name load: max |diff| {agree:.2e})")
        for name, label, p, z in zip(names, labels, probs, logits, strict=True):
            print(f'    ("{stem}", "{name}"): ({p:.10f}, {z:.8f}),  # label {int(label)}')


if __name__ == "__main__":
    main()
