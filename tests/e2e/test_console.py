"""The web console in a real browser (Debian's chromium, driven by Playwright) on a live
`make run` service: the whole loop a person walks, with a screenshot of each page kept in
test-artifacts/console/. Any JavaScript error on the page fails the test, and a class named
like an HTML tag must show as text everywhere without running anything."""

from __future__ import annotations

import base64
import os
import re
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.core.config import PROJECT_ROOT
from tests.processes import MISSING_WEIGHTS_FILE, LiveService, running_service, weights_settings
from tests.zips import LEAKED_PHOTO, PHOTOS, report_subjects, tiny_photo_zip

ARTIFACTS = Path(os.environ.get("TEST_ARTIFACTS_DIR", PROJECT_ROOT / "test-artifacts")) / "console"
HOSTILE = "<img src=x onerror=alert(1)>"  # a class name, and part of the dataset's name
DATASET_NAME = f"pets {HOSTILE}"
EPOCHS = 8
MAX_UPLOAD_BYTES = 4 * 1024 * 1024  # the photo zip is well under it
CATS = sorted((PHOTOS / "test" / "cats").iterdir())[1:3]
DOG = sorted((PHOTOS / "test" / "dogs").iterdir())[0]


@pytest.fixture(scope="module")
def service(tmp_path_factory) -> Iterator[LiveService]:
    tmp = tmp_path_factory.mktemp("console")
    settings = {**weights_settings(), "MAX_UPLOAD_BYTES": str(MAX_UPLOAD_BYTES)}
    with running_service(tmp / "var", tmp / "run.log", settings=settings) as live:
        yield live


class PageWatch:
    """What a page reports that a person would not want: uncaught errors and console errors
    (a Content-Security-Policy violation is one), dialogs (an alert() that ran), and failed
    loads (kept apart: some are expected, such as the 401 of a wrong key)."""

    def __init__(self, page: Any) -> None:
        self.errors: list[str] = []
        self.dialogs: list[str] = []
        self.failed_loads: list[str] = []
        page.on("pageerror", lambda error: self.errors.append(f"uncaught: {error}"))
        page.on("console", self._console)
        page.on("dialog", self._dialog)

    def _console(self, message: Any) -> None:
        if message.type != "error":
            return
        if message.text.startswith("Failed to load resource"):
            self.failed_loads.append(f"{message.location.get('url')} {message.text}")
        else:
            self.errors.append(message.text)

    def _dialog(self, dialog: Any) -> None:
        self.dialogs.append(f"{dialog.type}: {dialog.message}")
        dialog.dismiss()


class Walk:
    """The page, with numbered screenshots and the checks every page gets."""

    def __init__(self, page: Any, base: str, folder: Path = ARTIFACTS) -> None:
        self.page = page
        self.base = base
        self.count = 0
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        for old in folder.glob("*.png"):
            old.unlink()

    def shot(self, name: str) -> Path:
        """Screenshot the whole page, after checking that no user string became markup."""
        assert self.page.locator('img[src="x"], img[onerror]').count() == 0
        self.count += 1
        path = self.folder / f"{self.count:02d}-{name}.png"
        self.page.screenshot(path=path, full_page=True)
        return path

    def text(self, selector: str) -> str:
        return str(self.page.locator(selector).inner_text())

    def nav(self, name: str, ready: str) -> None:
        self.page.click(f"a[data-nav={name}]")
        self.page.wait_for_selector(ready)


