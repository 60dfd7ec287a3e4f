"""The Custom Vision Python quickstart's flow over HTTP, with the official SDK, against a live
`make run` service (API and worker): a project, tags, images in batches, train, poll until
Completed, publish, classify with and without store; and its failures as SDK exceptions."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import time
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from azure.cognitiveservices.vision.customvision.prediction import CustomVisionPredictionClient
from azure.cognitiveservices.vision.customvision.prediction.models import (
    CustomVisionErrorException as PredictionError,
)
from azure.cognitiveservices.vision.customvision.training import CustomVisionTrainingClient
from azure.cognitiveservices.vision.customvision.training.models import (
    CustomVisionErrorException,
    ImageFileCreateBatch,
    ImageFileCreateEntry,
    ImageIdCreateBatch,
    ImageIdCreateEntry,
    PredictionQueryTag,
    PredictionQueryToken,
)
from msrest.authentication import ApiKeyCredentials

from app.core.config import PROJECT_ROOT
from tests.processes import LiveService, running_service, weights_settings
from tests.zips import PHOTOS

CATS = sorted((PHOTOS / "train" / "cats").iterdir())[:8]
DOGS = sorted((PHOTOS / "train" / "dogs").iterdir())[:8]
TEST_DOG = sorted((PHOTOS / "test" / "dogs").iterdir())[0]


@dataclass(frozen=True)
class Keys:
    training: str
    prediction: str


def _key(service: LiveService, scopes: str) -> str:
    created = subprocess.run(
        [
            sys.executable,
            "-m",
            "app.cli",
            "keys",
            "create",
            "--name",
            "azure",
            "--owner",
            "azure-user",
            "--scopes",
            scopes,
        ],
        cwd=PROJECT_ROOT,
        env=service.env,
        capture_output=True,
        text=True,
        check=True,
    )
    return created.stdout.strip().splitlines()[-1].strip()


@pytest.fixture(scope="module")
def service(tmp_path_factory) -> Iterator[tuple[LiveService, Keys]]:
    tmp = tmp_path_factory.mktemp("customvision-training")
    with running_service(tmp / "var", tmp / "run.log", settings=weights_settings()) as live:
        yield live, Keys(training=_key(live, "train"), prediction=_key(live, "predict"))


def _zip_of(link: str, folder: Path) -> Path:
    """The export's zip, fetched without a key and unpacked into `folder`."""
    fetched = httpx.get(link, timeout=60)
    assert fetched.status_code == 200 and fetched.headers["content-type"] == "application/zip"
    zipfile.ZipFile(io.BytesIO(fetched.content)).extractall(folder)
    return folder


def _sdk_code(call) -> str:
    with pytest.raises((CustomVisionErrorException, PredictionError)) as raised:
        call()
    return str(raised.value.error.code)


