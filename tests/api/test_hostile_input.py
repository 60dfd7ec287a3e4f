"""Hostile input: every request is bounded before it costs anything (found by an outside review).

Memory growth itself is measured against a live API by `benchmarks/abuse.py`; these tests pin
the behaviour that keeps it bounded: refusal before the body is read, caps after
decompression, decoding at the model's scale, counts checked before lists are built.
"""

from __future__ import annotations

import gzip
import io
import json
import struct
import subprocess
import sys
import zipfile
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from tests.conftest import api_client, auth_headers, migrate
from tests.models import register_tiny_model
from tests.zips import image_bytes

MB = 1024 * 1024


@pytest.fixture
def client(configure, sqlite_url: str) -> Iterator[TestClient]:
    configure(
        database_url=sqlite_url,
        MODEL_REFRESH_SECONDS="3600",
        MAX_REQUEST_BODY_BYTES=str(4 * MB),
        MAX_DATASET_CLASSES="60",
    )
    migrate(sqlite_url)
    with api_client() as test_client:
        yield test_client


class _CountingBody:
    """A request body sent in 1 MB chunks that remembers how many were pulled. (The test
    client reads all of a body as soon as the app first asks for any of it, so only "none"
    is a meaningful count here; benchmarks/abuse.py measures a live server.)"""

    def __init__(self, chunks: int) -> None:
        self.chunks = chunks
        self.pulled = 0

    def __iter__(self) -> Iterator[bytes]:
        yield b'{"images": [{"b64": "'
        for _ in range(self.chunks):
            self.pulled += 1
            yield b"A" * MB
        yield b'"}]}'


@pytest.mark.parametrize("path", ["/predict/json", "/v1/models/pets:predict"])
def test_a_body_without_a_key_is_refused_before_it_is_read(client, path: str) -> None:
    body = _CountingBody(chunks=3)  # under the 4 MB cap: only the missing key refuses it
    response = client.post(
        path, content=body, headers={"Authorization": "", "content-type": "application/json"}
    )
    assert response.status_code == 401, response.text
    assert body.pulled <= 1, f"the server read {body.pulled} MB before refusing"


@pytest.mark.parametrize("path", ["/predict/json", "/v1/models/pets:predict", "/jobs"])
def test_a_body_over_the_cap_is_413_with_or_without_content_length(client, path: str) -> None:
    body = _CountingBody(chunks=10)  # 10 MB against a 4 MB cap, streamed (no Content-Length)
    streamed = client.post(path, content=body, headers={"content-type": "application/json"})
    assert streamed.status_code == 413, streamed.text
    assert streamed.json()["error"]  # JSON in the shape the path's clients read
    declared = client.post(path, content=b"x" * (5 * MB))
    assert declared.status_code == 413


def test_a_gzip_bomb_is_refused_once_its_output_passes_the_cap(client) -> None:
    register_tiny_model("pets")
    bomb = gzip.compress(b" " * (64 * MB), compresslevel=9)  # 64 KB that inflate to 64 MB
    assert len(bomb) < 100 * 1024
    response = client.post(
        "/v2/models/pets/infer",
        content=bomb,
        headers={"Content-Encoding": "gzip", "content-type": "application/json"},
    )
    assert response.status_code == 413, response.text
    assert "decompressed" in response.json()["error"]


def test_deeply_nested_json_is_400_not_500(client) -> None:
    register_tiny_model("pets")
    deep = b"[" * 5000 + b"]" * 5000
    request = b'{"inputs": [{"name": "x", "shape": [1], "datatype": "BYTES", "data": ' + deep
    for path, body in (("/v2/models/pets/infer", request + b"}]}"), ("/predict/json", deep)):
        response = client.post(path, content=body, headers={"content-type": "application/json"})
        assert response.status_code == 400, (path, response.text[:300])
        assert len(response.content) < 2000  # a message, not a traceback


