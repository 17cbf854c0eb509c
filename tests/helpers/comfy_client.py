"""A small client for a real ComfyUI server: submit an API prompt, follow /ws to its end, read the results.

Only what the host's venv already has (aiohttp, numpy, pillow) plus the standard library.
"""
from __future__ import annotations

import asyncio
import io
import json
import urllib.error
import urllib.parse
import urllib.request
import uuid
from dataclasses import dataclass, field

import numpy as np

CORE_EVENTS = {"status", "execution_start", "execution_cached", "executing", "executed", "progress", "progress_state",
               "execution_success", "execution_error", "execution_interrupted", "crystools.monitor"}


class PromptRejected(RuntimeError):
    """POST /prompt refused the prompt or some of its outputs (validation failed): .status and .body hold the answer."""

    def __init__(self, status: int, body):
        self.status, self.body = status, body
        super().__init__(f"POST /prompt -> HTTP {status}: {json.dumps(body)[:2000]}")


class PromptFailed(RuntimeError):
    """The prompt ran and failed: .data is the execution_error message (node_id, node_type, exception_message...)."""

    def __init__(self, data: dict):
        self.data = data
        super().__init__(f"{data.get('node_type')} (node {data.get('node_id')}): {data.get('exception_type')}: "
                         f"{data.get('exception_message')}\n{''.join(data.get('traceback') or [])}")


@dataclass
class RunResult:
    prompt_id: str
    outputs: dict
    status: dict
    events: list = field(default_factory=list)  # every non-core ws message seen while the prompt ran: (type, data)

    def custom_events(self, event_type: str) -> list[dict]:
        return [data for kind, data in self.events if kind == event_type]


class ComfyClient:
    def __init__(self, url: str, timeout: float = 600.0):
        self.url = url.rstrip("/")
        self.timeout = timeout

    # -- plain HTTP -------------------------------------------------------------------------------------------
    def get_json(self, path: str):
        with urllib.request.urlopen(self.url + path, timeout=60) as response:
            return json.loads(response.read())

    def get_bytes(self, path: str) -> bytes:
        with urllib.request.urlopen(self.url + path, timeout=60) as response:
            return response.read()

    def upload_image(self, data: bytes, name: str, *, overwrite: bool = True) -> str:
        """POST /upload/image (multipart); returns the name to give LoadImage."""
        boundary = uuid.uuid4().hex
        parts = [f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"{name}\"\r\n"
                 f"Content-Type: image/png\r\n\r\n".encode(), data, b"\r\n",
                 f"--{boundary}\r\nContent-Disposition: form-data; name=\"overwrite\"\r\n\r\n"
                 f"{'true' if overwrite else 'false'}\r\n--{boundary}--\r\n".encode()]
        request = urllib.request.Request(self.url + "/upload/image", data=b"".join(parts), method="POST",
                                         headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
        with urllib.request.urlopen(request, timeout=60) as response:
            answer = json.loads(response.read())
        return answer["name"] if not answer.get("subfolder") else f"{answer['subfolder']}/{answer['name']}"

    def image(self, file_info: dict) -> np.ndarray:
        """An output image ({filename, subfolder, type} from /history) as a float array [H, W, C] in [0, 1]."""
        from PIL import Image

        query = urllib.parse.urlencode({k: file_info.get(k, "") for k in ("filename", "subfolder", "type")})
        picture = Image.open(io.BytesIO(self.get_bytes("/view?" + query)))
        return np.asarray(picture.convert("RGB"), dtype=np.float32) / 255.0

    # -- prompts --------------------------------------------------------------------------------------------------
    def run(self, prompt: dict, timeout: float | None = None) -> RunResult:
        """Submit an API-format prompt and wait for its end; raises PromptRejected or PromptFailed."""
        return asyncio.run(self._run(prompt, timeout or self.timeout))

    async def _run(self, prompt: dict, timeout: float) -> RunResult:
        import aiohttp

        client_id = uuid.uuid4().hex
        ws_url = self.url.replace("http://", "ws://", 1) + f"/ws?clientId={client_id}"
        events: list = []
        async with aiohttp.ClientSession() as session:
            async with session.ws_connect(ws_url, max_msg_size=0) as ws:
                async with session.post(self.url + "/prompt", json={"prompt": prompt, "client_id": client_id}) as answer:
                    body = await answer.json(content_type=None)
                    if answer.status != 200 or body.get("node_errors"):  # 200 + node_errors: outputs were dropped
                        raise PromptRejected(answer.status, body)
                prompt_id = body["prompt_id"]
                loop = asyncio.get_running_loop()
                deadline = loop.time() + timeout
                while True:
                    remaining = deadline - loop.time()
                    if remaining <= 0:
                        raise TimeoutError(f"prompt {prompt_id} did not finish within {timeout} s")
                    message = await asyncio.wait_for(ws.receive(), remaining)
                    if message.type in (aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR):
                        raise RuntimeError(f"websocket closed while prompt {prompt_id} ran")
                    if message.type != aiohttp.WSMsgType.TEXT:
                        continue  # binary latent previews
                    event = json.loads(message.data)
                    kind, data = event.get("type"), event.get("data") or {}
                    if kind not in CORE_EVENTS:
                        events.append((kind, data))
                        continue
                    if data.get("prompt_id") != prompt_id:
                        continue
                    if kind == "execution_error":
                        raise PromptFailed(data)
                    if kind == "execution_interrupted":
                        raise RuntimeError(f"prompt {prompt_id} was interrupted")
                    if kind == "executing" and data.get("node") is None:
                        break
        history = self.get_json(f"/history/{prompt_id}")[prompt_id]
        return RunResult(prompt_id, history.get("outputs", {}), history.get("status", {}), events)