def test_the_quickstart_flow(service: tuple[LiveService, Keys], tmp_path: Path) -> None:
    live, keys = service
    endpoint = f"{live.url}/"
    trainer = CustomVisionTrainingClient(
        endpoint, ApiKeyCredentials(in_headers={"Training-key": keys.training})
    )
    predictor = CustomVisionPredictionClient(
        endpoint, ApiKeyCredentials(in_headers={"Prediction-key": keys.prediction})
    )
    project = trainer.create_project("pets")
    cat, dog = trainer.create_tag(project.id, "cat"), trainer.create_tag(project.id, "dog")
    code = _sdk_code(lambda: trainer.train_project(project.id))
    assert code == "BadRequestTrainingValidationFailed"  # no image yet
    for photos, tag in ((CATS, cat), (DOGS, dog)):
        batch = ImageFileCreateBatch(
            images=[
                ImageFileCreateEntry(name=p.name, contents=p.read_bytes(), tag_ids=[tag.id])
                for p in photos
            ]
        )
        assert trainer.create_images_from_files(project.id, batch).is_batch_successful

    iteration = trainer.train_project(project.id)
    assert iteration.status == "Training"
    assert _sdk_code(lambda: trainer.train_project(project.id)) == (
        "BadRequestTrainingAlreadyInProgress"
    )
    deadline = time.monotonic() + 600
    while iteration.status == "Training" and time.monotonic() < deadline:
        time.sleep(2)
        iteration = trainer.get_iteration(project.id, iteration.id)
    assert iteration.status == "Completed", (iteration.training_error_details, iteration.status)
    assert iteration.trained_at is not None
    assert [i.id for i in trainer.get_iterations(project.id)] == [iteration.id]
    assert _sdk_code(lambda: trainer.train_project(project.id)) == "BadRequestTrainingNotNeeded"
    # performance on the images the training held out, at a threshold (twice: once computed)
    for _ in range(2):
        performance = trainer.get_iteration_performance(project.id, iteration.id, threshold=0.5)
        assert {t.name for t in performance.per_tag_performance} == {"cat", "dog"}
        assert {t.id for t in performance.per_tag_performance} == {cat.id, dog.id}
        assert all(
            0 <= t.precision <= 1 and 0 <= t.recall <= 1 for t in performance.per_tag_performance
        )
        assert 0 < performance.average_precision <= 1
    strict = trainer.get_iteration_performance(project.id, iteration.id, threshold=1.0)
    assert strict.recall <= performance.recall
    assert (
        _sdk_code(
            lambda: trainer.get_iteration_performance(project.id, iteration.id, threshold=1.5)
        )
        == "BadRequest"
    )
    # image by image: the held-out images with their tags then and the model's answer
    held_out = trainer.get_image_performance_count(project.id, iteration.id)
    assert 2 <= held_out < len(CATS) + len(DOGS)
    every = trainer.get_image_performances(project.id, iteration.id, take=256)
    assert len(every) == held_out
    project_images = {i.id for i in trainer.get_tagged_images(project.id, take=256)}
    assert {i.id for i in every} <= project_images
    for image in every:
        assert len(image.tags) == 1 and image.tags[0].tag_id in {cat.id, dog.id}
        probabilities = [p.probability for p in image.predictions]
        assert probabilities == sorted(probabilities, reverse=True) and len(probabilities) == 2
    cats_only = trainer.get_image_performances(project.id, iteration.id, tag_ids=[cat.id])
    assert cats_only and all(i.tags[0].tag_id == cat.id for i in cats_only)
    assert trainer.get_image_performance_count(project.id, iteration.id, tag_ids=[cat.id]) == len(
        cats_only
    )
    second = trainer.get_image_performances(project.id, iteration.id, take=1, skip=1)
    assert [i.id for i in second] == [every[1].id]
    # the tags as the iteration trained on them: a tag made since is not among them
    trainer.create_tag(project.id, "later")
    trained = trainer.get_tags(project.id, iteration_id=iteration.id)
    assert {(t.name, t.image_count) for t in trained} == {("cat", len(CATS)), ("dog", len(DOGS))}
    assert len(trainer.get_tags(project.id)) == 3

    # a quick test needs no publishing: the given iteration, else the latest trained
    tested = trainer.quick_test_image(project.id, TEST_DOG.read_bytes(), iteration_id=iteration.id)
    assert tested.iteration == iteration.id and len(tested.predictions) == 2
    latest = trainer.quick_test_image(project.id, TEST_DOG.read_bytes(), store=False)
    assert [p.tag_name for p in latest.predictions] == [p.tag_name for p in tested.predictions]
    # the ONNX export, downloaded by its link without a key (as Azure's signed links are):
    # a zip with the model and labels.txt, as Azure's are
    assert trainer.get_exports(project.id, iteration.id) == []
    exported = trainer.export_iteration(project.id, iteration.id, "ONNX")
    assert exported.status == "Done" and exported.platform == "ONNX"
    assert [e.download_uri for e in trainer.get_exports(project.id, iteration.id)] == [
        exported.download_uri
    ]
    onnx_zip = _zip_of(exported.download_uri, tmp_path / "onnx")
    import onnx

    assert onnx.load(onnx_zip / "model.onnx").graph.input[0].name == "pixels"
    assert (onnx_zip / "labels.txt").read_text().split() == ["cat", "dog"]
    assert httpx.get(exported.download_uri[:-4] + "xxxx").status_code == 404
    # TensorFlow Lite: Exporting until a worker has built it and checked its accuracy, then
    # Done; the zip's predict.py gives the quick test's answer
    lite = trainer.export_iteration(project.id, iteration.id, "TensorFlow", flavor="TensorFlowLite")
    assert (lite.platform, lite.flavor) == ("TensorFlow", "TensorFlowLite")
    deadline = time.monotonic() + 180
    while lite.status == "Exporting" and time.monotonic() < deadline:
        time.sleep(1)
        lite = next(e for e in trainer.get_exports(project.id, iteration.id) if e.flavor)
    assert lite.status == "Done" and lite.download_uri != exported.download_uri
    lite_zip = _zip_of(lite.download_uri, tmp_path / "tflite")
    assert {"model.tflite", "labels.txt", "predict.py"} <= {p.name for p in lite_zip.iterdir()}
    ran = subprocess.run(
        [sys.executable, "predict.py", str(TEST_DOG)],
        cwd=lite_zip,
        capture_output=True,
        text=True,
        check=True,
    )
    lite_answer = json.loads(ran.stdout)["probabilities"]
    for prediction in tested.predictions:
        assert abs(lite_answer[prediction.tag_name] - prediction.probability) < 1e-3
    # DockerFile: the serve-only package (a Dockerfile and a server without TensorFlow)
    docker = trainer.export_iteration(project.id, iteration.id, "DockerFile", flavor="Linux")
    assert (docker.platform, docker.flavor, docker.status) == ("DockerFile", "Linux", "Done")
    docker_zip = _zip_of(docker.download_uri, tmp_path / "docker")
    assert {"Dockerfile", "server.py", "model.onnx"} <= {p.name for p in docker_zip.iterdir()}
    assert len(trainer.get_exports(project.id, iteration.id)) == 3
    for platform, flavor in (("CoreML", None), ("DockerFile", "Windows")):
        assert (
            _sdk_code(
                lambda p=platform, f=flavor: trainer.export_iteration(
                    project.id, iteration.id, p, flavor=f
                )
            )
            == "BadRequestExportValidationFailed"
        )
    assert trainer.publish_iteration(project.id, iteration.id, "pets-model", "resource") is True
    assert trainer.get_iteration(project.id, iteration.id).publish_name == "pets-model"
    answer = predictor.classify_image(project.id, "pets-model", TEST_DOG.read_bytes())
    assert (answer.project, answer.iteration) == (project.id, iteration.id)
    names = [p.tag_name for p in answer.predictions]
    assert sorted(names) == ["cat", "dog"]
    probabilities = [p.probability for p in answer.predictions]
    assert probabilities == sorted(probabilities, reverse=True)
    assert abs(sum(probabilities) - 1) < 1e-3
    assert {p.tag_id for p in answer.predictions} == {cat.id, dog.id}
    quiet = predictor.classify_image_with_no_store(project.id, "pets-model", TEST_DOG.read_bytes())
    assert [p.tag_name for p in quiet.predictions] == names
    # the stored one is found by query_predictions (the nostore one is not), and becomes an
    # image of the project
    other = sorted((PHOTOS / "test" / "cats").iterdir())[0]
    predictor.classify_image_with_no_store(project.id, "pets-model", other.read_bytes())
    stored = trainer.query_predictions(project.id, PredictionQueryToken(max_count=10))
    assert len(stored.results) == 1 and stored.token.continuation is None
    kept = stored.results[0]
    assert (kept.project, kept.iteration) == (project.id, iteration.id)
    assert [p.tag_name for p in kept.predictions] == names
    assert httpx.get(kept.original_image_uri, headers={"Training-Key": keys.training}).content == (
        TEST_DOG.read_bytes()
    )
    only_cats = PredictionQueryToken(tags=[PredictionQueryTag(id=cat.id, min_threshold=0.999)])
    confident = trainer.query_predictions(project.id, only_cats).results
    assert all(
        p.probability >= 0.999 for r in confident for p in r.predictions if p.tag_id == cat.id
    )
    made = trainer.create_images_from_predictions(
        project.id, ImageIdCreateBatch(images=[ImageIdCreateEntry(id=kept.id, tag_ids=[dog.id])])
    )
    assert made.images[0].status == "OK"
    assert trainer.get_tagged_image_count(project.id, tag_ids=[dog.id]) == len(DOGS) + 1
    trainer.delete_prediction(project.id, ids=[kept.id])
    assert trainer.query_predictions(project.id, PredictionQueryToken()).results == []

    # an unknown publish name, a bad key, the portal's spelling, a browser's form and a body
    assert (
        _sdk_code(lambda: predictor.classify_image(project.id, "nope", TEST_DOG.read_bytes()))
        == "NotFoundIteration"
    )
    bad = CustomVisionPredictionClient(
        endpoint, ApiKeyCredentials(in_headers={"Prediction-key": "sv_wrong"})
    )
    assert _sdk_code(lambda: bad.classify_image(project.id, "pets-model", b"x")) == "Unauthorized"
    url = (
        f"{live.url}/customvision/v3.0/Prediction/{project.id}/classify/iterations/pets-model/image"
    )
    headers = {"Prediction-Key": keys.prediction}
    browser = httpx.post(url, files={"image": TEST_DOG.read_bytes()}, headers=headers)
    assert browser.status_code == 200, browser.text
    assert [p["tagName"] for p in browser.json()["predictions"]] == names
    body = httpx.post(
        url,
        content=TEST_DOG.read_bytes(),
        headers={**headers, "Content-Type": "application/octet-stream"},
    )
    assert body.status_code == 200 and body.json()["predictions"][0]["tagName"] == names[0]
    not_image = httpx.post(url, content=b"plain text", headers=headers)
    assert not_image.status_code in (400, 415)
    assert not_image.json()["code"] == "BadRequestImageFormat"
    big = httpx.post(url, content=b"\xff" * (4 * 1024**2 + 1), headers=headers)
    assert big.status_code == 413 and big.json()["code"] == "BadRequestImageSizeBytes"

    # an image by URL: this service's own network is not fetched from (by default)
    own = f"{live.url}/health"
    assert _sdk_code(lambda: predictor.classify_image_url(project.id, "pets-model", url=own)) == (
        "BadRequestImageUrl"
    )
    # unpublished, the name answers nothing; a published iteration cannot be deleted
    assert _sdk_code(lambda: trainer.delete_iteration(project.id, iteration.id)) == (
        "BadRequestIterationIsPublished"
    )
    trainer.unpublish_iteration(project.id, iteration.id)
    assert (
        _sdk_code(lambda: predictor.classify_image(project.id, "pets-model", TEST_DOG.read_bytes()))
        == "NotFoundIteration"
    )


