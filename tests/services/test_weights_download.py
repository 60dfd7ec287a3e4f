"""A base whose weights are not on the machine: downloaded into the Keras cache when allowed,
from Keras' storage or a mirror; without a network, the job fails fast saying what to do."""

from __future__ import annotations

import functools
import hashlib
import http.server
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from app.ml.bases import BASES, BaseName, WeightsNotFoundError
from app.ml.fitting import TrainingHooks
from app.services import training

SHARED_WEIGHTS = Path(__file__).resolve().parents[3] / "shared" / "weights"
SPEC = BASES[BaseName.MOBILENET]
FILE = SPEC.weight_files[0]


@pytest.fixture
def keras_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "keras-home"
    monkeypatch.setenv("KERAS_HOME", str(home))
    return home


@pytest.fixture
def mirror(tmp_path: Path) -> Iterator[str]:
    """A local HTTP server holding the weights file, as a deployment's mirror would."""
    folder = tmp_path / "mirror"
    folder.mkdir()
    shutil.copy(SHARED_WEIGHTS / FILE, folder / FILE)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


def _source() -> Path:
    source = training.pretrained_source(
        SPEC.key.value, owner=None, fingerprint="f", hooks=TrainingHooks()
    )
    return source.weights_path


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_missing_weights_are_downloaded_into_the_keras_cache(
    configure, keras_home: Path, mirror: str
) -> None:
    configure(WEIGHTS_DOWNLOAD_URL=mirror)  # no PRETRAINED_WEIGHTS_DIR: nothing on disk
    path = _source()
    assert path == keras_home / "models" / FILE
    assert _sha256(path) == _sha256(SHARED_WEIGHTS / FILE)
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".part")]
    # the next job finds the cached copy without asking the network
    configure(WEIGHTS_DOWNLOAD_URL="http://127.0.0.1:1/")
    assert _source() == path


def test_an_unreachable_download_fails_fast_and_says_which_file_to_put_where(
    configure, keras_home: Path
) -> None:
    with socket.socket() as closed:  # a port nobody listens on: connection refused
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    configure(WEIGHTS_DOWNLOAD_URL=f"http://127.0.0.1:{port}/")
    started = time.monotonic()
    with pytest.raises(WeightsNotFoundError) as caught:
        _source()
    assert time.monotonic() - started < 5
    assert "could not download" in str(caught.value) and FILE in str(caught.value)
    assert not (keras_home / "models" / FILE).exists()


def test_a_silent_server_fails_within_the_timeout(configure, keras_home: Path) -> None:
    with socket.socket() as silent:  # accepts connections, never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        configure(
            WEIGHTS_DOWNLOAD_URL=f"http://127.0.0.1:{silent.getsockname()[1]}/",
            WEIGHTS_DOWNLOAD_TIMEOUT_SECONDS="1",
        )
        started = time.monotonic()
        with pytest.raises(WeightsNotFoundError, match="timed out"):
            _source()
        assert time.monotonic() - started < 5


def test_with_downloads_off_a_missing_file_is_an_error_without_any_network(
    configure, keras_home: Path
) -> None:
    configure(ALLOW_WEIGHTS_DOWNLOAD="false", WEIGHTS_DOWNLOAD_URL="http://127.0.0.1:1/")
    with pytest.raises(WeightsNotFoundError) as caught:
        _source()
    assert "could not download" not in str(caught.value)
    assert FILE in str(caught.value)
