"""The `smallvision` command, as installed by pip, against a live `make run` service."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import tarfile
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from smallvision.cli import ExitCode
from smallvision.client import Client
from tests.processes import (
    MISSING_WEIGHTS_FILE,
    LiveService,
    free_port,
    running_service,
    wait_until,
    weights_settings,
)
from tests.zips import LEAKED_PHOTO, PHOTOS, report_subjects, tiny_photo_zip

COMMAND = Path(sys.executable).with_name("smallvision")  # the console script pip installed
CAT, DOG = (sorted((PHOTOS / "test" / label).iterdir())[0] for label in ("cats", "dogs"))
TINY_TRAINING = ["--method", "scratch", "--image-size", "32", "--epochs", "2"]
MAX_PREDICT_IMAGES = 3


@pytest.fixture(scope="module")
def service(tmp_path_factory) -> Iterator[LiveService]:
    tmp = tmp_path_factory.mktemp("cli")
    settings = {
        **weights_settings(),
        "MAX_ACTIVE_JOBS_PER_OWNER": "1",  # a second job at once is a 429
        "MAX_PREDICT_IMAGES": str(MAX_PREDICT_IMAGES),
    }
    with running_service(tmp / "var", tmp / "run.log", settings=settings) as live:
        yield live


@pytest.fixture(scope="module")
def client(service: LiveService) -> Iterator[Client]:
    with Client(service.url, key=service.admin_key) as client:
        yield client


def smallvision(
    service: LiveService, *args: str, key: str | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """Run the installed command as a person would, with the server and key in the environment."""
    assert COMMAND.exists(), f"{COMMAND} is missing: `pip install -e .` installs the console script"
    env = {
        **os.environ,
        "SMALLVISION_URL": service.url,
        "SMALLVISION_API_KEY": service.admin_key if key is None else key,
        "COLUMNS": "200",
    }
    return subprocess.run(
        [str(COMMAND), *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=300
    )


def _ok(run: subprocess.CompletedProcess[str]) -> str:
    assert run.returncode == ExitCode.OK, (run.returncode, run.stdout[-3000:], run.stderr[-3000:])
    return run.stdout


@pytest.fixture(scope="module")
def pets(service: LiveService, tmp_path_factory) -> str:
    """`smallvision datasets upload pets.zip --name pets`: a dataset with a file that is not an
    image, a duplicate and a test image also in train, so the ingest report has things to say."""
    folder = tmp_path_factory.mktemp("upload")
    tiny_photo_zip(folder / "pets.zip", extra=report_subjects())
    output = _ok(
        smallvision(service, "datasets", "upload", "pets.zip", "--name", "pets", cwd=folder)
    )
    assert "uploading pets.zip" in output  # the upload's progress bar
    assert "dataset pets" in output and "2 classes" in output
    assert "train/cats/notes.txt" in output and "not an image file" in output
    assert "duplicates removed (1)" in output and "train/cats/again.jpg" in output
    assert "leakage between splits (1)" in output and f"test/cats/{LEAKED_PHOTO.name}" in output
    assert "cats" in output and "dogs" in output
    return "pets"


def test_upload_train_watch_predict_activate_download(
    service: LiveService, client: Client, pets: str, tmp_path: Path
) -> None:
    assert pets in _ok(smallvision(service, "datasets", "list"))

    run = smallvision(service, "train", pets, *TINY_TRAINING, "--model-name", "pets", "--watch")
    output = _ok(run)
    job_id = output.split()[1]
    assert client.get_job(job_id)["status"] == "succeeded"
    # a bar per epoch with its loss and validation accuracy, then the evaluation tables
    assert "epoch 1 train" in output and "epoch 2 train" in output
    assert output.count("val acc") == 2
    assert "evaluation on the test split" in output and "precision" in output
    assert "confusion matrix" in output
    assert "saved as model pets version 1" in output
    # 16 training images: too few validation images for the unknown answer, and it says so
    assert "no unknown answer: fewer than 20 validation images" in output

    answers = _ok(smallvision(service, "jobs", "predictions", job_id))
    assert "test split:" in answers and "right" in answers
    wrong = client.job_predictions(job_id, mistakes=True)
    mistakes = _ok(smallvision(service, "jobs", "predictions", job_id, "--mistakes"))
    assert f"{wrong['matching']} match" in mistakes
    cell = _ok(
        smallvision(service, "jobs", "predictions", job_id, "--true", "cats", "--predicted", "dogs")
    )
    assert "match" in cell
    refused = smallvision(service, "jobs", "predictions", job_id, "--true", "horses")
    assert refused.returncode == ExitCode.REFUSED and "not a class of the model" in refused.stderr

    curves = tmp_path / "curves.png"
    _ok(smallvision(service, "jobs", "curves", job_id, "-o", str(curves)))
    assert curves.read_bytes().startswith(b"\x89PNG")

    listed = _ok(smallvision(service, "models", "list"))
    assert "pets" in listed and "scratch" in listed

    table = _ok(
        smallvision(
            service,
            "predict",
            str(CAT),
            str(DOG),
            "--model",
            "pets",
            "--version",
            "1",
            "--top-k",
            "2",
        )
    )
    assert "pets v1" in table and CAT.name in table and DOG.name in table
    # two labels per image, and each image's answer (its top label: 16 training images are
    # too few for an unknown answer, so none is "unknown" and no threshold is printed)
    assert "answer" in table and "unknown" not in table
    assert table.count("cats") + table.count("dogs") == 2 * 2 + 2

    _ok(smallvision(service, "models", "activate", "pets", "1"))
    assert client.list_versions("pets")[0]["is_active"]
    assert "pets v1" in _ok(smallvision(service, "predict", str(CAT), "--top-k", "1"))

    target = tmp_path / "pets.keras"
    output = _ok(smallvision(service, "models", "download", "pets", "1", "-o", str(target)))
    assert "downloading pets.keras" in output
    assert zipfile.is_zipfile(target)  # a .keras file is a zip
    assert target.stat().st_size > 0 and not target.with_name("pets.keras.part").exists()

    # A SavedModel archive is built by the service's worker when first asked for: the command
    # waits for it (the API answers 202 until then), then saves it.
    archive = tmp_path / "pets-savedmodel.tar.gz"
    output = _ok(
        smallvision(
            service, "models", "download", "pets", "1", "--format", "savedmodel", "-o", str(archive)
        )
    )
    assert "the savedmodel export is queued; waiting" in output
    with tarfile.open(archive) as opened:
        assert "pets/1/saved_model.pb" in opened.getnames()
    (export,) = client.list_exports("pets", 1)
    assert export["status"] == "ready" and export["size_bytes"] == archive.stat().st_size
    missing = smallvision(service, "models", "download", "nosuch", "1")
    assert missing.returncode == ExitCode.NOT_FOUND
    assert "downloading" not in missing.stdout  # no progress bar before the 404


def _one_line_error(run: subprocess.CompletedProcess[str], code: ExitCode, *needles: str) -> str:
    assert run.returncode == code, (run.returncode, run.stdout, run.stderr)
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), run.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def test_errors_are_one_line_saying_what_to_do_with_exit_codes(
    service: LiveService, client: Client, pets: str
) -> None:
    _one_line_error(
        smallvision(service, "models", "list", key="sv_wrong_key"),
        ExitCode.KEY_REFUSED,
        "[HTTP 401]",
        "SMALLVISION_API_KEY",
    )
    _one_line_error(
        smallvision(service, "models", "list", key=""), ExitCode.KEY_REFUSED, "no API key"
    )
    predict_only = subprocess.run(
        [
            sys.executable,
            "-m",
            "app.cli",
            "keys",
            "create",
            "--name",
            "kiosk",
            "--scopes",
            "predict",
        ],
        env=service.env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    _one_line_error(
        smallvision(service, "datasets", "list", key=predict_only),
        ExitCode.KEY_REFUSED,
        "[HTTP 403]",
        "scope",
    )
    _one_line_error(
        smallvision(service, "train", "no-such-dataset"),
        ExitCode.NOT_FOUND,
        "[HTTP 404]",
        "no-such-dataset",
        "datasets list",
    )
    _one_line_error(
        smallvision(service, "predict", *[str(CAT)] * (MAX_PREDICT_IMAGES + 1)),
        ExitCode.REFUSED,
        "[HTTP 413]",
        "smaller",
    )
    _one_line_error(
        smallvision(service, "train", pets, "--epochs", "9999"),
        ExitCode.REFUSED,
        "[HTTP 422]",
        "epochs",
    )

    # One job at a time for this owner: the second is a 429 while the first is queued.
    first = _ok(smallvision(service, "train", pets, *TINY_TRAINING, "--model-name", "busy"))
    first_id = first.split()[1]
    try:
        _one_line_error(
            smallvision(service, "train", pets, *TINY_TRAINING),
            ExitCode.TRY_LATER,
            "[HTTP 429]",
            "Retry",
        )
    finally:
        _ok(smallvision(service, "jobs", "cancel", first_id))
    wait_until(
        lambda: client.get_job(first_id)["status"] == "cancelled",
        timeout=120,
        what="the first job to be cancelled",
    )

    unreachable = smallvision(service, "models", "list", "--url", f"http://127.0.0.1:{free_port()}")
    _one_line_error(unreachable, ExitCode.UNREACHABLE, "cannot reach", "make run")


def test_a_failed_job_ends_the_watch_with_its_error(service: LiveService, pets: str) -> None:
    run = smallvision(
        service,
        "train",
        pets,
        "--base-model",
        "vgg16",
        "--image-size",
        "32",
        "--epochs",
        "1",
        "--watch",
    )
    line = _one_line_error(run, ExitCode.JOB_FAILED, "failed", MISSING_WEIGHTS_FILE)
    assert "SMALLVISION_PRETRAINED_WEIGHTS_DIR" in line  # where to put the file


def _interruptible() -> None:
    """Ctrl-C reaches the command as it does in a terminal's foreground. A shell without job
    control starts background commands (CI under `cmd &`, nohup) with SIGINT ignored, children
    inherit that, and Python then never raises KeyboardInterrupt."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_ctrl_c_while_watching_asks_whether_to_cancel(
    service: LiveService, client: Client, pets: str
) -> None:
    env = {**os.environ, "SMALLVISION_URL": service.url, "SMALLVISION_API_KEY": service.admin_key}
    watcher = subprocess.Popen(
        [
            str(COMMAND),
            "train",
            pets,
            "--method",
            "scratch",
            "--image-size",
            "32",
            "--epochs",
            "200",
            "--model-name",
            "long",
            "--watch",
        ],
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=_interruptible,
    )
    try:
        assert watcher.stdout is not None and watcher.stdin is not None
        started = watcher.stdout.readline()  # "job <id> queued (dataset pets)"
        job_id = started.split()[1]
        wait_until(
            lambda: client.get_job(job_id)["status"] == "running",
            timeout=120,
            what="the job to run",
        )
        time.sleep(1)  # a second of watching, then Ctrl-C as a terminal sends it
        watcher.send_signal(signal.SIGINT)
        output, errors = watcher.communicate("y\n", timeout=60)
    finally:
        if watcher.poll() is None:
            watcher.kill()
    assert watcher.returncode == ExitCode.INTERRUPTED, (output, errors)
    assert f"Cancel job {job_id}?" in output and "cancel requested" in output
    wait_until(
        lambda: client.get_job(job_id)["status"] == "cancelled", timeout=120, what="the job to stop"
    )


