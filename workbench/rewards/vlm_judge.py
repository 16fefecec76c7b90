"""VLM judge: a vision-language model behind an OpenAI-compatible endpoint scores each image.

RationalRewards style (arXiv 2604.11626): the judge sees the generated image and its prompt,
writes a short critique, then scores every rubric item on a 1-4 scale (N/A when an item does
not apply, e.g. *Text Rendering* for a prompt that asks for no text). The reward is

    r = clip((mean(valid scores, each clipped to [lo, hi]) - lo) / (hi - lo), 0, 1)

and each item's ``(score - lo) / (hi - lo)`` is logged as a sub-score.

Requests go to ``<base_url>/chat/completions`` (e.g. a local ``vllm serve``) with the image as
a base64 PNG data URL in an ``image_url`` content part, sent in parallel by a thread pool.
Only the standard library is used (``http.client``, as urllib does underneath, so that the
socket timeout can be tightened to a hard deadline: a request never takes more than
``timeout * (max_retries + 1)`` seconds, even against a server that drips bytes). Proxy
environment variables are not used. A sample whose request fails (connection, HTTP error,
timeout, malformed reply, no parseable scores) scores NaN, which the reward pipeline counts
as a failure and replaces with ``failure_score``; the batch always completes.
"""
from __future__ import annotations

import base64
import http.client
import io
import json
import logging
import math
import os
import re
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Dict, List, Optional, Sequence
from urllib.parse import urlsplit

from workbench.registry import REWARDS, ConfigError
from workbench.rewards.base import completion_text
from workbench.rewards.image import _images, to_pil

__all__ = ["vlm_judge", "parse_scores", "DEFAULT_RUBRIC", "DEFAULT_TEMPLATE"]

logger = logging.getLogger(__name__)

DEFAULT_RUBRIC = ("Text Faithfulness", "Physical & Visual Quality", "Text Rendering")
DEFAULT_TEMPLATE = """You are an expert judge of text-to-image generation. The image was generated for this prompt:
"{prompt}"

First write a brief critique of the image, going through each rubric item below. Then score each
item from {min} (very poor) to {max} (excellent); decimals are allowed. Write "N/A" for an item that
does not apply (for example Text Rendering when the prompt asks for no text in the image).

Rubric items:
{rubric}

End your answer with one JSON object on a line of its own that maps every item name to its score
or "N/A", for example:
{example}"""
_PLACEHOLDERS = ("{prompt}", "{rubric}", "{min}", "{max}", "{example}")
_RETRY_STATUS = {408, 409, 425, 429, 500, 502, 503, 504}
_NA = re.compile(r"^\s*(n\s*/?\s*a|none|null|not applicable)\s*\.?\s*$", re.I)
_NUMBER = re.compile(r"[-+]?\d+(?:\.\d+)?")
_LINE = re.compile(r"^[\s>*#\-\d.)]*\**\s*(?P<key>[^:=\n]+?)\s*\**\s*[:=]\s*\**\s*"
                   r"(?P<value>n\s*/?\s*a\b|not applicable|[-+]?\d+(?:\.\d+)?)", re.I | re.M)


def _norm(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


def _value(raw: Any) -> Optional[float]:
    """A score from a JSON value or text: float, or None for N/A; ValueError otherwise."""
    if raw is None:
        return None
    if isinstance(raw, bool):
        raise ValueError(f"score {raw!r} is not a number")
    if isinstance(raw, (int, float)):
        value = float(raw)
    elif _NA.match(str(raw)):
        return None
    else:
        m = _NUMBER.search(str(raw))
        if not m:
            raise ValueError(f"score {raw!r} is not a number or N/A")
        value = float(m.group())
    if not math.isfinite(value):
        raise ValueError(f"score {raw!r} is not finite")
    return value


def parse_scores(text: str, rubric: Sequence[str]) -> Dict[str, Optional[float]]:
    """Each rubric item's score (None for N/A) from the judge's reply: the last JSON object
    in ``text`` that names a rubric item, else the last ``Item: score`` line per item. Item
    names match ignoring case, spaces and punctuation. Raises ValueError when an item has no
    score, or no item has a numeric one."""
    wanted = {_norm(item): item for item in rubric}
    found: Dict[str, Optional[float]] = {}
    decoder = json.JSONDecoder()
    for start in reversed([m.start() for m in re.finditer(r"\{", text)]):
        try:
            obj, _ = decoder.raw_decode(text, start)
        except ValueError:
            continue
        if isinstance(obj, dict) and any(_norm(str(k)) in wanted for k in obj):
            found = {wanted[_norm(str(k))]: _value(v) for k, v in obj.items() if _norm(str(k)) in wanted}
            break
    if not found:
        for m in _LINE.finditer(text):
            key = _norm(m["key"])
            if key in wanted:
                found[wanted[key]] = _value(m["value"])  # later lines (the final answer) win
    missing = [item for item in rubric if item not in found]
    if missing:
        raise ValueError(f"no score for {', '.join(missing)} in the judge's reply: {text[-200:]!r}")
    if all(v is None for v in found.values()):
        raise ValueError("every rubric item is N/A")
    return {item: found[item] for item in rubric}


def _png_data_url(image: Any) -> str:
    buf = io.BytesIO()
    to_pil(image).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _prompt_text(prompt: Any) -> str:
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, (list, dict)):  # chat messages
        return completion_text(prompt)
    return str(prompt)  # e.g. a class id of a class-conditioned model


