"""POST /datasets and friends, on generated zips (and one of real photos)."""

from __future__ import annotations

import io
import json
import random
import uuid
import zipfile
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from app.core.config import get_settings
from app.db.models import Dataset, TrainingJob
from app.db.session import session_scope
from app.ml.config import Method
from app.services import jobs
from app.services.datasets import load_manifest
from tests.conftest import api_client, migrate
from tests.zips import class_folders, image_bytes, make_zip

SHARED_DATA = Path(__file__).resolve().parents[3] / "shared" / "data"


def upload(client: TestClient, archive: bytes, name: str = "pets", **fields: object):
    data = {"name": name, **{k: str(v) for k, v in fields.items()}}
    return client.post("/datasets", files={"file": ("data.zip", archive)}, data=data)


def created(client: TestClient, archive: bytes, **fields: object) -> dict:
    response = upload(client, archive, **fields)
    assert response.status_code == 201, response.text
    return response.json()


def leftovers() -> list[Path]:
    """Files under the datasets root (nothing may remain after a rejected upload)."""
    return [p for p in get_settings().datasets_dir.rglob("*") if p.is_file()]


def dataset_rows() -> int:
    with session_scope() as session:
        return session.query(Dataset).count()


def manifest_of(dataset_id: str) -> dict:
    with session_scope() as session:
        dataset = session.get(Dataset, uuid.UUID(dataset_id))
        assert dataset is not None
        return load_manifest(dataset.id)


# --- layouts -------------------------------------------------------------------------------


def test_class_folders_in_an_enclosing_folder_get_a_stratified_seeded_split(
    client: TestClient,
) -> None:
    files = class_folders({"cats": 20, "dogs": 10}, prefix="my photos/")
    body = created(client, make_zip(files), validation_fraction=0.2, test_fraction=0.1, seed=7)

    assert body["class_names"] == ["cats", "dogs"]
    assert body["status"] == "ready"
    counts = body["split_counts"]
    assert counts["test"] == {"cats": 2, "dogs": 1}
    assert counts["validation"] == {"cats": 4, "dogs": 2}
    assert counts["train"] == {"cats": 14, "dogs": 7}

    again = created(
        client,
        make_zip(dict(reversed(list(files.items())))),
        seed=7,
        validation_fraction=0.2,
        test_fraction=0.1,
    )
    assert again["fingerprint"] == body["fingerprint"]  # same content and seed, same split
    other_seed = created(
        client, make_zip(files), seed=8, validation_fraction=0.2, test_fraction=0.1
    )
    assert other_seed["fingerprint"] != body["fingerprint"]


def test_split_folders_with_val_alias_and_test_keep_their_split(client: TestClient) -> None:
    files = {
        **class_folders({"a": 5, "b": 4}, prefix="train/", seed=0),
        **class_folders({"a": 2, "b": 2}, prefix="val/", seed=100),
        **class_folders({"a": 1, "b": 3}, prefix="test/", seed=200),
    }
    body = created(client, make_zip(files))
    assert body["split_counts"] == {
        "train": {"a": 5, "b": 4},
        "validation": {"a": 2, "b": 2},
        "test": {"a": 1, "b": 3},
    }


def test_split_folders_without_validation_hold_out_part_of_train(client: TestClient) -> None:
    body = created(
        client,
        make_zip(class_folders({"a": 10, "b": 10}, prefix="data/train/")),
        validation_fraction=0.3,
    )
    assert body["split_counts"]["validation"] == {"a": 3, "b": 3}
    assert body["split_counts"]["train"] == {"a": 7, "b": 7}
    assert any("no validation/ folder" in w for w in body["stats"]["warnings"])


def test_classes_must_agree_across_splits(client: TestClient) -> None:
    files = {
        **class_folders({"cats": 3, "dogs": 3}, prefix="train/"),
        **class_folders({"cats": 2, "birds": 2}, prefix="validation/", seed=50),
    }
    response = upload(client, make_zip(files))
    assert response.status_code == 400
    detail = response.json()["detail"]
    assert "validation/ lacks dogs" in detail
    assert "validation/ has birds" in detail


def test_one_class_is_not_a_dataset(client: TestClient) -> None:
    response = upload(client, make_zip(class_folders({"cats": 5})))
    assert response.status_code == 400
    # (its one folder is taken for an enclosing folder, so no class folder is left)
    detail = response.json()["detail"]
    assert detail == "a dataset needs images of at least 2 classes; the zip has 0"


