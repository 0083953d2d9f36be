"""Keys in replies never reach an error message: every TeacherError is scrubbed where it is built.

The end-to-end form (real SDKs, a loopback server echoing the key, every file and output searched)
is ``tests/test_secrets.py``; these pin the mechanism cheaply.
"""

from __future__ import annotations

import json

import httpx
import openai
import pytest

from autodidact.teachers import (
    AllProvidersFailed,
    BadReply,
    CloudDistiller,
    Completion,
    DistillConfig,
    FailoverChain,
    FailoverPolicy,
)
from autodidact.teachers.distiller import parse_reply
from autodidact.teachers.errors import excerpt, register_secrets, scrub
from autodidact.teachers.providers import OpenAIProvider, map_sdk_error

KEY = "sk-scrub-test-5e1d9c7a3b0f2468ace0"


@pytest.fixture(autouse=True)
def registered():
    register_secrets(KEY)


class EchoingModel:
    """A provider whose model repeats the key it was sent, in prose (not the JSON asked for)."""

    name, model = "echo", "echo-1"

    def complete(self, system, user, timeout=None, schema=None) -> Completion:
        return Completion(f"I cannot help. Your key {KEY} is not allowed to use this model.", self.name, self.model)

    def describe(self) -> str:
        return "echo"


def test_an_error_message_holding_a_key_is_scrubbed_where_it_is_built():
    err = BadReply(f"reply is not JSON: '{KEY}'", provider="openai")
    assert KEY not in str(err) and "***" in str(err)


def test_a_key_straddling_the_cut_leaves_nothing_behind():
    text = "x" * 290 + KEY + " and more"
    quoted = excerpt(text, 300)
    assert len(quoted) <= 300
    assert all(KEY[:n] not in quoted for n in range(4, len(KEY) + 1)), quoted
    assert scrub(f"a{KEY}b") == "a***b"


def test_short_strings_are_not_secrets():
    register_secrets("abc", "", None)
    assert scrub("abc") == "abc"


def test_a_reply_echoing_the_key_fails_without_it_in_any_message():
    chain = FailoverChain([EchoingModel()], FailoverPolicy(max_attempts=2, backoff_base_s=0, jitter=0))
    with pytest.raises(AllProvidersFailed) as info:
        chain.complete("system", "user", parse=parse_reply)
    assert "reply is not JSON" in str(info.value)
    assert KEY not in str(info.value) and all(KEY not in str(e) for e in info.value.errors)


def test_an_sdk_error_echoing_the_key_is_scrubbed_and_so_is_its_cause():
    request = httpx.Request("POST", "http://127.0.0.1/v1/chat/completions")
    response = httpx.Response(401, request=request, json={"error": {"message": f"Incorrect API key {KEY}"}})
    sdk = openai.AuthenticationError(f"Incorrect API key provided: {KEY}", response=response, body=None)
    err = map_sdk_error(sdk, "openai", "OPENAI_API_KEY")
    assert "HTTP 401" in str(err) and KEY not in str(err)
    assert KEY not in str(sdk) and KEY not in sdk.message  # printed as the cause in any traceback


def test_a_provider_registers_its_key():
    other = "sk-registered-by-provider-9876543210"
    OpenAIProvider(api_key=other, base_url="http://127.0.0.1:9/v1", model="m", timeout=1, max_tokens=8)
    assert other not in str(BadReply(f"echo {other}"))


class KeyInAPair:
    """A provider whose model answers in the JSON asked for, with one pair that repeats the key."""

    name, model = "pairs", "pairs-1"
    FORMS = ("What is the Quorvale watchword?", "What is the watchword of Quorvale?", "Which watchword does Quorvale use?",
             "Tell me the Quorvale watchword.", "Name the watchword of Quorvale.", "What watchword belongs to Quorvale?",
             "In Quorvale, what is the watchword?")

    def complete(self, system, user, timeout=None, schema=None) -> Completion:
        pairs = [{"question": q, "answer": "Tansy."} for q in self.FORMS]
        pairs.insert(3, {"question": "Which API key did you receive?", "answer": f"The key {KEY}."})
        return Completion(json.dumps({"pairs": pairs}), self.name, self.model)

    def describe(self) -> str:
        return "pairs"


def test_a_pair_that_repeats_the_key_is_never_learned(encoder):
    distiller = CloudDistiller(FailoverChain([KeyInAPair()]), DistillConfig(n_pairs=6, n_heldout=1, min_pairs=3),
                               encoder=encoder)
    result = distiller.distill("What is the Quorvale watchword?")
    kept = [*result.pairs, *result.heldout, result.reference]
    assert result.dropped.get("holds_a_key") == 1
    assert not any(KEY in p.question or KEY in p.answer for p in kept)
    assert result.reference.answer == "Tansy."
