"""``server`` settings: every problem in one error, and a port in use refused before any model loads."""

from __future__ import annotations

import socket

import pytest
from omegaconf import OmegaConf

from autodidact.config import to_dataclass
from autodidact.errors import ConfigError
from autodidact.serve.config import ServerConfig
from autodidact.serve.run import run_serve


def test_bad_server_settings_are_all_listed_in_one_error():
    with pytest.raises(ConfigError) as info:
        to_dataclass(ServerConfig, {"port": 70000, "batching": "maybe", "max_batch": 0, "learner_nice": 40},
                     "server")
    msg = str(info.value)
    for key in ("server.port=70000", "server.batching='maybe'", "server.max_batch=0", "server.learner_nice=40"):
        assert key in msg, msg


def test_unknown_or_mistyped_server_keys_are_refused():
    with pytest.raises(ConfigError, match=r"server.prot is not a setting"):
        to_dataclass(ServerConfig, {"prot": 8000}, "server")
    with pytest.raises(ConfigError, match=r"server.port='eighty'"):
        to_dataclass(ServerConfig, {"port": "eighty"}, "server")


def test_a_port_in_use_is_refused_before_anything_is_loaded(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        # No model, teacher or skills settings at all: the refusal must come first.
        cfg = OmegaConf.create({"server": {"host": "127.0.0.1", "port": port}})
        with pytest.raises(ConfigError, match=rf"cannot listen on 127.0.0.1:{port}.*server.port"):
            run_serve(cfg, tmp_path)