def test_files_outside_split_folders_are_refused(client: TestClient) -> None:
    files = {**class_folders({"a": 3, "b": 3}, prefix="train/"), "extra/a/x.jpg": image_bytes()}
    response = upload(client, make_zip(files))
    assert response.status_code == 400
    assert "outside the split folders" in response.json()["detail"]


def test_a_dataset_folder_with_notes_beside_its_splits_is_accepted(client: TestClient) -> None:
    """`zip -r set.zip set/` of a folder with a README and CSVs beside train/ validation/."""
    files = {
        **class_folders({"a": 3, "b": 3}, prefix="set/train/"),
        **class_folders({"a": 2, "b": 2}, prefix="set/validation/", seed=50),
        "set/README.md": b"# my set",
        "set/MANIFEST.csv": b"split,class,file",
        "set/.DS_Store": b"junk",
    }
    body = created(client, make_zip(files))
    assert body["split_counts"]["train"] == {"a": 3, "b": 3}
    skipped = {item["file"]: item["reason"] for item in body["stats"]["skipped"]}
    assert skipped == {
        "set/README.md": "not inside a split folder",
        "set/MANIFEST.csv": "not inside a split folder",
    }


# --- label lists (labels.csv, labels.jsonl) --------------------------------------------------


def flat_images(count: int, *, prefix: str = "photos/", seed: int = 0) -> dict[str, bytes]:
    return {f"{prefix}{i}.jpg": image_bytes(seed=seed + i) for i in range(count)}


def test_labels_csv_gives_each_image_its_class_and_split(client: TestClient) -> None:
    images = flat_images(12)
    rows = ["path,labels,split"]
    for i in range(12):
        split = "train" if i < 8 else ("val" if i < 10 else "test")
        rows.append(f"photos/{i}.jpg,{'cat' if i % 2 else 'dog'},{split}")
    files = {**images, "labels.csv": ("\n".join(rows) + "\n").encode(), "notes.txt": b"hi"}
    body = created(client, make_zip(files))

    assert body["class_names"] == ["cat", "dog"]
    assert body["split_counts"] == {
        "train": {"cat": 4, "dog": 4},
        "validation": {"cat": 1, "dog": 1},
        "test": {"cat": 1, "dog": 1},
    }
    skipped = {item["file"]: item["reason"] for item in body["stats"]["skipped"]}
    assert skipped == {"notes.txt": "not in labels.csv"}
    manifest = manifest_of(body["id"])
    assert {item["source"]: item["label"] for item in manifest["images"]}["photos/1.jpg"] == "cat"


def test_labels_jsonl_in_an_enclosing_folder_gets_the_seeded_split(client: TestClient) -> None:
    images = flat_images(20, prefix="set/img/")
    lines = [
        json.dumps({"path": f"img/{i}.jpg", "labels": ["cat" if i < 10 else "dog"]})
        for i in range(20)
    ]
    archive = make_zip({**images, "set/labels.jsonl": ("\n".join(lines) + "\n").encode()})
    body = created(client, archive, validation_fraction=0.2, test_fraction=0.1, seed=3)
    assert body["split_counts"]["train"] == {"cat": 7, "dog": 7}
    assert body["split_counts"]["test"] == {"cat": 1, "dog": 1}
    assert body["stats"]["skipped"] == []


def test_bad_lines_and_missing_files_are_listed_and_the_rest_is_used(client: TestClient) -> None:
    images = flat_images(8)
    rows = ["path,labels"]
    rows += [f"photos/{i}.jpg,{'cat' if i < 4 else 'dog'}" for i in range(7)]
    rows += ["photos/missing.jpg,cat", "photos/1.jpg,cat", "photos/7.jpg,bad/name", ""]
    archive = make_zip({**images, "labels.csv": ("\n".join(rows) + "\n").encode()})
    body = created(client, archive)
    skipped = {item["file"]: item["reason"] for item in body["stats"]["skipped"]}
    assert skipped == {
        "labels.csv line 9": "no file 'photos/missing.jpg' in the zip",
        "labels.csv line 10": "'photos/1.jpg' is listed again (first on line 3)",
        "labels.csv line 11": "label 'bad/name' has a path separator",
        "labels.csv line 12": "an empty line",
    }
    assert body["stats"]["image_count"] == 7


