"""`smallvision`: the whole loop from a terminal, one command per step.

    smallvision datasets upload pets.zip --name pets
    smallvision train pets --method auto --watch
    smallvision predict a.jpg b.jpg --top-k 3
    smallvision models list | show pets 2 | activate pets 2 | download pets 2 --format tflite_int8
    smallvision models serve pets 2 --precision int8

The server is $SMALLVISION_URL (default http://127.0.0.1:8000), the key $SMALLVISION_API_KEY
(or --url and --key). Exit codes, for scripts: see `ExitCode`.
"""

from __future__ import annotations

import argparse
import enum
import sys
import typing
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, cast

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.prompt import Confirm
from rich.table import Column, Table

from smallvision.azure_import import AzureError, AzureProject, dataset_zip, fetch, task_of
from smallvision.client import (
    FINISHED_STATUSES,
    KEY_VARIABLE,
    URL_VARIABLE,
    ApiError,
    Client,
    Dataset,
    DownloadFormat,
    Epoch,
    Evaluation,
    Export,
    ImagePrediction,
    Job,
    JobMetrics,
    JobResult,
    Precision,
    ServiceUnreachableError,
)


class ExitCode(enum.IntEnum):
    """What the command's exit status means."""

    OK = 0
    JOB_FAILED = 1  # the watched job failed or was cancelled
    USAGE = 2  # the command line was wrong (argparse's own code)
    KEY_REFUSED = 3  # 401 or 403: no key, a wrong key, or one without the scope
    NOT_FOUND = 4  # 404: no such dataset, job, model or version
    REFUSED = 5  # 400, 409, 413, 415, 422: the request itself was refused
    TRY_LATER = 6  # 429 or 503: over a limit, or the service is not ready
    UNREACHABLE = 7  # no answer from the server
    SERVER_ERROR = 8  # 500: a bug; the message names the request id to look up
    INTERRUPTED = 130  # Ctrl-C


_EXIT_FOR_STATUS = {
    401: ExitCode.KEY_REFUSED,
    403: ExitCode.KEY_REFUSED,
    404: ExitCode.NOT_FOUND,
    429: ExitCode.TRY_LATER,
    503: ExitCode.TRY_LATER,
}

# Each error as one line: what happened, then what to do next.
_NEXT_STEP: dict[int, Callable[[ApiError], str]] = {
    401: lambda e: (
        f"the API key was refused ({e.message}). Set {KEY_VARIABLE} or pass --key "
        "with a valid key; `python -m app.cli keys create` on the server makes one."
    ),
    403: lambda e: (
        f"this API key may not do that ({e.message}). Use a key with the scope it "
        "names (train, predict or admin)."
    ),
    404: lambda e: (
        f"not found ({e.message}). `smallvision datasets list`, `jobs list` and "
        "`models list` show what exists."
    ),
    413: lambda e: (
        f"too large ({e.message}). Send a smaller file or fewer images, or raise the "
        "server's SMALLVISION_MAX_* limit."
    ),
    422: lambda e: (
        f"invalid request ({e.message}). Fix the value named; `--help` lists the options."
    ),
    429: lambda e: (
        f"too many requests ({e.message}). "
        + (f"Retry in {e.retry_after:g} s." if e.retry_after else "Retry when a running job ends.")
    ),
    503: lambda e: (
        f"the service cannot do that now ({e.message}). Retry shortly; "
        "GET /ready names what is missing."
    ),
    500: lambda e: (
        f"the server failed ({e.message}). Its log has the details under that request id."
    ),
}


def error_line(error: ApiError) -> str:
    """One line for an API error: what happened and what to do next."""
    if isinstance(error, ServiceUnreachableError):
        return (
            f"cannot reach {error.url} ({error.message}). Is the service running (`make run`)? "
            f"Set {URL_VARIABLE} or --url to its address."
        )
    explain = _NEXT_STEP.get(error.status)
    if explain:
        return f"{explain(error)} [HTTP {error.status}]"
    return f"refused: {error.message} [HTTP {error.status} {error.code}]"


def exit_code_for(error: ApiError) -> ExitCode:
    if isinstance(error, ServiceUnreachableError):
        return ExitCode.UNREACHABLE
    if error.status >= 500 and error.status != 503:
        return ExitCode.SERVER_ERROR
    return _EXIT_FOR_STATUS.get(error.status, ExitCode.REFUSED)


class CommandError(Exception):
    """A failure the command reports in one line and exits with `code`."""

    def __init__(self, message: str, code: ExitCode) -> None:
        super().__init__(message)
        self.code = code


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.1f}%"


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