def test_a_multilabel_project_with_a_negative_tag(
    service: tuple[LiveService, Keys], tmp_path
) -> None:
    """Photo pairs with both photos' tags, and flower photos under the Negative tag: the
    iteration is a multi-label model, every label has its own probability, and the Negative
    tag is answered as no label being there."""
    from benchmarks.multilabel_sets import MultilabelSet, build, read_labels

    live, keys = service
    endpoint = f"{live.url}/"
    trainer = CustomVisionTrainingClient(
        endpoint, ApiKeyCredentials(in_headers={"Training-key": keys.training})
    )
    predictor = CustomVisionPredictionClient(
        endpoint, ApiKeyCredentials(in_headers={"Prediction-key": keys.prediction})
    )
    spec = MultilabelSet(
        "pairs",
        ("cats_vs_dogs_small", "car_vs_minibus_tiny"),
        {"train": 40},
        negatives="flowers_small",
    )
    folder = build(spec, tmp_path, seed=5)
    classes, by_split = read_labels(folder)
    project = trainer.create_project("scenes", classification_type="Multilabel")
    tags = {name: trainer.create_tag(project.id, name).id for name in classes}
    nothing = trainer.create_tag(project.id, "nothing", type="Negative")
    entries = [
        ImageFileCreateEntry(
            name=path,
            contents=(folder / path).read_bytes(),
            tag_ids=[tags[label] for label in labels] or [nothing.id],
        )
        for path, labels in by_split["train"]
    ]
    for start in range(0, len(entries), 20):
        batch = ImageFileCreateBatch(images=entries[start : start + 20])
        assert trainer.create_images_from_files(project.id, batch).is_batch_successful
    iteration = trainer.train_project(project.id)
    assert iteration.classification_type == "Multilabel"
    deadline = time.monotonic() + 600
    while iteration.status == "Training" and time.monotonic() < deadline:
        time.sleep(2)
        iteration = trainer.get_iteration(project.id, iteration.id)
    assert iteration.status == "Completed", iteration.training_error_details
    trainer.publish_iteration(project.id, iteration.id, "scenes", "resource")
    photo = folder / by_split["train"][0][0]
    answer = predictor.classify_image_with_no_store(project.id, "scenes", photo.read_bytes())
    by_name = {p.tag_name: p for p in answer.predictions}
    assert set(by_name) == {*classes, "nothing"}
    assert by_name["nothing"].tag_type == "Negative"
    regular = [p.probability for name, p in by_name.items() if name != "nothing"]
    # sigmoids: each label on its own (they need not sum to one); "nothing" is all absent
    expected = 1.0
    for probability in regular:
        expected *= 1 - probability
    assert abs(by_name["nothing"].probability - expected) < 1e-6
