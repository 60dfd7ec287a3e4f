"""Accuracy through the Custom Vision compatible API against the native one: the same photos,
the same default training, in one service.

    .venv/bin/python -m benchmarks.customvision [--sets NAME ...]

For each set of ../shared/data: every photo (its train, validation and test folders pooled)
goes into a Custom Vision project through the official SDK (a tag per class, batches of 64),
which is trained (train_project: the default `auto` job on a snapshot split by the seeded
split) and evaluated; the same photos go to POST /datasets as class folders without split
folders, so the seeded split is the same, and get the default request. Both test accuracies
come from the jobs' evaluations. Writes the "customvision" section of docs/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import time
import zipfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from benchmarks.common import PROJECT_ROOT, SHARED, app_cli, live_service, machine, write_section

DATA = SHARED / "data"
WEIGHTS = SHARED / "weights"
BATCH = 64


def _photos(name: str) -> dict[str, list[Path]]:
    by_class: dict[str, list[Path]] = {}
    for path in sorted((DATA / name).glob("*/*/*")):
        if path.suffix.lower() in (".jpg", ".jpeg", ".png"):
            by_class.setdefault(path.parent.name, []).append(path)
    return by_class


def _job_of(base: str, headers: dict[str, str], job_id: str) -> dict[str, Any]:
    while True:
        job: dict[str, Any] = httpx.get(f"{base}/jobs/{job_id}", headers=headers, timeout=30).json()
        if job["status"] in {"succeeded", "failed", "cancelled"}:
            return job
        time.sleep(3)


def through_custom_vision(base: str, key: str, name: str) -> dict[str, Any]:
    from azure.cognitiveservices.vision.customvision.training import CustomVisionTrainingClient
    from azure.cognitiveservices.vision.customvision.training.models import (
        ImageFileCreateBatch,
        ImageFileCreateEntry,
    )
    from msrest.authentication import ApiKeyCredentials

    trainer = CustomVisionTrainingClient(
        f"{base}/", ApiKeyCredentials(in_headers={"Training-key": key})
    )
    project = trainer.create_project(name)
    entries = []
    for label, paths in _photos(name).items():
        tag = trainer.create_tag(project.id, label)
        entries += [ImageFileCreateEntry(contents=p.read_bytes(), tag_ids=[tag.id]) for p in paths]
    for start in range(0, len(entries), BATCH):
        trainer.create_images_from_files(
            project.id, ImageFileCreateBatch(images=entries[start : start + BATCH])
        )
    iteration = trainer.train_project(project.id)
    while iteration.status == "Training":
        time.sleep(3)
        iteration = trainer.get_iteration(project.id, iteration.id)
    performance = trainer.get_iteration_performance(project.id, iteration.id, threshold=0.5)
    return {"iteration": iteration.status, "average_precision": performance.average_precision}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sets", nargs="+", default=["car_vs_minibus_tiny", "flowers_small"])
    parser.add_argument(
        "--work", type=Path, default=PROJECT_ROOT / "var" / "benchmarks" / "customvision"
    )
    args = parser.parse_args()
    rows = []
    with live_service(
        args.work / "var",
        with_worker=True,
        pretrained_weights_dir=str(WEIGHTS),
        allow_weights_download="false",
    ) as live:
        key = (
            app_cli(
                args.work / "var",
                "keys",
                "create",
                "--name",
                "cv",
                "--owner",
                "bench",
                "--scopes",
                "train",
                pretrained_weights_dir=str(WEIGHTS),
                allow_weights_download="false",
            )
            .splitlines()[-1]
            .strip()
        )
        headers = {"Authorization": f"Bearer {key}"}
        for name in args.sets:
            custom_vision = through_custom_vision(live.base, key, name)
            jobs = httpx.get(f"{live.base}/jobs", headers=headers, timeout=30).json()
            cv_job = _job_of(live.base, headers, jobs[0]["id"])
            archive = args.work / f"{name}.zip"
            with zipfile.ZipFile(archive, "w") as zipped:
                for label, paths in _photos(name).items():
                    for path in paths:
                        zipped.write(path, f"{label}/{path.parent.parent.name}-{path.name}")
            with archive.open("rb") as handle:
                dataset = httpx.post(
                    f"{live.base}/datasets",
                    files={"file": handle},
                    data={"name": f"{name} native"},
                    headers=headers,
                    timeout=600,
                ).json()
            accepted = httpx.post(
                f"{live.base}/jobs", json={"dataset_id": dataset["id"]}, headers=headers, timeout=60
            ).json()
            native_job = _job_of(live.base, headers, accepted["id"])
            row = {
                "set": name,
                "custom_vision": (cv_job["result"] or {}).get("evaluation", {}).get("accuracy"),
                "native": (native_job["result"] or {}).get("evaluation", {}).get("accuracy"),
                "custom_vision_kept": ((cv_job["result"] or {}).get("chosen") or {}).get("method"),
                "native_kept": ((native_job["result"] or {}).get("chosen") or {}).get("method"),
                "same_split": cv_job["result"]["dataset"]["fingerprint"]
                == native_job["result"]["dataset"]["fingerprint"],
                "average_precision": custom_vision["average_precision"],
            }
            print(json.dumps(row), flush=True)
            rows.append(row)
    lines = [
        "## Accuracy through the Custom Vision compatible API and through the native one",
        "",
        f"Measured {datetime.now(UTC):%Y-%m-%d} on {machine()}, CPU only, with",
        f"`.venv/bin/python -m benchmarks.customvision --sets {' '.join(args.sets)}`: every photo",
        "of each set uploaded through the official Custom Vision SDK (a tag per class) and",
        "trained with train_project, and the same photos uploaded to POST /datasets as class",
        "folders and trained with the default request, in one service. Test accuracy of each",
        "job's evaluation; 'same split' says whether both datasets have the same fingerprint",
        "(same images in the same splits: both use the seeded 70/20/10 split). One split per",
        "set: the point is that both paths train the same thing, and on the same split the",
        "default training gives the same model.",
        "",
        "| set | through Custom Vision | native | kept (CV / native) | same split | mean AP, get_iteration_performance |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        lines.append(
            f"| {r['set']} | {r['custom_vision']:.3f} | {r['native']:.3f} | "
            f"{r['custom_vision_kept']} / {r['native_kept']} | {'yes' if r['same_split'] else 'no'} "
            f"| {r['average_precision']:.3f} |"
        )
    write_section("customvision", "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