class Commands:
    """The subcommands, each printing to `out` and returning an exit code."""

    def __init__(self, client: Client, out: Console) -> None:
        self.client = client
        self.out = out

    # Datasets

    def datasets_list(self, _args: argparse.Namespace) -> ExitCode:
        table = Table(
            _id_column(),
            "name",
            "task",
            "classes",
            "images",
            "warnings",
            _time_column("uploaded"),
        )
        datasets = self.client.list_datasets()
        if not datasets:
            self.out.print("no dataset yet: smallvision datasets upload <zip>")
            return ExitCode.OK
        for d in datasets:
            table.add_row(
                d["id"],
                d["name"],
                d.get("task", "multiclass"),
                str(len(d["class_names"])),
                str(d["stats"].get("image_count", "")),
                str(len(d["stats"].get("warnings", []))),
                _time(d["created_at"]),
            )
        self.out.print(table)
        return ExitCode.OK

    def import_azure(self, args: argparse.Namespace) -> ExitCode:
        """An Azure Custom Vision project's tagged images and tags as a dataset here."""
        work: Path = (
            args.work_dir or Path.home() / ".cache" / "smallvision" / "azure" / args.project
        )
        azure = AzureProject(args.endpoint, training_key=args.training_key, project_id=args.project)
        progress = Progress(
            TextColumn("{task.description}", markup=False),
            BarColumn(),
            MofNCompleteColumn(),
            TimeRemainingColumn(),
            console=self.out,
        )
        try:
            with progress:
                task = progress.add_task("downloading the tagged images", total=None)

                def advance(done: int, total: int) -> None:
                    progress.update(task, completed=done, total=total)

                report = fetch(azure, work, on_image=advance)
        except AzureError as exc:
            raise CommandError(f"Custom Vision: {exc}", ExitCode.REFUSED) from exc
        finally:
            azure.close()
        project = report.project
        self.out.print(
            f"project {project.get('name')} ({task_of(project)}): {report.images} tagged images, "
            f"{report.downloaded} downloaded, {report.reused} from an earlier run (in {work}), "
            f"{len(report.skipped)} skipped"
        )
        if report.skipped:
            table = Table("image", "reason", title=f"skipped ({len(report.skipped)})")
            for item in report.skipped:
                table.add_row(item["image"], item["reason"])
            self.out.print(table)
        if not report.labels:
            raise CommandError("no image could be fetched: nothing to upload", ExitCode.REFUSED)
        archive = dataset_zip(report, work)
        uploading = _transfer_progress(self.out)
        with (
            uploading,
            uploading.open(archive, "rb", description="uploading the dataset") as reader,
        ):
            dataset = self.client.upload_dataset(
                reader,
                name=args.name or str(project.get("name") or args.project),
                filename=archive.name,
                task=task_of(project),
            )
        self._print_dataset(dataset)
        return ExitCode.OK

    def datasets_upload(self, args: argparse.Namespace) -> ExitCode:
        archive: Path = args.zip
        if not archive.is_file():
            raise CommandError(f"no such file: {archive}", ExitCode.USAGE)
        progress = _transfer_progress(self.out)
        with (
            progress,
            progress.open(archive, "rb", description=f"uploading {archive.name}") as reader,
        ):
            dataset = self.client.upload_dataset(
                reader,
                name=args.name or archive.stem,
                filename=archive.name,
                validation_fraction=args.validation_fraction,
                test_fraction=args.test_fraction,
                seed=args.seed,
                task=args.task,
                negative_folder=args.negative_folder,
            )
        self._print_dataset(dataset)
        return ExitCode.OK

    def datasets_show(self, args: argparse.Namespace) -> ExitCode:
        self._print_dataset(self.client.find_dataset(args.dataset))
        return ExitCode.OK

    def datasets_delete(self, args: argparse.Namespace) -> ExitCode:
        dataset = self.client.find_dataset(args.dataset)
        self.client.delete_dataset(dataset["id"])
        self.out.print(f"deleted dataset {dataset['name']} ({dataset['id']})")
        return ExitCode.OK

    def datasets_suggest(self, args: argparse.Namespace) -> ExitCode:
        dataset = self.client.find_dataset(args.dataset)
        found = self.client.suggestions(
            dataset["id"], count=args.count, model=args.model, version=args.version
        )
        self.out.print(
            f"{len(found['items'])} of {found['unlabeled']} unlabeled images of "
            f"{dataset['name']} v{found['version']} to label next ({found['strategy']}: "
            f"{found['why']})"
        )
        if not found["items"]:
            return ExitCode.OK
        # one line each, the id whole (a table would cut it in a narrow or piped terminal)
        for item in found["items"]:
            likeliest = ", ".join(
                f"{p['label']} {p['probability']:.0%}" for p in item["predicted"][:2]
            )
            self.out.print(f"{item['image_id']}  {likeliest}  ({item['reason']})", soft_wrap=True)
        self.out.print(f"label them: smallvision datasets label {dataset['name']} IMAGE=CLASS ...")
        return ExitCode.OK

    def datasets_label_issues(self, args: argparse.Namespace) -> ExitCode:
        dataset = self.client.find_dataset(args.dataset)
        found = self.client.label_issues(dataset["id"], limit=args.limit)
        self.out.print(
            f"{found['found']} of {found['checked']} labeled images of {dataset['name']} "
            f"v{found['version']} look mislabeled ({found['method']}; held-out answers agree "
            f"with {found['out_of_fold_accuracy']:.1%} of the labels)"
        )
        if not found["items"]:
            return ExitCode.OK
        for item in found["items"]:
            self.out.print(
                f"{item['image_id']}  {item['split']}  labeled {item['given_label']} "
                f"(p {item['given_probability']:.3f}), looks like {item['suggested_label']} "
                f"(p {item['suggested_probability']:.3f})",
                soft_wrap=True,
            )
        return ExitCode.OK

    def datasets_label(self, args: argparse.Namespace) -> ExitCode:
        dataset = self.client.find_dataset(args.dataset)
        labels: dict[str, str | list[str]] = {}
        for given in args.labels:
            image, equals, label = given.partition("=")
            if not equals or not image or not label:
                raise CommandError(
                    f"{given!r}: give IMAGE=CLASS (the image's sha256, as suggest lists it)",
                    ExitCode.USAGE,
                )
            labels[image] = label.split("+") if dataset.get("task") == "multilabel" else label
        if not labels and not args.remove:
            raise CommandError("nothing to change: give IMAGE=CLASS or --remove", ExitCode.USAGE)
        version = self.client.label_images(dataset["id"], labels=labels, remove=args.remove)
        diff = version["diff"] or {}
        self.out.print(
            f"dataset {version['name']} v{version['version']} ({version['id']}): "
            f"{diff.get('labeled', 0)} newly labeled, {diff.get('relabeled', 0)} relabeled, "
            f"{diff.get('removed', {}).get('count', 0)} removed; "
            f"{version['stats'].get('unlabeled_count', 0)} still unlabeled"
        )
        return ExitCode.OK

    def _print_dataset(self, dataset: Dataset) -> None:
        stats = dataset["stats"]
        multilabel = dataset.get("task") == "multilabel"
        kind, kinds = ("label", "labels") if multilabel else ("class", "classes")
        summary = (
            f"dataset {dataset['name']}  id {dataset['id']}  "
            f"{stats.get('image_count', 0)} images, {len(dataset['class_names'])} {kinds}"
        )
        if multilabel:
            average = stats.get("label_cardinality", 0)
            summary += f" (multi-label: {average} labels per image on average)"
        if stats.get("unlabeled_count"):
            summary += f", {stats['unlabeled_count']} unlabeled (smallvision datasets suggest)"
        self.out.print(summary)
        if negatives := sum((stats.get("negatives") or {}).values()):
            self.out.print(f"{negatives} negative examples (none of the {kinds})")
        splits = ("train", "validation", "test")
        counts = Table(
            kind,
            *splits,
            title="images with each label, per split"
            if multilabel
            else "images per class and split",
        )
        for name in dataset["class_names"]:
            counts.add_row(
                name, *(str(dataset["split_counts"].get(s, {}).get(name, 0)) for s in splits)
            )
        self.out.print(counts)
        listed: list[tuple[str, int, list[dict[str, Any]], tuple[str, ...]]] = [
            (
                "skipped files",
                stats.get("skipped_count", 0),
                stats.get("skipped", []),
                ("file", "reason"),
            ),
            (
                "duplicates removed",
                stats.get("duplicates_removed", 0),
                stats.get("duplicates", []),
                ("file", "duplicate_of"),
            ),
            (
                "leakage between splits",
                len(stats.get("leakage", [])),
                stats.get("leakage", []),
                ("file", "duplicate_of", "kept_in", "removed_from"),
            ),
        ]
        for title, total, items, columns in listed:
            if not total:
                self.out.print(f"no {title}")
                continue
            table = Table(*columns, title=f"{title} ({total})")
            for item in items:
                table.add_row(*(str(item.get(column, "")) for column in columns))
            self.out.print(table)
        for warning in stats.get("warnings", []):
            self.out.print(f"warning: {warning}", style="yellow")

    # Training

    def train(self, args: argparse.Namespace) -> ExitCode:
        dataset = self.client.find_dataset(args.dataset)
        accepted = self.client.start_job(
            dataset["id"],
            method=args.method,
            base_model=args.base_model,
            image_size=args.image_size,
            epochs=args.epochs,
            augmentation=not args.no_augmentation,
            model_name=args.model_name,
        )
        self.out.print(f"job {accepted['id']} {accepted['status']} (dataset {dataset['name']})")
        if not args.watch:
            self.out.print(f"watch it with: smallvision jobs watch {accepted['id']}")
            return ExitCode.OK
        return self._watch(accepted["id"])

    def jobs_watch(self, args: argparse.Namespace) -> ExitCode:
        return self._watch(args.job)

    def _watch(self, job_id: str) -> ExitCode:
        try:
            job, metrics = self._follow(job_id)
        except KeyboardInterrupt:
            return self._interrupted(job_id)
        return self._report_finished(job, metrics)

    def _follow(self, job_id: str) -> tuple[Job, JobMetrics]:
        """Live bars until the job finishes: the job's overall progress and what it is doing,
        then one bar per epoch (its batches) that stays with the epoch's loss and validation
        accuracy once it is done."""
        columns = (
            TextColumn("{task.description}", markup=False),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[scores]}", markup=False),
            TimeElapsedColumn(),
        )
        with Progress(*columns, console=self.out) as progress:
            overall = progress.add_task("queued", total=100, scores="")
            epoch_bars: dict[int, TaskID] = {}
            batches: dict[int, int] = {}  # an epoch's number of batches, once reported
            finished: set[int] = set()
            for job, metrics in self.client.watch_job(job_id):
                detail = job["progress_detail"]
                progress.update(
                    overall,
                    completed=round(job["progress"] * 100),
                    description=job["status"]
                    if job["status"] in FINISHED_STATUSES
                    else f"{job['status']} {_describe(detail)}".strip(),
                )
                for epoch in metrics["epochs"]:
                    if epoch["epoch"] in finished:
                        continue
                    task = epoch_bars.get(epoch["epoch"])
                    if task is None:
                        task = epoch_bars[epoch["epoch"]] = progress.add_task(
                            "", total=1, scores=""
                        )
                    total = batches.get(epoch["epoch"], 1)
                    progress.update(
                        task,
                        total=total,
                        completed=total,
                        description=_epoch_name(epoch),
                        scores=_scores(epoch),
                    )
                    finished.add(epoch["epoch"])
                current = detail.get("epoch")
                if isinstance(current, int) and current not in finished and detail.get("batches"):
                    if current not in epoch_bars:
                        epoch_bars[current] = progress.add_task("", total=1, scores="")
                    batches[current] = detail["batches"]
                    progress.update(
                        epoch_bars[current],
                        total=detail["batches"],
                        completed=detail.get("batch", 0),
                        description=_epoch_name(detail),
                    )
        return job, metrics

    def _interrupted(self, job_id: str) -> ExitCode:
        try:
            cancel = Confirm.ask(f"\nCancel job {job_id}?", console=self.out, default=False)
        except (KeyboardInterrupt, EOFError):
            cancel = False
        if cancel:
            job = self.client.cancel_job(job_id)
            self.out.print(
                f"job {job_id}: cancel requested ({job['status']}); a running job "
                "stops within one batch"
            )
        else:
            self.out.print(
                f"job {job_id} keeps running; watch it again with: smallvision jobs watch {job_id}"
            )
        return ExitCode.INTERRUPTED

    def _report_finished(self, job: Job, metrics: JobMetrics) -> ExitCode:
        if job["status"] != "succeeded":
            reason = job["error"] or "no reason given"
            raise CommandError(f"job {job['id']} {job['status']}: {reason}", ExitCode.JOB_FAILED)
        self._print_results(job, metrics)
        return ExitCode.OK

    def _print_results(self, job: Job, metrics: JobMetrics) -> None:
        if evaluation := metrics["evaluation"]:
            self.out.print(evaluation_table(evaluation))
            if evaluation.get("task") != "multilabel":  # (no confusion matrix of labels)
                self.out.print(confusion_table(evaluation))
            self.out.print(calibration_line(evaluation))
            self.out.print(outliers_line(evaluation))
        chosen = metrics["chosen"]
        if chosen:
            self.out.print(f"kept: {chosen['method']}. {chosen['reason']}")
        result = cast("JobResult | None", job["result"])  # a training job's
        model = result.get("model") if result else None
        if model:
            state = "active" if model["active"] else "not active"
            self.out.print(f"saved as model {model['name']} version {model['version']} ({state})")
        for warning in metrics["warnings"]:
            self.out.print(f"warning: {warning}", style="yellow")

    def jobs_list(self, args: argparse.Namespace) -> ExitCode:
        table = Table(_id_column(), "method", "model", "status", "progress", _time_column())
        for job in self.client.list_jobs(status=args.status):
            table.add_row(
                job["id"],
                job["method"],
                str(job["parameters"].get("model_name", "")),
                job["status"],
                _percent(job["progress"]),
                _time(job["created_at"]),
            )
        self.out.print(table)
        return ExitCode.OK

    def jobs_show(self, args: argparse.Namespace) -> ExitCode:
        job = self.client.get_job(args.job)
        metrics = self.client.job_metrics(args.job)
        self.out.print(
            f"job {job['id']}: {job['method']} {job['status']} "
            f"{_percent(job['progress'])} {_describe(job['progress_detail'])}"
        )
        if metrics["epochs"]:
            table = Table("epoch", "stage", "loss", "accuracy", "val loss", "val accuracy")
            for e in metrics["epochs"]:
                table.add_row(
                    str(e["epoch"]),
                    e["stage"],
                    _number(e["loss"]),
                    _percent(e["accuracy"]),
                    _number(e["val_loss"]),
                    _percent(e["val_accuracy"]),
                )
            self.out.print(table)
        if job["status"] in FINISHED_STATUSES:
            return self._report_finished(job, metrics)
        return ExitCode.OK

    def jobs_cancel(self, args: argparse.Namespace) -> ExitCode:
        job = self.client.cancel_job(args.job)
        self.out.print(f"job {job['id']}: {job['status']}, cancel requested")
        return ExitCode.OK

    def jobs_predictions(self, args: argparse.Namespace) -> ExitCode:
        page = self.client.job_predictions(
            args.job,
            mistakes=args.mistakes,
            true_label=args.true_label,
            predicted_label=args.predicted_label,
            limit=args.limit,
            offset=args.offset,
        )
        wrong = page["evaluated"] - page["correct"]
        self.out.print(
            f"{page['split']} split: {page['correct']} of {page['evaluated']} right, "
            f"{wrong} wrong; {page['matching']} match, showing {len(page['items'])} "
            f"from {page['offset'] + 1 if page['items'] else 0}"
        )
        if not page["items"]:
            return ExitCode.OK
        table = Table("image", "true", "answered", "probability", "right")
        for item in page["items"]:
            answered = item["predicted_labels"]
            top = max(item["probabilities"].values()) if item["probabilities"] else 0.0
            table.add_row(
                item["image_id"][:12],
                ", ".join(item["true_labels"]) or "(none)",
                ", ".join(answered) or "(none)",
                f"{top:.3f}",
                "yes" if item["correct"] else "no",
            )
        self.out.print(table)
        return ExitCode.OK

    def jobs_curves(self, args: argparse.Namespace) -> ExitCode:
        args.output.write_bytes(self.client.job_curves_png(args.job))
        self.out.print(f"wrote {args.output}")
        return ExitCode.OK

    # Prediction and the registry

    def predict(self, args: argparse.Namespace) -> ExitCode:
        missing = [str(path) for path in args.images if not path.is_file()]
        if missing:
            raise CommandError(f"no such file: {', '.join(missing)}", ExitCode.USAGE)
        answer = self.client.predict(
            args.images,
            model=args.model,
            version=args.version,
            top_k=args.top_k,
            detect_unknown=not args.no_unknown,
            outlier_threshold=args.outlier_threshold,
            label_threshold=args.label_threshold,
            precision=args.precision,
        )
        multilabel = answer.get("task") == "multilabel"
        columns = ["image", "answer", "rank", "label", "probability"]
        table = Table(
            *columns,
            *(("threshold", "passes") if multilabel else ()),
            title=f"{answer['model']} v{answer['version']} ({answer['runtime']})",
        )
        for image in answer["predictions"]:
            for rank, label in enumerate(image["labels"], start=1):
                threshold = label.get("threshold")
                table.add_row(
                    (image["filename"] or "") if rank == 1 else "",
                    _answer(image) if rank == 1 else "",
                    str(rank),
                    label["label"],
                    _percent(label["probability"]),
                    *(
                        (
                            _percent(threshold),
                            "yes" if label.get("above_threshold") else "no",
                        )
                        if multilabel
                        else ()
                    ),
                    end_section=rank == len(image["labels"]),
                )
        self.out.print(table)
        if multilabel:
            self.out.print(
                "multi-label: the answer is every label whose probability reaches its threshold "
                '(chosen on the version\'s validation images); "none" when no label does'
            )
        threshold = answer.get("outlier_threshold")
        if threshold is not None:
            self.out.print(
                f"unknown: unlike every training image (outlier score over {threshold:.3f}); "
                "the labels are still listed"
            )
        return ExitCode.OK

    def models_list(self, _args: argparse.Namespace) -> ExitCode:
        table = Table(
            "model",
            "version",
            "active",
            "method",
            "validation accuracy",
            "test accuracy",
            "created",
        )
        for model in self.client.list_models():
            versions = self.client.list_versions(model["name"])
            for i, v in enumerate(versions):
                summary = v["metrics_summary"]
                table.add_row(
                    model["name"] if i == 0 else "",
                    str(v["version"]),
                    "yes" if v["is_active"] else "",
                    str(summary.get("method", "")),
                    _percent(summary.get("validation_accuracy")),
                    _percent(summary.get("test_accuracy")),
                    _time(v["created_at"]),
                    end_section=i == len(versions) - 1,
                )
        self.out.print(table)
        return ExitCode.OK

    def models_activate(self, args: argparse.Namespace) -> ExitCode:
        version = self.client.activate_version(args.name, args.version)
        self.out.print(f"model {version['name']} now answers with version {version['version']}")
        return ExitCode.OK

    def models_serve(self, args: argparse.Namespace) -> ExitCode:
        version = self.client.set_serving(args.name, args.version, precision=args.precision)
        self.out.print(
            f"{version['name']} v{version['version']} now answers /predict in "
            f"{version.get('serving_precision', 'float32')} (a request may still ask for the "
            "other with precision)"
        )
        return ExitCode.OK

    def models_show(self, args: argparse.Namespace) -> ExitCode:
        version = self.client.get_version(args.name, args.version)
        summary = version["metrics_summary"]
        active = " (active)" if version["is_active"] else ""
        self.out.print(
            f"{version['name']} v{version['version']}{active}: {summary.get('method', '')}, "
            f"test accuracy {_percent(summary.get('test_accuracy'))}, "
            f"served in {version.get('serving_precision', 'float32')}, "
            f"created {_time(version['created_at'])}"
        )
        table = Table(
            "format", "status", "size", "accuracy", "float model", "agreement", "checked on"
        )
        table.add_row("keras, onnx", "ready", "", "", "", "", "")
        for export in version.get("exports", []):
            check = export.get("report")
            size = f"{export['size_bytes'] / 1e6:.1f} MB" if export["size_bytes"] else ""
            status = export["status"] + (" DEGRADED" if check and check["degraded"] else "")
            if export["error"]:
                status += f": {export['error'][:60]}"
            table.add_row(
                export["format"],
                status,
                size,
                _percent(check["accuracy"]) if check else "",
                _percent(check["float_accuracy"]) if check else "",
                _percent(check["agreement"]) if check else "",
                f"{check['images']} {check['evaluated_on']} images" if check else "",
            )
        self.out.print(table)
        checks = [e.get("report") for e in version.get("exports", [])]
        if any(check and check["degraded"] for check in checks):
            self.out.print(
                "a DEGRADED export lost more accuracy than allowed against the float model: "
                "`download --allow-degraded` downloads it anyway"
            )
        return ExitCode.OK

    def models_download(self, args: argparse.Namespace) -> ExitCode:
        suffix = {
            "keras": ".keras",
            "onnx": ".onnx",
            "savedmodel": "-savedmodel.tar.gz",
            "tflite": ".tflite",
            "tflite_fp16": "_fp16.tflite",
            "tflite_int8": "_int8.tflite",
            "onnx_int8": "_int8.onnx",
            "docker": "-docker.zip",
        }[args.format]
        if args.bundle and args.format != "docker":  # docker is a zip already
            suffix = f"-{args.format}.zip"
        target: Path = args.output or Path(f"{args.name}-v{args.version}{suffix}")
        partial = target.with_name(target.name + ".part")
        with _transfer_progress(self.out) as progress, partial.open("wb") as file:
            task: TaskID | None = None  # the bar appears once the file starts (not for a 404)

            def advance(received: int, total: int | None) -> None:
                nonlocal task
                if task is None:
                    task = progress.add_task(f"downloading {target.name}", total=total)
                progress.update(task, completed=received, total=total)

            def waiting(export: Export) -> None:
                progress.console.print(f"the {args.format} export is {export['status']}; waiting")

            try:
                self.client.download_version(
                    args.name,
                    args.version,
                    file,
                    format=args.format,
                    bundle=args.bundle,
                    allow_degraded=args.allow_degraded,
                    on_progress=advance,
                    on_waiting=waiting,
                )
            except BaseException:
                partial.unlink(missing_ok=True)
                raise
        partial.replace(target)  # a half-written file never has the final name
        self.out.print(f"wrote {target}")
        return ExitCode.OK


