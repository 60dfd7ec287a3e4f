"""The formats for devices, end to end on `make run`'s service: training registers a version,
a worker builds tflite, tflite_fp16, tflite_int8 and onnx_int8 and checks each on the test
split with its own runtime; the version shows the figures; a degraded export is refused
(409 with the figures) unless allow_degraded=true; every format's bundle runs its predict.py
and gives /predict's answer on real photos, an EXIF-rotated one among them; so does README's
example."""

from __future__ import annotations

import io
import json
import re
import subprocess
import sys
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

from app.core.config import PROJECT_ROOT
from tests.processes import LiveService, running_service, weights_settings
from tests.zips import PHOTOS

EDGE = ("tflite", "tflite_fp16", "tflite_int8", "onnx_int8")
NAME = "edge-pets"
# Per class: train, validation, test photos.
COUNTS = {"train": 12, "validation": 4, "test": 6}
# How far each format's probabilities may be from /predict's (served by ONNX Runtime, float).
TOLERANCE = {
    "keras": 1e-3,
    "onnx": 1e-4,
    "savedmodel": 1e-3,
    "tflite": 1e-3,
    "tflite_fp16": 3e-2,
    "tflite_int8": 0.15,
    "onnx_int8": 0.15,
}


def _dataset_zip(path: Path) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        for split, count in COUNTS.items():
            for label in ("cats", "dogs"):
                for image in sorted((PHOTOS / split / label).iterdir())[:count]:
                    archive.write(image, f"{split}/{label}/{image.name}")
    return path


def _sideways(photo: Path, target: Path) -> Path:
    """The photo stored turned a quarter (as a phone stores it) with the EXIF orientation
    (6: rotate 90 clockwise to view) that makes it upright again."""
    upright = Image.open(photo).convert("RGB")
    exif = Image.Exif()
    exif[0x0112] = 6
    upright.transpose(Image.Transpose.ROTATE_90).save(target, "JPEG", exif=exif.tobytes())
    return target


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Iterator[tuple[LiveService, dict[str, str]]]:
    tmp = tmp_path_factory.mktemp("edge")
    settings = {
        **weights_settings(),
        "EDGE_EXPORT_FORMATS": ",".join(EDGE),
        # every export is degraded (no loss is still more than -1 point): the refusal shows
        "EDGE_EXPORT_MAX_LOSS_POINTS": "-1",
    }
    with running_service(tmp / "var", tmp / "run.log", settings=settings) as live:
        headers = {"Authorization": f"Bearer {live.admin_key}"}
        with _dataset_zip(tmp / "pets.zip").open("rb") as handle:
            created = httpx.post(
                f"{live.url}/datasets",
                files={"file": handle},
                data={"name": NAME},
                headers=headers,
                timeout=120,
            )
        assert created.status_code == 201, created.text
        job = httpx.post(
            f"{live.url}/jobs",
            json={
                "dataset_id": created.json()["id"],
                "method": "bottleneck",
                "base_model": "mobilenet_v2",
                "image_size": 96,
                "epochs": 2,
                "model_name": NAME,
            },
            headers=headers,
        ).json()
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            state = httpx.get(f"{live.url}/jobs/{job['id']}", headers=headers).json()
            if state["status"] in {"succeeded", "failed", "cancelled"}:
                break
            time.sleep(2)
        assert state["status"] == "succeeded", state.get("error")
        yield live, headers


def _version(live: LiveService, headers: dict[str, str]) -> dict:
    answer = httpx.get(f"{live.url}/models/{NAME}/versions/1", headers=headers)
    assert answer.status_code == 200, answer.text
    return answer.json()


def _ready_exports(live: LiveService, headers: dict[str, str]) -> dict[str, dict]:
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        exports = {e["format"]: e for e in _version(live, headers)["exports"]}
        if set(EDGE) <= set(exports) and all(
            exports[f]["status"] in {"ready", "failed"} for f in EDGE
        ):
            return exports
        time.sleep(2)
    raise AssertionError(f"the exports were not built: {exports}")


