"""``rewrite_argv``: questions typed the way people type survive Hydra's override grammar unchanged."""

from __future__ import annotations

import pytest
from hydra import compose, initialize_config_dir

from autodidact.cli import quote_hydra_value, rewrite_argv
from autodidact.errors import ConfigError

QUESTIONS = [
    "Who was Brindlemark's first mayor, and when?",
    'What does "velmorite" mean?',
    "a=b, c=d",
    "Ünïcødé: wer war Bürgermeister? 日本の首都は?",
    "back\\slash and trailing\\",
    "it\\'s escaped already",
    "cost: $5 ${oc.env:HOME} and \\${x}",
    "[1, 2] {a: b} (x)",
    "  leading and trailing spaces  ",
    "null",
    "42",
    "true",
    "'",
    "\\",
    "",
]


@pytest.fixture
def compose_query(tmp_path):
    (tmp_path / "config.yaml").write_text("query: null\n")

    def run(argv: list[str]) -> object:
        with initialize_config_dir(config_dir=str(tmp_path), version_base="1.3"):
            return compose(config_name="config", overrides=argv).query

    return run


@pytest.mark.parametrize("question", QUESTIONS)
def test_query_round_trips_through_hydra(compose_query, question):
    assert compose_query(rewrite_argv([f"query={question}"])) == question


@pytest.mark.parametrize("arg", ["query='already quoted, fine'", 'query="double, quoted"'])
def test_already_quoted_values_are_left_alone(compose_query, arg):
    assert rewrite_argv([arg]) == [arg]
    assert compose_query([arg]) == arg.split("=", 1)[1][1:-1]


def test_other_arguments_pass_unchanged():
    argv = ["stage=distill", "teacher=offline", "hydra.run.dir=/tmp/x", "queries=[a,b]", "+seed=1"]
    assert rewrite_argv(argv) == argv


def test_quote_is_single_quoted():
    assert quote_hydra_value("Brindlemark's") == "'Brindlemark\\'s'"


@pytest.mark.parametrize(
    "arg", ["teacher.openai.api_key=sk-abc123", "+teacher.anthropic.api_key=sk-ant-xyz"]
)
def test_api_keys_on_the_command_line_are_refused(arg):
    with pytest.raises(ConfigError, match="_API_KEY in the environment"):
        rewrite_argv([arg])


@pytest.mark.parametrize("arg", ["teacher.openai.api_key=null", "teacher.openai.api_key=${oc.env:MY_KEY}"])
def test_key_indirections_are_allowed(arg):
    assert rewrite_argv([arg]) == [arg]
