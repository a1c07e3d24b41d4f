"""`scalelab data get` and first-use downloads against a real HTTP server on 127.0.0.1 (the
standard library's, in a thread, with Range requests), serving small files written in each
dataset's real format. ``SCALELAB_DATA_URL`` points every download at it, the catalog's
checksums are those of the served files, and name resolution of any other host fails: no
test reaches beyond 127.0.0.1."""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import io
import json
import socket
import tarfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from scalelab import datasets
from scalelab.cli import app
from scalelab.datasets import CATALOG, download
from scalelab.errors import ScalelabError
from scalelab.plugin import instantiate
from scalelab.registry import tasks
from scalelab.tasks.cifar import CIFAR10
from scalelab.tasks.mnist import FILES, write_idx
from scalelab.tasks.text import write_shard

ROOT = Path(__file__).resolve().parents[2]
RNG = np.random.default_rng(0)


# ------------------------------------------------------------------------- the server


class Server:
    """What the local server serves, and what it was asked."""

    def __init__(self):
        self.files: dict[str, bytes] = {}
        self.cut: dict[str, list[int]] = {}  # path -> bytes sent before stopping, per request
        self.requests: list[tuple[str, str | None]] = []
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def gets(self, name: str) -> list[str | None]:
        """The Range headers of the requests for files named ``name``."""
        return [r for path, r in self.requests if path.endswith("/" + name)]

    def _handler(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                asked = self.headers.get("Range")
                server.requests.append((self.path, asked))
                body = server.files.get(self.path)
                if body is None:
                    self.send_error(404, "Not Found")
                    return
                start = int(asked.split("=")[1].split("-")[0]) if asked else 0
                if start >= len(body) and asked:
                    self.send_error(416, "Range Not Satisfiable")
                    return
                self.send_response(206 if asked else 200)
                if asked:
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                self.send_header("Content-Length", str(len(body) - start))
                self.end_headers()
                cuts = server.cut.get(self.path)
                stop = cuts.pop(0) if cuts else None
                self.wfile.write(body[start:stop] if stop is not None else body[start:])

        return Handler


@pytest.fixture
def server(monkeypatch, tmp_path):
    srv = Server()
    monkeypatch.setenv("SCALELAB_DATA_URL", srv.url)
    monkeypatch.setenv("SCALELAB_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("SCALELAB_DOWNLOAD", raising=False)
    monkeypatch.setattr(download, "BLOCK", 4096)  # small files still take several blocks
    datasets.cache._sound.clear()
    yield srv
    srv.httpd.shutdown()
    srv.httpd.server_close()


@pytest.fixture(autouse=True)
def _no_internet(monkeypatch):
    """Resolving any host but this machine fails, as on a machine without a network."""
    real = socket.getaddrinfo

    def local_only(host, *args, **kwargs):
        if host not in ("127.0.0.1", "localhost"):
            raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", local_only)


def serve(server: Server, monkeypatch, name: str, files: dict[str, bytes],
          published: dict[str, bytes] | None = None) -> None:
    """Serve ``files`` as dataset ``name``'s parts, the catalog's md5s those of
    ``published`` (default: the files served)."""
    ds = CATALOG[name]
    published = published or files
    parts = []
    for part in ds.parts:
        if part.name in published:
            md5 = hashlib.md5(published[part.name]).hexdigest()
            parts.append(dataclasses.replace(part, checksum=("md5", md5)))
    monkeypatch.setitem(CATALOG, name, dataclasses.replace(ds, parts=tuple(parts)))
    for file, body in files.items():
        server.files[f"/{name}/{file}"] = body


def cli(*args):
    return CliRunner().invoke(app, list(args))


# ---------------------------------------------------------------- files in each format


def idx_gz(array: np.ndarray, tmp: Path, name: str) -> bytes:
    write_idx(tmp / name, array)
    return (tmp / name).read_bytes()


def mnist_files(tmp_path: Path, n: int = 300) -> dict[str, bytes]:
    tmp = tmp_path / "src"
    tmp.mkdir(exist_ok=True)
    arrays = {"train_images": RNG.integers(0, 256, (n, 28, 28), dtype=np.uint8),
              "train_labels": RNG.integers(0, 10, n).astype(np.uint8),
              "test_images": RNG.integers(0, 256, (20, 28, 28), dtype=np.uint8),
              "test_labels": RNG.integers(0, 10, 20).astype(np.uint8)}
    return {f"{FILES[k]}.gz": idx_gz(a, tmp, f"{FILES[k]}.gz") for k, a in arrays.items()}


def tar_gz(members: dict[str, bytes], links: dict[str, str] | None = None) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, body in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(body)
            tar.addfile(info, io.BytesIO(body))
        for name, target in (links or {}).items():
            info = tarfile.TarInfo(name)
            info.type, info.linkname = tarfile.SYMTYPE, target
            tar.addfile(info)
    return buffer.getvalue()


def cifar_archive(tmp_path: Path) -> bytes:
    folder = tmp_path / "cifar-src"
    folder.mkdir()
    for i in range(1, 6):
        x = RNG.integers(0, 256, (8, 32, 32, 3), dtype=np.uint8)
        CIFAR10.write_python_batch(folder / f"data_batch_{i}", x, RNG.integers(0, 10, 8), "labels")
    CIFAR10.write_python_batch(folder / "test_batch", x, RNG.integers(0, 10, 8), "labels")
    return tar_gz({f"cifar-10-batches-py/{p.name}": p.read_bytes()
                   for p in sorted(folder.iterdir())})


def imagenette_archive() -> bytes:
    from PIL import Image

    members = {}
    for split, count in (("train", 4), ("val", 2)):
        for wnid in ("n01440764", "n02102040"):
            for i in range(count):
                buffer = io.BytesIO()
                Image.fromarray(RNG.integers(0, 256, (24, 30, 3), dtype=np.uint8)).save(
                    buffer, format="JPEG")
                members[f"imagenette2-320/{split}/{wnid}/{wnid}_{i}.JPEG"] = buffer.getvalue()
    members["imagenette2-320/noisy_imagenette.csv"] = b"path,noisy_labels_0\n"
    return tar_gz(members)


# ------------------------------------------------------------------------------ tests


def test_a_fresh_download_is_checked_cached_and_never_downloaded_again(server, monkeypatch,
                                                                       tmp_path):
    files = mnist_files(tmp_path)
    serve(server, monkeypatch, "mnist", files)
    result = cli("data", "get", "mnist")
    assert result.exit_code == 0, result.output
    folder = tmp_path / "cache" / "data" / "mnist"
    assert {p.name for p in folder.iterdir()} == set(files) | {".scalelab-data.json"}
    assert all((folder / f).read_bytes() == body for f, body in files.items())
    assert "train-images-idx3-ubyte.gz: 235.3 kB in " in result.output and "B/s" in result.output
    data = instantiate(tasks, {"name": "mnist", "num_val": 50}).load()  # path empty: the cache
    assert len(data.y_train) == 250 and len(data.y_test) == 20
    asked = len(server.requests)
    assert cli("data", "get", "mnist").exit_code == 0
    datasets.cache._sound.clear()  # a new process checks every checksum again
    assert cli("data", "get", "mnist").exit_code == 0
    assert len(server.requests) == asked  # never downloaded again


def test_an_interrupted_download_resumes_with_a_range_request(server, monkeypatch, tmp_path):
    files = mnist_files(tmp_path)
    serve(server, monkeypatch, "mnist", files)
    name = "train-images-idx3-ubyte.gz"
    body = files[name]
    server.cut[f"/mnist/{name}"] = [len(body) // 3]  # the server stops a third of the way
    result = cli("data", "get", "mnist")
    assert result.exit_code == 0, result.output
    assert "the server stopped after" in result.output and "resuming" in result.output
    assert server.gets(name) == [None, f"bytes={len(body) // 3}-"]
    assert (tmp_path / "cache" / "data" / "mnist" / name).read_bytes() == body


def test_a_partial_file_left_by_an_earlier_attempt_is_resumed(server, monkeypatch, tmp_path):
    files = mnist_files(tmp_path)
    serve(server, monkeypatch, "mnist", files)
    name = "train-images-idx3-ubyte.gz"
    partial = tmp_path / "cache" / "data" / "mnist" / ".partial" / f"{name}.part"
    partial.parent.mkdir(parents=True)
    partial.write_bytes(files[name][:5000])
    assert cli("data", "get", "mnist").exit_code == 0
    assert server.gets(name) == ["bytes=5000-"]
    assert not partial.parent.exists()


def test_a_server_that_keeps_stopping_leaves_the_partial_file_for_the_next_attempt(
        server, monkeypatch, tmp_path):
    files = mnist_files(tmp_path)
    serve(server, monkeypatch, "mnist", files)
    name = "train-images-idx3-ubyte.gz"
    server.cut[f"/mnist/{name}"] = [1000, 2000, 3000]  # where each answer stops
    result = cli("data", "get", "mnist")
    assert result.exit_code == 2
    line = result.output.strip().splitlines()[-1]
    assert "the server stopped sending after 3,000 of" in line and "resumes it" in line
    partial = tmp_path / "cache" / "data" / "mnist" / ".partial" / f"{name}.part"
    assert partial.read_bytes() == files[name][:3000]
    assert cli("data", "get", "mnist").exit_code == 0  # the server recovered: resumed
    assert server.gets(name)[-1] == "bytes=3000-"
    assert not partial.exists()


def test_a_corrupted_download_is_removed_and_both_sums_are_named(server, monkeypatch, tmp_path):
    files = mnist_files(tmp_path)
    served = dict(files, **{"t10k-labels-idx1-ubyte.gz": b"not what was published"})
    serve(server, monkeypatch, "mnist", served, published=files)
    result = cli("data", "get", "mnist")
    assert result.exit_code == 2
    line = result.output.strip().splitlines()[-1]
    expected = hashlib.md5(files["t10k-labels-idx1-ubyte.gz"]).hexdigest()
    actual = hashlib.md5(b"not what was published").hexdigest()
    assert f"md5 mismatch: expected {expected}, got {actual}" in line
    assert "/mnist/t10k-labels-idx1-ubyte.gz" in line and "removed" in line
    folder = tmp_path / "cache" / "data" / "mnist"
    assert not (folder / "t10k-labels-idx1-ubyte.gz").exists()
    assert not (folder / ".partial").exists()


def test_a_corrupted_cache_file_is_detected_and_fetched_again_with_a_line(server, monkeypatch,
                                                                         tmp_path):
    files = mnist_files(tmp_path)
    serve(server, monkeypatch, "mnist", files)
    assert cli("data", "get", "mnist").exit_code == 0
    cached = tmp_path / "cache" / "data" / "mnist" / "train-labels-idx1-ubyte.gz"
    damaged = bytearray(cached.read_bytes())
    damaged[100] ^= 0xFF  # one flipped byte: same size, another checksum
    cached.write_bytes(bytes(damaged))
    datasets.cache._sound.clear()
    with pytest.raises(ScalelabError, match="holds a damaged train-labels-idx1-ubyte.gz "
                                            r"\(train-labels-idx1-ubyte.gz: md5 .* where .* is "
                                            r"expected\): run `scalelab data get mnist`"):
        instantiate(tasks, {"name": "mnist", "num_val": 50}).check()  # downloads not allowed
    result = cli("data", "get", "mnist")
    assert result.exit_code == 0, result.output
    assert "train-labels-idx1-ubyte.gz of mnist is damaged" in result.output
    assert "fetching it again" in result.output
    assert cached.read_bytes() == files["train-labels-idx1-ubyte.gz"]
    assert len(server.gets("train-labels-idx1-ubyte.gz")) == 2
    assert len(server.gets("train-images-idx3-ubyte.gz")) == 1


def test_a_404_is_one_line_naming_the_url_and_leaves_nothing(server, monkeypatch, tmp_path):
    files = mnist_files(tmp_path)
    serve(server, monkeypatch, "mnist", {}, published=files)
    result = cli("data", "get", "mnist")
    assert result.exit_code == 2
    assert len(result.output.strip().splitlines()) == 1
    assert f"{server.url}/mnist/train-images-idx3-ubyte.gz: the server answered HTTP 404" \
        in result.output
    assert not (tmp_path / "cache").exists()


def test_no_network_is_one_line_naming_the_url_and_saying_the_machine_is_offline(
        monkeypatch, tmp_path):
    monkeypatch.setenv("SCALELAB_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("SCALELAB_DATA_URL", raising=False)
    result = cli("data", "get", "cifar10")
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1
    assert "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz: cannot reach " \
           "www.cs.toronto.edu: this machine looks offline" in lines[0]
    assert not (tmp_path / "cache").exists()


def test_airbench94_offline_without_cifar10_names_the_command_and_writes_nothing(
        monkeypatch, tmp_path):
    monkeypatch.setenv("SCALELAB_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("SCALELAB_DATA_URL", raising=False)
    out = tmp_path / "runs"
    result = cli("run", str(ROOT / "studies" / "airbench94.yaml"), "--out", str(out))
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "scalelab data get cifar10" in lines[0], result.output
    assert "looks offline" in lines[0]
    assert not out.exists() and not (tmp_path / "cache").exists()


def test_an_archive_is_unpacked_into_the_layout_the_task_reads(server, monkeypatch, tmp_path):
    archive = cifar_archive(tmp_path)
    serve(server, monkeypatch, "cifar10", {"cifar-10-python.tar.gz": archive})
    result = cli("data", "get", "cifar10")
    assert result.exit_code == 0, result.output
    folder = tmp_path / "cache" / "data" / "cifar10"
    assert sorted(p.name for p in folder.iterdir()) == [".scalelab-data.json",
                                                       "cifar-10-batches-py"]
    record = json.loads((folder / ".scalelab-data.json").read_text())
    assert len(record["parts"]["cifar-10-python.tar.gz"]["files"]) == 6
    data = instantiate(tasks, {"name": "cifar10", "num_val": 4}).load()
    assert tuple(data.x_train.shape) == (36, 3, 32, 32) and len(data.y_test) == 8
    # the cifar10 task reads the cache also when the study is validated
    from scalelab.spec import validate_study

    raw = {"name": "s", "task": {"name": "cifar10", "num_val": 4},
           "model": {"name": "airbench", "widths": [8, 8, 8]}, "train": {"max_steps": 1}}
    assert validate_study(raw, "s.yaml").runs


@pytest.mark.parametrize("member, why", [
    ("cifar-10-batches-py/../../evil", "climbs out"),
    ("/tmp/evil-absolute", "an absolute path"),
    ("cifar-10-batches-py/link", "a link"),
])
def test_an_archive_with_unsafe_members_is_refused_and_leaves_nothing(server, monkeypatch,
                                                                     tmp_path, member, why):
    if why == "a link":
        archive = tar_gz({"cifar-10-batches-py/data_batch_1": b"x"}, links={member: "/etc/passwd"})
    else:
        archive = tar_gz({"cifar-10-batches-py/data_batch_1": b"x", member: b"owned"})
    serve(server, monkeypatch, "cifar10", {"cifar-10-python.tar.gz": archive})
    result = cli("data", "get", "cifar10")
    assert result.exit_code == 2
    line = result.output.strip().splitlines()[-1]
    assert repr(member) in line and why in line and "refused" in line
    assert not (tmp_path / "cache").exists()
    assert not (tmp_path / "evil").exists() and not Path("/tmp/evil-absolute").exists()


def test_a_damaged_archive_leaves_no_half_unpacked_folder(server, monkeypatch, tmp_path):
    whole = cifar_archive(tmp_path)
    cut = whole[: len(whole) // 2]  # published as is (its sum matches): the tar is cut short
    serve(server, monkeypatch, "cifar10", {"cifar-10-python.tar.gz": cut})
    result = cli("data", "get", "cifar10")
    assert result.exit_code == 2
    assert "a damaged archive" in result.output and "nothing was unpacked" in result.output
    assert not (tmp_path / "cache").exists()


def test_ctrl_c_keeps_the_partial_download_and_the_next_get_resumes_it(server, monkeypatch,
                                                                       tmp_path):
    archive = cifar_archive(tmp_path)
    serve(server, monkeypatch, "cifar10", {"cifar-10-python.tar.gz": archive})
    from scalelab.output import _Transfer

    calls = []
    real = _Transfer.advance

    def interrupt(self, size):
        calls.append(size)
        if len(calls) == 3:
            raise KeyboardInterrupt
        real(self, size)

    monkeypatch.setattr(_Transfer, "advance", interrupt)
    result = cli("data", "get", "cifar10")
    assert result.exit_code == 130
    assert "interrupted" in result.output and "resumes it" in result.output
    folder = tmp_path / "cache" / "data" / "cifar10"
    partial = folder / ".partial" / "cifar-10-python.tar.gz.part"
    assert partial.stat().st_size == 3 * 4096  # the blocks written before Ctrl-C
    assert sorted(p.name for p in folder.iterdir()) == [".partial"]  # nothing unpacked
    monkeypatch.setattr(_Transfer, "advance", real)
    assert cli("data", "get", "cifar10").exit_code == 0
    assert server.gets("cifar-10-python.tar.gz")[-1] == f"bytes={3 * 4096}-"
    assert (folder / "cifar-10-batches-py" / "test_batch").is_file()


def test_a_full_disk_is_refused_before_the_first_byte(server, monkeypatch, tmp_path):
    import shutil

    serve(server, monkeypatch, "cifar10", {"cifar-10-python.tar.gz": cifar_archive(tmp_path)})
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage._replace(free=100))
    result = cli("data", "get", "cifar10")
    assert result.exit_code == 2
    line = result.output.strip().splitlines()[-1]
    assert "No space left on device" in line and "nothing was kept" in line
    assert not (tmp_path / "cache").exists()


def test_imagenette_unpacks_into_train_and_val_class_folders(server, monkeypatch, tmp_path):
    serve(server, monkeypatch, "imagenette", {"imagenette2-320.tgz": imagenette_archive()})
    assert cli("data", "get", "imagenette").exit_code == 0
    data = instantiate(tasks, {"name": "imagefolder", "num_val": 1, "image_size": 16,
                               "resize": 18, "workers": 0}).load()
    assert data.class_names == ["n01440764", "n02102040"]
    assert len(data.train) == 6 and len(data.val) == 2 and len(data.test) == 4


def test_fineweb_shards_are_checked_against_the_publishers_listing(server, monkeypatch,
                                                                   tmp_path):
    shards = {}
    for name, n in (("fineweb_val_000000.bin", 400), ("fineweb_train_000001.bin", 600),
                    ("fineweb_train_000002.bin", 500)):
        write_shard(tmp_path / name, RNG.integers(0, 50257, n))
        shards[name] = (tmp_path / name).read_bytes()
    listing = [{"type": "file", "path": n, "size": len(b),
                "lfs": {"oid": hashlib.sha256(b).hexdigest(), "size": len(b)}}
               for n, b in shards.items()]
    server.files["/fineweb10B/index.json"] = json.dumps(listing).encode()
    for name, body in shards.items():
        server.files[f"/fineweb10B/{name}"] = body
    result = cli("data", "get", "fineweb10B", "--shards", "2")
    assert result.exit_code == 0, result.output
    task = {"name": "text", "source": "shards", "shards": 2, "max_eval_tokens": 1000}
    data = instantiate(tasks, task).load()
    assert len(data.train) == 1100 and len(data.val) + len(data.test) == 400
    server.files["/fineweb10B/fineweb_train_000001.bin"] = b"\x00" * 10  # never asked again
    datasets.cache._sound.clear()
    assert cli("data", "get", "fineweb10B", "--shards", "1").exit_code == 0
    rows = {r["name"]: r for r in json.loads(cli("data", "list", "--format", "json").output)}
    assert rows["fineweb10B"]["cached"] == "2 of 103 shards"
    # a listed sum the served file does not match: refused, both sums named
    write_shard(tmp_path / "three.bin", RNG.integers(0, 50257, 10))
    server.files["/fineweb10B/fineweb_train_000003.bin"] = (tmp_path / "three.bin").read_bytes()
    listing.append({"type": "file", "path": "fineweb_train_000003.bin", "size": 1044,
                    "lfs": {"oid": "0" * 64, "size": 1044}})
    server.files["/fineweb10B/index.json"] = json.dumps(listing).encode()
    result = cli("data", "get", "fineweb10B", "--shards", "3")
    assert result.exit_code == 2 and f"expected {'0' * 64}, got " in result.output


def test_a_task_refuses_in_one_line_naming_the_command_unless_downloads_are_allowed(
        server, monkeypatch, tmp_path):
    from scalelab.spec import validate_study

    serve(server, monkeypatch, "mnist", mnist_files(tmp_path))
    raw = {"name": "s", "task": {"name": "mnist", "num_val": 50},
           "model": {"name": "mlp", "width": 4}, "train": {"max_steps": 1}}
    with pytest.raises(ScalelabError) as error:
        validate_study(raw, "s.yaml")
    message = str(error.value)
    assert "\n" not in message and "run `scalelab data get mnist`" in message
    assert "download: true" in message and server.requests == []
    monkeypatch.setenv("SCALELAB_DOWNLOAD", "1")  # what `scalelab run --download` sets
    run = validate_study(raw, "s.yaml").runs[0]
    assert "download" not in run.config["task"]  # a later setting at its default: same ids
    assert len(server.requests) == 4
    monkeypatch.delenv("SCALELAB_DOWNLOAD")
    assert validate_study(raw, "s.yaml").runs[0].run_id == run.run_id  # cached: no download


def test_a_study_that_allows_downloads_fetches_on_first_use_before_anything_is_written(
        server, monkeypatch, tmp_path, tiny_study):
    serve(server, monkeypatch, "mnist", mnist_files(tmp_path))
    study = tiny_study(tmp_path, task={"name": "mnist", "num_val": 50, "num_train": 100,
                                       "download": True},
                       model={"name": "mlp", "depth": 1}, grid={"width": [4]}, seeds=[0])
    out = tmp_path / "out"
    result = cli("run", str(study), "--out", str(out), "--workers", "1", "--no-report")
    assert result.exit_code == 0, result.output
    assert len(server.requests) == 4 and (out / "results.sqlite").exists()
    server.files.clear()  # a second run reads the cache
    out2 = tmp_path / "out2"
    assert cli("run", str(study), "--out", str(out2), "--workers", "1", "--no-report"
               ).exit_code == 0


def test_run_download_allows_fetching_for_a_study_that_does_not_say_so(server, monkeypatch,
                                                                      tmp_path, tiny_study):
    serve(server, monkeypatch, "mnist", mnist_files(tmp_path))
    study = tiny_study(tmp_path, task={"name": "mnist", "num_val": 50, "num_train": 100},
                       model={"name": "mlp", "depth": 1}, grid={"width": [4]}, seeds=[0])
    out = tmp_path / "out"
    result = cli("run", str(study), "--out", str(out), "--dry-run")
    assert result.exit_code == 2 and "run `scalelab data get mnist`" in result.output
    assert server.requests == [] and not out.exists()
    monkeypatch.setenv("SCALELAB_DOWNLOAD", "")  # restored after the test: --download sets it
    result = cli("run", str(study), "--out", str(out), "--dry-run", "--download")
    assert result.exit_code == 0, result.output
    assert len(server.requests) == 4


def test_to_puts_the_dataset_in_a_folder_a_task_path_can_name(server, monkeypatch, tmp_path):
    serve(server, monkeypatch, "mnist", mnist_files(tmp_path))
    target = tmp_path / "mine"
    result = cli("data", "get", "mnist", "--to", str(target))
    assert result.exit_code == 0 and f"path: {target}" in " ".join(result.output.split())
    assert not (tmp_path / "cache" / "data" / "mnist").exists()
    data = instantiate(tasks, {"name": "mnist", "path": str(target), "num_val": 50}).load()
    assert len(data.y_test) == 20


def test_data_list_shows_what_is_cached_where_and_its_size(server, monkeypatch, tmp_path):
    files = mnist_files(tmp_path)
    serve(server, monkeypatch, "mnist", files)
    assert cli("data", "get", "mnist").exit_code == 0
    rows = {r["name"]: r for r in json.loads(cli("data", "list", "--format", "json").output)}
    assert set(rows) == {"mnist", "fashion_mnist", "cifar10", "cifar100", "imagenette",
                         "fineweb10B"}
    assert rows["mnist"]["cached"] == "yes" and rows["cifar10"]["cached"] == "no"
    assert rows["mnist"]["size_on_disk"] >= sum(map(len, files.values()))
    assert rows["mnist"]["where"] == str(tmp_path / "cache" / "data" / "mnist")
    text = cli("data", "list").output
    assert "mnist" in text and "SCALELAB_CACHE" in text


def test_the_bundled_studies_on_real_data_fetch_on_first_use_and_quick_runs_offline():
    import yaml

    from scalelab.spec import load_study

    for name in ("airbench94", "ast_imagenet", "lm_scaling_gpu", "mnist_scaling"):
        raw = yaml.safe_load((ROOT / "studies" / f"{name}.yaml").read_text())
        assert raw["task"].get("download") is True and not raw["task"].get("path"), name
        study = load_study(ROOT / "studies" / f"{name}.yaml", quick=True)  # no network here
        assert study.runs


def test_published_sums_are_the_publishers(tmp_path):
    """The catalog holds the sums torchvision and the publishers list (spot checks)."""
    assert CATALOG["cifar10"].parts[0].checksum == ("md5", "c58f30108f718f92721af3b95e74349a")
    assert CATALOG["mnist"].parts[0].checksum == ("md5", "f68b3c2dcbeaaa9fbdd348bbdeb94873")
    assert CATALOG["imagenette"].parts[0].checksum == ("md5", "3df6f0d01a2c9592104656642f5e78a3")
    fineweb = CATALOG["fineweb10B"]
    assert [p.name for p in fineweb.selected(2)] == [
        "fineweb_val_000000.bin", "fineweb_train_000001.bin", "fineweb_train_000002.bin"]
    assert fineweb.max_shards == 103 and all(p.checksum is None for p in fineweb.parts)


def test_gzip_files_are_kept_as_published(tmp_path):
    body = mnist_files(tmp_path, n=5)["train-labels-idx1-ubyte.gz"]
    assert gzip.decompress(body)[:4] == b"\x00\x00\x08\x01"