def test_negative_examples_come_from_their_folder_or_an_empty_label_and_are_no_class(
    client: TestClient,
) -> None:
    folders = class_folders({"cat": 6, "dog": 6, "_negative": 5}, prefix="")
    body = created(client, make_zip(folders), validation_fraction=0.2, test_fraction=0.2)
    assert body["class_names"] == ["cat", "dog"]
    assert all(set(counts) == {"cat", "dog"} for counts in body["split_counts"].values())
    negatives = body["stats"]["negatives"]
    assert sum(negatives.values()) == 5 and negatives["train"] >= 1  # split like a class
    labels = [item["label"] for item in manifest_of(body["id"])["images"]]
    assert labels.count("_negative") == 5

    # a folder of the request's naming; in a label list, a line with no label
    renamed = class_folders({"cat": 4, "dog": 4, "background": 3}, prefix="train/")
    body = created(client, make_zip(renamed), negative_folder="background")
    assert body["class_names"] == ["cat", "dog"]
    # no validation/ folder: validation is held out of train/, negatives too
    assert body["stats"]["negatives"] == {"train": 2, "validation": 1}
    rows = ["path,labels"] + [f"photos/{i}.jpg,{'cat' if i % 2 else 'dog'}" for i in range(8)]
    rows += ["photos/8.jpg,", "photos/9.jpg,"]
    listed = make_zip({**flat_images(10), "labels.csv": ("\n".join(rows) + "\n").encode()})
    body = created(client, listed, validation_fraction=0.0, test_fraction=0.0)
    assert body["class_names"] == ["cat", "dog"] and body["stats"]["negatives"] == {"train": 2}


@pytest.mark.parametrize("folder", ["", "x" * 201])
def test_a_negative_folder_name_out_of_bounds_is_a_422(client: TestClient, folder: str) -> None:
    archive = make_zip(class_folders({"cat": 3, "dog": 3}))
    response = upload(client, archive, negative_folder=folder)
    assert response.status_code == 422, response.text
    assert "negative_folder" in response.text
    assert dataset_rows() == 0


def test_skipped_lines_are_capped_in_the_response_but_counted(client: TestClient) -> None:
    images = flat_images(6)
    rows = ["path,labels"] + [f"photos/{i}.jpg,{'ab'[i % 2]}" for i in range(6)]
    rows += [f"gone/{i}.jpg,a" for i in range(600)]
    archive = make_zip({**images, "labels.csv": ("\n".join(rows) + "\n").encode()})
    stats = created(client, archive)["stats"]
    assert stats["skipped_count"] == 600
    assert len(stats["skipped"]) == 500


@pytest.mark.parametrize(
    ("files", "status", "message"),
    [
        # a negative example is not a class: one class and negatives are still one class
        (
            {"labels.csv": b"path,labels\nphotos/0.jpg,\nphotos/1.jpg,cat\n"},
            400,
            "the zip has 1 (cat)",
        ),
        ({"labels.csv": b"path,labels\n", "labels.jsonl": b""}, 400, "keep one of them"),
        ({"labels.csv": b"path,labels,colour\nphotos/0.jpg,cat,red\n"}, 400, "column(s) 'colour'"),
        ({"labels.csv": b"path,labels\ngone.jpg,cat\n"}, 400, "lists no image of the zip"),
        ({"labels.csv": b"path,labels\nphotos/0.jpg,cat\n"}, 400, "the zip has 1 (cat)"),
    ],
)
def test_label_lists_that_cannot_make_a_dataset_are_refused(
    client: TestClient, files: dict[str, bytes], status: int, message: str
) -> None:
    response = upload(client, make_zip({**flat_images(2), **files}))
    assert response.status_code == status, response.text
    assert message in response.json()["detail"]
    assert leftovers() == []
    assert dataset_rows() == 0


def test_a_labels_csv_that_is_not_a_label_list_is_skipped_and_the_folders_decide(
    client: TestClient,
) -> None:
    files = {
        **class_folders({"boston_bull": 3, "dingo": 3}, prefix="train/"),
        "labels.csv": b"id,breed\n000bec180eb18c7604dcecc8fe0dba07,boston_bull\n",
    }
    body = created(client, make_zip(files))
    assert body["class_names"] == ["boston_bull", "dingo"]
    assert body["stats"]["skipped"] == [
        {
            "file": "labels.csv",
            "reason": "not a label list: its header has no path or labels column",
        }
    ]