def test_the_whole_loop_in_a_browser(service: LiveService, browser: Any, tmp_path: Path) -> None:
    archive = tiny_photo_zip(
        tmp_path / "pets.zip",
        class_names={"cats": "cats", "dogs": HOSTILE},
        extra=report_subjects(),
    )
    context = browser.new_context(viewport={"width": 1280, "height": 900}, accept_downloads=True)
    page = context.new_page()
    watch = PageWatch(page)
    walk = Walk(page, service.url)
    page.set_default_timeout(30_000)

    # The server's address leads to the console, which asks for a key; a wrong one is refused.
    page.goto(service.url)
    page.wait_for_selector("#sign-in")
    assert page.url == f"{service.url}/ui"
    page.fill("#api-key", "sv_not_a_key")
    page.click("#sign-in button[type=submit]")
    page.wait_for_selector("#sign-in .error:not([hidden])")
    assert "not accepted" in walk.text("#sign-in .error")
    walk.shot("sign-in")
    page.fill("#api-key", service.admin_key)
    page.click("#sign-in button[type=submit]")
    page.wait_for_selector("#upload-form")
    walk.shot("datasets-empty")

    _too_large_upload_is_refused(walk, tmp_path / "huge.zip")
    _upload(walk, archive)
    _dataset_report(walk)
    job_id = _train_and_watch(walk, service)
    _results(walk)
    _predict_chosen_version(walk)
    _activate_and_download(walk)
    _predict_dropped_photo_with_the_active_model(walk)
    _failed_job_shows_its_error(walk)
    _fine_tuned_model_shows_its_refit(walk)
    _try_it_with_two_active_models(walk)
    _jobs_list_and_delete(walk, job_id)

    page.click("#sign-out")
    page.wait_for_selector("#sign-in")
    assert page.evaluate("() => sessionStorage.length") == 0  # the key is gone
    page.reload()
    page.wait_for_selector("#sign-in")
    walk.shot("signed-out")

    assert not watch.errors, watch.errors
    assert not watch.dialogs, watch.dialogs  # no alert() ran
    # The only failed loads: the wrong key's 401 and the too large upload's 413.
    statuses = sorted(re.findall(r"status of (\d+)", " ".join(watch.failed_loads)))
    assert statuses == ["401", "413"], watch.failed_loads
    context.close()


def _too_large_upload_is_refused(walk: Walk, huge: Path) -> None:
    huge.write_bytes(os.urandom(MAX_UPLOAD_BYTES + 1024 * 1024))
    walk.page.set_input_files("#upload-form input[type=file]", str(huge))
    walk.page.click("#upload-button")
    walk.page.wait_for_selector("#upload-form .error:not([hidden])")
    message = walk.text("#upload-form .error")
    assert "larger than the limit" in message and "raise the server's limit" in message
    walk.shot("upload-too-large")
    walk.page.fill("#dataset-name", "")  # named after that zip: the next one names itself


def _upload(walk: Walk, archive: Path) -> None:
    page = walk.page
    # A slow line (256 KB/s up, through Chrome's DevTools protocol), so the bar has time to show.
    network = page.context.new_cdp_session(page)
    network.send("Network.enable")
    network.send(
        "Network.emulateNetworkConditions",
        {
            "offline": False,
            "latency": 0,
            "downloadThroughput": -1,
            "uploadThroughput": 256 * 1024,
        },
    )
    page.set_input_files("#upload-form input[type=file]", str(archive))
    assert page.input_value("#dataset-name") == "pets"  # named after the zip until changed
    page.fill("#dataset-name", DATASET_NAME)
    page.click("#upload-button")
    page.wait_for_function(
        "() => /of/.test(document.querySelector('.upload-progress .bar-label')?.textContent)"
    )
    assert " of " in walk.text(".upload-progress .bar-label")  # "200 KB of 640 KB"
    walk.shot("uploading")
    network.send(
        "Network.emulateNetworkConditions",
        {
            "offline": False,
            "latency": 0,
            "downloadThroughput": -1,
            "uploadThroughput": -1,
        },
    )
    page.wait_for_selector("#dataset-title", timeout=60_000)


def _dataset_report(walk: Walk) -> None:
    page = walk.page
    assert walk.text("#dataset-title") == DATASET_NAME  # the tag is text, not an element
    counts = walk.text("#split-counts")
    assert HOSTILE in counts and "cats" in counts
    assert "train/cats/notes.txt" in walk.text("#skipped")
    assert "not an image file" in walk.text("#skipped")
    assert "train/cats/again.jpg" in walk.text("#duplicates")
    assert f"test/cats/{LEAKED_PHOTO.name}" in walk.text("#leakage")
    assert f"class '{HOSTILE}' has only" in walk.text("#dataset-warnings")
    page.wait_for_function(
        "() => { const i = document.querySelector('#preview');"
        " return i && i.complete && i.naturalWidth > 0; }"
    )
    walk.shot("dataset-report")