def test_a_multilabel_dataset_through_the_command(service: LiveService, tmp_path: Path) -> None:
    """Upload a labels.csv of photo pairs, train, and read labels above their thresholds."""
    from benchmarks.multilabel_sets import MultilabelSet, build

    spec = MultilabelSet(
        "pairs",
        ("cats_vs_dogs_small", "car_vs_minibus_tiny"),
        {"train": 20, "validation": 20, "test": 8},
    )
    folder = build(spec, tmp_path, seed=3)
    with zipfile.ZipFile(tmp_path / "pairs.zip", "w") as archive:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                archive.write(path, str(path.relative_to(folder)))
    output = _ok(smallvision(service, "datasets", "upload", "pairs.zip", cwd=tmp_path))
    assert "4 labels (multi-label:" in output and "images with each label, per split" in output
    assert "multilabel" in _ok(smallvision(service, "datasets", "list"))

    run = smallvision(
        service,
        "train",
        "pairs",
        "--method",
        "bottleneck",
        "--image-size",
        "32",
        "--epochs",
        "2",
        "--model-name",
        "pairs",
        "--watch",
    )
    output = _ok(run)
    assert "mAP" in output and "average precision" in output and "threshold" in output
    assert "exact match" in output and "confusion matrix" not in output
    assert "Platt scaling per label" in output
    assert 'answers "none of these" itself' in output

    photos = [str(folder / "images" / f"test-000{i}.jpg") for i in range(2)]
    table = _ok(smallvision(service, "predict", *photos, "--model", "pairs", "--version", "1"))
    assert "threshold" in table and "passes" in table
    assert "multi-label: the answer is every label whose probability reaches" in table
    # every label must reach 1.0: no label passes, and the answer says "none"
    strict = _ok(
        smallvision(
            service,
            "predict",
            photos[0],
            "--model",
            "pairs",
            "--version",
            "1",
            "--label-threshold",
            "1.0",
        )
    )
    assert "none" in strict and "yes" not in strict