def test_a_composed_name_in_the_list_finds_the_decomposed_file_of_the_zip(
    client: TestClient,
) -> None:
    images = {"cafe\u0301/0.jpg": image_bytes(seed=1), "b/1.jpg": image_bytes(seed=2)}
    listed = "path,labels\ncaf\u00e9/0.jpg,a\nb/1.jpg,b\n".encode()
    body = created(client, make_zip({**images, "labels.csv": listed}))
    assert body["class_names"] == ["a", "b"]
    assert body["stats"]["skipped"] == []


def test_a_label_list_over_its_byte_limit_is_refused_unread(configure, sqlite_url: str) -> None:
    configure(database_url=sqlite_url, MAX_LABEL_LIST_BYTES="100")
    migrate(sqlite_url)
    rows = ["path,labels"] + [f"photos/{i}.jpg,{'ab'[i % 2]}" for i in range(20)]
    archive = make_zip({**flat_images(20), "labels.csv": "\n".join(rows).encode()})
    with api_client() as client:
        response = upload(client, archive)
    assert response.status_code == 413
    assert "labels.csv is too large" in response.json()["detail"]


# --- decoding --------------------------------------------------------------------------------


def test_every_format_is_decoded_whatever_its_extension(client: TestClient) -> None:
    gif = io.BytesIO()
    frames = [Image.new("RGB", (30, 30), color) for color in ("red", "blue")]
    frames[0].save(gif, format="GIF", save_all=True, append_images=frames[1:])
    files = {
        "a/one.jpg": image_bytes("PNG", seed=1),  # PNG named .jpg
        "a/two.png": image_bytes("JPEG", seed=2),
        "a/three.bmp": image_bytes("BMP", seed=3),
        "a/four.gif": gif.getvalue(),
        "a/five.dat": image_bytes("WEBP", seed=5),
        "a/six.tif": image_bytes("TIFF", seed=6),
        "b/gray.png": image_bytes("PNG", seed=7, mode="L"),
        "b/rgba.png": image_bytes("PNG", seed=8, mode="RGBA"),
        "b/cmyk.jpg": image_bytes("JPEG", seed=9, mode="CMYK"),
        "b/palette.png": image_bytes("PNG", seed=10, mode="P"),
        "b/sixteen.png": image_bytes("PNG", seed=11, mode="I;16"),
    }
    body = created(client, make_zip(files), validation_fraction=0, test_fraction=0)
    assert body["stats"]["skipped"] == []
    assert body["stats"]["formats"] == {
        "PNG": 5,
        "JPEG": 2,
        "BMP": 1,
        "GIF": 1,
        "WEBP": 1,
        "TIFF": 1,
    }
    assert body["split_counts"]["train"] == {"a": 6, "b": 5}


def test_exif_orientation_is_applied(client: TestClient) -> None:
    files = {
        "a/rotated.jpg": image_bytes("JPEG", size=(60, 20), seed=1, exif_orientation=6),
        "b/upright.jpg": image_bytes("JPEG", size=(60, 20), seed=2),
    }
    body = created(client, make_zip(files), validation_fraction=0, test_fraction=0)
    sizes = {
        item["source"]: (item["width"], item["height"])
        for item in manifest_of(body["id"])["images"]
    }
    assert sizes == {"a/rotated.jpg": (20, 60), "b/upright.jpg": (60, 20)}


def test_corrupt_and_non_image_files_are_skipped_with_reasons_junk_silently(
    client: TestClient,
) -> None:
    good = class_folders({"a": 3, "b": 3})
    truncated = image_bytes("JPEG", size=(200, 200), seed=99)[:600]
    files = {
        **good,
        "a/notes.txt": b"just text",
        "b/broken.jpg": truncated,
        "__MACOSX/a/._img_0.jpg": b"\x00\x05\x16\x07",
        "a/.DS_Store": b"junk",
        "b/Thumbs.db": b"junk",
        ".hidden/x.jpg": image_bytes(seed=500),
    }
    body = created(client, make_zip(files))
    skipped = {item["file"]: item["reason"] for item in body["stats"]["skipped"]}
    assert set(skipped) == {"a/notes.txt", "b/broken.jpg"}
    assert skipped["a/notes.txt"] == "not an image file"
    assert "corrupt" in skipped["b/broken.jpg"]
    assert body["stats"]["image_count"] == 6


