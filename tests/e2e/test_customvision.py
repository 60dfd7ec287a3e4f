"""The Azure Custom Vision compatible API driven by the official Python SDK
(azure-cognitiveservices-vision-customvision 3.1.1, with msrest) and by raw HTTP in the
portal's style, against a live server."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from uuid import uuid4

import httpx
import pytest
from azure.cognitiveservices.vision.customvision.training import CustomVisionTrainingClient
from azure.cognitiveservices.vision.customvision.training.models import (
    CustomVisionErrorException,
)
from msrest.authentication import ApiKeyCredentials

from app.core.config import ENV_PREFIX
from tests.conftest import api_key, migrate, reset_caches
from tests.processes import free_port, running_api

GENERAL = "ee85a74c-405e-4adc-bb47-ffa8ca0c9f31"
GENERAL_COMPACT = "0732100f-1a38-4e49-a514-c9b44c697ab5"
OBJECT_DETECTION = "da2e3a8a-40a5-4171-82f4-58522f70fbc1"


@dataclass(frozen=True)
class Live:
    url: str
    training_key: str  # the train scope
    prediction_key: str  # the predict scope only
    other_owner_key: str  # another owner's train key
    data_dir: Path


@pytest.fixture(scope="module")
def live(tmp_path_factory) -> Iterator[Live]:
    tmp = tmp_path_factory.mktemp("customvision")
    database = f"sqlite:///{tmp / 'cv.db'}"
    with pytest.MonkeyPatch.context() as patch:
        for key, value in {
            "DATA_DIR": str(tmp / "data"),
            "ENVIRONMENT": "test",
            "DATABASE_URL": database,
            # images by URL come from a server on loopback here (the guard: tests/services)
            "CUSTOM_VISION_FETCH_PRIVATE_URLS": "true",
        }.items():
            patch.setenv(ENV_PREFIX + key, value)
        reset_caches()
        migrate(database)
        keys = Live(
            url="",
            training_key=api_key("train", owner="azure-user"),
            prediction_key=api_key("predict", owner="azure-user"),
            other_owner_key=api_key("train", owner="someone-else"),
            data_dir=tmp / "data",
        )
        with running_api(tmp / "api.log", port=free_port()) as url:
            # the portal shows endpoints with a trailing slash; the SDK then sends `//customvision`
            yield dataclasses.replace(keys, url=f"{url}/")
        reset_caches()


def trainer(live: Live, key: str | None = None) -> CustomVisionTrainingClient:
    credentials = ApiKeyCredentials(in_headers={"Training-key": key or live.training_key})
    return CustomVisionTrainingClient(live.url, credentials)


def test_domains_projects_and_tags_through_the_sdk(live: Live) -> None:
    client = trainer(live)
    domains = {domain.id: domain for domain in client.get_domains()}
    assert domains[GENERAL].name == "General" and domains[GENERAL].type == "Classification"
    assert (
        domains[GENERAL_COMPACT].exportable
        and "ONNX" in domains[GENERAL_COMPACT].exportable_platforms
    )
    assert domains[OBJECT_DETECTION].type == "ObjectDetection"
    assert client.get_domain(GENERAL).name == "General"

    project = client.create_project("pets", description="cats and dogs")
    assert project.settings.domain_id == GENERAL  # the default
    assert project.settings.classification_type == "Multiclass"
    assert project.created is not None and project.last_modified is not None
    labels = client.create_project(
        "scenes",
        domain_id=GENERAL_COMPACT,
        classification_type="Multilabel",
        target_export_platforms=["ONNX"],
    )
    assert labels.settings.classification_type == "Multilabel"
    assert labels.settings.target_export_platforms == ["ONNX"]
    assert {p.id for p in client.get_projects()} == {project.id, labels.id}
    assert client.get_project(project.id).name == "pets"

    project.name, project.description = "pets v2", "renamed"
    updated = client.update_project(project.id, project)
    assert (updated.name, updated.description) == ("pets v2", "renamed")

    cat = client.create_tag(project.id, "cat", description="a cat")
    dog = client.create_tag(project.id, "dog")
    other = client.create_tag(project.id, "Not a pet", type="Negative")
    assert (cat.type, other.type, cat.image_count) == ("Regular", "Negative", 0)
    assert {t.name for t in client.get_tags(project.id)} == {"cat", "dog", "Not a pet"}
    dog.name = "puppy"
    assert client.update_tag(project.id, dog.id, dog).name == "puppy"
    assert client.get_tag(project.id, dog.id).name == "puppy"
    client.delete_tag(project.id, dog.id)
    assert {t.name for t in client.get_tags(project.id)} == {"cat", "Not a pet"}

    client.delete_project(labels.id)
    assert [p.id for p in client.get_projects()] == [project.id]


def _sdk_error(call) -> tuple[str, str]:
    with pytest.raises(CustomVisionErrorException) as raised:
        call()
    error = raised.value.error
    return error.code, error.message


def test_errors_are_custom_vision_errors_the_sdk_raises(live: Live) -> None:
    client = trainer(live)
    project = client.create_project("errors")
    missing = "00000000-0000-4000-8000-000000000000"
    assert _sdk_error(lambda: client.get_project(missing))[0] == "NotFoundProject"
    assert _sdk_error(lambda: client.get_tag(project.id, missing))[0] == "NotFoundTag"
    assert _sdk_error(lambda: client.get_domain(missing))[0] == "NotFoundDomain"
    assert _sdk_error(lambda: client.get_project("not-a-guid"))[0] == "BadRequestInvalidIds"
    code, message = _sdk_error(lambda: client.create_project("boxes", domain_id=OBJECT_DETECTION))
    assert code == "BadRequestNotSupported" and "object detection" in message
    assert _sdk_error(lambda: client.create_project("x", classification_type="Regression"))[0] == (
        "BadRequestProjectUnknownClassification"
    )
    assert _sdk_error(lambda: client.create_project("  "))[0] == "BadRequestProjectName"
    client.create_tag(project.id, "cat")
    assert (
        _sdk_error(lambda: client.create_tag(project.id, "Cat"))[0] == "BadRequestTagNameNotUnique"
    )
    client.create_tag(project.id, "none", type="Negative")
    assert _sdk_error(lambda: client.create_tag(project.id, "nothing", type="Negative"))[0] == (
        "BadRequestMultipleNegativeTag"
    )
    # a bad key, a key of the predict scope only, and another owner's key
    assert _sdk_error(lambda: trainer(live, "sv_not_a_key").get_projects())[0] == "Unauthorized"
    assert _sdk_error(lambda: trainer(live, live.prediction_key).get_projects())[0] == "Forbidden"
    other = trainer(live, live.other_owner_key)
    assert other.get_projects() == []
    assert _sdk_error(lambda: other.get_project(project.id))[0] == "NotFoundProject"


def test_raw_http_in_the_portals_spelling(live: Live) -> None:
    base = live.url.rstrip("/")
    headers = {"Training-Key": live.training_key}
    listed = httpx.get(f"{base}/CustomVision/v3.3/Training/Domains", headers=headers)
    assert listed.status_code == 200 and len(listed.json()) >= 10
    created = httpx.post(
        f"{base}/customvision/v3.0/training/projects", params={"name": "raw"}, headers=headers
    )
    assert created.status_code == 200, created.text
    assert set(created.json()) >= {
        "id",
        "name",
        "description",
        "settings",
        "created",
        "lastModified",
    }
    assert set(created.json()["settings"]) >= {"domainId", "classificationType"}
    unknown = httpx.get(f"{base}/customvision/v2.9/training/domains", headers=headers)
    assert unknown.status_code == 404 and unknown.json()["code"] == "NotFound"
    no_key = httpx.get(f"{base}/customvision/v3.0/training/projects")
    assert no_key.status_code == 401
    assert set(no_key.json()) == {"code", "message"} and no_key.json()["code"] == "Unauthorized"
    too_long = httpx.post(
        f"{base}/customvision/v3.0/training/projects",
        params={"name": "x" * 5000},
        headers=headers,
    )
    assert too_long.status_code == 400 and too_long.json()["code"] == "BadRequest"
    unknown_route = httpx.get(f"{base}/customvision/v3.0/training/nothing", headers=headers)
    assert unknown_route.status_code == 404 and set(unknown_route.json()) == {"code", "message"}


def test_owners_do_not_see_each_others_projects(live: Live, tmp_path: Path) -> None:
    mine = trainer(live).create_project("mine")
    other = trainer(live, live.other_owner_key)
    assert mine.id not in {p.id for p in other.get_projects()}
    assert _sdk_error(lambda: other.delete_project(mine.id))[0] == "NotFoundProject"
    assert _sdk_error(lambda: other.create_tag(mine.id, "x"))[0] == "NotFoundProject"


def _photos(count: int, label: str = "cats") -> list[Path]:
    from tests.zips import PHOTOS

    return sorted((PHOTOS / "train" / label).iterdir())[:count]


def test_images_uploaded_tagged_listed_and_removed_through_the_sdk(live: Live) -> None:
    from azure.cognitiveservices.vision.customvision.training.models import (
        ImageFileCreateBatch,
        ImageFileCreateEntry,
        ImageTagCreateEntry,
    )

    client = trainer(live)
    project = client.create_project("images")
    cat, dog = client.create_tag(project.id, "cat"), client.create_tag(project.id, "dog")
    cats, dogs = _photos(3, "cats"), _photos(2, "dogs")
    entries = [
        ImageFileCreateEntry(name=p.name, contents=p.read_bytes(), tag_ids=[cat.id]) for p in cats
    ]
    summary = client.create_images_from_files(project.id, ImageFileCreateBatch(images=entries))
    assert summary.is_batch_successful
    assert [i.status for i in summary.images] == ["OK", "OK", "OK"]
    assert summary.images[0].image.tags[0].tag_name == "cat"
    assert summary.images[0].image.width > 0
    # the quickstart's other way: one image per call, as multipart `imageData`
    for photo in dogs:
        added = client.create_images_from_data(project.id, photo.read_bytes(), tag_ids=[dog.id])
        assert added.is_batch_successful and added.images[0].status == "OK"
    again = client.create_images_from_data(project.id, dogs[0].read_bytes(), tag_ids=[dog.id])
    assert again.images[0].status == "OKDuplicate"
    plain = client.create_images_from_data(project.id, _photos(4, "cats")[3].read_bytes())
    untagged_id = plain.images[0].image.id

    assert client.get_tagged_image_count(project.id) == 5
    assert client.get_tagged_image_count(project.id, tag_ids=[dog.id]) == 2
    assert client.get_untagged_image_count(project.id) == 1
    assert {t.name: t.image_count for t in client.get_tags(project.id)} == {"cat": 3, "dog": 2}
    page = client.get_tagged_images(project.id, take=2, skip=0)
    rest = client.get_tagged_images(project.id, take=256, skip=2)
    assert len(page) == 2 and len(rest) == 3
    assert len({i.id for i in page} | {i.id for i in rest}) == 5
    assert [i.id for i in client.get_untagged_images(project.id)] == [untagged_id]
    assert client.get_images_by_ids(project.id, image_ids=[untagged_id])[0].tags is None
    original = httpx.get(page[0].original_image_uri, headers={"Training-Key": live.training_key})
    assert original.status_code == 200 and original.content[:2] == b"\xff\xd8"

    tagged = client.create_image_tags(
        project.id, tags=[ImageTagCreateEntry(image_id=untagged_id, tag_id=cat.id)]
    )
    assert len(tagged.created) == 1 and not tagged.duplicated
    assert client.get_untagged_image_count(project.id) == 0
    client.delete_image_tags(project.id, [untagged_id], [cat.id])
    assert client.get_untagged_image_count(project.id) == 1
    client.delete_images(project.id, image_ids=[untagged_id])
    assert client.get_image_count(project.id) == 5
    client.delete_images(project.id, all_images=True)
    assert client.get_image_count(project.id) == 0
    # a project's removal takes its image files with it
    kept = client.create_images_from_data(project.id, cats[0].read_bytes()).images[0].image
    files = live.data_dir / "projects" / project.id
    assert any(files.rglob("*"))
    client.delete_project(project.id)
    assert not [p for p in files.rglob("*") if p.is_file()], kept.id


def test_bad_images_get_their_status_and_bad_batches_an_error(live: Live) -> None:
    from azure.cognitiveservices.vision.customvision.training.models import (
        ImageFileCreateBatch,
        ImageFileCreateEntry,
    )

    client = trainer(live)
    project = client.create_project("bad images")
    cat = client.create_tag(project.id, "cat")
    nothing = client.create_tag(project.id, "nothing", type="Negative")
    good = _photos(1)[0].read_bytes()
    entries = [
        ImageFileCreateEntry(name="good.jpg", contents=good, tag_ids=[cat.id]),
        ImageFileCreateEntry(name="text.jpg", contents=b"not an image", tag_ids=[cat.id]),
        ImageFileCreateEntry(name="big.jpg", contents=b"\xff" * (6 * 1024**2 + 1)),
        ImageFileCreateEntry(
            name="both.jpg", contents=_photos(2)[1].read_bytes(), tag_ids=[cat.id, nothing.id]
        ),
    ]
    too_many = ImageFileCreateBatch(images=entries[:1] * 65)
    code = _sdk_error(lambda: client.create_images_from_files(project.id, too_many))[0]
    assert code == "BadRequestImageBatch"
    raw = client.create_images_from_files(
        project.id, ImageFileCreateBatch(images=entries), raw=True
    )
    assert raw.response.status_code == 207
    statuses = [image.status for image in raw.output.images]
    assert statuses == [
        "OK",
        "ErrorImageFormat",
        "ErrorImageSize",
        "ErrorNegativeAndRegularTagOnSameImage",
    ]
    assert not raw.output.is_batch_successful
    code = _sdk_error(
        lambda: client.create_images_from_data(project.id, good, tag_ids=[str(uuid4())])
    )[0]
    assert code == "BadRequestImageTags"
    # raw HTTP: base64 that is not base64, and a batch of 65
    url = f"{live.url.rstrip('/')}/customvision/v3.3/training/projects/{project.id}/images/files"
    headers = {"Training-Key": live.training_key}
    body = {"images": [{"name": "x.jpg", "contents": "%%% not base64 %%%"}]}
    answer = httpx.post(url, json=body, headers=headers)
    assert answer.status_code == 207 and answer.json()["images"][0]["status"] == "ErrorSource"
    many = httpx.post(url, json={"images": [{"contents": "AA=="}] * 65}, headers=headers)
    assert many.status_code == 400 and many.json()["code"] == "BadRequestImageBatch"


def test_import_azure_makes_a_dataset_of_a_project_and_resumes(live: Live, tmp_path: Path) -> None:
    """`smallvision import-azure` against this service's own Custom Vision API, standing in for
    Azure: the project's tagged images and tags become a dataset here; a second run fetches
    only what the first did not keep."""
    from azure.cognitiveservices.vision.customvision.training.models import (
        ImageFileCreateBatch,
        ImageFileCreateEntry,
    )

    client = trainer(live)
    project = client.create_project("to move", classification_type="Multilabel")
    cat, dog = client.create_tag(project.id, "cat"), client.create_tag(project.id, "dog")
    none = client.create_tag(project.id, "none", type="Negative")
    cats, dogs = _photos(5, "cats"), _photos(5, "dogs")
    entries = [ImageFileCreateEntry(contents=p.read_bytes(), tag_ids=[cat.id]) for p in cats]
    entries += [ImageFileCreateEntry(contents=p.read_bytes(), tag_ids=[dog.id]) for p in dogs[:4]]
    entries.append(ImageFileCreateEntry(contents=dogs[4].read_bytes(), tag_ids=[cat.id, dog.id]))
    negatives = sorted(
        (Path(__file__).parents[3] / "shared/data/flowers_small/train/daisy").iterdir()
    )
    entries += [
        ImageFileCreateEntry(contents=p.read_bytes(), tag_ids=[none.id]) for p in negatives[:2]
    ]
    client.create_images_from_files(project.id, ImageFileCreateBatch(images=entries))
    client.create_images_from_data(project.id, _photos(7, "cats")[6].read_bytes())  # untagged

    command = Path(sys.executable).with_name("smallvision")
    env = {
        **os.environ,
        "SMALLVISION_URL": live.url.rstrip("/"),
        "SMALLVISION_API_KEY": live.training_key,
        "COLUMNS": "200",
    }
    work = tmp_path / "work"
    argv = [
        str(command),
        "import-azure",
        "--endpoint",
        live.url,
        "--training-key",
        live.training_key,
        "--project",
        project.id,
        "--work-dir",
        str(work),
    ]

    def run(*extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*argv, *extra], env=env, capture_output=True, text=True, timeout=300)

    first = run()
    assert first.returncode == 0, (first.stdout, first.stderr)
    assert "12 tagged images, 12 downloaded, 0 from an earlier run" in first.stdout
    assert "2 negative examples" in first.stdout
    listed = httpx.get(
        f"{live.url.rstrip('/')}/datasets",
        headers={"Authorization": f"Bearer {live.training_key}"},
    ).json()
    dataset = next(d for d in listed if d["name"] == "to move")
    assert dataset["task"] == "multilabel" and dataset["class_names"] == ["cat", "dog"]
    assert dataset["stats"]["image_count"] == 12
    assert sum(dataset["stats"]["negatives"].values()) == 2
    counts = {
        label: sum(s.get(label, 0) for s in dataset["split_counts"].values())
        for label in ("cat", "dog")
    }
    assert counts == {"cat": 6, "dog": 5}

    # a run stopped partway left some images: the next one fetches only the others
    next(iter(sorted((work / "images").iterdir()))).unlink()
    again = run("--name", "moved again")
    assert again.returncode == 0, again.stderr
    assert "12 tagged images, 1 downloaded, 11 from an earlier run" in again.stdout

    missing = run("--project", "00000000-0000-4000-8000-000000000000")
    assert missing.returncode == 5
    assert "NotFoundProject" in missing.stderr and len(missing.stderr.strip().splitlines()) == 1


@pytest.fixture
def image_server(tmp_path: Path) -> Iterator[str]:
    """A plain HTTP server on loopback serving two photos and a text file."""
    import functools
    import http.server
    import threading

    for index, photo in enumerate(_photos(2, "dogs")):
        (tmp_path / f"dog{index}.jpg").write_bytes(photo.read_bytes())
    (tmp_path / "notes.txt").write_text("not an image")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()


def test_images_from_urls(live: Live, image_server: str) -> None:
    from azure.cognitiveservices.vision.customvision.training.models import (
        ImageUrlCreateBatch,
        ImageUrlCreateEntry,
    )

    client = trainer(live)
    project = client.create_project("by url")
    dog = client.create_tag(project.id, "dog")
    batch = ImageUrlCreateBatch(
        images=[
            ImageUrlCreateEntry(url=f"{image_server}/dog0.jpg", tag_ids=[dog.id]),
            ImageUrlCreateEntry(url=f"{image_server}/dog1.jpg", tag_ids=[dog.id]),
            ImageUrlCreateEntry(url=f"{image_server}/missing.jpg", tag_ids=[dog.id]),
            ImageUrlCreateEntry(url=f"{image_server}/notes.txt", tag_ids=[dog.id]),
            ImageUrlCreateEntry(url="ftp://example.com/x.jpg", tag_ids=[dog.id]),
        ]
    )
    raw = client.create_images_from_urls(project.id, batch, raw=True)
    assert raw.response.status_code == 207
    assert [i.status for i in raw.output.images] == [
        "OK",
        "OK",
        "ErrorSource",
        "ErrorImageFormat",
        "ErrorSource",
    ]
    assert raw.output.images[0].source_url == f"{image_server}/dog0.jpg"
    assert client.get_tagged_image_count(project.id) == 2