def _train_and_watch(walk: Walk, service: LiveService) -> str:
    page = walk.page
    page.click("#train-this")
    page.wait_for_selector("#train-form")
    # The methods come from the server's schema, auto (the default) among them.
    methods = page.locator("#train-method option").all_text_contents()
    assert methods == ["auto", "scratch", "bottleneck", "finetune"]
    assert page.input_value("#train-method") == "auto"
    assert "mobilenet_v2" in page.locator("#train-base option").all_text_contents()
    page.select_option("#train-method", "scratch")
    page.fill("#train-image-size", "32")
    page.fill("#train-epochs", str(EPOCHS))
    page.uncheck("#train-augmentation")
    page.fill("#train-model-name", "pets")
    walk.shot("train-form")
    page.click("#start-training")
    page.wait_for_selector("#job-status")
    job_id = page.url.rsplit("/", 1)[1]

    # The curves grow while the job runs: record what the page shows until it has finished.
    seen: list[tuple[str, int]] = []
    shot_while_running = False
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        # read first: the page writes the status before the results, in one go
        finished = page.locator("#evaluation").count() > 0
        status = walk.text("#job-status")
        drawn = int(page.get_attribute("#loss-chart", "data-epochs") or 0)
        if not seen or seen[-1] != (status, drawn):
            seen.append((status, drawn))
        if status == "running" and drawn > 0 and not shot_while_running:
            walk.shot("job-running")
            shot_while_running = True
        if finished:
            break
        time.sleep(0.1)
    assert ("succeeded", EPOCHS) in seen, seen
    # Drawn while the job still runs (on a fast machine all the epochs can land within one
    # poll, while saving and exporting the model keep the job running for seconds more).
    assert any(s == "running" and n > 0 for s, n in seen), seen
    headers = {"Authorization": f"Bearer {service.admin_key}"}
    metrics = httpx.get(f"{service.url}/jobs/{job_id}/metrics", headers=headers).json()
    assert len(metrics["epochs"]) == EPOCHS
    for chart in ("#loss-chart", "#accuracy-chart"):
        assert page.get_attribute(chart, "data-epochs") == str(EPOCHS)
        assert _pixels_in_line_colour(page, chart) > 100, f"{chart} has no lines"
    return job_id


def _pixels_in_line_colour(page: Any, selector: str) -> int:
    """How many pixels of the canvas are the training line's blue (#2563eb)."""
    return int(
        page.eval_on_selector(
            selector,
            """canvas => {
                const { width, height } = canvas;
                const data = canvas.getContext("2d").getImageData(0, 0, width, height).data;
                let count = 0;
                for (let i = 0; i < data.length; i += 4) {
                    if (Math.abs(data[i] - 37) < 30 && Math.abs(data[i + 1] - 99) < 30
                        && Math.abs(data[i + 2] - 235) < 30) count += 1;
                }
                return count;
            }""",
        )
    )


def _results(walk: Walk) -> None:
    page = walk.page
    assert walk.text("#job-status") == "succeeded"
    assert page.locator("#cancel-job").is_hidden()  # nothing to cancel any more
    confusion = page.locator("#confusion-matrix")
    assert confusion.locator("thead th").all_text_contents()[1:] == [HOSTILE, "cats"]
    assert sum(int(cell) for cell in confusion.locator("tbody td").all_text_contents()) == 7
    per_class = page.locator("#per-class tbody tr")
    assert per_class.count() == 2
    assert per_class.first.locator("td").first.text_content() == HOSTILE
    assert "precision" in walk.text("#per-class thead")
    # 7 images held out: too few validation images to fit a temperature on, and it says so
    assert "not calibrated (fewer than 20 validation images)" in walk.text("#calibration")
    assert 'No "unknown" answer: too few validation images' in walk.text("#outliers")
    # scratch at 32 px on 17 photos stays at chance (the run is seeded): saved, not active
    assert "pets v1 (not active)" in walk.text("#job-model")
    assert "stayed at chance" in walk.text("#job-results .warnings")
    walk.shot("job-results")
    _answers(walk, confusion)