def test_labeling_help_through_the_command(service: LiveService, tmp_path: Path) -> None:
    """Unlabeled photos in the zip: the suggestions, labeling one of them, the label issues."""
    train = PHOTOS / "train"
    archive = tmp_path / "help.zip"
    with zipfile.ZipFile(archive, "w") as zipped:
        for label in ("cats", "dogs"):
            for photo in sorted((train / label).iterdir())[:12]:
                zipped.write(photo, f"{label}/{photo.name}")
            for photo in sorted((train / label).iterdir())[50:53]:
                zipped.write(photo, f"_unlabeled/{label}-{photo.name}")
    uploaded = _ok(smallvision(service, "datasets", "upload", str(archive), "--name", "help"))
    assert "6 unlabeled" in uploaded
    suggested = _ok(smallvision(service, "datasets", "suggest", "help", "--count", "3"))
    assert "3 of 6 unlabeled images of help v1 to label next (uncertain_diverse" in suggested
    lines = [line for line in suggested.splitlines() if re.match(r"^[0-9a-f]{64}  ", line)]
    assert len(lines) == 3, suggested  # each image's whole id, one line each
    image = lines[0].split()[0]
    labeled = _ok(smallvision(service, "datasets", "label", "help", f"{image}=cats"))
    assert "help v2" in labeled and "1 newly labeled" in labeled and "5 still unlabeled" in labeled
    issues = _ok(smallvision(service, "datasets", "label-issues", "help"))
    assert "labeled images of help v2 look mislabeled" in issues
    wrong = smallvision(service, "datasets", "label", "help", "not-an-assignment")
    assert wrong.returncode == ExitCode.USAGE and "IMAGE=CLASS" in wrong.stderr
    unknown = smallvision(service, "datasets", "label", "help", f"{image}=horses")
    assert unknown.returncode == ExitCode.REFUSED and "not a class of the dataset" in unknown.stderr
