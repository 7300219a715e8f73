"""Checkpoint bookkeeping without a launcher: markers, validation, resume choice, pruning, config hash."""
from __future__ import annotations

import json

import pytest
import torch

from chunksft.checkpoint.export import resolve_checkpoint
from chunksft.checkpoint.manager import CheckpointManager, check_config_hash, find_resume
from chunksft.checkpoint.tags import CheckpointError, list_tags, newest_complete, validate_tag, write_marker
from chunksft.train.config import load_config
from planted_code import WritesFile, plant_code


def make_tag(root, step, *, complete=True, world_size=2, config_hash="h"):
    tag_dir = root / "checkpoints" / f"global_step{step}"
    tag_dir.mkdir(parents=True)
    for rank in range(world_size):
        torch.save({"step": step, "rank": rank}, tag_dir / f"zero_pp_rank_{rank}_mp_rank_00_model_states.pt")
    if complete:
        write_marker(str(tag_dir), {"step": step, "world_size": world_size, "config_hash": config_hash,
                                    "config": {"objective": {"chunk_size": 16}}})
    return tag_dir


def test_no_checkpoints_means_fresh_start(tmp_path):
    assert find_resume("auto", str(tmp_path), 2) is None
    make_tag(tmp_path, 3)
    assert find_resume("none", str(tmp_path), 2) is None


def test_newest_complete_tag_wins_and_incomplete_newer_is_skipped(tmp_path):
    make_tag(tmp_path, 3)
    make_tag(tmp_path, 6)
    make_tag(tmp_path, 9, complete=False)
    point = find_resume("auto", str(tmp_path), 2)
    assert point.tag == "global_step6" and not point.universal
    assert list_tags(str(tmp_path / "checkpoints")) == ["global_step9", "global_step6", "global_step3"]


def test_passed_over_newer_tags_are_named_with_their_problem(tmp_path):
    make_tag(tmp_path, 3)
    damaged = make_tag(tmp_path, 6)
    (damaged / "zero_pp_rank_1_mp_rank_00_model_states.pt").unlink()
    make_tag(tmp_path, 9, complete=False)
    point = find_resume("auto", str(tmp_path), 2)
    assert point.tag == "global_step3"
    unfinished, missing = point.skipped  # newest first
    assert "global_step9" in unfinished and "did not finish" in unfinished
    assert "global_step6/zero_pp_rank_1_mp_rank_00_model_states.pt: missing" in missing
    make_tag(tmp_path / "clean", 4)
    assert find_resume("auto", str(tmp_path / "clean"), 2).skipped == ()


def test_export_names_the_newer_tags_it_passes_over(tmp_path, capsys):
    make_tag(tmp_path, 3)
    damaged = make_tag(tmp_path, 6)
    (damaged / "zero_pp_rank_0_mp_rank_00_model_states.pt").write_bytes(b"not a checkpoint")
    assert resolve_checkpoint(str(tmp_path), None) == (str(tmp_path / "checkpoints"), "global_step3")
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("warning: passed over a newer checkpoint, exporting global_step3 instead: ")
    assert "global_step6/zero_pp_rank_0_mp_rank_00_model_states.pt" in line


def test_explicit_path_to_a_run_or_a_tag(tmp_path):
    make_tag(tmp_path, 3)
    make_tag(tmp_path, 6)
    assert find_resume(str(tmp_path), "/elsewhere", 2).tag == "global_step6"
    assert find_resume(str(tmp_path / "checkpoints" / "global_step3"), "/elsewhere", 2).tag == "global_step3"
    with pytest.raises(CheckpointError, match="no such path"):
        find_resume(str(tmp_path / "nope"), str(tmp_path), 2)


