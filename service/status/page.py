"""The status page: one HTML file with its script and style inline (``page.html``), served with a
Content-Security-Policy that admits exactly those inline blocks (by hash) and connections to this
origin only: the page loads nothing from anywhere else and cannot be made to."""

from __future__ import annotations

import base64
import hashlib
import re
from functools import cache
from importlib.resources import files


@cache
def page_html() -> str:
    return files("service.status").joinpath("page.html").read_text(encoding="utf-8")


def _hashes(tag: str, html: str) -> str:
    blocks = re.findall(rf"<{tag}>(.*?)</{tag}>", html, flags=re.S)
    return " ".join(f"'sha256-{base64.b64encode(hashlib.sha256(b.encode()).digest()).decode()}'" for b in blocks)


@cache
def content_security_policy() -> str:
    html = page_html()
    return (f"default-src 'none'; script-src {_hashes('script', html)}; style-src {_hashes('style', html)}; "
            "connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
