"""Grad-CAM explanations: they point at the object for a trained model and not for a random
one, and every kind of saved model can be explained."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import keras
import numpy as np
import pytest
from PIL import Image

from app.ml import bases, builders
from app.ml.config import HeadKind, Method, TrainConfig
from app.ml.explain import GradCam, overlay_png, upsampled
from app.ml.heads import HeadSpec, build_head
from tests.models import scratch_model, train_on_photos
from tests.zips import SHARED

CATS_DOGS = SHARED / "data" / "cats_vs_dogs_small"
# Photos of neither class: the "neutral" quadrants of the composites.
NEUTRAL = sorted((SHARED / "data" / "flowers_small" / "test").rglob("*.jpg"))
SIZE = 224  # MobileNetV2's native size: a 7 x 7 feature map
TEST_PHOTOS_PER_CLASS = 12
# Measured with the model below: 17 of 24 composites (0.71) put most of the heatmap in the
# object's quadrant, the random-weight model 0 of 24 (its mass in the quadrant averages
# 0.24, chance). On a plain grey canvas the random model also scored 0.79 (it looks at any
# texture), which is why the other quadrants hold photos of neither class.
FLOOR = 0.5
SPEC = bases.BASES[bases.BaseName.MOBILENET_V2]


def _composites() -> Iterator[tuple[np.ndarray, tuple[int, int]]]:
    """A cat or dog test photo in one quadrant of a 448 x 448 canvas (the quadrant cycling),
    flower photos in the other three; with the object's quadrant's top-left corner."""
    photos = [
        path
        for label in ("cats", "dogs")
        for path in sorted((CATS_DOGS / "test" / label).iterdir())[:TEST_PHOTOS_PER_CLASS]
    ]
    for index, path in enumerate(photos):
        canvas = np.full((2 * SIZE, 2 * SIZE, 3), 127.0, np.float32)
        for quadrant in range(4):
            source = (
                path if quadrant == index % 4 else NEUTRAL[(3 * index + quadrant) % len(NEUTRAL)]
            )
            _paste(canvas, source, quadrant)
        quadrant = index % 4
        yield canvas, ((quadrant // 2) * SIZE, (quadrant % 2) * SIZE)


def _paste(canvas: np.ndarray, path: Path, quadrant: int) -> None:
    photo = Image.open(path).convert("RGB")
    photo.thumbnail((SIZE, SIZE))
    top = (quadrant // 2) * SIZE + (SIZE - photo.height) // 2
    left = (quadrant % 2) * SIZE + (SIZE - photo.width) // 2
    canvas[top : top + photo.height, left : left + photo.width] = np.asarray(photo, np.float32)


def _localisation_rate(model: keras.Model) -> float:
    """The share of composites whose heatmap has most of its mass in the object's quadrant."""
    grad_cam = GradCam(model)
    hits = []
    for canvas, (top, left) in _composites():
        heatmap = upsampled(grad_cam.explain(canvas[None]).heatmap, width=2 * SIZE, height=2 * SIZE)
        inside = heatmap[top : top + SIZE, left : left + SIZE].sum()
        hits.append(heatmap.sum() > 0 and inside / heatmap.sum() > 0.5)
    return float(np.mean(hits))


@pytest.fixture(scope="module")
def trained_model(tmp_path_factory) -> keras.Model:
    """A bottleneck model trained by the service's training code on 60 cats and 60 dogs."""
    images = [
        {"split": split, "file": str(path.relative_to(CATS_DOGS)), "label": label}
        for split, count in (("train", 60), ("validation", 20))
        for label in ("cats", "dogs")
        for path in sorted((CATS_DOGS / split / label).iterdir())[:count]
    ]
    config = TrainConfig(
        method=Method.BOTTLENECK,
        image_size=SIZE,
        epochs=30,
        batch_size=32,
        learning_rate=3e-3,
        dropout=0.5,
        seed=1,
    )
    outcome = train_on_photos(
        CATS_DOGS,
        images,
        classes=["cats", "dogs"],
        config=config,
        cache=tmp_path_factory.mktemp("features"),
    )
    assert outcome.details["validation_accuracy"] >= 0.9
    return outcome.model