def _answers(walk: Walk, confusion) -> None:
    """The images answered wrong as thumbnails; a cell of the confusion matrix shows its own."""
    page = walk.page
    cells = [int(c) for c in confusion.locator("tbody td").all_text_contents()]
    wrong = cells[1] + cells[2]
    page.wait_for_function(
        "() => /answered wrong/.test(document.querySelector('#answers-summary').textContent)"
    )
    assert walk.text("#answers-summary").startswith(f"{wrong} of the 7 test images answered wrong")
    figures = page.locator("#answers figure")
    assert figures.count() == wrong
    if wrong:  # every thumbnail loads (with the key, as a blob: URL)
        page.wait_for_function(
            "() => [...document.querySelectorAll('#answers img')].every("
            "i => i.complete && i.naturalWidth > 0)"
        )
        assert page.locator("#answers figure.wrong").count() == wrong
    cell = next(i for i, count in enumerate(cells) if count)
    confusion.locator("tbody td").nth(cell).locator("button").click()
    page.wait_for_function(
        f"() => document.querySelectorAll('#answers figure').length === {cells[cell]}"
    )
    assert walk.text("#answers-section h3").startswith("True ")
    walk.shot("job-answers")
    page.click("#answers-section button:has-text('Back to the mistakes')")
    page.wait_for_function(f"() => document.querySelectorAll('#answers figure').length === {wrong}")


def _wait_for_predictions(walk: Walk, count: int) -> None:
    walk.page.wait_for_selector("#predict-summary", timeout=60_000)
    assert walk.page.locator("figure.prediction").count() == count


def _predict_chosen_version(walk: Walk) -> None:
    page = walk.page
    page.click("#job-model a:has-text('try it')")
    page.wait_for_selector("#predict-model")
    page.wait_for_function("() => document.querySelector('#predict-version').value === '1'")
    assert page.input_value("#predict-model") == "pets"
    page.fill("#predict-top-k", "2")
    page.set_input_files(".drop-zone input[type=file]", [str(path) for path in CATS])
    _wait_for_predictions(walk, 2)
    assert walk.text("#predict-summary").startswith("pets v1")
    for path, card in zip(CATS, page.locator("figure.prediction").all(), strict=True):
        assert card.locator(".filename").text_content() == path.name
        assert sorted(card.locator(".label").all_text_contents()) == sorted(["cats", HOSTILE])
    walk.shot("predict-chosen-version")


def _activate_and_download(walk: Walk) -> None:
    page = walk.page
    walk.nav("models", "section.model")
    model = page.locator("section.model[data-model=pets]")
    assert "active: none" in model.inner_text()
    model.locator("button.activate[data-version='1']").click()
    page.wait_for_selector("section.model[data-model=pets] .status.succeeded")
    assert "active: v1" in page.locator("section.model[data-model=pets]").inner_text()
    with page.expect_download() as download:
        page.locator("section.model[data-model=pets] button.download[data-version='1']").click()
    assert download.value.suggested_filename == "pets-v1.keras"
    assert zipfile.is_zipfile(download.value.path())  # a .keras file is a zip
    # every format is offered; the ONNX one as a zip with its predict.py
    details = model.locator("details.downloads[data-version='1']")
    details.locator("summary").click()
    formats = details.locator("button[data-bundle=false]").evaluate_all(
        "buttons => buttons.map(b => b.dataset.format)"
    )
    assert formats == [
        "keras",
        "onnx",
        "docker",
        "savedmodel",
        "tflite",
        "tflite_fp16",
        "tflite_int8",
        "onnx_int8",
    ]
    with page.expect_download() as download:
        details.locator("button[data-format=onnx][data-bundle=true]").click()
    assert download.value.suggested_filename == "pets-v1-onnx.zip"
    assert "predict.py" in zipfile.ZipFile(download.value.path()).namelist()
    walk.shot("models")


def _predict_dropped_photo_with_the_active_model(walk: Walk) -> None:
    page = walk.page
    walk.nav("predict", ".drop-zone")
    assert page.input_value("#predict-model") == ""  # the only active model
    dropped = page.evaluate_handle(
        """([name, encoded]) => {
            const bytes = Uint8Array.from(atob(encoded), (c) => c.charCodeAt(0));
            const transfer = new DataTransfer();
            transfer.items.add(new File([bytes], name, { type: "image/jpeg" }));
            return transfer;
        }""",
        [DOG.name, base64.b64encode(DOG.read_bytes()).decode()],
    )
    page.dispatch_event(".drop-zone", "drop", {"dataTransfer": dropped})
    _wait_for_predictions(walk, 1)
    assert walk.text("#predict-summary").startswith("pets v1")
    assert page.locator("figure.prediction .filename").text_content() == DOG.name
    walk.shot("predict-dropped")


