"""``python -m mtlbench data``: download from a local HTTP server on 127.0.0.1 (no outside
network), resume a partial file with a Range request, verify the sha256 / md5, extract,
check the layout, then train on the result."""
import hashlib
import http.server
import io
import json
import tarfile
import threading
import zipfile
from pathlib import Path

import pytest

import mtlbench.cli
from mtlbench.core.data import DataError
from mtlbench.core.registry import DATASETS
from test_loaders import write_mtan, write_taskonomy


class Server:
    """Serves ``files`` ({path: bytes}); honours ``Range: bytes=N-`` (206) and records it."""

    def __init__(self):
        files, ranges = {}, []

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                data = files.get(self.path)
                if data is None:
                    self.send_error(404)
                    return
                rng, start = self.headers.get("Range"), 0
                if rng:
                    start = int(rng.split("=")[1].split("-")[0])
                    ranges.append((self.path, start))
                body = data[start:]
                self.send_response(206 if rng else 200)
                self.send_header("Content-Length", str(len(body)))
                if rng:
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.files, self.ranges = files, ranges
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"


@pytest.fixture
def server():
    s = Server()
    yield s
    s.httpd.shutdown()
    s.httpd.server_close()


def zip_folder(folder: Path, top: str) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for f in sorted(folder.rglob("*")):
            if f.is_file():
                z.write(f, f"{top}/{f.relative_to(folder)}")
    return buf.getvalue()


def data(*args) -> int:
    return mtlbench.cli.main(["data", *args])


def test_download_resume_verify_extract_then_train(server, tmp_path, capsys):
    src = write_mtan(tmp_path / "src", labels=(("label_7", 7),), normal=False, H=8, W=16)
    blob = zip_folder(src, "cityscapes2")  # MTAN's zip holds one top folder
    server.files["/cityscapes2.zip"] = blob
    root = tmp_path / "data_root"
    root.mkdir()
    half = len(blob) // 2
    (root / ".cityscapes-cityscapes2.zip.part").write_bytes(blob[:half])  # an interrupted download
    sha = hashlib.sha256(blob).hexdigest()
    assert data("cityscapes", f"url={server.url}/cityscapes2.zip", f"sha256={sha}", f"data_root={root}") == 0
    assert server.ranges == [("/cityscapes2.zip", half)]  # resumed, not restarted
    out = capsys.readouterr().out
    assert "complete at" in out and "python -m mtlbench run dataset=cityscapes" in out
    assert (root / "cityscapes" / "train" / "label_7" / "0.npy").is_file()
    assert not list(root.glob(".cityscapes*"))  # archive and extraction folder removed
    results = tmp_path / "results"
    assert mtlbench.cli.main(["run", "dataset=cityscapes", f"data_root={root}", f"results_dir={results}",
                              "profile=tiny", "trainer.progress=false", "trainer.batch_size=2",
                              "backbone=small_cnn"]) == 0
    (run_json,) = results.rglob("run.json")
    assert json.loads(run_json.read_text())["status"] == "completed"
    # data check names exactly what a copy lacks
    (root / "cityscapes" / "val" / "depth" / "1.npy").unlink()
    capsys.readouterr()
    assert data("check", "cityscapes", f"data_root={root}") == 1
    out = capsys.readouterr().out
    assert f"1 file(s) in {root / 'cityscapes' / 'val' / 'depth'}/: 1.npy" in out


def test_checksum_mismatch_is_one_line_and_keeps_nothing(server, tmp_path, capsys):
    server.files["/school.mat"] = b"not the real file"
    root = tmp_path / "data_root"
    assert data("school", f"url={server.url}/school.mat", "sha256=" + "0" * 64, f"data_root={root}") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "sha256" in err[0] and "0" * 64 in err[0], err
    assert not [p for p in root.rglob("*") if p.is_file()]


def test_taskonomy_tars_md5_checked_into_the_per_building_layout(server, tmp_path, capsys):
    src = write_taskonomy(tmp_path / "src", buildings=("allensville", "beechwood"), views=2,
                          folders=("rgb", "segment_semantic"))
    md5 = []
    for b in ("allensville", "beechwood"):
        for d in ("rgb", "segment_semantic"):
            buf = io.BytesIO()
            with tarfile.open(fileobj=buf, mode="w") as t:
                t.add(src / b / d, arcname=d)  # as the server's tars: the domain folder inside
            server.files[f"/tk/{b}_{d}.tar"] = buf.getvalue()
            md5.append(f"{hashlib.md5(buf.getvalue()).hexdigest()}  {b}_{d}.tar")
    server.files["/tk/md5sum.txt"] = "\n".join(md5).encode()
    root = tmp_path / "tk"
    args = [f"url='{server.url}/tk/{{building}}_{{domain}}.tar'", f"root={root}", "buildings=[allensville,beechwood]",
            "domains=[rgb,segment_semantic]"]
    assert data("taskonomy", *args) == 0, capsys.readouterr()
    assert sorted(p.name for p in (root / "beechwood" / "segment_semantic").iterdir()) == \
        sorted(p.name for p in (src / "beechwood" / "segment_semantic").iterdir())
    server.files["/tk/beechwood_rgb.tar"] = b"changed on the server"
    assert data("taskonomy", *args, "force=true") == 2
    assert "md5" in capsys.readouterr().err


def test_missing_data_messages_name_the_command(tmp_path):
    with pytest.raises(DataError, match=r"python -m mtlbench data cityscapes"):
        DATASETS.get("cityscapes")(root=str(tmp_path))
    with pytest.raises(DataError, match=r"python -m mtlbench data school"):
        DATASETS.get("school")(root=str(tmp_path))


def test_yeast_names_its_extra(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "river", None)  # as if river were not installed
    monkeypatch.setitem(sys.modules, "river.datasets", None)
    with pytest.raises(DataError, match=r'pip install -e "\.\[yeast\]"'):
        DATASETS.get("yeast")()