def test_a_class_left_without_valid_images_is_400(client: TestClient) -> None:
    files = {**class_folders({"a": 3}), "b/x.jpg": b"not an image", "b/y.jpg": b"nope"}
    response = upload(client, make_zip(files))
    assert response.status_code == 400
    assert "no valid training images left in class(es) b" in response.json()["detail"]
    assert leftovers() == []
    assert dataset_rows() == 0


def test_images_over_the_pixel_limit_are_skipped(configure, sqlite_url: str) -> None:
    configure(database_url=sqlite_url, MAX_IMAGE_PIXELS="5000")
    migrate(sqlite_url)
    files = {**class_folders({"a": 2, "b": 2}), "a/huge.png": image_bytes("PNG", size=(100, 100))}
    with api_client() as client:
        body = created(client, make_zip(files))
    (skip,) = body["stats"]["skipped"]
    assert skip["file"] == "a/huge.png"
    assert "over the limit of 5000" in skip["reason"]


# --- duplicates, leakage, fingerprint, statistics --------------------------------------------


def test_duplicates_leakage_and_label_conflicts(client: TestClient) -> None:
    files = {
        **class_folders({"a": 4, "b": 4}, prefix="train/"),
        **class_folders({"a": 2, "b": 2}, prefix="validation/", seed=100),
        "train/a/copy_of_0.jpg": image_bytes(seed=0),  # same class, same split
        "validation/b/leaked.jpg": image_bytes(seed=1001),  # train/b/img_1.jpg again
        "train/b/conflict.jpg": image_bytes(seed=2),  # train/a/img_2.jpg under another class
    }
    body = created(client, make_zip(files))
    stats = body["stats"]
    assert stats["duplicates_removed"] == 1
    # the copy sorts first by path, so it is the one kept
    assert stats["duplicates"] == [
        {"file": "train/a/img_0.jpg", "duplicate_of": "train/a/copy_of_0.jpg"}
    ]
    (leak,) = stats["leakage"]
    assert leak == {
        "file": "validation/b/leaked.jpg",
        "duplicate_of": "train/b/img_1.jpg",
        "kept_in": "train",
        "removed_from": "validation",
    }
    (conflict,) = stats["label_conflicts"]
    assert conflict["labels"] == ["a", "b"]
    # img_2 of "a" and the conflicting copy are both gone; the leaked copy stays in train only
    assert body["split_counts"] == {"train": {"a": 3, "b": 4}, "validation": {"a": 2, "b": 2}}
    hashes = [i["sha256"] for i in manifest_of(body["id"])["images"]]
    assert len(hashes) == len(set(hashes)) == 11


def test_uploading_the_same_images_again_says_so(client: TestClient) -> None:
    archive = make_zip(class_folders({"a": 4, "b": 4}))
    first = created(client, archive, name="pets")
    assert not any("uploaded before" in w for w in first["stats"]["warnings"])
    again = created(client, archive, name="pets-copy")
    (warning,) = [w for w in again["stats"]["warnings"] if "uploaded before" in w]
    assert f"as dataset 'pets' (id {first['id']}, version 1)" in warning
    other_split = created(client, archive, name="pets", seed=99)  # other splits: other images
    assert not any("uploaded before" in w for w in other_split["stats"]["warnings"])


def test_fingerprint_depends_on_content_not_names(client: TestClient) -> None:
    files = class_folders({"a": 3, "b": 3}, prefix="train/") | class_folders(
        {"a": 1, "b": 1}, prefix="validation/", seed=50
    )
    renamed = {path.replace("img_", "photo-"): data for path, data in files.items()}
    first = created(client, make_zip(files))
    second = created(client, make_zip(renamed, compression=zipfile.ZIP_STORED))
    assert first["fingerprint"] == second["fingerprint"]
    changed = dict(files) | {"train/a/img_0.jpg": image_bytes(seed=9999)}
    assert created(client, make_zip(changed))["fingerprint"] != first["fingerprint"]


