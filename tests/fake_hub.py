"""A stand-in for the Hugging Face Hub on 127.0.0.1: the endpoints huggingface_hub's create_repo and
upload_folder call, as huggingface_hub 2.x speaks them (hf_api.py, _commit_api.py, lfs.py):

    POST /api/repos/create                        create_repo            -> {"url"}; 409 if it exists
    GET  /api/models/{repo}                       repo_info (create_repo's 401/403 fallback)
    POST /api/validate-yaml                       a README.md's front matter is checked first
    POST /api/models/{repo}/preupload/{rev}       which files go by LFS ("lfs") or inline ("regular")
    POST /{repo}.git/info/lfs/objects/batch       LFS basic transfer: where to PUT each object
    PUT  /lfs/{oid}, POST /lfs/verify             the object itself (its SHA-256 checked), verified
    POST /api/models/{repo}/commit/{rev}          NDJSON: header, file (base64), lfsFile (by oid)

Only the legacy LFS transfer is served: with hf_xet installed huggingface_hub uploads LFS files
through Xet storage, a separate CAS protocol this server does not fake, so the client under test
runs with HF_HUB_DISABLE_XET=1. Like the Hub, binary files (and *.safetensors) go by LFS.
Every request is checked for `Authorization: Bearer <token>`; a wrong token gets 401.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

LFS_SUFFIXES = (".safetensors", ".bin", ".pt", ".gguf")


@dataclass
class Repo:
    private: bool | None
    files: dict[str, bytes] = field(default_factory=dict)
    commits: list[dict] = field(default_factory=list)


class FakeHub:
    def __init__(self, token: str):
        self.token = token
        self.repos: dict[str, Repo] = {}
        self.objects: dict[str, bytes] = {}      # LFS objects by SHA-256, PUT before the commit
        self.requests: list[str] = []            # "METHOD path", in order
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler(self))
        self.url = f"http://127.0.0.1:{self.server.server_port}"

    def __enter__(self):
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()

    # ---- the endpoints: each returns (status, json body)

    def route(self, method: str, path: str, body: bytes):
        if method == "POST" and path == "/api/repos/create":
            return self.create(json.loads(body))
        if method == "POST" and path == "/api/validate-yaml":
            return 200, {"errors": [], "warnings": []}
        if method == "PUT" and path.startswith("/lfs/"):
            return self.put_object(path.removeprefix("/lfs/"), body)
        if method == "POST" and path == "/lfs/verify":
            info = json.loads(body)
            ok = len(self.objects.get(info["oid"], b"")) == info["size"]
            return (200, {}) if ok else (404, {"error": "object not uploaded"})
        if m := re.fullmatch(r"/(.+)\.git/info/lfs/objects/batch", path):
            return self.lfs_batch(json.loads(body))
        if m := re.fullmatch(r"/api/models/(.+?/.+?)/(preupload|commit)/[^/]+", path):
            if m[1] not in self.repos:
                return 404, {"error": f"Repository {m[1]} not found"}
            return self.preupload(json.loads(body)) if m[2] == "preupload" else \
                self.commit(m[1], body)
        if method == "GET" and (m := re.fullmatch(r"/api/models/(.+?/.+?)", path)) and m[1] in self.repos:
            return 200, {"id": m[1], "sha": "0" * 40, "private": bool(self.repos[m[1]].private)}
        return 404, {"error": f"no route {method} {path}"}

    def create(self, payload: dict):
        repo_id = f"{payload['organization']}/{payload['name']}"
        if repo_id in self.repos:
            return 409, {"error": "You already created this model repo", "url": f"{self.url}/{repo_id}"}
        self.repos[repo_id] = Repo(private=payload.get("visibility") == "private"
                                   if "visibility" in payload else None)
        return 200, {"url": f"{self.url}/{repo_id}", "name": repo_id}

    def preupload(self, payload: dict):
        files = [{"path": f["path"], "shouldIgnore": False, "oid": None,
                  "uploadMode": "lfs" if is_lfs(f) else "regular"} for f in payload["files"]]
        return 200, {"files": files, "commitOid": "0" * 40}

    def lfs_batch(self, payload: dict):
        objects = [{"oid": o["oid"], "size": o["size"], "authenticated": True,
                    "actions": {"upload": {"href": f"{self.url}/lfs/{o['oid']}"},
                                "verify": {"href": f"{self.url}/lfs/verify"}}}
                   for o in payload["objects"]]
        return 200, {"transfer": "basic", "objects": objects}

    def put_object(self, oid: str, body: bytes):
        if hashlib.sha256(body).hexdigest() != oid:
            return 400, {"error": "content does not match its oid"}
        self.objects[oid] = body
        return 200, {}

    def commit(self, repo_id: str, body: bytes):
        repo = self.repos[repo_id]
        lines = [json.loads(line) for line in body.decode().splitlines() if line.strip()]
        header = next(line["value"] for line in lines if line["key"] == "header")
        for line in lines:
            value = line["value"]
            if line["key"] == "file":
                repo.files[value["path"]] = base64.b64decode(value["content"])
            elif line["key"] == "lfsFile":
                if value["oid"] not in self.objects:
                    return 422, {"error": f"LFS object of {value['path']} was never uploaded"}
                repo.files[value["path"]] = self.objects[value["oid"]]
        repo.commits.append(header)
        oid = hashlib.sha1(body).hexdigest()
        return 200, {"commitUrl": f"{self.url}/{repo_id}/commit/{oid}", "commitOid": oid, "success": True}


def is_lfs(entry: dict) -> bool:
    return entry["path"].endswith(LFS_SUFFIXES) or b"\0" in base64.b64decode(entry["sample"])


def handler(hub: FakeHub):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def answer(self):
            body = self.read_body()
            path = self.path.split("?")[0]
            hub.requests.append(f"{self.command} {path}")
            # an LFS upload URL is its own credential (the Hub's are presigned storage URLs)
            signed = self.command == "PUT" and path.startswith("/lfs/")
            if not signed and self.headers.get("Authorization") != f"Bearer {hub.token}":
                status, reply = 401, {"error": "Invalid credentials in Authorization header"}
            else:
                status, reply = hub.route(self.command, path, body)
            data = json.dumps(reply).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = do_PUT = answer

        def read_body(self) -> bytes:
            if self.headers.get("Transfer-Encoding", "").lower() != "chunked":
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))
            chunks = []  # a file object is streamed in chunks, without a Content-Length
            while size := int(self.rfile.readline().split(b";")[0], 16):
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            self.rfile.readline()
            return b"".join(chunks)

        def log_message(self, *args):  # quiet: the test reads hub.requests
            pass

    return Handler