def _id_column() -> Column:
    return Column("id", no_wrap=True, min_width=36)  # whole, to paste into the next command


def _time_column(header: str = "created") -> Column:
    return Column(header, no_wrap=True)


def _time(iso: str) -> str:
    """An API timestamp to the minute, as 2026-11-24 19:52 (UTC)."""
    return iso[:16].replace("T", " ")


def _transfer_progress(console: Console) -> Progress:
    return Progress(
        TextColumn("{task.description}", markup=False),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=console,
    )


def _describe(detail: dict[str, Any]) -> str:
    """What a job is doing, from its progress_detail."""
    parts = [str(detail["stage"])] if detail.get("stage") else []
    if detail.get("images") is not None:
        parts.append(f"{detail.get('split', '')} image {detail['images']} of {detail.get('of')}")
    if detail.get("file"):
        parts.append(str(detail["file"]))
    return " ".join(parts)


def _epoch_name(epoch: Epoch | dict[str, Any]) -> str:
    return f"epoch {epoch['epoch']} {epoch.get('stage', '')}".rstrip()


def _scores(epoch: Epoch) -> str:
    return (
        f"loss {_number(epoch['loss'])}  val loss {_number(epoch['val_loss'])}  "
        f"val acc {_percent(epoch['val_accuracy'])}"
    )


