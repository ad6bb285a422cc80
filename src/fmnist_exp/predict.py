"""`python -m fmnist_exp.predict model_uri=URI images=<png files or a folder>`: class per image.

Images are made to look like Fashion-MNIST: colour is converted to grayscale and other sizes are
resized to 28x28 (both said on the line). A file that is not an image is refused by name.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np

from fmnist_exp import cli
from fmnist_exp.config import default_tracking_uri
from fmnist_exp.data import CLASS_NAMES
from fmnist_exp.errors import UserError

USAGE = "usage: python -m fmnist_exp.predict model_uri=URI images=FILE[,FILE...]|FOLDER [tracking_uri=URI]"
DEFAULTS = {"model_uri": "", "images": "", "tracking_uri": ""}
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")


def image_paths(spec: str) -> list[Path]:
    paths = []
    for part in filter(None, spec.split(",")):
        path = Path(part)
        if path.is_dir():
            paths.extend(sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES))
        elif path.is_file():
            paths.append(path)
        else:
            raise UserError(f"images: {part} is neither a file nor a folder")
    if not paths:
        raise UserError(f"images: no image files in {spec!r}")
    return paths


def load_image(path: Path) -> tuple[np.ndarray, list[str]]:
    """(28, 28, 1) uint8 pixels and the conversions applied."""
    from PIL import Image, UnidentifiedImageError

    notes = []
    try:
        with Image.open(path) as opened:
            image = opened.copy()
    except (UnidentifiedImageError, OSError) as error:
        raise UserError(f"images: {path} is not a readable image ({error})") from error
    if image.mode != "L":
        notes.append(f"converted {image.mode} to grayscale")
        image = image.convert("L")
    if image.size != (28, 28):
        notes.append(f"resized {image.size[0]}x{image.size[1]} to 28x28")
        image = image.resize((28, 28), Image.Resampling.LANCZOS)
    return np.asarray(image, dtype=np.uint8)[..., np.newaxis], notes


def main(argv: list[str] | None = None) -> list[tuple[str, str, float]]:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    arguments = cli.parse_assignments(sys.argv[1:] if argv is None else argv, DEFAULTS, USAGE)
    for key in ("model_uri", "images"):
        if not arguments[key]:
            cli.fail(f"{key}: required\n{USAGE}")
    from fmnist_exp import backend, tracking

    backend.activate_for_loading()  # KERAS_BACKEND, else whichever backend is installed
    try:
        paths = image_paths(arguments["images"])
        loaded = [load_image(path) for path in paths]
        model = tracking.load_keras_model(arguments["model_uri"], arguments["tracking_uri"] or default_tracking_uri())
    except UserError as error:
        cli.fail(str(error))
    probabilities = model.predict(np.stack([pixels for pixels, _ in loaded]), verbose=0)
    results = []
    for path, (_, notes), row in zip(paths, loaded, probabilities, strict=True):
        best = int(row.argmax())
        results.append((str(path), CLASS_NAMES[best], float(row[best])))
        suffix = f"  ({'; '.join(notes)})" if notes else ""
        print(f"{path}\t{CLASS_NAMES[best]}\t{row[best]:.4f}{suffix}")
    return results


if __name__ == "__main__":
    main()
