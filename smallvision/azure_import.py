"""Moving an Azure Custom Vision project here: its tagged images (the originals) and tags read
through Custom Vision's Training API, kept in a work folder as they arrive (a second run goes
on where the first stopped), then uploaded as one dataset (images and a labels.jsonl, the
project's type as the dataset's task; Negative-tag images as negative examples)."""

from __future__ import annotations

import json
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import httpx

API_VERSION = "v3.3"
PAGE = 256  # the most tagged images the Training API gives per page


class AzureError(RuntimeError):
    """The Custom Vision endpoint answered an error (its code and message) or nothing."""


@dataclass
class ImportReport:
    project: dict[str, Any]
    images: int = 0  # tagged images listed
    downloaded: int = 0  # fetched in this run
    reused: int = 0  # already in the work folder from an earlier run
    skipped: list[dict[str, str]] = field(default_factory=list)  # {"image", "reason"}
    labels: dict[str, list[str]] = field(default_factory=dict)  # file name -> tag names


class AzureProject:
    """One Custom Vision project, read with its Training key."""

    def __init__(
        self,
        endpoint: str,
        *,
        training_key: str,
        project_id: str,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.base = f"{endpoint.rstrip('/')}/customvision/{API_VERSION}/training"
        self.project_id = project_id
        self.http = httpx.Client(
            headers={"Training-Key": training_key},
            timeout=httpx.Timeout(60.0, connect=10.0),
            transport=transport,
            follow_redirects=True,
        )

    def close(self) -> None:
        self.http.close()

    def _get(self, path: str, **params: Any) -> Any:
        try:
            response = self.http.get(f"{self.base}{path}", params=params)
        except httpx.TransportError as exc:
            raise AzureError(f"no answer from {self.base}: {exc}") from exc
        if response.status_code != 200:
            try:
                body = response.json()
                detail = f"{body.get('code')}: {body.get('message')}"
            except ValueError:
                detail = response.text[:200]
            raise AzureError(f"{response.status_code} from {path}: {detail}")
        return response.json()

    def project(self) -> dict[str, Any]:
        return dict(self._get(f"/projects/{self.project_id}"))

    def tags(self) -> list[dict[str, Any]]:
        return list(self._get(f"/projects/{self.project_id}/tags"))

    def tagged_images(self) -> Iterator[dict[str, Any]]:
        """Every tagged image, oldest first, a page at a time."""
        skip = 0
        while True:
            page = self._get(
                f"/projects/{self.project_id}/images/tagged",
                take=PAGE,
                skip=skip,
                orderBy="Oldest",
            )
            yield from page
            if len(page) < PAGE:
                return
            skip += len(page)

    def download(self, uri: str) -> bytes:
        """An image's original file (Azure's links are signed storage URLs; this service's
        own stand-in wants the key, which the header gives it)."""
        response = self.http.get(uri)
        if response.status_code != 200:
            raise AzureError(f"{response.status_code} downloading the image")
        return response.content


def _suffix(data: bytes) -> str:
    if data.startswith(b"\x89PNG"):
        return ".png"
    if data.startswith((b"GIF87a", b"GIF89a")):
        return ".gif"
    if data.startswith(b"BM"):
        return ".bmp"
    return ".jpg"


def fetch(
    azure: AzureProject,
    work: Path,
    *,
    on_image: Callable[[int, int], None] = lambda _done, _total: None,
) -> ImportReport:
    """Every tagged image of the project into `work/images/` (those already there from an
    earlier run are kept, not fetched again), and what the import will upload."""
    images_dir = work / "images"
    images_dir.mkdir(parents=True, exist_ok=True)
    project = azure.project()
    (work / "project.json").write_text(json.dumps(project))
    negative = {t["id"] for t in azure.tags() if t.get("type") == "Negative"}
    report = ImportReport(project=project)
    listed = list(azure.tagged_images())
    report.images = len(listed)
    have = {path.stem: path for path in images_dir.iterdir()}
    for done, image in enumerate(listed, start=1):
        tags = image.get("tags") or []
        labels = sorted(t["tagName"] for t in tags if t["tagId"] not in negative)
        path = have.get(image["id"])
        if path is None:
            try:
                data = azure.download(image["originalImageUri"])
            except (AzureError, httpx.HTTPError) as exc:
                report.skipped.append({"image": image["id"], "reason": str(exc)})
                on_image(done, len(listed))
                continue
            path = images_dir / f"{image['id']}{_suffix(data)}"
            partial = path.with_suffix(path.suffix + ".part")
            partial.write_bytes(data)
            partial.replace(path)  # (a file there is whole: an interrupted run left none)
            report.downloaded += 1
        else:
            report.reused += 1
        report.labels[path.name] = labels
        on_image(done, len(listed))
    return report


def dataset_zip(report: ImportReport, work: Path) -> Path:
    """The fetched images and a labels.jsonl naming each one's tags (none: a negative)."""
    archive = work / "dataset.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_STORED) as zipped:
        lines = []
        for name, labels in sorted(report.labels.items()):
            zipped.write(work / "images" / name, f"images/{name}")
            lines.append(json.dumps({"path": f"images/{name}", "labels": labels}))
        zipped.writestr("labels.jsonl", "\n".join(lines) + "\n")
    return archive


def task_of(project: dict[str, Any]) -> Literal["multiclass", "multilabel"]:
    """The dataset task of a project's classificationType."""
    kind = (project.get("settings") or {}).get("classificationType") or "Multiclass"
    return "multilabel" if str(kind).lower() == "multilabel" else "multiclass"
