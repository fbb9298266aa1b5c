"""The public client installs alone: importing and using it needs httpx and the standard library,
never the server's packages or its heavy dependencies."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SERVER_SIDE = ("fastapi", "pydantic", "pydantic_settings", "starlette", "uvicorn", "torch", "cv2", "numpy", "yaml",
               "service", "algorithms", "monitor", "autoscaler", "lambda_enqueue")


def run_python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)


def blocking(names: tuple[str, ...]) -> str:
    # None in sys.modules makes any import of the name raise ImportError.
    return f"import sys\nfor name in {names!r}:\n    sys.modules[name] = None\n"


def test_the_client_needs_httpx_alone():
    proc = run_python(blocking(SERVER_SIDE + ("cloudpickle",)) + """
import scantide
from scantide import (Client, Task, Knot, TaskFailed, ScantideError, InvalidRequest, AuthError, NotFound, Conflict,
                      Unavailable, SignatureError, verify_signature, sign)
with Client("http://127.0.0.1:9", "token", timeout_s=1, retries=0) as client:
    assert client.base_url == "http://127.0.0.1:9"
assert scantide.__version__ == "0.1.0"
loaded = sorted(m.split(".")[0] for m in sys.modules if sys.modules[m] is not None)
print(" ".join(loaded))
""")
    assert proc.returncode == 0, proc.stderr
    loaded = set(proc.stdout.split())
    assert "httpx" in loaded and "cloudpickle" not in loaded
    assert not loaded & set(SERVER_SIDE), loaded & set(SERVER_SIDE)


def test_signatures_and_errors_need_the_standard_library_alone():
    # service.signing re-exports scantide.signing, and the enqueue Lambda has no httpx.
    proc = run_python(blocking(("fastapi", "starlette", "torch", "cv2", "numpy", "httpx", "cloudpickle")) + """
from scantide.signing import sign, verify_signature
from scantide.errors import SignatureError
body = b"{}"
verify_signature("secret-0123456789", sign("secret-0123456789", "evt_1", body), body)
import service.signing
assert service.signing.SignatureError is SignatureError
""")
    assert proc.returncode == 0, proc.stderr
