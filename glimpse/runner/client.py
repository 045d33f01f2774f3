"""A small ComfyUI client over HTTP (stdlib urllib) and the /ws websocket (websocket-client); no ComfyUI imports.

Errors are split by what the caller can do about them:

* ``ServerUnreachable``: connection refused/reset/timed out, or the websocket dropped: the server is gone, its work can
  move to another server.
* ``PromptRejected``: ``POST /prompt`` answered 400; the message lists every node error (node id, class, input,
  message) readably.
* ``ExecutionFailed``: the server ran the prompt and a node raised; the message is the node's own exception message.
* ``Interrupted``: the prompt was interrupted on the server (someone pressed Cancel, or /interrupt).
"""
from __future__ import annotations

import json
import mimetypes
import socket
import threading
import urllib.error
import urllib.parse
import urllib.request
import uuid
from pathlib import Path
from typing import Callable

import websocket

CONNECT_TIMEOUT = 4.0  # seconds: an unreachable server is reported well within 5 s


class ServerUnreachable(ConnectionError):
    pass


class PromptRejected(RuntimeError):
    def __init__(self, message: str, response: dict):
        super().__init__(message)
        self.response = response


class ExecutionFailed(RuntimeError):
    def __init__(self, message: str, data: dict):
        super().__init__(message)
        self.data = data


class Interrupted(RuntimeError):
    pass


def normalize_url(url: str) -> str:
    url = url.strip().rstrip("/")
    return url if "://" in url else f"http://{url}"


def format_node_errors(response: dict, workflow: dict | None = None) -> str:
    """POST /prompt's 400 answer as lines: 'node 12 (LoadViewSet) input path: <message>: <details>'."""
    lines = []
    err = response.get("error")
    if isinstance(err, dict):
        text = err.get("message", "")
        if err.get("details"):
            text += f": {err['details']}"
        lines.append(text)
    elif err:
        lines.append(str(err))
    for nid, ne in (response.get("node_errors") or {}).items():
        cls = ne.get("class_type") or (workflow or {}).get(nid, {}).get("class_type", "?")
        seen = set()
        for e in ne.get("errors", []):
            inp = (e.get("extra_info") or {}).get("input_name")
            msg, details = e.get("message", ""), str(e.get("details", ""))
            if e.get("type") == "custom_validation_failed":
                # one entry per validated input, each "input - <the node's message>": report the message once
                text = details.split(" - ", 1)[1] if " - " in details else details
                line = f"  node {nid} ({cls}): validation failed: {text}"
            else:
                where = f"node {nid} ({cls})" + (f" input '{inp}'" if inp else "")
                line = f"  {where}: {msg}" + (f": {details}" if details and details not in msg else "")
            if line not in seen:
                seen.add(line)
                lines.append(line)
    return "\n".join(lines) or json.dumps(response)[:2000]


def format_execution_error(data: dict) -> str:
    return (f"node {data.get('node_id')} ({data.get('node_type')}) failed: "
            f"{data.get('exception_type', 'Exception')}: {str(data.get('exception_message', '')).strip()}")