class _Judge:
    """The reward: one chat request per image, scores parsed and normalised (see module doc)."""

    def __init__(self, url: str, model: str, rubric: List[str], lo: float, hi: float, api_key: Optional[str],
                 timeout: float, max_retries: int, temperature: float, max_tokens: int, concurrency: int,
                 template: str) -> None:
        parts = urlsplit(url)
        self.https, self.host, self.port = parts.scheme == "https", parts.hostname, parts.port
        self.path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        self.model, self.rubric, self.lo, self.hi, self.api_key = model, rubric, lo, hi, api_key
        self.timeout, self.max_retries, self.temperature = timeout, max_retries, temperature
        self.max_tokens, self.concurrency, self.template = max_tokens, concurrency, template
        self.keys = [re.sub(r"[^a-z0-9]+", "_", item.lower()).strip("_") or f"item{i}" for i, item in enumerate(rubric)]
        self.keys = [k if k != "score" else "score_item" for k in self.keys]
        example = json.dumps({item: (hi if i % 2 == 0 else lo + (hi - lo) / 2) for i, item in enumerate(rubric)})
        self._fill = {"{rubric}": "\n".join(f"- {item}" for item in rubric), "{min}": f"{lo:g}",
                      "{max}": f"{hi:g}", "{example}": example}

    def message(self, prompt: Any) -> str:
        """The instruction text for one image generated from ``prompt``."""
        text = self.template
        for key, value in self._fill.items():
            text = text.replace(key, value)
        return text.replace("{prompt}", _prompt_text(prompt))

    def _post(self, body: bytes, deadline: float) -> str:
        """One HTTP attempt that ends by ``deadline`` (time.monotonic); the reply's text."""
        def left() -> float:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"no complete reply within {self.timeout:g} s")
            return remaining

        cls = http.client.HTTPSConnection if self.https else http.client.HTTPConnection
        conn = cls(self.host, self.port, timeout=left())
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        try:
            conn.connect()
            sock = conn.sock  # kept: the connection drops it when the reply says "close"
            sock.settimeout(left())
            conn.request("POST", self.path, body=body, headers=headers)
            sock.settimeout(left())
            resp = conn.getresponse()
            chunks = []
            while True:
                sock.settimeout(left())
                chunk = resp.read1(65536)
                if not chunk:
                    break
                chunks.append(chunk)
            data = b"".join(chunks)
        except socket.timeout:
            raise TimeoutError(f"no complete reply within {self.timeout:g} s") from None
        finally:
            conn.close()
        if resp.status != 200:
            err = _HTTPError(f"HTTP {resp.status} from {self.path}: {data[:200].decode('utf-8', 'replace')}")
            err.retry = resp.status in _RETRY_STATUS
            raise err
        try:
            content = json.loads(data)["choices"][0]["message"]["content"]
        except (ValueError, KeyError, IndexError, TypeError):
            raise ValueError(f"malformed chat-completions reply: {data[:200]!r}") from None
        if isinstance(content, list):  # content parts
            content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
        if not isinstance(content, str):
            raise ValueError(f"malformed chat-completions reply: content is {type(content).__name__}")
        return content

    def score_one(self, image: Any, prompt: Any) -> Dict[str, Optional[float]]:
        """Rubric scores (None for N/A) of one image; raises after the last failed attempt."""
        body = json.dumps({
            "model": self.model,
            "messages": [{"role": "user", "content": [
                {"type": "image_url", "image_url": {"url": _png_data_url(image)}},
                {"type": "text", "text": self.message(prompt)},
            ]}],
            "temperature": self.temperature,
            "max_tokens": self.max_tokens,
        }).encode("utf-8")
        end = time.monotonic() + self.timeout * (self.max_retries + 1)
        for attempt in range(self.max_retries + 1):
            start = time.monotonic()
            try:
                return parse_scores(self._post(body, min(start + self.timeout, end)), self.rubric)
            except Exception as e:  # noqa: BLE001 - every failure is this sample's
                if attempt == self.max_retries or not getattr(e, "retry", True):
                    raise
                pause = min(0.5 * 2 ** attempt, max(0.0, end - time.monotonic() - self.timeout))
                time.sleep(pause)
        raise AssertionError("unreachable")

    def _safe(self, image: Any, prompt: Any):
        try:
            return self.score_one(image, prompt)
        except Exception as e:  # noqa: BLE001
            return e

    def __call__(self, completions: List[Any], prompt: Optional[List[Any]] = None,
                 images: Optional[List[Any]] = None, **_: Any) -> Dict[str, List[float]]:
        """``{"score": [N], <item>: [N]}`` in [0, 1] for N images and their prompts; NaN where
        a sample's request failed (logged here, counted as failures by the pipeline)."""
        imgs = list(_images(completions, images))
        if prompt is None:
            raise KeyError("vlm_judge needs the 'prompt' column (the text each image was generated from)")
        if len(prompt) != len(imgs):
            raise ValueError(f"vlm_judge got {len(imgs)} images but {len(prompt)} prompts")
        if not imgs:
            return {"score": []}
        with ThreadPoolExecutor(max_workers=min(self.concurrency, len(imgs))) as pool:
            results = list(pool.map(self._safe, imgs, list(prompt)))
        span = self.hi - self.lo
        out: Dict[str, List[float]] = {"score": []}
        out.update({k: [] for k in self.keys})
        errors = []
        for i, res in enumerate(results):
            if isinstance(res, BaseException):
                errors.append(f"sample {i}: {type(res).__name__}: {res}")
                out["score"].append(math.nan)
                for k in self.keys:
                    out[k].append(math.nan)
                continue
            items = {item: (None if v is None else (min(self.hi, max(self.lo, v)) - self.lo) / span) for item, v in res.items()}
            valid = [v for v in items.values() if v is not None]
            score = min(1.0, max(0.0, sum(valid) / len(valid)))
            out["score"].append(score)
            for key, item in zip(self.keys, self.rubric):
                out[key].append(score if items[item] is None else items[item])  # N/A logs as the sample's score
        if errors:
            logger.warning("vlm_judge: %d of %d requests failed: %s", len(errors), len(imgs), "; ".join(errors[:3]))
        return out


