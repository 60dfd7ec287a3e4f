"""ONNX and SavedModel exports answer like the Keras model, for every kind of model the service
saves: scratch (one sigmoid unit, or a softmax), the pretrained bases with a head (bottleneck
and fine-tuned models have that same graph), and test-time-flip models."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import keras
import numpy as np
import pytest
from PIL import Image

from app.ml import bases, builders, export
from app.ml.config import HeadKind
from app.ml.heads import HeadSpec, build_head
from tests.models import scratch_model
from tests.zips import SHARED

DATA = SHARED / "data"
# Real photos of several sizes and aspect ratios (landscape, portrait, square, tiny, wide).
PHOTO_FILES = [
    DATA / "caltech101_8class" / "test" / "airplanes" / "image_0025.jpg",  # 320 x 137
    DATA / "car_vs_minibus_tiny" / "test" / "car" / "car704.jpg",  # 100 x 100
    DATA / "cats_vs_dogs_small" / "test" / "cats" / "cat.4753.jpg",  # 128 x 199
    DATA / "cats_vs_dogs_small" / "test" / "dogs" / "dog.4553.jpg",  # 239 x 320
    DATA / "flowers_small" / "test" / "daisy" / "1286274236_1d7ac84efb_n.jpg",  # 320 x 240
]
TOLERANCE = 1e-4


def _photos() -> list[np.ndarray]:
    photos = [np.asarray(Image.open(f).convert("RGB"), dtype=np.float32) for f in PHOTO_FILES]
    return [*photos, photos[-1][40:100, :, :]]  # and a 60 x 320 strip of the last one


def _scratch(classes: int) -> keras.Model:
    return scratch_model(classes)


def _pretrained(base_name: str, classes: int, image_size: int, kind: HeadKind) -> keras.Model:
    """A base with the service's own head (standardisation adapted to features, as training
    does: its statistics are tensors the export must carry)."""
    spec = bases.BASES[bases.BaseName(base_name)]
    weights = bases.find_weights(spec, weights_dir=SHARED / "weights")
    assert weights is not None
    base = builders.frozen_base(spec, image_size=image_size, weights=weights)
    keras.utils.set_random_seed(4)
    dim = base.output_shape[-1]
    features = np.random.default_rng(4).normal(1.0, 2.0, (64, dim)).astype(np.float32)
    head = build_head(
        HeadSpec(kind=kind, l2=1e-3, dropout=0.5),
        feature_dim=dim,
        class_count=classes,
        train_x=features,
        seed=4,
    )
    return builders.build_pretrained_model(base, head, spec, image_size=image_size)


MODELS: dict[str, tuple[Callable[[], keras.Model], int]] = {
    "scratch, two classes (sigmoid)": (lambda: _scratch(2), 64),
    "scratch, three classes, test-time flip": (
        lambda: builders.with_test_time_flip(_scratch(3)),
        64,
    ),
    "mobilenet_v2 + linear head": (
        lambda: _pretrained("mobilenet_v2", 5, 96, HeadKind.LINEAR),
        96,
    ),
    "mobilenet + dense head, test-time flip": (
        lambda: builders.with_test_time_flip(_pretrained("mobilenet", 3, 128, HeadKind.DENSE)),
        128,
    ),
    # calibrated models end in a temperature layer (softmax and one sigmoid unit)
    "scratch, two classes (sigmoid), calibrated": (
        lambda: builders.with_temperature(_scratch(2), 1.7),
        64,
    ),
    "mobilenet + dense head, test-time flip, calibrated": (
        lambda: builders.with_temperature(
            builders.with_test_time_flip(_pretrained("mobilenet", 3, 128, HeadKind.DENSE)), 0.6
        ),
        128,
    ),
}


@pytest.mark.parametrize("kind", list(MODELS))
def test_onnx_runtime_answers_like_keras_on_real_photos(kind: str, tmp_path: Path) -> None:
    build, image_size = MODELS[kind]
    model = build()
    exported = export.export_onnx(model, tmp_path / export.ONNX_FILE, image_size=image_size)
    assert exported.max_abs_difference <= TOLERANCE
    session = export.onnx_session(exported.path)
    (input_spec,) = session.get_inputs()
    assert input_spec.name == export.INPUT_NAME
    # the features the unknown answer compares come second, where the graph has one set of
    # them (not a flip-averaged model's)
    embedder = builders.with_embedding(model)
    outputs = [export.OUTPUT_NAME] + ([export.EMBEDDING_NAME] if embedder is not None else [])
    assert [o.name for o in session.get_outputs()] == outputs
    assert ("flip" in kind) is (embedder is None)
    assert input_spec.shape[3] == 3  # batch, height and width are free
    for photo in _photos():
        expected = np.asarray(model(photo[None], training=False))
        answers = session.run(None, {export.INPUT_NAME: photo[None]})
        assert answers[0].shape == expected.shape
        assert np.max(np.abs(answers[0] - expected)) <= TOLERANCE, photo.shape
        if embedder is not None:
            features = np.asarray(embedder(photo[None], training=False)[1])
            scale = max(float(np.max(np.abs(features))), 1.0)
            assert np.max(np.abs(answers[1] - features)) <= TOLERANCE * scale


def test_an_export_that_does_not_match_keras_is_not_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A MobileNetV2 export differs from Keras by about 1e-6: with no difference allowed at
    # all, the parity check must refuse it and leave no file behind.
    monkeypatch.setattr(export, "PARITY_TOLERANCE", 0.0)
    build, image_size = MODELS["mobilenet_v2 + linear head"]
    path = tmp_path / export.ONNX_FILE
    with pytest.raises(export.ExportError, match="differs from the Keras model"):
        export.export_onnx(build(), path, image_size=image_size)
    assert not path.exists()


def test_saved_model_answers_like_keras(tmp_path: Path) -> None:
    import tensorflow as tf

    build, _ = MODELS["scratch, three classes, test-time flip"]
    model = build()
    export.export_saved_model(model, tmp_path / "1")
    serving = tf.saved_model.load(str(tmp_path / "1")).signatures["serving_default"]
    for photo in _photos()[:3]:
        (answered,) = serving(pixels=tf.constant(photo[None])).values()
        expected = np.asarray(model(photo[None], training=False))
        assert np.max(np.abs(answered.numpy() - expected)) <= TOLERANCE


def test_the_onnx_resize_matches_the_models_resizing_layer() -> None:
    from app.ml.data import resize_pixels

    for size in (64, 160, 224):  # downscaling and upscaling
        session = export.onnx_session(export.resize_graph(size), threads=1)
        for photo in _photos():
            expected = resize_pixels(photo, image_size=size)
            resized = session.run(None, {"image": photo})[0]
            assert resized.shape == (size, size, 3)
            # float rounding only: measured at most 0.004 on the 0..255 scale
            assert np.max(np.abs(resized - expected)) < 0.02, (size, photo.shape)


def test_feature_extraction_by_onnx_runtime_equals_keras(tmp_path: Path) -> None:
    from app.ml.data import resize_pixels
    from app.ml.features import onnx_extractor

    spec = bases.BASES[bases.BaseName.MOBILENET_V2]
    weights = bases.find_weights(spec, weights_dir=SHARED / "weights")
    assert weights is not None
    base = builders.frozen_base(spec, image_size=96, weights=weights)
    extractor = builders.feature_extractor(base, spec, image_size=96, with_top_inputs=True)
    pixels = np.stack([resize_pixels(photo, image_size=96) for photo in _photos()])
    expected = extractor.predict(pixels, batch_size=4, verbose=0)

    class Batches:
        def __init__(self) -> None:
            self.seen: list[int] = []

        def on_predict_batch_end(self, batch: int) -> None:
            self.seen.append(batch)

    batches = Batches()
    onnx = onnx_extractor(extractor, cache_dir=tmp_path, key="k", image_size=96)
    answered = onnx.predict(pixels, batch_size=4, callbacks=[batches])
    assert batches.seen == [0, 1]  # progress (and the job's heartbeat) per batch, as in Keras
    for want, got in zip(expected, answered, strict=True):  # pooled features, top inputs
        assert got.shape == want.shape
        assert np.max(np.abs(got - want)) <= 1e-4 * np.max(np.abs(want))
    exported = tmp_path / "extractor-k.onnx"
    modified = exported.stat().st_mtime_ns
    onnx_extractor(extractor, cache_dir=tmp_path, key="k", image_size=96)
    assert exported.stat().st_mtime_ns == modified  # exported once, then reused
