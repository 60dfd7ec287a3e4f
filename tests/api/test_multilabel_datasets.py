"""Multi-label datasets: labels.csv / labels.jsonl giving an image several labels (or none),
the task recorded, and the seeded split stratified label by label."""

from __future__ import annotations

import json
from collections import Counter

from fastapi.testclient import TestClient

from app.ml.config import Task
from app.services.datasets.ingest import IngestImage, _assign_multilabel_splits
from tests.api.test_datasets import (
    created,
    dataset_rows,
    flat_images,
    leftovers,
    manifest_of,
    upload,
)
from tests.zips import class_folders, make_zip

# Label sets of 40 images: "sky" is common, "boat" rare (3 images), 4 images have none.
LABEL_SETS = (
    [("sky", "sea")] * 12
    + [("sky",)] * 10
    + [("sea", "sand")] * 8
    + [("sand",)] * 3
    + [("boat", "sea", "sky")] * 3
    + [()] * 4
)


def csv_of(label_sets: list[tuple[str, ...]]) -> bytes:
    rows = ["path,labels"] + [f"photos/{i}.jpg,{';'.join(s)}" for i, s in enumerate(label_sets)]
    return ("\n".join(rows) + "\n").encode()


def test_several_labels_per_image_make_a_multilabel_dataset(client: TestClient) -> None:
    archive = make_zip({**flat_images(len(LABEL_SETS)), "labels.csv": csv_of(LABEL_SETS)})
    body = created(client, archive, validation_fraction=0.2, test_fraction=0.2, seed=5)
    assert body["task"] == "multilabel"
    assert body["class_names"] == ["boat", "sand", "sea", "sky"]
    assert body["stats"]["negatives"] and sum(body["stats"]["negatives"].values()) == 4
    assert body["stats"]["label_cardinality"] == round(
        sum(len(s) for s in LABEL_SETS) / len(LABEL_SETS), 3
    )
    # split counts are images with each label; a label is held out as a class of its size
    # would be (boat's 3 images: 1 for test, too few left for validation)
    counts = body["split_counts"]
    for label in body["class_names"]:
        total = sum(counts[split][label] for split in ("train", "validation", "test"))
        assert total == sum(label in s for s in LABEL_SETS)
        assert all(counts[split][label] >= 1 for split in ("train", "test")), counts
        assert counts["validation"][label] >= (label != "boat"), counts
    manifest = manifest_of(body["id"])
    assert manifest["task"] == "multilabel"
    by_source = {item["source"]: item for item in manifest["images"]}
    assert by_source["photos/0.jpg"]["labels"] == ["sea", "sky"]
    assert by_source["photos/39.jpg"]["labels"] == []  # a negative: no label
    assert "label" not in by_source["photos/0.jpg"]


def test_multilabel_is_recorded_when_asked_for_and_refused_for_multiclass(
    client: TestClient,
) -> None:
    folders = make_zip(class_folders({"cat": 5, "dog": 5}))
    body = created(client, folders, task="multilabel")
    assert body["task"] == "multilabel"
    assert manifest_of(body["id"])["images"][0]["labels"] in (["cat"], ["dog"])
    assert created(client, folders, name="plain")["task"] == "multiclass"

    listed = make_zip({**flat_images(len(LABEL_SETS)), "labels.csv": csv_of(LABEL_SETS)})
    response = upload(client, listed, task="multiclass")
    assert response.status_code == 400, response.text
    assert "'photos/0.jpg' has 2 labels" in response.json()["detail"]
    assert "ask for task=multilabel" in response.json()["detail"]
    response = upload(client, listed, task="several")
    assert response.status_code == 422
    assert dataset_rows() == 2
    assert all("photos" not in str(path) for path in leftovers())


def test_jsonl_label_sets_split_given_and_copies_compared_by_their_labels(
    client: TestClient,
) -> None:
    images = flat_images(12)
    images["photos/copy.jpg"] = images["photos/0.jpg"]  # same labels: a duplicate
    images["photos/clash.jpg"] = images["photos/1.jpg"]  # other labels: a conflict
    lines = [
        {"path": f"photos/{i}.jpg", "labels": ["a", "b"] if i % 2 else ["a"], "split": split}
        for i, split in enumerate(["train"] * 8 + ["validation"] * 2 + ["test"] * 2)
    ]
    lines[3]["labels"] = []
    lines.append({"path": "photos/copy.jpg", "labels": ["a"], "split": "train"})
    lines.append({"path": "photos/clash.jpg", "labels": ["b"], "split": "train"})
    text = "\n".join(json.dumps(line) for line in lines) + "\n"
    body = created(client, make_zip({**images, "labels.jsonl": text.encode()}))
    assert body["task"] == "multilabel"
    assert body["stats"]["duplicates"] == [
        {"file": "photos/copy.jpg", "duplicate_of": "photos/0.jpg"}
    ]
    assert body["stats"]["label_conflicts"][0]["labels"] == ["a;b", "b"]
    assert body["split_counts"]["train"] == {"a": 6, "b": 2}  # 1 and its clash dropped
    assert body["stats"]["negatives"] == {"train": 1}


def test_a_label_only_in_validation_is_refused_but_one_missing_there_is_not(
    client: TestClient,
) -> None:
    rows = [("a", "b")] * 6 + [("a",)] * 4
    splits = ["train"] * 8 + ["validation"] * 2
    text = "path,labels,split\n" + "".join(
        f"photos/{i}.jpg,{';'.join(s)},{split}\n"
        for i, (s, split) in enumerate(zip(rows, splits, strict=True))
    )
    body = created(client, make_zip({**flat_images(10), "labels.csv": text.encode()}))
    assert body["split_counts"]["validation"] == {"a": 2, "b": 0}
    text += "photos/10.jpg,a;c,validation\n"
    response = upload(client, make_zip({**flat_images(11), "labels.csv": text.encode()}))
    assert response.status_code == 400
    assert "validation/ has c, which train/ lacks" in response.json()["detail"]


def test_the_multilabel_split_keeps_each_labels_share_and_its_seed() -> None:
    def images() -> list[IngestImage]:
        return [
            IngestImage(
                sha256=f"{i:064x}",
                split=None,
                labels=s,
                source=f"{i}.jpg",
                width=64,
                height=64,
                source_format="JPEG",
            )
            for i, s in enumerate(LABEL_SETS[:36] * 5)  # 180 images, no negatives
        ]

    first, second = images(), images()
    for batch in (first, second):
        _assign_multilabel_splits(batch, validation_fraction=0.2, test_fraction=0.1, seed=7)
    assert [i.split for i in first] == [i.split for i in second]
    sizes = Counter(i.split for i in first)
    assert sizes == {"train": 130, "validation": 32, "test": 18}
    for label in ("sky", "sea", "sand", "boat"):
        having = [i for i in first if label in i.labels]
        share = Counter(i.split for i in having)
        assert abs(share["test"] / len(having) - 0.1) <= 0.05, (label, share)
        assert abs(share["validation"] / len(having) - 0.18) <= 0.06, (label, share)
    assert Task.MULTILABEL.value == "multilabel"