def test_training_builds_and_checks_every_format_for_devices(trained) -> None:
    live, headers = trained
    exports = _ready_exports(live, headers)
    test_images = 2 * COUNTS["test"]
    for fmt in EDGE:
        export = exports[fmt]
        assert export["status"] == "ready", export["error"]
        check = export["report"]
        assert check["format"] == fmt and check["evaluated_on"] == "test"
        assert check["images"] == test_images
        assert check["runtime"] == ("onnxruntime" if fmt == "onnx_int8" else "litert")
        assert 0.0 <= check["accuracy"] <= 1.0 and 0.0 <= check["agreement"] <= 1.0
        loss = round((check["float_accuracy"] - check["accuracy"]) * 100, 3)
        assert check["accuracy_loss_points"] == pytest.approx(loss, abs=1e-3)
        assert check["degraded"] is True and check["max_loss_points"] == -1  # forced here
        assert check["size_bytes"] == export["size_bytes"] > 10_000
    assert exports["tflite"]["report"]["agreement"] == 1.0
    assert exports["tflite"]["report"]["max_probability_difference"] <= 1e-3
    # the integer models are smaller than the float one
    assert exports["tflite_int8"]["size_bytes"] < exports["tflite"]["size_bytes"] / 2
    assert exports["tflite_fp16"]["size_bytes"] < exports["tflite"]["size_bytes"]


def test_a_degraded_export_is_refused_with_its_figures_unless_allowed(trained) -> None:
    live, headers = trained
    _ready_exports(live, headers)
    url = f"{live.url}/models/{NAME}/versions/1/download"
    refused = httpx.get(url, params={"format": "tflite_int8"}, headers=headers)
    assert refused.status_code == 409
    body = refused.json()
    assert body["error"] == "export_degraded"
    assert "accuracy" in body["detail"] and "allow_degraded=true" in body["detail"]
    allowed = httpx.get(
        url, params={"format": "tflite_int8", "allow_degraded": "true"}, headers=headers
    )
    assert allowed.status_code == 200 and allowed.content[4:8] == b"TFL3"
    assert f"{NAME}-v1_int8.tflite" in allowed.headers["content-disposition"]
    # bad names: a 422 naming the formats there are
    bad = httpx.get(url, params={"format": "coreml"}, headers=headers)
    assert bad.status_code == 422 and "tflite_int8" in json.dumps(bad.json())
    not_built = httpx.post(f"{live.url}/models/{NAME}/versions/1/exports/keras", headers=headers)
    assert not_built.status_code == 422 and "onnx_int8" in json.dumps(not_built.json())


def _predict(live: LiveService, headers: dict[str, str], photo: Path) -> dict[str, float]:
    with photo.open("rb") as handle:
        answer = httpx.post(
            f"{live.url}/predict",
            files={"file": handle},
            data={"model": NAME, "detect_unknown": "false"},
            headers=headers,
            timeout=60,
        )
    assert answer.status_code == 200, answer.text
    return {p["label"]: p["probability"] for p in answer.json()["predictions"][0]["labels"]}


def _bundle(live: LiveService, headers: dict[str, str], fmt: str, folder: Path) -> Path:
    url = f"{live.url}/models/{NAME}/versions/1/download"
    params = {"format": fmt, "bundle": "true", "allow_degraded": "true"}
    deadline = time.monotonic() + 300
    while True:
        answer = httpx.get(url, params=params, headers=headers, timeout=120)
        if answer.status_code != 202 or time.monotonic() > deadline:
            break
        time.sleep(2)
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"] == "application/zip"
    zipfile.ZipFile(io.BytesIO(answer.content)).extractall(folder)
    return folder