def evaluation_table(evaluation: Evaluation) -> Table:
    """Per-class precision, recall and F1 with the overall accuracy; a multi-label model's
    per-label scores (with average precision and threshold) and its set scores."""
    split = evaluation.get("split", "held-out")
    if evaluation.get("task") == "multilabel":
        return _labels_table(evaluation, split=split)
    table = Table(
        "class",
        "precision",
        "recall",
        "F1",
        "images",
        title=f"evaluation on the {split} split: accuracy "
        f"{_percent(evaluation['accuracy'])} of {evaluation['samples']} images",
    )
    for name in evaluation["classes"]:
        scores = evaluation["per_class"][name]
        table.add_row(
            name,
            f"{scores['precision']:.3f}",
            f"{scores['recall']:.3f}",
            f"{scores['f1']:.3f}",
            str(scores["support"]),
        )
    return table


def _labels_table(evaluation: Evaluation, *, split: str | None) -> Table:
    table = Table(
        "label",
        "precision",
        "recall",
        "F1",
        "average precision",
        "threshold",
        "images",
        title=f"evaluation on the {split} split of {evaluation['samples']} images: mAP "
        f"{_number(evaluation.get('mean_average_precision'))}, micro F1 "
        f"{_number(evaluation.get('micro_f1'))}, macro F1 {_number(evaluation.get('macro_f1'))}"
        f", exact match {_number(evaluation.get('exact_match'))}, mean Jaccard "
        f"{_number(evaluation.get('mean_jaccard'))}",
    )
    for name in evaluation["classes"]:
        scores = evaluation["per_class"][name]
        table.add_row(
            name,
            f"{scores['precision']:.3f}",
            f"{scores['recall']:.3f}",
            f"{scores['f1']:.3f}",
            _number(scores.get("average_precision")),
            _number(scores.get("threshold")),
            str(scores["support"]),
        )
    return table