def test_statistics_and_warnings(client: TestClient) -> None:
    files = class_folders({"many": 40, "few": 5}, prefix="train/")
    files |= class_folders({"many": 2, "few": 2}, prefix="val/", seed=300)
    files["train/few/tiny.png"] = image_bytes("PNG", size=(16, 12), seed=77)
    body = created(client, make_zip(files))
    stats = body["stats"]
    assert stats["image_sizes"]["width"] == {"min": 16, "median": 48, "max": 48}
    assert stats["image_sizes"]["height"] == {"min": 12, "median": 40, "max": 40}
    warnings = " | ".join(stats["warnings"])
    assert "class 'few' has only 6 training images" in warnings
    assert "imbalanced (40:6" in warnings
    assert "1 image(s) are smaller than 32 px" in warnings
    assert "'many'" not in warnings


# --- safety ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ("/etc/a/evil.jpg", "absolute path"),
        ("../a/evil.jpg", "outside the archive"),
        ("a/../../evil.jpg", "outside the archive"),
        ("C:/a/evil.jpg", "absolute path"),
    ],
)
def test_path_tricks_are_refused(client: TestClient, entry: str, message: str) -> None:
    files = {**class_folders({"a": 2, "b": 2}), entry: image_bytes(seed=42)}
    response = upload(client, make_zip(files))
    assert response.status_code == 400
    assert message in response.json()["detail"]
    assert leftovers() == []
    assert dataset_rows() == 0


def test_symlinks_are_refused(client: TestClient) -> None:
    archive = make_zip(class_folders({"a": 2, "b": 2}), symlinks=[("a/link.jpg", "/etc/passwd")])
    response = upload(client, archive)
    assert response.status_code == 400
    assert "symbolic link" in response.json()["detail"]
    assert leftovers() == []


def test_a_zip_bomb_entry_is_refused_before_inflating(client: TestClient) -> None:
    files = {**class_folders({"a": 2, "b": 2}), "a/bomb.bmp": b"\x00" * (20 * 1024 * 1024)}
    response = upload(client, make_zip(files))
    assert response.status_code == 400
    assert "zip bomb" in response.json()["detail"]
    assert leftovers() == []
    assert dataset_rows() == 0


def test_archive_limits_total_size_and_entry_count(configure, sqlite_url: str) -> None:
    configure(database_url=sqlite_url, MAX_UNCOMPRESSED_BYTES="5000", MAX_ZIP_ENTRIES="30")
    migrate(sqlite_url)
    with api_client() as client:
        too_big = upload(client, make_zip(class_folders({"a": 5, "b": 5})))  # 10 x ~1.5 KB
        assert too_big.status_code == 413
        assert "unpack to more than" in too_big.json()["detail"]
        many = {f"a/{i}.txt": b"x" for i in range(20)} | {f"b/{i}.txt": b"x" for i in range(20)}
        too_many = upload(client, make_zip(many))
        assert too_many.status_code == 413
        assert "40 entries" in too_many.json()["detail"]
        assert leftovers() == []
        assert dataset_rows() == 0


def test_upload_size_limit_is_413_with_and_without_content_length(
    configure, sqlite_url: str
) -> None:
    configure(database_url=sqlite_url, MAX_UPLOAD_BYTES="50000")
    migrate(sqlite_url)
    big = make_zip(class_folders({"a": 20, "b": 20}), compression=zipfile.ZIP_STORED)
    assert len(big) > 50000
    with api_client() as client:
        declared = upload(client, big)
        assert declared.status_code == 413

        boundary = "xyzBOUNDARYxyz"
        body = (
            (
                f'--{boundary}\r\nContent-Disposition: form-data; name="name"\r\n\r\nx\r\n'
                f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="d.zip"\r\n'
                "Content-Type: application/zip\r\n\r\n"
            ).encode()
            + big
            + f"\r\n--{boundary}--\r\n".encode()
        )

        def chunks():  # no Content-Length: the limit must stop the stream itself
            for start in range(0, len(body), 8192):
                yield body[start : start + 8192]

        streamed = client.post(
            "/datasets",
            content=chunks(),
            headers={"content-type": f"multipart/form-data; boundary={boundary}"},
        )
        assert streamed.status_code == 413
        assert "limit of 50000 bytes" in streamed.json()["detail"]
        assert leftovers() == []
        assert dataset_rows() == 0


