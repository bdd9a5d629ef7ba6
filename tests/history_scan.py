"""Reading a workflow's whole history as text, to prove what is not in it."""

from __future__ import annotations

import base64
import json
import re
from typing import Iterable


def _without_payload_data(node):
    """The history JSON with payload bodies taken out (they are scanned decoded): base64
    text would otherwise match short needles by chance."""
    if isinstance(node, dict):
        return {k: ("" if k == "data" and "metadata" in node else _without_payload_data(v)) for k, v in node.items()}
    if isinstance(node, list):
        return [_without_payload_data(v) for v in node]
    return node


def _decoded_payloads(node) -> list[str]:
    """Payload data is base64 inside the history JSON: decode every payload found."""
    out: list[str] = []
    if isinstance(node, dict):
        if "data" in node and "metadata" in node and isinstance(node["data"], str):
            out.append(base64.b64decode(node["data"]).decode("utf-8", "replace"))
        for v in node.values():
            out += _decoded_payloads(v)
    elif isinstance(node, list):
        for v in node:
            out += _decoded_payloads(v)
    return out


def history_text(history) -> str:
    doc = history.to_json_dict()
    return json.dumps(_without_payload_data(doc)) + "\n".join(_decoded_payloads(doc))


def found_in(text: str, needles: Iterable[str]) -> list[str]:
    """The needles that occur in `text` as whole words."""
    return sorted(n for n in set(needles) if n and re.search(rf"(?<!\w){re.escape(n)}(?!\w)", text))