@pytest.mark.parametrize("damage", ["truncate", "garble", "flip", "delete"])
def test_damaged_shard_is_detected(tmp_path, damage):
    tag_dir = make_tag(tmp_path, 3)
    shard = tag_dir / "zero_pp_rank_1_mp_rank_00_model_states.pt"
    data = shard.read_bytes()
    if damage == "truncate":
        shard.write_bytes(data[: len(data) // 2])
    elif damage == "garble":
        shard.write_bytes(b"\0" * len(data))
    elif damage == "flip":  # one bit in the middle: same size, still a loadable zip; only the CRC-32 sees it
        middle = len(data) // 2
        shard.write_bytes(data[:middle] + bytes([data[middle] ^ 1]) + data[middle + 1:])
    else:
        shard.unlink()
    assert "zero_pp_rank_1" in validate_tag(str(tag_dir))


@pytest.mark.parametrize("where", ["recorded", "unrecorded"])
def test_code_in_a_checkpoint_pickle_is_refused_without_running_it(tmp_path, where):
    """A .pt whose pickle would write a file, listed in a matching marker or added after the save
    (DeepSpeed's loaders glob the folder): validation refuses it and the file is never written."""
    tag_dir = make_tag(tmp_path, 3)
    canary = tmp_path / "canary"
    if where == "recorded":
        shard = tag_dir / "zero_pp_rank_1_mp_rank_00_model_states.pt"
        plant_code(shard, canary)
    else:
        shard = tag_dir / "zero_pp_rank_2_mp_rank_00_optim_states.pt"
        torch.save({"planted": WritesFile(canary)}, shard)
    problem = validate_tag(str(tag_dir))
    assert problem.startswith(f"{shard}: refused without loading it") and "checkpoints you trust" in problem
    with pytest.raises(CheckpointError, match="refused without loading it"):
        find_resume(str(tag_dir), str(tmp_path), 2)
    assert not canary.exists()
    torch.load(shard, weights_only=False)  # what DeepSpeed's loaders would do without the check
    assert canary.exists()


def test_only_corrupt_checkpoints_fail_loudly(tmp_path):
    for step in (3, 6):
        tag_dir = make_tag(tmp_path, step)
        (tag_dir / "zero_pp_rank_0_mp_rank_00_model_states.pt").write_bytes(b"not a checkpoint")
    make_tag(tmp_path, 9, complete=False)
    with pytest.raises(CheckpointError) as info:
        find_resume("auto", str(tmp_path), 2)
    message = str(info.value)
    assert "3 checkpoint(s) but none is usable" in message and "--resume none" in message
    assert "\n" not in message
    with pytest.raises(CheckpointError):
        newest_complete("auto", str(tmp_path))


def test_prune_keeps_last_k_complete_and_newer_incomplete(tmp_path):
    for step in (1, 2, 3, 4):
        make_tag(tmp_path, step)
    make_tag(tmp_path, 5, complete=False)
    (tmp_path / "checkpoints" / "global_step1_universal").mkdir()
    make_tag(tmp_path, 0, complete=False)  # a stale failed save older than everything kept
    manager = CheckpointManager(str(tmp_path), keep_last=2, rank=0, world_size=1)
    manager._prune()
    assert list_tags(str(tmp_path / "checkpoints")) == ["global_step5", "global_step4", "global_step3"]
    assert not (tmp_path / "checkpoints" / "global_step1_universal").exists()


def point_with_config(tmp_path, step: int, config: dict):
    """Record `config` as tag `step`'s training config in its marker; the resume point of that tag."""
    marker_path = tmp_path / "checkpoints" / f"global_step{step}" / "COMPLETE"
    marker = json.loads(marker_path.read_text())
    marker["config"] = config
    marker_path.write_text(json.dumps(marker))
    return find_resume("auto", str(tmp_path), 2)


def test_config_hash_mismatch_names_changed_keys(tmp_path):
    cfg = load_config([])
    make_tag(tmp_path, 3, config_hash=cfg.hash())
    point = find_resume("auto", str(tmp_path), 2)
    assert check_config_hash(point, cfg.hash(), cfg.hashed_dict(), allow_mismatch=False) is None

    other = load_config(["--chunk_size", "8"])
    point = point_with_config(tmp_path, 3, cfg.to_dict())
    with pytest.raises(CheckpointError) as info:
        check_config_hash(point, other.hash(), other.hashed_dict(), allow_mismatch=False)
    assert "objective.chunk_size" in str(info.value) and "--allow_config_mismatch" in str(info.value)
    warning = check_config_hash(point, other.hash(), other.hashed_dict(), allow_mismatch=True)
    assert warning.startswith("warning:") and "objective.chunk_size" in warning


def test_config_hash_mismatch_names_keys_a_newer_version_added(tmp_path):
    """A checkpoint from an older chunksft lacks keys added since: the line names them."""
    cfg = load_config([])
    saved_config = cfg.to_dict()
    del saved_config["model"]["head_gradient"]
    make_tag(tmp_path, 3, config_hash="0" * 16)
    point = point_with_config(tmp_path, 3, saved_config)
    with pytest.raises(CheckpointError) as info:
        check_config_hash(point, cfg.hash(), cfg.hashed_dict(), allow_mismatch=False)
    assert "added by a newer chunksft): model.head_gradient" in str(info.value)
    assert "changed:" not in str(info.value)