def _answer(image: ImagePrediction) -> str:
    """The image's answer: its top label, or "unknown" with its outlier score; a multi-label
    model's labels above their thresholds ("none" where no label passes)."""
    if image.get("unknown"):
        return f"unknown ({image.get('outlier_score') or 0:.3f})"
    passed = image.get("labels_above_threshold")
    if passed is not None:
        return ", ".join(passed) or "none"
    return image["labels"][0]["label"] if image["labels"] else ""


def outliers_line(evaluation: Evaluation) -> str:
    if evaluation.get("task") == "multilabel":
        return 'a multi-label model answers "none of these" itself: no label passes its threshold'
    outliers = evaluation.get("outliers")
    if not outliers:
        return (
            "no unknown answer: fewer than 20 validation images to choose its threshold on, "
            "or a test-time-flip model"
        )
    negatives = outliers.get("negatives") or 0
    line = (
        f"unknown above an outlier score of {outliers['threshold']:.3f} (chosen on "
        f"{outliers['calibration_images']} {outliers['calibrated_on']} images"
        + (f", with {negatives} negative examples" if negatives else "")
    )
    if outliers.get("rejected") is not None:
        turned_away = _percent(outliers["rejected"] or 0)
        line += f"; it turns away {turned_away} of the {outliers.get('split')} split"
    return line + ")"