def test_non_zip_and_non_multipart_uploads_are_415(client: TestClient) -> None:
    not_zip = upload(client, image_bytes())
    assert not_zip.status_code == 415
    assert not_zip.json()["error"] == "unsupported_media_type"
    as_json = client.post("/datasets", json={"name": "x"})
    assert as_json.status_code == 415
    assert leftovers() == []


def test_form_fields_are_validated_by_name(client: TestClient) -> None:
    archive = make_zip(class_folders({"a": 2, "b": 2}))
    bad = client.post(
        "/datasets",
        files={"file": ("d.zip", archive)},
        data={"name": "x", "validation_fraction": "0.9"},
    )
    assert bad.status_code == 422
    assert bad.json()["detail"][0]["loc"] == ["body", "validation_fraction"]
    nameless = client.post("/datasets", files={"file": ("d.zip", archive)})
    assert nameless.status_code == 422
    assert nameless.json()["detail"][0]["loc"] == ["body", "name"]
    no_file = client.post("/datasets", data={"name": "x"}, files={"other": ("a", b"b")})
    assert no_file.status_code == 400
    assert leftovers() == []


# --- reading, listing, deleting, previews ----------------------------------------------------


def test_get_list_preview_and_delete(client: TestClient) -> None:
    first = created(client, make_zip(class_folders({"a": 3, "b": 3})), name="first")
    second = created(client, make_zip(class_folders({"x": 3, "y": 3}, seed=99)), name="second")

    assert client.get(f"/datasets/{first['id']}").json() == first
    listed = client.get("/datasets").json()
    assert [d["name"] for d in listed] == ["second", "first"]
    assert [d["name"] for d in client.get("/datasets?limit=1&offset=1").json()] == ["first"]

    preview = client.get(f"/datasets/{first['id']}/preview.png")
    assert preview.status_code == 200
    assert preview.headers["content-type"] == "image/png"
    picture = Image.open(io.BytesIO(preview.content))
    assert picture.height > 2 * 100  # one row per class

    assert client.delete(f"/datasets/{first['id']}").status_code == 204
    assert client.get(f"/datasets/{first['id']}").status_code == 404
    assert not (get_settings().datasets_dir / first["id"]).exists()
    assert (get_settings().datasets_dir / second["id"] / "manifest.json").exists()
    assert client.delete(f"/datasets/{uuid.uuid4()}").status_code == 404


def test_delete_is_409_while_a_job_uses_the_dataset(client: TestClient) -> None:
    body = created(client, make_zip(class_folders({"a": 3, "b": 3})))
    with session_scope() as session:
        job = jobs.create_job(
            session,
            method=Method.SCRATCH,
            dataset_id=uuid.UUID(body["id"]),
            parameters={},
            owner=None,
        )
        job_id = job.id
    response = client.delete(f"/datasets/{body['id']}")
    assert response.status_code == 409
    assert str(job_id) in response.json()["detail"]

    with session_scope() as session:
        finished = session.get(TrainingJob, job_id)
        assert finished is not None
        finished.status = "succeeded"
    assert client.delete(f"/datasets/{body['id']}").status_code == 204
    with session_scope() as session:
        kept = session.get(TrainingJob, job_id)
        assert kept is not None
        assert kept.dataset_id is None  # history stays, detached from the deleted dataset


# --- real photos -----------------------------------------------------------------------------


def test_real_photos_from_shared_data(client: TestClient) -> None:
    root = SHARED_DATA / "cats_vs_dogs_small"
    if not root.is_dir():
        pytest.fail(f"{root} is missing: the shared datasets are part of this workplace")
    rng = random.Random(0)
    files = {}
    for split in ("train", "validation"):
        for label in ("cats", "dogs"):
            paths = sorted((root / split / label).iterdir())
            for path in rng.sample(paths, 12 if split == "train" else 4):
                files[f"cats_vs_dogs/{split}/{label}/{path.name}"] = path.read_bytes()
    body = created(client, make_zip(files, compression=zipfile.ZIP_STORED))
    assert body["split_counts"] == {
        "train": {"cats": 12, "dogs": 12},
        "validation": {"cats": 4, "dogs": 4},
    }
    assert body["stats"]["skipped"] == []
    assert body["stats"]["formats"] == {"JPEG": 32}
    assert 40 <= body["stats"]["image_sizes"]["width"]["min"] <= 320
    assert body["stats"]["image_sizes"]["width"]["max"] <= 320
