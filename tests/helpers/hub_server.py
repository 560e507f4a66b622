"""A small Hugging Face hub server on localhost for tests: the HTTP endpoints `huggingface_hub` uses to
create a model repo, upload a folder in one commit (files inline, "regular" upload mode) and download a
snapshot. It keeps repositories in memory; each commit gets a new sha."""
from __future__ import annotations

import base64
import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlparse

import yaml


class LocalHub:
    def __init__(self):
        self.repos: dict[str, dict] = {}  # repo_id -> {"files": {path: bytes}, "sha": str, "private": bool}
        self.requests: list[str] = []
        self.model_cards: list[dict] = []  # front matter of every README.md validated
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()

    def _handler(self):
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _send(self, code: int, body: bytes | dict | list = b"", headers: dict | None = None, head: bool = False):
                is_json = not isinstance(body, bytes)
                data = json.dumps(body).encode() if is_json else body
                self.send_response(code)
                self.send_header("Content-Type", "application/json" if is_json else "application/octet-stream")
                self.send_header("Content-Length", str(len(data)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                if not head:
                    self.wfile.write(data)

            def _body(self) -> bytes:
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

            def do_POST(self):
                path = unquote(urlparse(self.path).path)
                hub.requests.append(f"POST {path}")
                body = self._body()
                if path == "/api/repos/create":
                    req = json.loads(body)
                    repo_id = f"{req['organization']}/{req['name']}" if req.get("organization") else req["name"]
                    if repo_id in hub.repos:
                        return self._send(409, {"error": "You already created this model repo", "url": f"{hub.url}/{repo_id}"})
                    private = req.get("visibility") == "private" or bool(req.get("private"))
                    hub.repos[repo_id] = {"files": {}, "sha": "0" * 40, "private": private}
                    return self._send(200, {"url": f"{hub.url}/{repo_id}", "name": repo_id})
                if path == "/api/validate-yaml":  # the hub checks a model card's front matter before a commit
                    content = json.loads(body)["content"]
                    try:
                        meta = yaml.safe_load(content.split("---")[1]) if content.startswith("---") else {}
                        assert isinstance(meta, dict), "front matter is not a mapping"
                    except Exception as e:  # noqa: BLE001 - reported to the client like the hub does
                        return self._send(400, {"error": f"Invalid metadata in README.md: {e}"})
                    hub.model_cards.append(meta)
                    return self._send(200, {"errors": [], "warnings": []})
                parts = path.split("/")  # /api/models/{owner}/{name}/{preupload|commit}/{revision}
                repo_id, action = "/".join(parts[3:5]), parts[5]
                if repo_id not in hub.repos:
                    return self._send(404, {"error": "Repository not found"}, {"X-Error-Code": "RepoNotFound"})
                if action == "preupload":
                    files = json.loads(body)["files"]
                    return self._send(200, {"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False}
                                                      for f in files]})
                if action == "commit":
                    repo = hub.repos[repo_id]
                    for line in body.decode().splitlines():
                        item = json.loads(line)
                        if item["key"] == "file":
                            repo["files"][item["value"]["path"]] = base64.b64decode(item["value"]["content"])
                    repo["sha"] = hashlib.sha1(repr(sorted((k, hashlib.sha1(v).hexdigest()) for k, v in repo["files"].items())).encode()).hexdigest()
                    return self._send(200, {"commitUrl": f"{hub.url}/{repo_id}/commit/{repo['sha']}",
                                            "commitOid": repo["sha"], "pullRequestUrl": None})
                return self._send(404, {"error": f"unknown endpoint {path}"})

            def _get(self, head: bool):
                path = unquote(urlparse(self.path).path)
                hub.requests.append(f"{'HEAD' if head else 'GET'} {path}")
                parts = path.strip("/").split("/")
                if parts[:2] == ["api", "models"]:  # /api/models/{owner}/{name}[/revision/{rev}]
                    repo_id = "/".join(parts[2:4])
                    repo = hub.repos.get(repo_id)
                    if repo is None:
                        return self._send(404, {"error": "Repository not found"}, {"X-Error-Code": "RepoNotFound"}, head)
                    if len(parts) > 4 and parts[4] == "tree":  # /api/models/{owner}/{name}/tree/{rev}[/{folder}]
                        folder = "/".join(parts[6:])
                        return self._send(200, [{"type": "file", "path": f, "size": len(d),
                                                 "oid": hashlib.sha1(d).hexdigest()}
                                                for f, d in sorted(repo["files"].items())
                                                if not folder or f.startswith(folder + "/")], head=head)
                    return self._send(200, {"id": repo_id, "modelId": repo_id, "sha": repo["sha"], "private": repo["private"],
                                            "siblings": [{"rfilename": f} for f in sorted(repo["files"])]}, head=head)
                if len(parts) >= 5 and parts[2] == "resolve":  # /{owner}/{name}/resolve/{rev}/{file}
                    repo = hub.repos.get("/".join(parts[:2]))
                    name = "/".join(parts[4:])
                    if repo is None or name not in repo["files"]:
                        return self._send(404, {"error": "Entry not found"}, {"X-Error-Code": "EntryNotFound"}, head)
                    data = repo["files"][name]
                    return self._send(200, data, {"X-Repo-Commit": repo["sha"], "ETag": f'"{hashlib.sha1(data).hexdigest()}"'},
                                      head)
                return self._send(404, {"error": f"unknown endpoint {path}"}, head=head)

            def do_GET(self):
                self._get(head=False)

            def do_HEAD(self):
                self._get(head=True)

        return Handler


def run_as_a_user(python, script: str, checkpoint, source: str, images, tmp_path, *args, timeout: int = 600) -> dict:
    """Run `script` with `python` in a fresh process that sees only PATH and HOME (and, for `source` "hub id", a
    local test hub), as a user who found the checkpoint would. It gets json [name, image paths, *args] as its
    argument: name is the checkpoint folder (the hub offline), or, for "hub id", the id it was published under
    as is. Returns the JSON of the script's last output line."""
    import subprocess

    import pytest

    from molmini.hub.publish import push_folder
    paths = []
    for i, image in enumerate(images):
        paths.append(str(tmp_path / f"chart{i}.png"))
        image.save(paths[-1])
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "OMP_NUM_THREADS": "1",
           "HF_MODULES_CACHE": str(tmp_path / "modules")}
    with LocalHub() as hub:
        if source == "hub id":
            env.update(HF_ENDPOINT=hub.url, HF_HUB_CACHE=str(tmp_path / "hub-cache"), HF_TOKEN="hf_local_test_token")
            with pytest.MonkeyPatch.context() as patch:
                patch.setenv("HF_ENDPOINT", hub.url)
                patch.setenv("HF_TOKEN", "hf_local_test_token")
                push_folder(checkpoint, "alice/chart-model")
            name = "alice/chart-model"
        else:
            env["HF_HUB_OFFLINE"] = "1"
            name = str(checkpoint)
        res = subprocess.run([str(python), "-c", script, json.dumps([name, paths, *args])], cwd=tmp_path, env=env,
                             capture_output=True, text=True, timeout=timeout)
    assert res.returncode == 0, res.stderr[-3000:]
    return json.loads(res.stdout.strip().splitlines()[-1])
