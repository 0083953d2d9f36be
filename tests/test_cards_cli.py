"""The ``autodidact cards`` command: in-process through ``main()``, and once as the installed script."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from autodidact import quiet
from autodidact.card import read_card
from autodidact.cards_cli import main
from tests.support.lora_cards import make_card

pytestmark = pytest.mark.usefixtures("one_torch_thread")
ROOT = Path(__file__).resolve().parents[1]
FACTORY_META = {  # what SkillFactory adds to a card it deploys
    "query": "Who kept the Velmora lighthouse?",
    "reference_answer": "Ilsabet Marrow, from 1871.",
    "verify": {"reference_correct": True, "heldout_correct": 3, "heldout_total": 4},
    "teacher": {"provider": "offline-demo"},
}


@pytest.fixture(autouse=True)
def _restore_logging():
    """main() routes warnings and library logs as the CLI process would; undo that for the next test."""
    root = logging.getLogger()
    handlers = list(root.handlers)
    yield
    logging.captureWarnings(False)
    for h in root.handlers:
        if h not in handlers:
            root.removeHandler(h)
        for f in [f for f in h.filters if isinstance(f, quiet.ProjectOnly)]:
            h.removeFilter(f)


@pytest.fixture
def good(tmp_path):
    return make_card(tmp_path / "velmora.lora.arrow", extra=FACTORY_META)


def run(capsys, *argv: str) -> tuple[int, str, str]:
    rc = main(list(argv))
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return rc, out, err


def test_ls_lists_good_cards_and_flags_invalid_ones(tmp_path, good, capsys):
    (tmp_path / "junk.lora.arrow").write_bytes(b"\x00" * 100)
    (tmp_path / "notes.txt").write_text("not a card")
    rc, out, err = run(capsys, "cards", "ls", str(tmp_path))
    assert rc == 0
    good_line = next(line for line in out.splitlines() if "velmora.lora.arrow" in line)
    assert "velmora" in good_line and "q_proj,v_proj" in good_line and "2.5000 -> 0.1000" in good_line
    assert "INVALID" in next(line for line in out.splitlines() if "junk.lora.arrow" in line)
    assert "notes.txt" not in out
    assert "2 cards" in err and "1 invalid" in err

    rc, out, _ = run(capsys, "cards", "ls", str(tmp_path), "--json")
    rows = {r["file"]: r for r in map(json.loads, out.splitlines())}
    assert rows["velmora.lora.arrow"]["valid"] is True and rows["velmora.lora.arrow"]["r"] == 4
    assert rows["junk.lora.arrow"]["valid"] is False and "corrupt" in rows["junk.lora.arrow"]["problem"]


def test_ls_missing_dir_is_an_error(tmp_path, capsys):
    rc, _, err = run(capsys, "cards", "ls", str(tmp_path / "nope"))
    assert rc == 1 and err.startswith("error: ") and "is not a folder" in err


def test_inspect_shows_provenance(good, capsys):
    rc, out, _ = run(capsys, "cards", "inspect", str(good))
    assert rc == 0
    fields = dict(line.split(None, 1) if not line.startswith("base model") else ("base model", line[10:].strip())
                  for line in out.splitlines())
    assert fields["skill"] == "velmora"
    assert fields["base model"].startswith("tiny-llama-s0 (sha256:")
    assert fields["lora"].startswith("r=4 alpha=8 targets=q_proj,v_proj (4 layers")
    assert fields["loss"] == "2.5000 -> 0.1000 in 12 steps, 3.5 s"
    assert fields["teacher"] == "provider=offline-demo"
    assert fields["verified"] == "reference right, held-out 3/4"
    assert fields["created"] == read_card(good).meta["created_at"]
    assert "KiB" in fields["file"]

    rc, out, _ = run(capsys, "cards", "inspect", str(good), "--json")
    s = json.loads(out)
    assert (s["skill"], s["lora"]["r"], s["loss_before"], s["loss_after"]) == ("velmora", 4, 2.5, 0.1)
    assert s["bytes"] == good.stat().st_size and s["teacher"] == {"provider": "offline-demo"}


def test_verify_accepts_a_good_card(good, capsys):
    rc, out, err = run(capsys, "cards", "verify", str(good))  # --model auto: tiny seed 0, from the card
    assert rc == 0, err
    assert out.startswith("ok ") and "fits tiny-llama-s0" in out


def _truncated(tmp_path, good):
    p = tmp_path / "half.lora.arrow"
    p.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    return p


def _junk(tmp_path, good):
    p = tmp_path / "junk.lora.arrow"
    p.write_bytes(b"PK\x03\x04 definitely not arrow" * 10)
    return p


def _other_model(tmp_path, good):
    return make_card(tmp_path / "seed1.lora.arrow", model_seed=1)  # auto picks tiny seed 1, then we force 0


def _unknown_base(tmp_path, good):
    card = read_card(good)
    from autodidact.card import write_card

    meta = {k: v for k, v in card.meta.items() if k not in ("format_version", "created_at")}
    meta["base_model"] = {"name": "Mystery-7B", "fingerprint": "sha256:0"}
    return write_card(tmp_path / "mystery.lora.arrow", card.tensors, meta)


@pytest.mark.parametrize(
    ("make", "extra_args", "reason"),
    [
        (_junk, [], "corrupt or truncated"),
        (_truncated, [], "corrupt or truncated"),
        (_other_model, ["--model", "tiny", "--seed", "0"], "was trained on base model 'tiny-llama-s1'"),
        (_unknown_base, [], "--model hf --model-path DIR"),
        (lambda tmp, good: tmp / "missing.lora.arrow", [], "cannot be read"),
    ],
    ids=["junk", "truncated", "other-model", "unknown-base-model", "missing"],
)
def test_verify_rejects_bad_cards_with_a_reason(tmp_path, good, capsys, make, extra_args, reason):
    path = make(tmp_path, good)
    rc, out, err = run(capsys, "cards", "verify", str(path), *extra_args)
    assert rc == 1
    assert out == "" and err.startswith("invalid: ") and reason in err, err


def test_verify_model_none_checks_only_the_file(tmp_path, good, capsys):
    rc, out, _ = run(capsys, "cards", "verify", str(_unknown_base(tmp_path, good)), "--model", "none")
    assert rc == 0 and "not checked against a model" in out


def test_export_then_import_peft_round_trip(tmp_path, good, capsys):
    rc, out, err = run(capsys, "cards", "export-peft", str(good), str(tmp_path / "peft"))
    assert rc == 0, err
    assert (tmp_path / "peft" / "adapter_model.safetensors").exists() and "vllm serve" in out
    cfg = json.loads((tmp_path / "peft" / "adapter_config.json").read_text())
    assert (cfg["target_modules"], cfg["layers_to_transform"]) == (["q_proj", "v_proj"], None)  # model checked
    rc, _, err = run(capsys, "cards", "export-peft", str(good), str(tmp_path / "peft"))
    assert rc == 1 and "already holds adapter_config.json" in err

    back = tmp_path / "back.lora.arrow"
    rc, out, err = run(capsys, "cards", "import-peft", str(tmp_path / "peft"), str(back))  # model from metadata
    assert rc == 0, err
    a, b = read_card(good), read_card(back)
    assert b.skill == "velmora" and b.meta["lora"] == a.meta["lora"]
    assert all(torch.equal(a.tensors[k], b.tensors[k]) for k in a.tensors) and a.tensors.keys() == b.tensors.keys()

    rc, _, err = run(capsys, "cards", "import-peft", str(tmp_path / "peft"), str(back))
    assert rc == 1 and "pass --force" in err
    rc, _, err = run(capsys, "cards", "import-peft", str(tmp_path / "peft"), str(tmp_path / "x.lora.arrow"),
                     "--model", "tiny", "--seed", "2")
    assert rc == 1 and "base weights" in err


def test_export_without_a_loadable_base_model_still_exports(tmp_path, good, capsys):
    rc, out, err = run(capsys, "cards", "export-peft", str(_unknown_base(tmp_path, good)), str(tmp_path / "peft"))
    assert rc == 0 and "note: exporting without the base model" in err
    cfg = json.loads((tmp_path / "peft" / "adapter_config.json").read_text())
    assert (cfg["target_modules"], cfg["layers_to_transform"]) == (["q_proj", "v_proj"], [0, 1])
    rc, _, err = run(capsys, "cards", "export-peft", str(_other_model(tmp_path, good)), str(tmp_path / "p2"),
                     "--model", "tiny", "--seed", "0")
    assert rc == 1 and "was trained on base model" in err and not (tmp_path / "p2").exists()


@pytest.mark.parametrize("argv", [[], ["cards"], ["cards", "frobnicate"], ["cards", "verify"]])
def test_usage_errors_exit_2(argv, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    assert "usage: autodidact" in capsys.readouterr().err


def test_installed_console_script(tmp_path, good):
    """The `autodidact` script that `pip install -e .` puts beside the interpreter ([project.scripts])."""
    script = Path(sys.executable).with_name("autodidact")
    if not script.exists():
        pytest.fail(f"{script} is missing; run `pip install -e .` so [project.scripts] is installed")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    ok = subprocess.run([str(script), "cards", "verify", str(good)], capture_output=True, text=True, env=env,
                        timeout=300)
    assert ok.returncode == 0, ok.stderr
    assert "fits tiny-llama-s0" in ok.stdout
    junk = _junk(tmp_path, good)
    bad = subprocess.run([str(script), "cards", "verify", str(junk)], capture_output=True, text=True, env=env,
                         timeout=300)
    assert bad.returncode == 1 and "corrupt or truncated" in bad.stderr and "Traceback" not in bad.stderr
    assert bad.stderr.strip().count("\n") == 0  # one line: the reason, no library chatter


@pytest.mark.slow
def test_peft_adapter_trained_on_the_smollm2_folder_imports_and_verifies(tmp_path, capsys):
    """A PEFT adapter made on the fp32 SmolLM2 folder (base_model_name_or_path = that folder) needs no --model."""
    peft = pytest.importorskip("peft")
    from autodidact.models import SMOLLM2_NAME, load_smollm2

    pm = peft.get_peft_model(load_smollm2().model, peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj"]))
    pm.save_pretrained(str(tmp_path / "peft"))
    cfg = json.loads((tmp_path / "peft" / "adapter_config.json").read_text())
    assert cfg["base_model_name_or_path"].endswith(f"{SMOLLM2_NAME}-fp32")
    card = tmp_path / "smol.lora.arrow"
    rc, out, err = run(capsys, "cards", "import-peft", str(tmp_path / "peft"), str(card), "--skill", "smol")
    assert rc == 0, err
    assert read_card(card).meta["base_model"]["name"] == SMOLLM2_NAME
    rc, out, err = run(capsys, "cards", "verify", str(card))
    assert rc == 0 and f"fits {SMOLLM2_NAME}" in out, err
