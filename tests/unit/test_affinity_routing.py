"""The cache-affinity routing decision (serve_app.routing.affinity): pure, no Ray."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from serve_app.routing import affinity_key, rendezvous_order, route

IMAGE_A = "a" * 64 + "-512x384"
IMAGE_B = "b" * 64 + "-512x384"
REPLICAS = ["r1kq8z0a", "x93mdl2p", "p0a8s7dd", "zz81kk3m"]


def user(*parts):
    return {"role": "user", "content": [({"type": "text", "text": p} if p != "<img>" else {"type": "image_url"}) for p in parts]}


def conversation(turns: int, image=IMAGE_A, question="What is in this picture?"):
    """Messages and image ids of turn ``turns`` of a chat that resends its image every turn."""
    messages = [{"role": "system", "content": "Be brief."}, user(question, "<img>")]
    for turn in range(1, turns):
        messages.append({"role": "assistant", "content": f"answer {turn}"})
        messages.append(user(f"follow-up {turn}"))
    return messages, [image]


def key_of(messages, images, prefix_chars=2048):
    return affinity_key(messages, images, prefix_chars=prefix_chars)


def test_every_turn_of_a_conversation_has_the_key_of_its_first():
    keys = {key_of(*conversation(turns)) for turns in (1, 2, 5)}
    assert len(keys) == 1


def test_the_key_changes_with_the_image_the_opening_text_or_the_system_prompt():
    base = key_of(*conversation(1))
    assert key_of(*conversation(1, image=IMAGE_B)) != base
    assert key_of(*conversation(1, question="Describe it.")) != base
    messages, images = conversation(1)
    assert key_of(messages[1:], images) != base  # no system message


def test_an_image_is_part_of_the_key_even_past_the_text_budget():
    long_text = "x" * 5000
    a = key_of([user(long_text, "<img>")], [IMAGE_A], prefix_chars=100)
    b = key_of([user(long_text, "<img>")], [IMAGE_B], prefix_chars=100)
    assert a != b
    # Text past the budget does not count.
    assert key_of([user(long_text + "tail one")], [], prefix_chars=100) == key_of(
        [user(long_text + "tail two")], [], prefix_chars=100
    )


def test_lone_surrogates_in_text_still_give_a_key():
    """JSON allows "\ud800" in a string; the hostile-request suite found it was a 500 here."""
    key = affinity_key([{"role": "user", "content": "a\ud800b"}], [], prefix_chars=100)
    assert key != affinity_key([{"role": "user", "content": "ab"}], [], prefix_chars=100)


def test_string_content_and_a_single_text_part_give_the_same_key():
    assert key_of([{"role": "user", "content": "hi"}], []) == key_of([user("hi")], [])


def test_same_key_same_replica_regardless_of_replica_listing_order():
    key = key_of(*conversation(1))
    shuffled = REPLICAS[::-1]
    assert rendezvous_order(key, REPLICAS) == rendezvous_order(key, shuffled)
    idle = {name: 0 for name in REPLICAS}
    chosen = {route(key, idle, busy_at=4, rng=random.Random(seed)).order[0] for seed in range(20)}
    assert chosen == {rendezvous_order(key, REPLICAS)[0]}


def test_keys_spread_evenly_over_replicas():
    keys = [key_of([user(f"question {i}", "<img>")], [f"{i:064x}-512x384"]) for i in range(4000)]
    counts = Counter(rendezvous_order(key, REPLICAS)[0] for key in keys)
    assert set(counts) == set(REPLICAS)
    for replica in REPLICAS:
        assert 0.20 < counts[replica] / len(keys) < 0.30, counts


def test_busy_preferred_replica_hands_the_request_to_a_less_loaded_one():
    key = key_of(*conversation(1))
    preferred, other = rendezvous_order(key, REPLICAS[:2])
    decision = route(key, {preferred: 8, other: 1}, busy_at=8)
    assert decision.fell_back and decision.preferred == preferred
    assert decision.order == [other, preferred]


@pytest.mark.parametrize(
    "preferred_len, other_len",
    [
        (7, 0),  # below the bound: affinity wins even against an idle replica
        (8, 8),  # busy, but the other is as loaded
        (9, 12),  # busy, the other more so
        (30, None),  # busy, the other's queue length is unknown
        (None, 0),  # the preferred's queue length is unknown
    ],
)
def test_the_preferred_replica_keeps_the_request(preferred_len, other_len):
    key = key_of(*conversation(1))
    preferred, other = rendezvous_order(key, REPLICAS[:2])
    decision = route(key, {preferred: preferred_len, other: other_len}, busy_at=8)
    assert not decision.fell_back
    assert decision.order == [preferred, other]


def test_fallback_is_power_of_two_choices_among_the_others():
    key = key_of(*conversation(1))
    order = rendezvous_order(key, REPLICAS)
    lens = {name: 3 for name in REPLICAS}
    lens[order[0]] = 50
    firsts = Counter(route(key, lens, busy_at=10, rng=random.Random(seed)).order[0] for seed in range(300))
    assert set(firsts) == set(order[1:])  # every other replica is drawn, the busy one never leads
    # With one other replica idle and the rest loaded beyond the preferred, only it takes over.
    lens = {name: 99 for name in REPLICAS}
    lens[order[0]], lens[order[2]] = 50, 0
    outcomes = Counter(route(key, lens, busy_at=10, rng=random.Random(seed)).order[0] for seed in range(300))
    assert set(outcomes) == {order[0], order[2]}


def test_every_replica_is_in_the_order_once():
    key = key_of(*conversation(1))
    lens = {name: 100 for name in REPLICAS}
    lens[rendezvous_order(key, REPLICAS)[-1]] = 0
    for seed in range(50):
        order = route(key, lens, busy_at=10, rng=random.Random(seed)).order
        assert sorted(order) == sorted(REPLICAS)


def test_removing_a_replica_moves_only_the_keys_it_held():
    keys = [f"key-{i}" for i in range(2000)]
    before = {key: rendezvous_order(key, REPLICAS)[0] for key in keys}
    removed = REPLICAS[1]
    after = {key: rendezvous_order(key, [r for r in REPLICAS if r != removed])[0] for key in keys}
    moved = {key for key in keys if before[key] != after[key]}
    assert moved == {key for key in keys if before[key] == removed}


def test_adding_a_replica_moves_keys_only_to_it_and_about_one_in_n():
    keys = [f"key-{i}" for i in range(2000)]
    before = {key: rendezvous_order(key, REPLICAS[:3])[0] for key in keys}
    after = {key: rendezvous_order(key, REPLICAS)[0] for key in keys}
    moved = [key for key in keys if before[key] != after[key]]
    assert all(after[key] == REPLICAS[3] for key in moved)
    assert 0.20 < len(moved) / len(keys) < 0.30


def test_no_replicas_is_an_error():
    with pytest.raises(ValueError):
        route("k", {}, busy_at=1)


def chat_body(turns: int, image_url: str = "data:image/jpeg;base64,/9j/AAAA", question="What is in this picture?"):
    """A client's request body on turn ``turns`` of a conversation that resends its image each turn."""
    opening = {"role": "user", "content": [{"type": "text", "text": question},
                                           {"type": "image_url", "image_url": {"url": image_url}}]}
    messages = [{"role": "system", "content": "Be brief."}, opening]
    for turn in range(1, turns):
        messages += [{"role": "assistant", "content": f"answer {turn}"},
                     {"role": "user", "content": [{"type": "image_url", "image_url": {"url": f"https://x/{turn}"}}]}]
    return {"model": "pixtral", "messages": messages, "stream": True}