def _start_one_epoch_job(walk: Walk, *, method: str, base: str, model_name: str) -> None:
    """From the train page: a job of one epoch on 32 px images."""
    page = walk.page
    walk.nav("train", "#train-form")
    page.select_option("#train-method", method)
    page.select_option("#train-base", base)
    page.fill("#train-image-size", "32")
    page.fill("#train-epochs", "1")
    page.fill("#train-model-name", model_name)
    page.click("#start-training")


def _failed_job_shows_its_error(walk: Walk) -> None:
    page = walk.page
    _start_one_epoch_job(walk, method="auto", base="vgg16", model_name="pets-vgg")
    page.wait_for_selector("#job-error:not([hidden])", timeout=120_000)
    error = walk.text("#job-error")
    assert MISSING_WEIGHTS_FILE in error and "SMALLVISION_PRETRAINED_WEIGHTS_DIR" in error
    page.wait_for_function("() => document.querySelector('#job-status').textContent === 'failed'")
    walk.shot("job-failed")


def _fine_tuned_model_shows_its_refit(walk: Walk) -> None:
    page = walk.page
    _start_one_epoch_job(walk, method="finetune", base="mobilenet", model_name="pets-finetuned")
    page.wait_for_selector("#evaluation", timeout=180_000)
    assert "trained again on the training and validation images" in walk.text("#job-results")
    row = page.locator("#candidates tbody tr", has_text="finetune")
    assert "then trained again with the validation images" in row.text_content()
    assert "1 epoch): test accuracy" in row.text_content()
    walk.shot("job-refit")


def _try_it_with_two_active_models(walk: Walk) -> None:
    """With two active models the service cannot choose for a request that names none: Try
    it picks the first active model instead of offering "the only active model"."""
    page = walk.page
    walk.nav("models", "section.model")
    model = page.locator("section.model[data-model=pets-finetuned]")
    if "active: v1" not in model.inner_text():
        model.locator("button.activate[data-version='1']").click()
        page.wait_for_selector("section.model[data-model=pets-finetuned] .status.succeeded")
    walk.nav("predict", ".drop-zone")
    assert page.input_value("#predict-model") == "pets"
    assert page.locator("#predict-model option[value='']").count() == 0
    page.set_input_files(".drop-zone input[type=file]", [str(DOG)])
    _wait_for_predictions(walk, 1)
    assert walk.text("#predict-summary").startswith("pets v1")
    walk.shot("predict-two-active")


def _jobs_list_and_delete(walk: Walk, job_id: str) -> None:
    page = walk.page
    walk.nav("jobs", "#jobs-table")
    jobs = walk.text("#jobs-table")
    assert "succeeded" in jobs and "failed" in jobs and DATASET_NAME in jobs
    assert page.locator(f"#jobs-table a[href='#/jobs/{job_id}']").count() == 1
    walk.shot("jobs")
    walk.nav("datasets", "#datasets-table")
    page.locator("#datasets-table a.dataset-link", has_text=DATASET_NAME).click()
    page.click("#delete-dataset")
    page.click("#confirm-delete")
    page.wait_for_selector("#upload-form")
    assert page.locator("#datasets-table").count() == 0  # no dataset left
    walk.shot("dataset-deleted")


