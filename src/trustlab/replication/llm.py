"""The LLM forms of the generality score and of caption generalization, over any
OpenAI-compatible chat-completions endpoint, never required.

Every answer is cached on disk (JSON lines under ``$TRUSTLAB_DATA/cache/llm``, one file per
endpoint, model and task, appended and flushed per caption), so an interrupted dataset resumes
where it stopped. A request that times out or fails is retried with backoff; a caption whose
request still fails, or whose answer is not a usable caption or score, falls back to the
offline (WordNet) method for that caption only, and the fallback is counted, not cached. After
three failed requests in a row the endpoint is taken as down and the rest falls back at once.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Callable

from trustlab.data.store import data_root
from trustlab.errors import ConfigError

CRITERIA = (
    "no named people, places, brands or titles",
    "no numbers or precise quantities",
    "broad nouns rather than narrow ones",
    "no fine visual detail (colours, textures, exact positions)",
    "no particular time, event or moment",
    "it could describe many different images",
)
SCORE_PROMPT = ("Rate how general this image caption is, from 0 (very specific) to 10 (extremely general), on "
                "each of six criteria: " + "; ".join(f"({i}) {c}" for i, c in enumerate(CRITERIA, 1))
                + ". Answer with six numbers separated by commas and nothing else.\nCaption: {caption}")
GENERALIZE_PROMPT = ("Rewrite this image caption so that it is extremely general: keep only what many images "
                     "share, drop names, numbers and details, use fewer than 5 words. Answer with the new caption "
                     "only.\nCaption: {caption}")


class LLMError(Exception):
    """A request or an answer that cannot be used; the caller falls back for that caption."""


@dataclass(frozen=True)
class ChatClient:
    """A minimal chat-completions client: ``url`` is the API base (``.../v1``) or the full endpoint."""

    url: str
    model: str
    api_key_env: str = "OPENAI_API_KEY"
    timeout: float = 30.0
    retries: int = 2

    def __post_init__(self):
        if not re.match(r"^https?://", self.url or ""):
            raise ConfigError(f"--llm-url must be an http(s) URL, not {self.url!r}")
        if not self.model:
            raise ConfigError("--model is required with --llm-url")

    @property
    def endpoint(self) -> str:
        url = self.url.rstrip("/")
        return url if url.endswith("/chat/completions") else url + "/chat/completions"

    def ask(self, prompt: str) -> str:
        body = json.dumps({"model": self.model, "temperature": 0,
                           "messages": [{"role": "user", "content": prompt}]}).encode()
        headers = {"Content-Type": "application/json"}
        if os.environ.get(self.api_key_env):
            headers["Authorization"] = f"Bearer {os.environ[self.api_key_env]}"
        last = "no attempt"
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(0.5 * 2 ** (attempt - 1))
            try:
                req = urllib.request.Request(self.endpoint, data=body, headers=headers, method="POST")
                with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                    answer = json.loads(resp.read().decode("utf-8"))
                return str(answer["choices"][0]["message"]["content"]).strip()
            except (urllib.error.URLError, TimeoutError, OSError) as e:
                last = str(getattr(e, "reason", e))
            except (ValueError, KeyError, IndexError, TypeError):
                raise LLMError(f"{self.endpoint} did not answer in the chat-completions format") from None
        raise LLMError(f"{self.endpoint} failed after {self.retries + 1} attempts ({last})")


class AnswerCache:
    """Answers per input, on disk as JSON lines; a line is appended and flushed as soon as it is known."""

    def __init__(self, client: ChatClient, task: str):
        key = hashlib.sha1(f"{client.endpoint}\n{client.model}\n{task}".encode()).hexdigest()[:16]
        self.path = data_root() / "cache" / "llm" / f"{task}-{key}.jsonl"
        self.answers: dict[str, object] = {}
        if self.path.exists():
            for line in self.path.read_text(encoding="utf-8", errors="replace").splitlines():
                try:
                    rec = json.loads(line)
                    self.answers[rec["input"]] = rec["output"]
                except (ValueError, KeyError, TypeError):
                    continue  # a line cut short by a kill: asked again
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def put(self, text: str, output) -> None:
        self.answers[text] = output
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps({"input": text, "output": output}, ensure_ascii=False) + "\n")
            f.flush()
            os.fsync(f.fileno())


def parse_caption(answer: str) -> str:
    """The caption in an answer, or LLMError when it is not a short one-line caption."""
    text = answer.strip().strip("\"'“”` ").rstrip(".").strip()
    words = text.split()
    if not text or "\n" in text or not 1 <= len(words) <= 5 or not re.search(r"[A-Za-z]", text):
        raise LLMError(f"answer {answer[:60]!r} is not a caption of 1-5 words")
    return text


def parse_scores(answer: str) -> float:
    """The mean of the six criterion scores in an answer, or LLMError."""
    numbers = [float(x) for x in re.findall(r"\d+(?:\.\d+)?", answer)]
    if len(numbers) != len(CRITERIA) or not all(0 <= x <= 10 for x in numbers):
        raise LLMError(f"answer {answer[:60]!r} is not six scores in 0-10")
    return sum(numbers) / len(numbers)


def _run(captions: list[str], client: ChatClient, task: str, prompt: str, parse, fallback, progress=None):
    """Answers for every caption (cached, or asked), the fallback where the LLM fails; and the failures."""
    cache = AnswerCache(client, task)
    out, failures, down = [], [], 0
    for c in captions:
        if c not in cache.answers and down < 3:
            try:
                cache.put(c, parse(client.ask(prompt.format(caption=c))))
                down = 0
            except LLMError as e:
                failures.append(f"{c!r}: {e}")
                down = down + 1 if "attempts" in str(e) else 0
        elif c not in cache.answers:
            failures.append(f"{c!r}: endpoint down, not asked")
        out.append(cache.answers[c] if c in cache.answers else fallback(c))
        if progress is not None:
            progress()
    return out, failures


def llm_generalize(captions: list[str], client: ChatClient, fallback: Callable[[str], str],
                   progress=None) -> tuple[list[str], list[str]]:
    """Generalized captions, ``fallback(caption)`` (the offline method) where the LLM fails."""
    return _run(captions, client, "generalize", GENERALIZE_PROMPT, parse_caption, fallback, progress)


def llm_score(captions: list[str], client: ChatClient, fallback: Callable[[str], float],
              progress=None) -> tuple[list[float], list[str]]:
    """Generality scores, ``fallback(caption)`` (the heuristic score) where the LLM fails."""
    return _run(captions, client, "score", SCORE_PROMPT, parse_scores, fallback, progress)


__all__ = ["AnswerCache", "ChatClient", "LLMError", "llm_generalize", "llm_score", "parse_caption", "parse_scores"]