def _random_pretrained(base_name: str, *, classes: int, image_size: int) -> keras.Model:
    spec = bases.BASES[bases.BaseName(base_name)]
    keras.utils.set_random_seed(0)
    base = bases.build_base(spec, image_size=image_size, weights=None)
    dim = base.output_shape[-1]
    features = np.random.default_rng(0).normal(size=(64, dim)).astype(np.float32)
    head = build_head(
        HeadSpec(kind=HeadKind.LINEAR, l2=1e-3),
        feature_dim=dim,
        class_count=classes,
        train_x=features,
        seed=0,
    )
    return builders.build_pretrained_model(base, head, spec, image_size=image_size)


def test_a_trained_models_heatmap_is_on_the_object(trained_model: keras.Model) -> None:
    assert _localisation_rate(trained_model) >= FLOOR


def test_a_random_weight_model_fails_the_same_test() -> None:
    # The negative control: if this passed, the test above would not be measuring anything.
    random_model = _random_pretrained("mobilenet_v2", classes=2, image_size=SIZE)
    assert _localisation_rate(random_model) < FLOOR


def _scratch(classes: int) -> keras.Model:
    return scratch_model(classes)


@pytest.mark.parametrize(
    "build",
    [
        pytest.param(lambda: _scratch(2), id="scratch, sigmoid"),
        pytest.param(lambda: builders.with_test_time_flip(_scratch(3)), id="scratch, flip"),
        pytest.param(
            lambda: _random_pretrained("mobilenet", classes=3, image_size=128), id="mobilenet"
        ),
        pytest.param(
            lambda: builders.with_test_time_flip(
                _random_pretrained("mobilenet_v2", classes=4, image_size=96)
            ),
            id="mobilenet_v2, flip",
        ),
        # calibrated: the temperature is the last layer of the chain, or after the average
        pytest.param(
            lambda: builders.with_temperature(_scratch(2), 2.0), id="scratch, sigmoid, calibrated"
        ),
        pytest.param(
            lambda: builders.with_temperature(
                builders.with_test_time_flip(
                    _random_pretrained("mobilenet_v2", classes=4, image_size=96)
                ),
                0.5,
            ),
            id="mobilenet_v2, flip, calibrated",
        ),
    ],
)
def test_every_kind_of_model_is_explained_for_its_own_answer(build) -> None:
    model = build()
    photo = np.asarray(
        Image.open(CATS_DOGS / "test" / "dogs" / "dog.4553.jpg").convert("RGB"), np.float32
    )[None]
    explanation = GradCam(model).explain(photo)
    output = np.asarray(model(photo, training=False))[0]
    scores = np.array([1 - output[0], output[0]]) if output.shape[0] == 1 else output
    assert explanation.class_index == int(np.argmax(scores))  # the model's own top label
    np.testing.assert_allclose(explanation.probabilities, output, atol=1e-5)
    heatmap = explanation.heatmap
    assert heatmap.ndim == 2 and heatmap.min() >= 0 and heatmap.max() <= 1
    overlay = Image.open(
        io.BytesIO(overlay_png(Image.fromarray(photo[0].astype(np.uint8)), heatmap))
    )
    assert overlay.size == (photo.shape[2], photo.shape[1])


def test_a_flip_averaged_models_heatmap_mirrors_with_the_image() -> None:
    model = builders.with_test_time_flip(_scratch(3))
    photo = np.asarray(
        Image.open(CATS_DOGS / "test" / "cats" / "cat.4753.jpg").convert("RGB"), np.float32
    )[None]
    grad_cam = GradCam(model)
    straight = grad_cam.explain(photo).heatmap
    mirrored = grad_cam.explain(photo[:, :, ::-1, :]).heatmap
    np.testing.assert_allclose(mirrored, straight[:, ::-1], atol=1e-4)