class ComfyClient:
    """One ComfyUI server. Thread-safe enough for one worker thread per client."""

    def __init__(self, url: str, timeout: float = 60.0):
        self.url = normalize_url(url)
        self.timeout = timeout
        self.client_id = uuid.uuid4().hex
        parts = urllib.parse.urlsplit(self.url)
        scheme = "wss" if parts.scheme == "https" else "ws"
        self.ws_url = f"{scheme}://{parts.netloc}{parts.path}/ws?clientId={self.client_id}"

    def __repr__(self) -> str:
        return f"ComfyClient({self.url})"

    # -- HTTP ---------------------------------------------------------------------------------------------------
    def _request(self, method: str, path: str, data: bytes | None = None, headers: dict | None = None,
                 timeout: float | None = None) -> bytes:
        req = urllib.request.Request(self.url + path, data=data, method=method, headers=headers or {})
        try:
            with urllib.request.urlopen(req, timeout=timeout or self.timeout) as r:
                return r.read()
        except urllib.error.HTTPError:
            raise
        except (urllib.error.URLError, ConnectionError, socket.timeout, TimeoutError, OSError) as e:
            reason = getattr(e, "reason", e)
            raise ServerUnreachable(f"ComfyUI server {self.url} is unreachable ({reason})") from None

    def _json(self, method: str, path: str, body=None, timeout: float | None = None):
        data = None if body is None else json.dumps(body).encode()
        headers = {"Content-Type": "application/json"} if data is not None else {}
        return json.loads(self._request(method, path, data, headers, timeout) or b"null")

    def check(self) -> dict:
        """GET /system_stats within CONNECT_TIMEOUT; ServerUnreachable otherwise."""
        try:
            return self._json("GET", "/system_stats", timeout=CONNECT_TIMEOUT)
        except urllib.error.HTTPError as e:
            raise ServerUnreachable(f"ComfyUI server {self.url} is unreachable (HTTP {e.code} on /system_stats: not a "
                                    "ComfyUI server, or a proxy in between?)") from None
        except json.JSONDecodeError:
            raise ServerUnreachable(f"ComfyUI server {self.url} is unreachable (/system_stats is not JSON: not a "
                                    "ComfyUI server?)") from None

    def object_info(self) -> dict:
        return self._json("GET", "/object_info")

    def upload(self, path: Path, subfolder: str) -> dict:
        """POST /upload/image (any file type; ComfyUI stores it as is) into input/<subfolder>/, overwriting."""
        path = Path(path)
        boundary = uuid.uuid4().hex
        ctype = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        parts = []
        for name, value in (("subfolder", subfolder), ("type", "input"), ("overwrite", "true")):
            parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode())
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="{path.name}"\r\n'
                     f"Content-Type: {ctype}\r\n\r\n".encode() + path.read_bytes() + b"\r\n")
        parts.append(f"--{boundary}--\r\n".encode())
        try:
            return json.loads(self._request("POST", "/upload/image", b"".join(parts),
                                            {"Content-Type": f"multipart/form-data; boundary={boundary}"}))
        except urllib.error.HTTPError as e:
            raise RuntimeError(f"{self.url} refused the upload of {path} (HTTP {e.code}: "
                               f"{e.read()[:300].decode(errors='replace')})") from None

    def queue(self, workflow: dict, source: str = "workflow") -> str:
        """POST /prompt; returns the prompt id or raises PromptRejected with the node errors."""
        try:
            answer = self._json("POST", "/prompt", {"prompt": workflow, "client_id": self.client_id})
        except urllib.error.HTTPError as e:
            body = e.read()
            try:
                response = json.loads(body)
            except json.JSONDecodeError:
                response = {"error": body[:2000].decode(errors="replace")}
            raise PromptRejected(f"{self.url} rejected {source}:\n" + format_node_errors(response, workflow),
                                 response) from None
        if answer.get("node_errors"):
            raise PromptRejected(f"{self.url} rejected {source}:\n" + format_node_errors(answer, workflow), answer)
        return answer["prompt_id"]

    def history(self, prompt_id: str) -> dict:
        return self._json("GET", f"/history/{prompt_id}").get(prompt_id, {})

    def view(self, filename: str, subfolder: str = "", type: str = "output") -> bytes:
        q = urllib.parse.urlencode({"filename": filename, "subfolder": subfolder, "type": type})
        return self._request("GET", f"/view?{q}")

    def interrupt(self, prompt_id: str) -> None:
        """Interrupt ``prompt_id`` only when it is the one running (other clients' prompts are left alone)."""
        self._json("POST", "/interrupt", {"prompt_id": prompt_id}, timeout=CONNECT_TIMEOUT)

    def delete_queued(self, prompt_ids: list[str]) -> None:
        self._json("POST", "/queue", {"delete": list(prompt_ids)}, timeout=CONNECT_TIMEOUT)

    # -- websocket ----------------------------------------------------------------------------------------------
    def run(self, workflow: dict, on_event: Callable[[str, dict], None] | None = None,
            stop: threading.Event | None = None, source: str = "workflow",
            on_queued: Callable[[str], None] | None = None) -> tuple[str, dict]:
        """Queue ``workflow`` and follow /ws until it finishes; returns (prompt_id, history entry).

        ``on_event(type, data)`` sees every JSON message about this prompt (progress, executing, executed, ...).
        Setting ``stop`` makes it interrupt the prompt on the server and raise Interrupted.
        """
        try:
            ws = websocket.create_connection(self.ws_url, timeout=CONNECT_TIMEOUT)
        except (OSError, websocket.WebSocketException) as e:
            raise ServerUnreachable(f"ComfyUI server {self.url} is unreachable (websocket: {e})") from None
        try:
            prompt_id = self.queue(workflow, source)
            if on_queued:
                on_queued(prompt_id)
            ws.settimeout(1.0)
            while True:
                if stop is not None and stop.is_set():
                    try:
                        self.delete_queued([prompt_id])
                        self.interrupt(prompt_id)
                    except (ServerUnreachable, urllib.error.HTTPError):
                        pass
                    raise Interrupted(f"{source} interrupted")
                try:
                    msg = ws.recv()
                except websocket.WebSocketTimeoutException:
                    continue
                except (OSError, websocket.WebSocketException) as e:
                    raise ServerUnreachable(f"lost the connection to ComfyUI server {self.url} ({e or 'closed'})") \
                        from None
                if not isinstance(msg, str):
                    continue  # binary previews
                try:
                    m = json.loads(msg)
                except json.JSONDecodeError:
                    continue
                kind, data = m.get("type"), m.get("data") or {}
                if data.get("prompt_id") not in (None, prompt_id):
                    continue
                if kind == "execution_error":
                    raise ExecutionFailed(format_execution_error(data), data)
                if kind == "execution_interrupted":
                    raise Interrupted(f"{source} was interrupted on {self.url}")
                if data.get("prompt_id") == prompt_id and on_event:
                    on_event(kind, data)
                if kind == "executing" and data.get("node") is None and data.get("prompt_id") == prompt_id:
                    return prompt_id, self.history(prompt_id)
        finally:
            try:
                ws.close()
            except Exception:  # closing a dead socket
                pass