def _signed_in(browser: Any, service: LiveService, folder: str) -> tuple[Any, Any, PageWatch, Walk]:
    """A new browser context at 1280 px, signed in with the admin key, on the Datasets page."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    watch = PageWatch(page)
    walk = Walk(page, service.url, ARTIFACTS / folder)
    page.set_default_timeout(30_000)
    page.goto(f"{service.url}/ui")
    page.fill("#api-key", service.admin_key)
    page.click("#sign-in button[type=submit]")
    page.wait_for_selector("#upload-form")
    return context, page, watch, walk


def test_a_multilabel_dataset_in_the_console(
    service: LiveService, browser: Any, tmp_path: Path
) -> None:
    """Upload a labels.csv of photo pairs as multi-label, see its labels, the job's per-label
    scores, and the labels above their thresholds in Try it."""
    from benchmarks.multilabel_sets import MultilabelSet, build

    spec = MultilabelSet(
        "pairs",
        ("cats_vs_dogs_small", "car_vs_minibus_tiny"),
        {"train": 20, "validation": 20, "test": 8},
    )
    folder = build(spec, tmp_path, seed=4)
    archive = tmp_path / "pairs.zip"
    with zipfile.ZipFile(archive, "w") as zipped:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                zipped.write(path, str(path.relative_to(folder)))
    context, page, watch, walk = _signed_in(browser, service, "multilabel")
    page.set_input_files("#upload-form input[type=file]", str(archive))
    page.select_option("#dataset-task", "multilabel")
    page.click("#upload-button")
    page.wait_for_selector("#dataset-title", timeout=60_000)
    assert "4 labels (multi-label:" in walk.text("#dataset-summary")
    assert "label (images with it)" in walk.text("#split-counts")
    walk.shot("multilabel-dataset")
    dataset_id = page.url.rsplit("/", 1)[-1]

    headers = {"Authorization": f"Bearer {service.admin_key}"}
    request = {"dataset_id": dataset_id, "method": "bottleneck", "image_size": 32, "epochs": 2}
    accepted = httpx.post(
        f"{service.url}/jobs", json={**request, "model_name": "pairs"}, headers=headers
    )
    assert accepted.status_code == 202, accepted.text
    page.goto(f"{service.url}/ui#/jobs/{accepted.json()['id']}")
    page.wait_for_selector("#per-label", timeout=120_000)
    assert "mAP" in walk.text("#evaluation .big")
    assert "exact match" in walk.text("#set-scores")
    assert "average precision" in walk.text("#per-label thead")
    assert page.locator("#per-label tbody tr").count() == 4
    assert page.locator("#confusion-matrix").count() == 0
    assert "Platt scaling per label" in walk.text("#calibration")
    assert "validation mAP" in walk.text("#candidates thead")
    walk.shot("multilabel-job")

    page.click("#job-model a:has-text('try it')")
    page.wait_for_selector("#predict-model")
    page.wait_for_function("() => document.querySelector('#predict-version').value === '1'")
    page.set_input_files(".drop-zone input[type=file]", [str(folder / "images" / "test-0000.jpg")])
    _wait_for_predictions(walk, 1)
    card = page.locator("figure.prediction").first
    assert card.locator(".label").count() == 4  # every label, with its threshold
    answer = card.locator("#labels-above-threshold").text_content() or ""
    assert answer.startswith("Labels: ") or answer == "None of the labels"
    assert "threshold" in (card.inner_text() or "") or "over" in (card.inner_text() or "")
    walk.shot("multilabel-try-it")
    assert not watch.errors, watch.errors
    assert not watch.dialogs, watch.dialogs
    context.close()


def test_labeling_help_in_the_console(service: LiveService, browser: Any, tmp_path: Path) -> None:
    """A dataset with unlabeled photos and two misfiled ones: label suggested images with a
    key and a click, then relabel a flagged image; each save is a new version."""
    train = PHOTOS / "train"
    archive = tmp_path / "help.zip"
    with zipfile.ZipFile(archive, "w") as zipped:
        for label, other in (("cats", "dogs"), ("dogs", "cats")):
            for photo in sorted((train / label).iterdir())[:12]:
                zipped.write(photo, f"{label}/{photo.name}")
            misfiled = sorted((train / other).iterdir())[300]
            zipped.write(misfiled, f"{label}/{misfiled.name}")
            for photo in sorted((train / label).iterdir())[40:46]:
                zipped.write(photo, f"_unlabeled/{photo.name}")
    headers = {"Authorization": f"Bearer {service.admin_key}"}
    uploaded = httpx.post(
        f"{service.url}/datasets",
        files={"file": ("help.zip", archive.read_bytes())},
        data={"name": "help"},
        headers=headers,
        timeout=60,
    )
    assert uploaded.status_code == 201, uploaded.text
    dataset = uploaded.json()
    context, page, watch, walk = _signed_in(browser, service, "labeling")
    page.goto(f"{service.url}/ui#/datasets/{dataset['id']}")
    page.wait_for_selector("#label-next")
    assert "12 unlabeled" in walk.text("#dataset-summary")
    page.click("#label-next")
    page.wait_for_selector("#suggestions figure", timeout=180_000)  # the worker's features
    cards = page.locator("#suggestions figure")
    assert cards.count() == 12
    assert "ranked from 26 labeled ones" in walk.text("#suggest-status")
    page.wait_for_function(
        "() => [...document.querySelectorAll('#suggestions img')].every("
        "i => i.complete && i.naturalWidth > 0)"
    )
    cards.first.focus()
    page.keyboard.press("1")  # the first class, and on to the next image
    assert page.evaluate(
        "document.activeElement === document.querySelectorAll('#suggestions figure')[1]"
    )
    cards.nth(1).locator("button.label-choice", has_text="dogs").click()
    assert "→ cats" in cards.first.inner_text() and "→ dogs" in cards.nth(1).inner_text()
    walk.shot("suggestions")
    page.click("#save-labels")
    page.wait_for_function(
        "() => location.hash.endsWith('/suggest') && !location.hash.includes('"
        + dataset["id"]
        + "')"
    )
    versions = httpx.get(f"{service.url}/datasets/{dataset['id']}/versions", headers=headers).json()
    assert [v["version"] for v in versions] == [1, 2]
    assert versions[1]["diff"]["labeled"] == 2
    assert versions[1]["stats"]["unlabeled_count"] == 10

    page.goto(f"{service.url}/ui#/datasets/{versions[1]['id']}/issues")
    page.wait_for_selector("#label-issues", timeout=180_000)
    assert "look mislabeled" in walk.text("#issues-status")
    first = page.locator("#label-issues tbody tr").first
    given = first.locator("td").nth(1).inner_text()
    first.locator("select").select_option(index=1)  # relabel it
    walk.shot("label-issues")
    page.click("#apply-fixes")
    page.wait_for_selector("#dataset-title")
    versions = httpx.get(f"{service.url}/datasets/{dataset['id']}/versions", headers=headers).json()
    assert len(versions) == 3 and versions[2]["diff"]["relabeled"] == 1, (given, versions[2])
    assert "version 3" in walk.text("#dataset-summary")
    assert not watch.errors, watch.errors
    assert not watch.dialogs, watch.dialogs
    context.close()


@pytest.mark.parametrize(
    ("path", "rendered"),
    [("/docs", ".swagger-ui .info .title"), ("/redoc", "[data-section-id]")],
)
def test_the_api_docs_render_offline_and_cannot_be_framed(
    service: LiveService, browser: Any, path: str, rendered: str
) -> None:
    """Swagger UI and ReDoc come from this server (the browser has no internet here), under a
    policy that refuses framing and scripts from anywhere else: no error on the page."""
    headers = httpx.get(f"{service.url}{path}").headers
    assert "frame-ancestors 'none'" in headers["content-security-policy"]
    assert "script-src 'self';" in headers["content-security-policy"]
    assert headers["x-frame-options"] == "DENY"
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    watch = PageWatch(page)
    loaded: list[str] = []
    page.on("request", lambda request: loaded.append(request.url))
    page.goto(f"{service.url}{path}")
    page.wait_for_selector(rendered, timeout=30_000)
    assert "smallvision" in page.inner_text("body")
    assert "POST" in page.inner_text("body") or "post" in page.inner_text("body")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=ARTIFACTS / f"api-docs{path.replace('/', '-')}.png")
    # ReDoc's sidebar always asks for its maker's logo from cdn.redoc.ly: the policy blocks
    # that (the link shows its text), and nothing else may be reported.
    errors = [e for e in watch.errors if REDOC_LOGO not in e or "violates" not in e]
    assert errors == [] and watch.failed_loads == [] and watch.dialogs == []
    elsewhere = [u for u in loaded if not u.startswith((service.url, "data:", "blob:"))]
    assert set(elsewhere) <= {REDOC_LOGO}, elsewhere
    page.close()


REDOC_LOGO = "https://cdn.redoc.ly/redoc/logo-mini.svg"
