"""What the server hands its learner process: the config resolved, with no API key written to disk."""

from __future__ import annotations

from omegaconf import OmegaConf

from autodidact.serve.learner import LearnerProcess, portable_config

KEY = "sk-test-learner-must-not-be-written"


def test_the_learner_config_is_resolved_except_the_keys_which_stay_environment_references(monkeypatch, tmp_path):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    cfg = OmegaConf.create({
        "seed": 7, "trainer": {"seed": "${seed}"}, "model": {"kind": "tiny", "threads": None},
        "teacher": {"openai": {"api_key": "${oc.env:OPENAI_API_KEY,null}"}, "chain": ["openai", "anthropic"]},
        "server": {"port": 8000},
    })
    data = portable_config(cfg)
    assert data["trainer"]["seed"] == 7 and data["teacher"]["chain"] == ["openai", "anthropic"]
    assert data["teacher"]["openai"]["api_key"] == "${oc.env:OPENAI_API_KEY,null}"

    learner = LearnerProcess(cfg, tmp_path, threads=1, nice=10)
    learner.config_path.parent.mkdir(parents=True)
    OmegaConf.save(OmegaConf.create(learner.data), learner.config_path)
    text = learner.config_path.read_text()
    assert KEY not in text and "oc.env:OPENAI_API_KEY" in text
    back = OmegaConf.load(learner.config_path)
    assert back.teacher.openai.api_key == KEY  # read from the environment in the learner's process
    assert back.model.threads == 1 and "server" not in back
