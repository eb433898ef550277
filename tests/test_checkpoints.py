"""The shipped offline checkpoints (data/models/, data/checkpoints.py): the committed files match
their manifest; a damaged file stops `make` with its name and the fixes; a missing family or changed
build inputs lead to a rebuild (here a --tiny one, seconds); and, in the calibration tier, a full
rebuild gives the committed bytes back."""

import json
import shutil
from pathlib import Path

import pytest

from data import build_models as bm
from data import checkpoints as ck

ROOT = Path(__file__).resolve().parents[1]


def test_the_committed_checkpoints_match_their_manifest():
    manifest = ck.read_manifest()
    assert set(manifest["families"]) == set(ck.FAMILIES), f"{ck.MANIFEST} should record all three families"
    for family in ck.FAMILIES:
        state, detail = ck.check_family(family, manifest)
        assert state == "ok", f"{family}: {state}: {detail} (rebuild with `make models REBUILD={family}` and commit)"
        assert "model.safetensors" in manifest["families"][family]["files"]
        assert "build_info.json" in manifest["families"][family]["files"]


def test_the_manifest_names_every_build_input():
    inputs = ck.build_inputs()
    assert set(inputs["files"]) == set(ck.INPUT_FILES)
    assert set(inputs["pins"]) == set(ck.BUILD_PACKAGES), "every package that computes the weights is pinned"
    # the WordPiece trainer and the data pins are inputs of the build script (it imports / reads them)
    source = (ROOT / "data" / "build_models.py").read_text()
    assert "deepdive.wordpiece" in source and "checksums" in (ROOT / "data" / "build_data.py").read_text()


@pytest.fixture
def shipped_copy(tmp_path) -> Path:
    """A copy of data/models (the manifest and the three families) to break."""
    models = tmp_path / "models"
    shutil.copytree(ck.MODELS, models, ignore=shutil.ignore_patterns(".*"))
    return models


def test_verifying_the_shipped_copy_builds_nothing(shipped_copy, capsys, monkeypatch):
    monkeypatch.setattr(ck, "rebuild", lambda *a, **k: pytest.fail("nothing should be rebuilt"))
    assert ck.main([], models=shipped_copy) == 0
    out = capsys.readouterr().out
    for family in ck.FAMILIES:
        assert f"{shipped_copy / family}: " in out and "files verified (sha256)" in out


def test_a_damaged_file_stops_with_its_name_and_the_fixes(shipped_copy, capsys, monkeypatch):
    monkeypatch.setattr(ck, "rebuild", lambda *a, **k: pytest.fail("a damaged file must not be rebuilt over"))
    weights = shipped_copy / "t5" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF  # one flipped byte in the last tensor
    weights.write_bytes(bytes(data))
    assert ck.main([], models=shipped_copy) == 1
    err = capsys.readouterr().err
    assert str(weights) in err and "does not match" in err
    assert "git checkout --" in err and "make models REBUILD=t5" in err and "--rebuild t5" in err
    assert weights.read_bytes() == bytes(data), "the damaged file was changed"


def test_an_edited_build_info_is_damage_but_its_timings_are_not(shipped_copy):
    info_path = shipped_copy / "distilgpt2" / "build_info.json"
    info = json.loads(info_path.read_text())
    info["total_seconds"] += 123.0  # a rebuild on another day takes another time
    info_path.write_text(json.dumps(info))
    manifest = ck.read_manifest(shipped_copy)
    assert ck.check_family("distilgpt2", manifest, shipped_copy)[0] == "ok"
    info["final_held_out_loss"] -= 0.5
    info_path.write_text(json.dumps(info))
    assert ck.check_family("distilgpt2", manifest, shipped_copy)[0] == "damaged"


def tiny_rebuild(family: str, models: Path) -> None:
    bm.main(["--tiny", "--no-progress", "--only", family, "--out", str(models)])


def test_a_missing_family_is_rebuilt_and_compared_with_the_shipped_one(shipped_copy, capsys, monkeypatch):
    monkeypatch.setattr(ck, "rebuild", tiny_rebuild)  # the same script at toy sizes: differs from the shipped bytes
    shutil.rmtree(shipped_copy / "distilgpt2")
    assert ck.main([], models=shipped_copy) == 0
    captured = capsys.readouterr()
    assert "missing" in captured.out and "building it" in captured.out
    assert (shipped_copy / "distilgpt2" / "model.safetensors").is_file()
    assert "differs from the shipped one" in captured.err and "git checkout --" in captured.err
    # and the manifest now describes what is on disk: the next `make` verifies it without building
    monkeypatch.setattr(ck, "rebuild", lambda *a, **k: pytest.fail("built twice"))
    assert ck.main([], models=shipped_copy) == 0


def test_changed_build_inputs_rebuild_only_that_family(shipped_copy, capsys, monkeypatch):
    manifest = ck.read_manifest(shipped_copy)
    manifest["families"]["distilgpt2"]["inputs"]["pins"]["torch"] = "2.12.0"  # built with older pins
    ck.write_manifest(manifest, shipped_copy)
    built = []
    monkeypatch.setattr(ck, "rebuild", lambda family, models: (built.append(family), tiny_rebuild(family, models)))
    assert ck.main([], models=shipped_copy) == 0
    assert built == ["distilgpt2"]
    out = capsys.readouterr().out
    assert "build inputs changed" in out and "torch==" in out and "commit both" in out
    assert ck.read_manifest(shipped_copy)["families"]["distilgpt2"]["inputs"] == ck.build_inputs()


def test_check_only_builds_nothing_and_says_what_make_would_do(shipped_copy, capsys, monkeypatch):
    monkeypatch.setattr(ck, "rebuild", lambda *a, **k: pytest.fail("--check-only must not build"))
    (shipped_copy / "t5" / "spiece.model").unlink(missing_ok=True)
    shutil.rmtree(shipped_copy / "distilbert")
    assert ck.main(["--check-only"], models=shipped_copy) == 1
    err = capsys.readouterr().err
    assert "distilbert" in err and "make models" in err


def test_a_broken_manifest_says_how_to_restore_it(shipped_copy):
    (shipped_copy / "MANIFEST.json").write_text("{ not json")
    with pytest.raises(SystemExit, match="not valid JSON.*git checkout"):
        ck.read_manifest(shipped_copy)


@pytest.mark.calibration
def test_shipped_checkpoints_rebuild_byte_for_byte(tmp_path):
    """All three rebuilt from scratch (~10 min on 2 cores) equal the committed files: every weight and
    tokenizer file byte for byte, build_info.json field for field except its timings."""
    bm.main(["--no-progress", "--out", str(tmp_path)])
    shipped = ck.read_manifest()["families"]
    for family in ck.FAMILIES:
        rebuilt = ck.file_digests(tmp_path / family)
        differ = sorted(name for name in set(rebuilt) | set(shipped[family]["files"])
                        if rebuilt.get(name) != shipped[family]["files"].get(name))
        assert not differ, f"{family}: the rebuild differs from the shipped checkpoint in {differ}"
