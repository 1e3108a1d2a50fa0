"""dlbook.extras installs reference libraries only when missing, at the tested versions."""

import pytest

from dlbook import extras
from tools.environment import CONSTRAINTS, pins


def test_reference_versions_equal_the_constraints():
    """The version a notebook installs on Colab is the one the tests ran with."""
    pinned = pins(CONSTRAINTS.read_text())
    for name, version in extras.REFERENCE_VERSIONS.items():
        assert pinned[name] == version, f"{name}: extras says {version}, constraints.txt says {pinned.get(name)}"


def test_ensure_is_a_no_op_when_the_library_is_importable(monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("pip must not run when the library is already importable")

    monkeypatch.setattr(extras.subprocess, "run", fail)
    monkeypatch.setattr(extras.importlib.util, "find_spec", lambda name: object())
    extras.ensure("captum", "opacus")


def test_ensure_holds_torch_and_numpy_and_pins_the_library(monkeypatch):
    seen = {}

    def fake_run(cmd, **kwargs):
        seen["cmd"] = cmd
        seen["constraints"] = open(cmd[cmd.index("-c") + 1]).read()

        class Done:
            returncode = 0
            stderr = ""
        return Done()

    monkeypatch.setattr(extras.subprocess, "run", fake_run)
    monkeypatch.setattr(extras.importlib.util, "find_spec", lambda name: None)
    extras.ensure("opacus")
    assert "opacus==1.6.0" in seen["cmd"]
    assert "torch==" in seen["constraints"] and "numpy==" in seen["constraints"]


def test_ensure_reports_a_failed_install(monkeypatch):
    class Failed:
        returncode = 1
        stderr = "ERROR: No matching distribution found"

    monkeypatch.setattr(extras.subprocess, "run", lambda *a, **k: Failed())
    monkeypatch.setattr(extras.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(RuntimeError, match="could not install captum"):
        extras.ensure("captum")


def test_ensure_rejects_an_unknown_library():
    with pytest.raises(ValueError, match="unknown reference library"):
        extras.ensure("tensorflow")


def test_old_torchao_is_hidden_from_peft_only_when_it_is_older_than_0_16(monkeypatch):
    """Colab pairs peft 0.20 with torchao 0.10, which peft refuses when wrapping any layer."""
    import peft.import_utils
    import peft.tuners.lora.torchao as lora_torchao

    monkeypatch.setattr(peft.import_utils, "is_torchao_available", peft.import_utils.is_torchao_available)

    monkeypatch.setattr(extras, "_installed", lambda dist: "0.18.0")
    assert extras.allow_old_torchao_in_peft() is False
    monkeypatch.setattr(extras, "_installed", lambda dist: "0.10.0")
    monkeypatch.setattr(lora_torchao, "is_torchao_available", lora_torchao.is_torchao_available)
    assert extras.allow_old_torchao_in_peft() is True
    assert lora_torchao.is_torchao_available() is False