class _HTTPError(Exception):
    retry = True


@REWARDS.register("vlm_judge")
def vlm_judge(model: str, base_url: str = "http://localhost:8000/v1", rubric: Sequence[str] = DEFAULT_RUBRIC,
              score_range: Sequence[float] = (1, 4), api_key: Optional[str] = None, timeout: float = 60.0,
              max_retries: int = 2, temperature: float = 0.1, max_tokens: int = 1024, concurrency: int = 8,
              prompt_template: Optional[str] = None) -> _Judge:
    """Score each image in [0, 1] with a VLM judge over rubric items (RationalRewards style).

    ``model``: the served model name. ``base_url``: the OpenAI-compatible API root (requests
    go to ``<base_url>/chat/completions``). ``rubric``: item names, scored on
    ``score_range`` ``[lo, hi]`` (default 1-4). ``api_key``: sent as a Bearer token (default:
    the ``OPENAI_API_KEY`` environment variable, if set). ``timeout``: seconds per attempt
    (a hard deadline), ``max_retries``: further attempts after a failure (connection error,
    timeout, HTTP 408/429/5xx, unparseable reply). ``concurrency``: parallel requests.
    ``prompt_template``: replaces the instruction; ``{prompt}``, ``{rubric}``, ``{min}``,
    ``{max}`` and ``{example}`` are filled in (other braces are left as they are).
    Returns ``{"score": [...], "<item>": [...]}``; failed samples are NaN (pipeline failures).
    """
    if not model or not isinstance(model, str):
        raise ConfigError(f"model must name the served model, got {model!r}")
    url = str(base_url).rstrip("/")
    if urlsplit(url).scheme not in ("http", "https") or not urlsplit(url).hostname:
        raise ConfigError(f"base_url must be an http(s) URL such as http://localhost:8000/v1, got {base_url!r}")
    if not url.endswith("/chat/completions"):
        url += "/chat/completions"
    if isinstance(rubric, str) or not rubric or not all(isinstance(r, str) and r.strip() for r in rubric):
        raise ConfigError(f"rubric must be a non-empty list of item names, got {rubric!r}")
    rubric = [str(r).strip() for r in rubric]
    if len({_norm(r) for r in rubric}) != len(rubric):
        raise ConfigError(f"rubric items must have distinct names, got {rubric}")
    try:
        lo, hi = (float(v) for v in score_range)
    except (TypeError, ValueError):
        raise ConfigError(f"score_range must be [min, max], got {score_range!r}") from None
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
        raise ConfigError(f"score_range must be [min, max] with min < max, got {score_range!r}")
    checks = [(float(timeout) > 0, "timeout must be > 0"), (int(max_retries) >= 0, "max_retries must be >= 0"),
              (float(temperature) >= 0, "temperature must be >= 0"), (int(max_tokens) >= 1, "max_tokens must be >= 1"),
              (int(concurrency) >= 1, "concurrency must be >= 1")]
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)
    template = DEFAULT_TEMPLATE if prompt_template is None else str(prompt_template)
    if not any(p in template for p in _PLACEHOLDERS[:2]):
        logger.warning("vlm_judge: prompt_template has neither {prompt} nor {rubric}")
    key = api_key if api_key is not None else os.environ.get("OPENAI_API_KEY")
    return _Judge(url, model, rubric, lo, hi, key, float(timeout), int(max_retries), float(temperature),
                  int(max_tokens), int(concurrency), template)