def _one_bit_png(side: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("1", (side, side)).save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


DECODE_PEAK = """
import resource, sys
import numpy as np
from app.ml.data import resize_pixels
from app.ml.images import decode_image, image_to_array
resize_pixels(np.zeros((64, 64, 3), "uint8"), image_size=160)  # TensorFlow loaded first
data = sys.stdin.buffer.read()
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
image = decode_image(data, max_pixels=50_000_000, target_size=160).image
resize_pixels(image_to_array(image), image_size=160)
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024, image.size)
"""


def test_a_decompression_bomb_png_is_decoded_at_the_models_scale() -> None:
    bomb = _one_bit_png(7000)  # 49 million pixels in a few KB (under the pixel limit)
    assert len(bomb) < 20_000
    run = subprocess.run(
        [sys.executable, "-c", DECODE_PEAK], input=bomb, capture_output=True, check=True
    )
    growth_mb, size = run.stdout.decode().split(" ", 1)
    # Decoded at full size this was +2 GB (RGB, then float32 of 49 M pixels); now its average
    # over 21x21 boxes (7000 // (2 x 160)) is what the model's resize sees.
    assert int(growth_mb) < 150, run.stdout
    assert size.strip() == "(334, 334)"


def test_large_images_predict_like_their_reduced_copy(client) -> None:
    """What the model sees of a large image is its box-average at >= 2x the input size, each
    side on its own (the model resizes to a square)."""
    register_tiny_model("pets", image_size=32)
    big = Image.effect_mandelbrot((800, 640), (-2, -1.2, 1, 1.2), 60).convert("RGB")
    reduced = big.reduce((12, 10))  # 800 // (2 * 32) = 12, 640 // (2 * 32) = 10
    answers = []
    for image in (big, reduced):
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        response = client.post("/predict", files={"file": ("m.png", buffer.getvalue())})
        assert response.status_code == 200, response.text
        answers.append(response.json()["predictions"][0]["labels"][0]["probability"])
    assert answers[0] == pytest.approx(answers[1], abs=1e-6)


def test_concurrent_decodes_share_one_memory_budget() -> None:
    import threading
    import time

    from app.services.inference import MemoryBudget

    budget = MemoryBudget(100)
    inside, peak, lock = 0, 0, threading.Lock()

    def decode(amount: int) -> None:
        nonlocal inside, peak
        held = min(amount, budget.total)
        with budget.reserve(amount, timeout=10):
            with lock:
                inside += held
                peak = max(peak, inside)
            time.sleep(0.05)
            with lock:
                inside -= held

    threads = [threading.Thread(target=decode, args=(60,)) for _ in range(4)]
    threads.append(threading.Thread(target=decode, args=(10_000,)))  # alone: the whole budget
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert peak <= 100
    assert budget.used == 0


def _zip_with_forged_entry_count(entries: int) -> bytes:
    """A real one-entry zip whose end-of-central-directory record claims `entries` entries
    (as a zip with that many entries would), zip64 where the count needs it."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("cats/a.png", image_bytes("PNG"))
    data = bytearray(buffer.getvalue())
    end = data.rfind(b"PK\x05\x06")
    struct.pack_into("<HH", data, end + 8, min(entries, 0xFFFF), min(entries, 0xFFFF))
    return bytes(data)


def test_the_entry_count_is_checked_before_zipfile_lists_the_entries(
    configure, sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    configure(database_url=sqlite_url, MAX_ZIP_ENTRIES="50000")
    migrate(sqlite_url)

    def no_listing(*args, **kwargs):
        raise AssertionError("zipfile.ZipFile was opened before the entry count was checked")

    forged = _zip_with_forged_entry_count(60_000)
    monkeypatch.setattr("app.services.archive.zipfile.ZipFile", no_listing)
    with api_client() as client:
        response = client.post(
            "/datasets", files={"file": ("bomb.zip", forged)}, data={"name": "bomb"}
        )
    assert response.status_code == 413, response.text
    assert "60000 entries" in response.json()["detail"]


def test_a_directory_with_more_entries_than_its_end_record_says_is_413(
    configure, sqlite_url: str
) -> None:
    configure(database_url=sqlite_url, MAX_ZIP_ENTRIES="50")
    migrate(sqlite_url)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for index in range(80):
            archive.writestr(f"cats/{index}.txt", b"x")
    data = bytearray(buffer.getvalue())
    end = data.rfind(b"PK\x05\x06")
    struct.pack_into("<HH", data, end + 8, 3, 3)  # the end record lies: "3 entries"
    with api_client() as client:
        response = client.post(
            "/datasets", files={"file": ("lie.zip", bytes(data))}, data={"name": "lie"}
        )
    assert response.status_code == 413, response.text
    assert "directory holds more entries" in response.json()["detail"]


def _classes_zip(classes: int) -> bytes:
    buffer = io.BytesIO()
    tiny = image_bytes("PNG", size=(8, 8))
    with zipfile.ZipFile(buffer, "w") as archive:
        for index in range(classes):
            # distinct bytes per class (identical files under two classes would be dropped)
            archive.writestr(f"class_{index:03d}/a.png", tiny + index.to_bytes(2, "big"))
    return buffer.getvalue()


def test_classes_per_dataset_are_capped(client) -> None:
    response = client.post(
        "/datasets", files={"file": ("many.zip", _classes_zip(61))}, data={"name": "many"}
    )
    assert response.status_code == 413, response.text
    assert "the zip has 61 classes; a dataset may have at most 60" in response.json()["detail"]


def test_the_preview_of_many_classes_is_a_bounded_grid_that_says_so(client) -> None:
    from app.services.previews import MAX_PREVIEW_CLASSES, PAD, THUMB

    assert MAX_PREVIEW_CLASSES < 60
    response = client.post(
        "/datasets", files={"file": ("many.zip", _classes_zip(60))}, data={"name": "many"}
    )
    assert response.status_code == 201, response.text
    preview = client.get(f"/datasets/{response.json()['id']}/preview.png")
    assert preview.status_code == 200
    height = Image.open(io.BytesIO(preview.content)).height
    assert height <= MAX_PREVIEW_CLASSES * (THUMB + PAD) + 100  # 60 rows would be 7080 px


def test_nul_characters_in_names_are_422(client) -> None:
    bad_form = client.post(
        "/datasets", files={"file": ("x.zip", _classes_zip(2))}, data={"name": "a\x00b"}
    )
    assert bad_form.status_code == 422, bad_form.text
    assert bad_form.json()["detail"][0]["loc"] == ["body", "name"]
    assert client.get("/models/a%00b/versions").status_code == 422
    assert client.get("/jobs", params={"status": "queued\x00"}).status_code == 422
    predict = client.post("/predict/json", json={"images": [{"b64": "AAAA", "filename": "x\x00"}]})
    assert predict.status_code == 422


def test_an_unexpected_error_is_a_json_500_with_the_request_id_and_no_traceback(
    configure, sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from sqlalchemy.exc import IntegrityError

    from app.main import create_app
    from app.services import datasets

    configure(database_url=sqlite_url)
    migrate(sqlite_url)

    def broken(*args, **kwargs):
        raise IntegrityError("INSERT INTO secrets ...", {}, Exception("duplicate key"))

    monkeypatch.setattr(datasets, "list_datasets", broken)
    with TestClient(create_app(), raise_server_exceptions=False) as client:
        response = client.get("/datasets", headers={**auth_headers(), "X-Request-ID": "req-1234"})
        assert response.status_code == 500
        assert response.json() == {
            "error": "internal_error",
            "detail": "an unexpected error occurred; quote request id req-1234 when reporting it",
        }
        assert response.headers["x-request-id"] == "req-1234"
        monkeypatch.setattr(datasets, "list_datasets", lambda *a, **k: 1 / 0)
        other = client.get("/datasets", headers=auth_headers())
        assert other.status_code == 500 and other.json()["error"] == "internal_error"
        assert "ZeroDivisionError" not in other.text


def test_json_limits_apply_to_parsed_values_not_only_bytes() -> None:
    """Sanity of the helpers the routes use: JSON over the parser's depth is a clean 400."""
    from app.core.errors import BadRequestError
    from app.services.wire import parse_json

    assert parse_json(json.dumps([[1]]).encode()) == [[1]]
    with pytest.raises(BadRequestError):
        parse_json(b"[" * 100_000)


def _form(parts: list[tuple[str, bytes]], *, part_headers: bytes = b"") -> bytes:
    body = b""
    for name, value in parts:
        body += (
            b'--b\r\nContent-Disposition: form-data; name="'
            + name.encode()
            + b'"\r\n'
            + part_headers
            + b"\r\n"
            + value
            + b"\r\n"
        )
    return body + b"--b--\r\n"


@pytest.mark.parametrize("path", ["/datasets", "/predict"])
def test_a_form_of_many_or_large_text_fields_is_413(client, path: str) -> None:
    """Thousands of small fields (each under the field cap) were all held before the form was
    checked; a part's headers are bounded by python-multipart itself."""
    headers = {"content-type": "multipart/form-data; boundary=b"}
    many = client.post(path, content=_form([(f"f{i}", b"x") for i in range(40)]), headers=headers)
    assert many.status_code == 413, many.text
    assert many.json()["detail"] == "the form has more than 32 text fields"
    large = client.post(
        path, content=_form([(f"f{i}", b"x" * 60_000) for i in range(5)]), headers=headers
    )
    assert large.status_code == 413, large.text
    assert "text fields are larger than 262144 bytes together" in large.json()["detail"]
    padded = _form([("name", b"x")], part_headers=b"X-Pad: " + b"p" * 20_000 + b"\r\n")
    long_header = client.post(path, content=padded, headers=headers)
    assert long_header.status_code == 400, long_header.text
    assert "Maximum header size exceeded" in long_header.json()["detail"]
