"""The OpenAI request format as the server reads it: what is refused (and how), and the prompt it builds."""

from __future__ import annotations

import pytest

from autodidact.data import prompt_ids
from autodidact.models import tiny_tokenizer
from autodidact.serve.chat import RequestError, chat_prompt_ids, parse_chat

USER = {"role": "user", "content": "Who was Brindlemark's first mayor?"}
REFUSED = [
    ("not_an_object", [USER], "messages"),
    ("no_messages", {"model": "m"}, "messages"),
    ("empty_list", {"messages": []}, "messages"),
    ("message_not_object", {"messages": ["hi"]}, "messages[0]"),
    ("unknown_role", {"messages": [{"role": "robot", "content": "hi"}]}, "messages[0].role"),
    ("image_part", {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]},
     "messages[0].content"),
    ("content_number", {"messages": [{"role": "user", "content": 3}]}, "messages[0].content"),
    ("no_user_turn", {"messages": [{"role": "system", "content": "be brief"}]}, "messages"),
    ("blank_last_user", {"messages": [USER, {"role": "assistant", "content": "x"}, {"role": "user", "content": "  "}]},
     "messages"),
    ("stream_not_bool", {"messages": [USER], "stream": "yes"}, "stream"),
    ("n_two", {"messages": [USER], "n": 2}, "n"),
    ("max_tokens_zero", {"messages": [USER], "max_tokens": 0}, "max_tokens"),
    ("max_tokens_over_limit", {"messages": [USER], "max_tokens": 513}, "max_tokens"),
    ("max_tokens_bool", {"messages": [USER], "max_tokens": True}, "max_tokens"),
    ("model_not_string", {"messages": [USER], "model": 4}, "model"),
]


@pytest.mark.parametrize("name,body,param", REFUSED, ids=[r[0] for r in REFUSED])
def test_malformed_requests_are_refused_with_400_naming_the_field(name, body, param):
    with pytest.raises(RequestError) as info:
        parse_chat(body, max_tokens_limit=512)
    e = info.value
    assert e.status == 400 and (e.param == param or (param == "messages" and e.param is None))
    assert e.body()["error"]["type"] == "invalid_request_error" and str(e)


def test_the_last_user_message_is_the_query_and_text_parts_are_joined():
    body = {"model": "gpt-4o", "stream": True, "max_completion_tokens": 20, "messages": [
        {"role": "developer", "content": "be brief"}, {"role": "user", "content": "first question"},
        {"role": "assistant", "content": "an answer"},
        {"role": "user", "content": [{"type": "text", "text": "Who was"}, {"type": "text", "text": "the mayor?"}]}]}
    req = parse_chat(body, 512)
    assert req.query == "Who was\nthe mayor?" and req.stream and req.max_tokens == 20 and req.model == "gpt-4o"
    assert req.messages[0] == {"role": "system", "content": "be brief"}  # developer is OpenAI's newer name for it


def test_a_lone_question_gets_exactly_the_prompt_skills_were_trained_on():
    tok = tiny_tokenizer()
    assert chat_prompt_ids(tok, [USER]) == prompt_ids(tok, USER["content"])


def test_a_conversation_keeps_every_turn_in_order_and_ends_with_the_assistant_header():
    tok = tiny_tokenizer()
    msgs = [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello!"}, USER]
    text = tok.decode(chat_prompt_ids(tok, msgs))
    assert text == ("<|im_start|>system\nAnswer briefly.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
                    "<|im_start|>assistant\nHello!<|im_end|>\n<|im_start|>user\n"
                    f"{USER['content']}<|im_end|>\n<|im_start|>assistant\n")
