"""`python -m fmnist_exp.predict model_uri=URI images=<an image, a folder, or [a list]>`: class per image.

Images are made to look like Fashion-MNIST: colour is converted to grayscale and other sizes are
resized to 28x28 (both said on the line). A file that is not an image is refused by name. The keys
are conf/predict.yaml's, typed by PredictConfig; `--help` lists them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import MISSING

from fmnist_exp.commands import hydra_app as commands
from fmnist_exp.data.fashion_mnist import CLASS_NAMES
from fmnist_exp.errors import UserError
from fmnist_exp.model import backend
from fmnist_exp.runtime import noise


@dataclass
class PredictConfig:
    model_uri: str = field(default=MISSING, metadata={"example": "runs:/<run id>/model or models:/<name>@champion"})
    # An image file, a folder (its image files), or a list of either: images=[a.png,b.png].
    images: Any = field(
        default=MISSING, metadata={"example": "images=photo.png, images=folder/ or images=[a.png,b.png]"}
    )
    mlflow: commands.StoreConfig = field(default_factory=commands.StoreConfig)


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")


def image_paths(spec: str | list[str]) -> list[Path]:
    """The image files that `images=` names: files, and the image files of folders, in order."""
    parts = [str(part) for part in spec] if isinstance(spec, (list, tuple)) else [str(spec)]
    paths = []
    for part in filter(None, parts):
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
    except Image.DecompressionBombError as error:
        raise UserError(f"images: {path} is too large to be a clothing photo ({error})") from error
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        raise UserError(f"images: {path} is not a readable image ({error})") from error
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        # 16-bit grayscale (PNG opens as I;16 or I): scale 0..65535 to 0..255. Pillow's own convert
        # to L clips everything above 255 to white.
        wide = np.asarray(image, dtype=np.int64)
        if wide.min() < 0 or wide.max() > 65535:
            raise UserError(f"images: {path} has {image.mode} pixels outside 0..65535; save it as an 8-bit image")
        notes.append(f"scaled 16-bit ({image.mode}) to 8-bit")
        image = Image.fromarray(np.round(wide / 257.0).astype(np.uint8))
    elif image.mode == "F":
        raise UserError(f"images: {path} has floating-point pixels; save it as an 8-bit image")
    if image.mode != "L":
        notes.append(f"converted {image.mode} to grayscale")
        image = image.convert("L")
    if image.size != (28, 28):
        notes.append(f"resized {image.size[0]}x{image.size[1]} to 28x28")
        image = image.resize((28, 28), Image.Resampling.LANCZOS)
    return np.asarray(image, dtype=np.uint8)[..., np.newaxis], notes


def main(argv: list[str] | None = None) -> list[tuple[str, str, float]] | None:
    """The command line (`argv`, else sys.argv): prints and returns (file, class, probability) per image."""
    noise.quiet()
    return commands.run("predict", PredictConfig, predict, argv)


def console() -> None:
    """`fmnist-predict`: main without its return value, which a console script would pass to sys.exit."""
    main()


def predict(config: PredictConfig) -> list[tuple[str, str, float]]:
    from fmnist_exp.tracking.registry import in_store
    from fmnist_exp.tracking.store import Store

    paths = image_paths(config.images)
    loaded = [load_image(path) for path in paths]
    store = Store(config.mlflow.tracking_uri)
    store.check(existing=in_store(config.model_uri))
    from fmnist_exp.tracking import logged_model

    with logged_model.fetched(config.model_uri, store) as path:  # the folder is checked first
        backend.activate_for_loading()  # KERAS_BACKEND, else whichever backend is installed
        noise.import_tensorflow()
        model = logged_model.load_file(path, config.model_uri)
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