def calibration_line(evaluation: Evaluation) -> str:
    calibration = evaluation.get("calibration")
    if not calibration:
        return "probabilities not calibrated (fewer than 20 validation images)"
    how = (
        "Platt scaling per label"
        if calibration["method"] == "platt"
        else f"temperature {calibration.get('temperature') or 1.0:.2f}"
    )
    return (
        f"probabilities calibrated on {calibration['fitted_on_images']} validation images "
        f"({how}): calibration error on the "
        f"{calibration['split']} split {calibration['ece_before']:.3f} before, "
        f"{calibration['ece_after']:.3f} after"
    )


def confusion_table(evaluation: Evaluation) -> Table:
    """Rows: the true class; columns: the predicted class."""
    classes = evaluation["classes"]
    table = Table("true \\ predicted", *classes, title="confusion matrix")
    for name, row in zip(classes, evaluation["confusion_matrix"], strict=True):
        table.add_row(name, *(str(count) for count in row))
    return table


def _connection_options(default: Any) -> argparse.ArgumentParser:
    options = argparse.ArgumentParser(add_help=False)
    options.add_argument(
        "--url",
        default=default,
        help=f"the service (default ${URL_VARIABLE} or http://127.0.0.1:8000)",
    )
    options.add_argument("--key", default=default, help=f"the API key (default ${KEY_VARIABLE})")
    return options


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="smallvision",
        description=__doc__,
        formatter_class=argparse.RawTextHelpFormatter,
        parents=[_connection_options(None)],
    )
    # --url and --key also after the command (`smallvision models list --url ...`); there a
    # missing option must not reset what was given before the command.
    after = _connection_options(argparse.SUPPRESS)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    azure = commands.add_parser(
        "import-azure",
        help="make a dataset of an Azure Custom Vision project's tagged images",
        parents=[after],
    )
    azure.add_argument("--endpoint", required=True, help="the Custom Vision resource's endpoint")
    azure.add_argument("--training-key", required=True, help="its Training key")
    azure.add_argument("--project", required=True, help="the project's id")
    azure.add_argument("--name", help="the dataset's name (default: the project's)")
    azure.add_argument(
        "--work-dir",
        type=Path,
        help="where the images are kept as they arrive, so a second run goes on where one "
        "stopped (default ~/.cache/smallvision/azure/<project>)",
    )
    datasets = commands.add_parser("datasets", help="upload, list, show and delete datasets")
    on_datasets = datasets.add_subparsers(dest="action", required=True)
    on_datasets.add_parser("list", help="your datasets, newest first", parents=[after])
    upload = on_datasets.add_parser(
        "upload", help="upload a zip of class folders, or with a labels.csv", parents=[after]
    )
    upload.add_argument("zip", type=Path)
    upload.add_argument("--name", help="the dataset's name (default: the zip's file name)")
    upload.add_argument("--validation-fraction", type=float)
    upload.add_argument("--test-fraction", type=float)
    upload.add_argument("--seed", type=int)
    upload.add_argument(
        "--task",
        choices=("multiclass", "multilabel"),
        help="default: multilabel where labels.csv / labels.jsonl gives an image several labels",
    )
    upload.add_argument(
        "--negative-folder",
        help='the folder of "none of these" images (default: _negative)',
    )
    for action, text in (("show", "a dataset's ingest report"), ("delete", "delete a dataset")):
        on_datasets.add_parser(action, help=text, parents=[after]).add_argument(
            "dataset", help="name or id"
        )
    suggest = on_datasets.add_parser(
        "suggest", help="the unlabeled images most worth labeling next", parents=[after]
    )
    suggest.add_argument("dataset", help="name or id")
    suggest.add_argument("--count", type=int, default=20)
    suggest.add_argument("--model", help="how sure this model is (default: a model on the labels)")
    suggest.add_argument("--version", type=int, help="of --model (default: its active one)")
    issues = on_datasets.add_parser(
        "label-issues", help="labeled images whose label looks wrong", parents=[after]
    )
    issues.add_argument("dataset", help="name or id")
    issues.add_argument("--limit", type=int, default=100)
    label = on_datasets.add_parser(
        "label",
        help="label images (or relabel, or remove them): a new version of the dataset",
        parents=[after],
    )
    label.add_argument("dataset", help="name or id")
    label.add_argument(
        "labels", nargs="*", help="IMAGE=CLASS (IMAGE: the sha256; multi-label: CLASS+CLASS)"
    )
    label.add_argument("--remove", nargs="+", default=[], help="images to leave out")

    train = commands.add_parser("train", help="start a training job on a dataset", parents=[after])
    train.add_argument("dataset", help="name or id")
    train.add_argument("--method", help="auto (default), scratch, bottleneck or finetune")
    train.add_argument("--base-model", help="mobilenet_v2 (default), mobilenet, vgg16, ...")
    train.add_argument("--image-size", type=int)
    train.add_argument("--epochs", type=int)
    train.add_argument("--no-augmentation", action="store_true")
    train.add_argument("--model-name", help="default: the dataset's name")
    train.add_argument(
        "--watch",
        action="store_true",
        help="follow the job to its end (Ctrl-C asks whether to cancel it)",
    )

    jobs = commands.add_parser("jobs", help="list, show, watch and cancel jobs; their curves")
    on_jobs = jobs.add_subparsers(dest="action", required=True)
    on_jobs.add_parser("list", help="jobs, newest first", parents=[after]).add_argument("--status")
    for action, text in (
        ("show", "a job's epochs and results"),
        ("watch", "follow a job"),
        ("cancel", "cancel a job"),
    ):
        on_jobs.add_parser(action, help=text, parents=[after]).add_argument("job", help="job id")
    answers = on_jobs.add_parser(
        "predictions",
        help="the evaluation image by image: true label, answer, right or not",
        parents=[after],
    )
    answers.add_argument("job", help="job id")
    answers.add_argument("--mistakes", action="store_true", help="only the wrong answers")
    answers.add_argument("--true", dest="true_label", help="only images of this label")
    answers.add_argument(
        "--predicted", dest="predicted_label", help="only images answered this label"
    )
    answers.add_argument("--limit", type=int, default=100)
    answers.add_argument("--offset", type=int, default=0)
    curves = on_jobs.add_parser(
        "curves", help="save the loss and accuracy curves as a PNG", parents=[after]
    )
    curves.add_argument("job", help="job id")
    curves.add_argument("-o", "--output", type=Path, default=Path("curves.png"))

    predict = commands.add_parser("predict", help="classify images", parents=[after])
    predict.add_argument("images", type=Path, nargs="+")
    predict.add_argument("--model", help="default: the only active model")
    predict.add_argument("--version", type=int, help="default: the model's active version")
    predict.add_argument("--top-k", type=int, default=5)
    predict.add_argument(
        "--no-unknown",
        action="store_true",
        help='never answer "unknown" (for images unlike every training image)',
    )
    predict.add_argument(
        "--outlier-threshold",
        type=float,
        help="the outlier score above which an image is unknown (default: the version's own)",
    )
    predict.add_argument(
        "--label-threshold",
        type=float,
        help="multi-label models: the probability every label must reach (default: each "
        "label's own threshold)",
    )
    predict.add_argument(
        "--precision",
        choices=typing.get_args(Precision),
        help="int8: the version's int8 ONNX export (once its accuracy check passed); "
        "default: the version's serving precision",
    )

    models = commands.add_parser("models", help="the model registry")
    on_models = models.add_subparsers(dest="action", required=True)
    on_models.add_parser("list", help="models and their versions", parents=[after])
    for action, text in (
        ("show", "a version: its evaluation and its exports, with their accuracy checks"),
        ("activate", "serve this version"),
        ("download", "save the version in a format (default .keras; --bundle: a zip to run)"),
        ("serve", "what /predict runs for the version: --precision int8 or float32"),
    ):
        command = on_models.add_parser(action, help=text, parents=[after])
        command.add_argument("name")
        command.add_argument("version", type=int)
    on_models.choices["serve"].add_argument(
        "--precision",
        choices=typing.get_args(Precision),
        required=True,
        help="int8: its int8 ONNX export (refused until that passed its accuracy check)",
    )
    download = on_models.choices["download"]
    download.add_argument("-o", "--output", type=Path)
    download.add_argument(
        "--format",
        choices=typing.get_args(DownloadFormat),
        default="keras",
        help="savedmodel: a TF Serving archive; tflite, tflite_fp16, tflite_int8, onnx_int8: "
        "for devices, checked on the test split (those a worker builds are waited for); "
        "docker: a zip with a Dockerfile and a server that answers /predict without TensorFlow",
    )
    download.add_argument(
        "--bundle",
        action="store_true",
        help="a zip: the model, labels.json, preprocessing.json and predict.py",
    )
    download.add_argument(
        "--allow-degraded",
        action="store_true",
        help="download an export its check found worse than the float model by more than allowed",
    )
    return parser


def _handler(commands: Commands, args: argparse.Namespace) -> Callable[..., ExitCode]:
    single = {"train", "predict", "import-azure"}
    name = args.command if args.command in single else f"{args.command}_{args.action}"
    name = name.replace("-", "_")
    handler: Callable[[argparse.Namespace], ExitCode] = getattr(commands, name)
    return handler


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    # Names and messages are users' text: never read as rich markup, nor coloured by guesswork.
    out = Console(markup=False, highlight=False)
    # soft_wrap: an error is one line, whatever the terminal's width, for people and for grep.
    errors = Console(stderr=True, markup=False, highlight=False, soft_wrap=True)
    try:
        client = Client.from_environment(url=args.url, key=args.key)
    except ValueError as exc:
        errors.print(f"error: {exc}.")
        return ExitCode.KEY_REFUSED
    with client:
        try:
            return _handler(Commands(client, out), args)(args)
        except ApiError as exc:
            errors.print(f"error: {error_line(exc)}")
            return exit_code_for(exc)
        except CommandError as exc:
            errors.print(f"error: {exc}")
            return exc.code
        except KeyboardInterrupt:
            errors.print("interrupted")
            return ExitCode.INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