def test_every_bundle_runs_its_example_and_answers_as_predict_does(trained, tmp_path) -> None:
    live, headers = trained
    _ready_exports(live, headers)
    photos = [
        sorted((PHOTOS / "test" / "cats").iterdir())[10],
        sorted((PHOTOS / "test" / "dogs").iterdir())[10],
        _sideways(sorted((PHOTOS / "test" / "dogs").iterdir())[11], tmp_path / "sideways.jpg"),
    ]
    served = [_predict(live, headers, photo) for photo in photos]
    for fmt in ("keras", "onnx", "savedmodel", *EDGE):
        folder = _bundle(live, headers, fmt, tmp_path / fmt)
        assert {"labels.json", "preprocessing.json", "predict.py", "README.md"} <= {
            p.name for p in folder.iterdir()
        }
        labels = json.loads((folder / "labels.json").read_text())
        assert labels == {"classes": ["cats", "dogs"], "task": "multiclass"}
        preprocessing = json.loads((folder / "preprocessing.json").read_text())
        assert preprocessing["input_size"] == 96 and preprocessing["channel_order"] == "RGB"
        assert preprocessing["input_dtype"] == ("uint8" if fmt == "tflite_int8" else "float32")
        readme = (folder / "README.md").read_text()
        assert (folder / "predict.py").read_text() in readme  # the README shows what runs
        ran = subprocess.run(
            [sys.executable, "predict.py", *map(str, photos)],
            cwd=folder,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert ran.returncode == 0, ran.stderr[-3000:]
        lines = [json.loads(line) for line in ran.stdout.splitlines() if line.startswith("{")]
        assert len(lines) == len(photos), ran.stdout
        for line, expected in zip(lines, served, strict=True):
            probabilities = line["probabilities"]
            assert set(probabilities) == set(expected)
            worst = max(abs(probabilities[k] - expected[k]) for k in expected)
            assert worst <= TOLERANCE[fmt], (fmt, line["file"], probabilities, expected)
            if max(expected.values()) - min(expected.values()) > 0.3:  # not a near tie
                assert line["label"] == max(expected, key=expected.__getitem__), (fmt, line)


def test_the_readme_example_answers_as_predict_does(trained, tmp_path) -> None:
    live, headers = trained
    blocks = re.findall(
        r"^```python\n(.*?)^```", (PROJECT_ROOT / "README.md").read_text(), re.S | re.M
    )
    example = next(block for block in blocks if block.startswith("# ?format=onnx "))
    model = httpx.get(
        f"{live.url}/models/{NAME}/versions/1/download", params={"format": "onnx"}, headers=headers
    )
    (tmp_path / "pets-v1.onnx").write_bytes(model.content)
    photo = _sideways(sorted((PHOTOS / "test" / "cats").iterdir())[12], tmp_path / "cat.jpg")
    script = tmp_path / "example.py"
    script.write_text(example + "\nimport json\nprint(json.dumps(probabilities.tolist()))\n")
    ran = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert ran.returncode == 0, ran.stderr[-3000:]
    (row,) = json.loads(ran.stdout.strip().splitlines()[-1])
    expected = _predict(live, headers, photo)
    assert max(abs(p - expected[c]) for p, c in zip(row, ["cats", "dogs"], strict=True)) <= 1e-4


def test_an_operator_builds_the_formats_of_an_existing_version(trained) -> None:
    live, _ = trained
    ran = subprocess.run(
        [
            sys.executable,
            "-m",
            "app.cli",
            "export-edge",
            "--name",
            NAME,
            "--version",
            "1",
            "--formats",
            "tflite",
        ],
        cwd=PROJECT_ROOT,
        env=live.env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert ran.returncode == 0, ran.stderr[-3000:]
    # built after training already: said so, with its figures
    assert re.search(
        rf"{NAME} v1 tflite: built before: \d+ bytes, accuracy [\d.]+ .* on 12 test images",
        ran.stdout,
    ), ran.stdout
    bad = subprocess.run(
        [sys.executable, "-m", "app.cli", "export-edge", "--formats", "coreml"],
        cwd=PROJECT_ROOT,
        env=live.env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad.returncode == 2 and "tflite_int8" in bad.stderr


def test_the_console_shows_each_check_and_downloads_a_bundle(trained, browser) -> None:
    from tests.e2e.test_console import ARTIFACTS, PageWatch, Walk

    live, _ = trained
    _ready_exports(live, {"Authorization": f"Bearer {live.admin_key}"})
    context = browser.new_context(viewport={"width": 1280, "height": 900}, accept_downloads=True)
    page = context.new_page()
    watch = PageWatch(page)
    walk = Walk(page, live.url, folder=ARTIFACTS.parent / "edge-exports")
    page.set_default_timeout(30_000)
    page.goto(live.url)
    page.fill("#api-key", live.admin_key)
    page.click("#sign-in button[type=submit]")
    page.wait_for_selector("a[data-nav=models]")
    walk.nav("models", f"section.model[data-model={NAME}]")
    details = page.locator(f"section.model[data-model={NAME}] details.downloads[data-version='1']")
    details.locator("summary").click()
    row = details.locator("tr", has=page.locator("button[data-format=tflite_int8]"))
    text = row.inner_text()
    assert "degraded" in text and "12 test images" in text and "float" in text
    walk.shot("models-downloads")
    # the download of a degraded export asks first (this test accepts; PageWatch would not)
    page.remove_listener("dialog", watch._dialog)
    asked: list[str] = []

    def accept(dialog: Any) -> None:
        asked.append(dialog.message)
        dialog.accept()

    page.once("dialog", accept)
    with page.expect_download() as download:
        row.locator("button[data-bundle=true]").click()
    assert asked and "lost more accuracy" in asked[0]
    assert download.value.suggested_filename == f"{NAME}-v1-tflite_int8.zip"
    names = zipfile.ZipFile(download.value.path()).namelist()
    assert "predict.py" in names and f"{NAME}-v1_int8.tflite" in names
    # the page is no wider than the window: wide tables scroll inside their card
    assert page.evaluate("document.documentElement.scrollWidth") <= 1280
    assert not watch.errors, watch.errors
    context.close()


def test_the_cli_serves_int8_only_once_its_check_passed(trained) -> None:
    """Every export here is degraded: the int8 one is refused as the default and per request,
    with the figures; float32 answers and says which runtime did."""
    from tests.e2e.test_cli import smallvision

    live, _ = trained
    refused = smallvision(live, "models", "serve", NAME, "1", "--precision", "int8")
    assert refused.returncode != 0 and "degraded" in refused.stderr, refused.stderr
    photo = str(sorted((PHOTOS / "test" / "dogs").iterdir())[0])
    asked = smallvision(live, "predict", photo, "--model", NAME, "--precision", "int8")
    assert asked.returncode != 0 and "agreement" in asked.stderr, asked.stderr
    answered = smallvision(live, "predict", photo, "--model", NAME, "--precision", "float32")
    assert answered.returncode == 0 and "(onnxruntime)" in answered.stdout, answered.stderr
    shown = smallvision(live, "models", "show", NAME, "1")
    assert "served in float32" in shown.stdout, shown.stdout


def test_the_docker_package_serves_predict_as_the_service_does(trained, tmp_path) -> None:
    """?format=docker: a Dockerfile, the ONNX model and server.py; the server, run as a process
    with TensorFlow made unimportable, answers /predict as the service does (within 1e-4, the
    unknown answer too) on real photos, an EXIF-rotated one among them, and bounds its input."""
    from importlib import metadata

    from tests.e2e.test_cli import smallvision
    from tests.processes import free_port, wait_until

    live, headers = trained
    fetched = httpx.get(
        f"{live.url}/models/{NAME}/versions/1/download",
        params={"format": "docker"},
        headers=headers,
        timeout=60,
    )
    assert fetched.status_code == 200, fetched.text
    assert fetched.headers["content-type"] == "application/zip"
    package = tmp_path / "package"
    zipfile.ZipFile(io.BytesIO(fetched.content)).extractall(package)
    dockerfile = (package / "Dockerfile").read_text()
    assert dockerfile.startswith("FROM python:3.11-slim")
    assert 'CMD ["python", "server.py", "--host", "0.0.0.0", "--port", "8080"]' in dockerfile
    pins = (package / "requirements.txt").read_text().split()
    assert pins == [f"{n}=={metadata.version(n)}" for n in ("onnxruntime", "numpy", "pillow")]
    assert {"model.onnx", "labels.json", "service.json", "server.py", "README.md"} <= {
        p.name for p in package.iterdir()
    }
    # no TensorFlow: importing it (or Keras) fails in the server's process
    poison = tmp_path / "poison"
    for module in ("tensorflow", "keras"):
        (poison / module).mkdir(parents=True)
        (poison / module / "__init__.py").write_text(f"raise ImportError('no {module} here')\n")
    port = free_port()
    env = {k: v for k, v in live.env.items() if not k.startswith("SMALLVISION_")}
    env.update(PYTHONPATH=str(poison), MAX_BODY_BYTES="3000000")
    server = subprocess.Popen(
        [sys.executable, "server.py", "--port", str(port)],
        cwd=package,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:

        def answering() -> bool:
            assert server.poll() is None, server.communicate()[0]
            try:
                return httpx.get(f"{url}/health", timeout=2).status_code == 200
            except httpx.TransportError:
                return False

        wait_until(answering, timeout=60, what="the package's server")
        assert httpx.get(f"{url}/health").json()["model"] == NAME
        photos = [
            *sorted((PHOTOS / "test" / "dogs").iterdir())[:2],
            sorted((PHOTOS / "test" / "cats").iterdir())[0],
            _sideways(sorted((PHOTOS / "test" / "cats").iterdir())[1], tmp_path / "side.jpg"),
        ]
        for photo in photos:
            sent = {"files": {"file": (photo.name, photo.read_bytes())}, "timeout": 60}
            expected = httpx.post(
                f"{live.url}/predict", data={"model": NAME}, headers=headers, **sent
            ).json()
            answered = httpx.post(f"{url}/predict", **sent)
            assert answered.status_code == 200, answered.text
            got = answered.json()
            assert (got["model"], got["version"], got["runtime"]) == (NAME, 1, "onnxruntime")
            assert got["outlier_threshold"] == pytest.approx(expected["outlier_threshold"])
            (mine,), (theirs,) = got["predictions"], expected["predictions"]
            assert [x["label"] for x in mine["labels"]] == [x["label"] for x in theirs["labels"]]
            for a, b in zip(mine["labels"], theirs["labels"], strict=True):
                assert abs(a["probability"] - b["probability"]) < 1e-4, photo
            assert mine["unknown"] == theirs["unknown"]
            if theirs["outlier_score"] is not None:
                assert abs(mine["outlier_score"] - theirs["outlier_score"]) < 1e-4
        # a batch, the image as the body, and what is refused
        batch = httpx.post(
            f"{url}/predict",
            files=[("files", (p.name, p.read_bytes())) for p in photos[:2]],
            data={"top_k": "1"},
        ).json()
        assert [len(p["labels"]) for p in batch["predictions"]] == [1, 1]
        raw = httpx.post(
            f"{url}/predict",
            content=photos[0].read_bytes(),
            headers={"Content-Type": "image/jpeg"},
        )
        assert raw.status_code == 200 and raw.json()["predictions"][0]["filename"] is None
        big = httpx.post(
            f"{url}/predict",
            content=b"\xff" * 3_000_001,
            headers={"Content-Type": "image/jpeg"},
        )
        assert big.status_code == 413 and big.json()["error"] == "payload_too_large"
        wide = io.BytesIO()
        Image.new("1", (9000, 6000)).save(wide, "PNG")  # 54 M pixels in a few KB
        bomb = httpx.post(f"{url}/predict", files={"file": ("wide.png", wide.getvalue())})
        assert bomb.status_code == 413 and "pixels" in bomb.json()["detail"], bomb.text
        limit = json.loads((package / "service.json").read_text())["max_images"]
        many = [("files", (f"{i}.jpg", b"x")) for i in range(limit + 1)]
        assert httpx.post(f"{url}/predict", files=many).status_code == 413
        junk = httpx.post(f"{url}/predict", files={"file": ("x.jpg", b"not an image")})
        assert junk.status_code == 400 and "not an image" in junk.json()["detail"]
        assert httpx.post(f"{url}/other", content=b"").status_code == 404
    finally:
        server.terminate()
        output = server.communicate(timeout=30)[0]
    assert "Traceback" not in output, output
    # the CLI saves the same zip
    saved = tmp_path / "cli-docker.zip"
    ran = smallvision(live, "models", "download", NAME, "1", "--format", "docker", "-o", str(saved))
    assert ran.returncode == 0, ran.stderr
    assert zipfile.ZipFile(saved).read("server.py") == (package / "server.py").read_bytes()


def test_the_console_runs_the_model_in_the_browser_as_predict_does(
    trained, browser, tmp_path
) -> None:
    """ "Run in this browser": ONNX Runtime Web from this server (no CDN; the page's
    Content-Security-Policy as served) runs the version's ONNX model on the photos, which are
    never sent, and gives /predict's top label and probabilities on real photos, an
    EXIF-rotated one among them."""
    from tests.e2e.test_console import ARTIFACTS, PageWatch, Walk

    live, headers = trained
    photos = [
        *sorted((PHOTOS / "test" / "cats").iterdir())[:2],
        sorted((PHOTOS / "test" / "dogs").iterdir())[0],
        _sideways(sorted((PHOTOS / "test" / "dogs").iterdir())[1], tmp_path / "sideways.jpg"),
    ]
    served = [_predict(live, headers, photo) for photo in photos]
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    watch = PageWatch(page)
    walk = Walk(page, live.url, folder=ARTIFACTS.parent / "in-the-browser")
    posted: list[str] = []
    page.on("request", lambda r: posted.append(r.url) if r.method == "POST" else None)
    requested: list[str] = []
    page.on("request", lambda r: requested.append(r.url))
    page.goto(live.url)
    page.fill("#api-key", live.admin_key)
    page.click("#sign-in button[type=submit]")
    page.wait_for_selector("a[data-nav=predict]")
    walk.nav("predict", ".drop-zone")
    page.select_option("#predict-model", NAME)
    page.check("#predict-here")
    page.set_input_files(".drop-zone input[type=file]", [str(p) for p in photos])
    page.wait_for_selector("#predict-summary", timeout=120_000)
    assert "in this browser" in walk.text("#predict-summary"), walk.text("#predict-summary")
    cards = page.locator("figure.prediction").all()
    assert len(cards) == len(photos)
    for photo, card, expected in zip(photos, cards, served, strict=True):
        assert card.locator(".filename").text_content() == photo.name
        labels = card.locator(".label").all_text_contents()
        assert labels[0] == max(expected, key=expected.get), photo.name
        # the browser's JPEG decoder is not Pillow's: probabilities agree closely, not exactly
        shown = card.locator(".bar-label").all_text_contents()
        for label, percent in zip(labels, shown, strict=True):
            assert abs(float(percent.rstrip("%")) / 100 - expected[label]) < 0.02, photo.name
    walk.shot("predict-in-the-browser")
    assert not [url for url in posted if "/predict" in url]  # no photo left the page
    # nothing from elsewhere (blob: and data: are the page's own previews)
    fetched = [url for url in requested if not url.startswith(("blob:", "data:"))]
    assert all(url.startswith(live.url) for url in fetched), fetched
    assert any(url.endswith("/ui/vendor/ort-wasm-simd-threaded.wasm") for url in requested)
    assert not watch.errors, watch.errors
    context.close()
