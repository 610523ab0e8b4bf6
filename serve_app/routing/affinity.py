"""Which LLM replica should answer a request: cache affinity first, load second (no Ray).

A chat client resends the whole conversation every turn, image included, and vLLM's prefix
cache (keyed by the image pool's content ids) can answer everything but the new turn, but
only on the replica that served the earlier turns. So a request is routed by its leading
content, the part every later turn repeats: the system messages and the first user message
(its text, cut at ``prefix_chars``, and the content ids of its images). Its key picks a
replica by rendezvous hashing (highest random weight): every router process picks the same
replica for the same key with no shared state, and adding or removing a replica moves only
the keys that replica wins or held. When the preferred replica is busy (``busy_at`` ongoing
requests or more), the request goes to the less loaded of it and one other replica drawn at
random (power of two choices, one of the two being the preferred replica).
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence


def affinity_key(messages: Sequence[dict[str, Any]], image_ids: Sequence[str], *, prefix_chars: int) -> str:
    """A digest of the conversation's opening: system messages and the first user message.

    ``messages`` are the plain dicts the ingress hands the LLM deployment (text parts keep
    their text, image parts are ``{"type": "image_url"}``); ``image_ids`` are the content ids
    of the request's images in message order. Text counts against ``prefix_chars``; images
    are always included (a resent image is what the prefix cache saves most on).
    """
    leading: list[list[str]] = []
    budget = prefix_chars
    images = iter(image_ids)
    for message in messages:
        role = message["role"]
        content = message["content"]
        parts = [{"type": "text", "text": content}] if isinstance(content, str) else content
        for part in parts:
            if part.get("type") == "text":
                text = part.get("text", "")[: max(budget, 0)]
                budget -= len(text)
                if text:
                    leading.append([role, "text", text])
            else:
                leading.append([role, "image", next(images, "")])
        if role == "user":
            break
    # surrogatepass: JSON lets a client send lone surrogates ("\ud800"), which UTF-8 refuses.
    encoded = json.dumps(leading, ensure_ascii=False, separators=(",", ":")).encode("utf-8", "surrogatepass")
    return hashlib.sha256(encoded).hexdigest()[:32]


def _weight(key: str, replica: str) -> int:
    digest = hashlib.blake2b(f"{key}\x00{replica}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def rendezvous_order(key: str, replicas: Iterable[str]) -> list[str]:
    """``replicas`` ordered by their rendezvous weight for ``key``, the preferred one first."""
    return sorted(replicas, key=lambda replica: (_weight(key, replica), replica), reverse=True)


@dataclass(frozen=True)
class RoutingDecision:
    """Replicas to try in order (the next one only if the previous refuses the request)."""

    order: list[str]
    preferred: str
    fell_back: bool


def route(
    key: str,
    queue_lens: Mapping[str, int | None],
    *,
    busy_at: int,
    rng: random.Random | None = None,
) -> RoutingDecision:
    """Route ``key`` over the replicas in ``queue_lens`` (ongoing requests; None = unknown).

    The preferred replica keeps the request unless it has ``busy_at`` ongoing requests or
    more and a replica drawn at random from the others has fewer; an unknown queue length
    never wins a comparison, so a replica that did not answer the probe gets no extra load.
    """
    if not queue_lens:
        raise ValueError("no replicas to route to")
    order = rendezvous_order(key, queue_lens)
    preferred = order[0]
    preferred_len = queue_lens[preferred]
    if len(order) == 1 or preferred_len is None or preferred_len < busy_at:
        return RoutingDecision(order=order, preferred=preferred, fell_back=False)
    other = (rng or random).choice(order[1:])
    other_len = queue_lens[other]
    if other_len is None or other_len >= preferred_len:
        return RoutingDecision(order=order, preferred=preferred, fell_back=False)
    return RoutingDecision(order=[other, *(r for r in order if r != other)], preferred=preferred, fell_back=True)


def _url_of(part: Mapping[str, Any]) -> str:
    image = part.get("image_url")
    url = image.get("url") if isinstance(image, Mapping) else image
    return url if isinstance(url, str) else ""


def body_affinity_key(body: Any, *, prefix_chars: int) -> str:
    """``affinity_key`` of a chat request as the client sent it (the parsed JSON body), for a
    router that picks the replica before the image pool has seen the images: each image is
    named by a digest of its URL's text (a chat client resends the same data: URL or link every
    turn). "" (route by load alone) for a body that is not a chat request: the replica that
    gets it answers with the error."""
    try:
        messages = body["messages"]
        leading = []
        for message in messages:  # the messages affinity_key reads: up to the first user message
            leading.append({"role": str(message["role"]), "content": message["content"]})
            if message["role"] == "user":
                break
        urls = (
            _url_of(part)
            for message in leading
            if not isinstance(message["content"], str)
            for part in message["content"]
            if part.get("type") != "text"
        )
        digests = (hashlib.blake2b(url.encode("utf-8", "surrogatepass"), digest_size=16).hexdigest() for url in urls)
        return affinity_key(leading, list(digests), prefix_chars=prefix_chars)
    except (KeyError, TypeError, AttributeError, ValueError):
        return ""