def test_a_body_has_one_key_for_every_turn_and_another_for_another_image_or_opening():
    from serve_app.routing.affinity import body_affinity_key

    keys = {body_affinity_key(chat_body(turns), prefix_chars=2048) for turns in (1, 2, 6)}
    assert len(keys) == 1 and "" not in keys
    (same,) = keys
    assert body_affinity_key(chat_body(1, "data:image/jpeg;base64,/9j/AAAB"), prefix_chars=2048) != same
    assert body_affinity_key(chat_body(1, question="Describe it."), prefix_chars=2048) != same
    # The image named by a bare string (as some clients send it) is the same image.
    bare = chat_body(3)
    bare["messages"][1]["content"][1]["image_url"] = "data:image/jpeg;base64,/9j/AAAA"
    assert body_affinity_key(bare, prefix_chars=2048) == same
    # Only the opening's first prefix_chars characters of text count.
    assert body_affinity_key(chat_body(1, question="Describe it."), prefix_chars=0) == body_affinity_key(
        chat_body(1), prefix_chars=0)


@pytest.mark.parametrize("body", [
    None, [], "text", {}, {"messages": None}, {"messages": [None]}, {"messages": [{"role": "user"}]},
    {"messages": [{"role": "user", "content": 5}]}, {"messages": [{"role": "user", "content": [5]}]},
    {"messages": [{"role": "user", "content": [{"type": "text", "text": 5}]}]},
])
def test_a_body_that_is_not_a_chat_request_routes_by_load(body):
    from serve_app.routing.affinity import body_affinity_key

    assert body_affinity_key(body, prefix_chars=2048) == ""


def test_the_replica_picker_keys_a_whole_body_and_not_a_cut_one():
    import json

    from serve_app.routing.affinity import body_affinity_key
    from serve_app.routing.policy import RoutingPolicy
    from serve_app.routing.replica_picker import ReplicaPicker

    body = json.dumps(chat_body(2)).encode()
    picker = ReplicaPicker(llm=None, routing=RoutingPolicy(affinity=True, prefix_chars=2048, busy_at=64))
    assert picker.key(body, truncated=False) == body_affinity_key(chat_body(2), prefix_chars=2048) != ""
    assert picker.key(body, truncated=True) == ""  # HAProxy cut it (X-Body-Truncated)
    assert picker.key(body[:-10], truncated=False) == "" and picker.key(b"", truncated=False) == ""
    pow2 = ReplicaPicker(llm=None, routing=RoutingPolicy(affinity=False, prefix_chars=2048, busy_at=64))
    assert pow2.key(body, truncated=False) == ""
