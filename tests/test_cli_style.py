"""One command-line style: key=value overrides, --help, --cfg job, -m, flags anywhere, one-line
errors naming the closest key; overlays never silently replace a user's choice; list and
--help without torch; clean removes exactly what it says."""
import json
import os
import subprocess
import sys
from importlib import resources

import pytest
import yaml

import mtlbench.cli
from mtlbench.cli.names import static_names
from mtlbench.core.registry import ALL
from mtlbench.results.store import RunFolder, atomic_write_json


def main(*args) -> int:
    return mtlbench.cli.main(list(args))


def one_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("mtlbench: error:") and "Traceback" not in err[0], err
    return err[0]


@pytest.mark.parametrize("cmd,key", [("report", "dataset"), ("group", "budget"), ("data", "name"),
                                     ("clean", "results_dir")])
def test_cfg_job_help_and_unknown_keys(cmd, key, capsys):
    assert main(cmd, f"{key}=x", "--cfg", "job") == 0  # a flag after the override
    assert yaml.safe_load(capsys.readouterr().out)[key] == "x"
    assert main(cmd, "--help") == 0
    assert f"conf/{cmd}.yaml" in capsys.readouterr().out
    assert main(cmd, f"{key[:-1]}=x") == 2  # a typo names the key meant
    assert f"did you mean {key}?" in one_line(capsys)


def test_report_sweeps_with_m_and_gives_the_whole_hint_without(tmp_path, capsys):
    assert main("report", "dataset=a,b", f"results_dir={tmp_path}") == 2
    line = one_line(capsys)
    assert "add -m (python -m mtlbench report -m dataset=a,b)" in line and "key=[a,b]" in line
    assert main("report", "--cfg", "job", "dataset=a,b", "-m") == 0
    assert [c["dataset"] for c in yaml.safe_load_all(capsys.readouterr().out)] == ["a", "b"]


def test_bench_key_value_equals_its_flags(capsys):
    assert main("bench", "grouping", "n=[4,7]", "--cfg", "job") == 0
    by_kv = yaml.safe_load(capsys.readouterr().out)
    assert main("bench", "grouping", "--n", "4", "7", "--cfg", "job") == 0
    assert yaml.safe_load(capsys.readouterr().out) == by_kv and by_kv["n"] == [4, 7]
    assert main("bench", "grouping", "nn=3") == 2
    assert "did you mean n?" in one_line(capsys)
    assert main("bench", "grouping", "--nope") == 2
    assert "--nope" in one_line(capsys)


def test_run_flags_after_overrides_and_unknown_keys(results_dir, capsys):
    assert main("run", "method=stl", "--cfg", "job") == 0
    assert yaml.safe_load(capsys.readouterr().out)["preset"] == "stl"
    assert main("run", "epochs=2", f"results_dir={results_dir}") == 2
    line = one_line(capsys)
    assert "did you mean trainer.epochs=2?" in line and "+epochs" not in line
    assert main("run", "+epochs=2", f"results_dir={results_dir}") == 2  # would add a key nothing reads
    assert "trainer.epochs" in one_line(capsys)
    assert main("run", "method=stl,hard_sharing", f"results_dir={results_dir}") == 2
    assert "add -m (python -m mtlbench run -m method=stl,hard_sharing)" in one_line(capsys)
    assert not results_dir.exists()


def test_overlay_keeps_the_users_backbone(capsys):
    assert main("run", "method=adashare", "dataset=cityscapes", "--cfg", "job") == 0
    assert yaml.safe_load(capsys.readouterr().out)["backbone"]["name"] == "resnet34"  # the overlay's choice
    assert main("run", "method=adashare", "dataset=cityscapes", "backbone=small_resnet", "--cfg", "job") == 0
    out = capsys.readouterr().out
    note, text = out.split("\n", 1)
    assert "backbone=small_resnet from the command line wins over conf/overlay/adashare/cityscapes.yaml" in note
    own = yaml.safe_load((resources.files("mtlbench.conf") / "backbone" / "small_resnet.yaml").read_text())
    assert yaml.safe_load(text)["backbone"] == own  # exactly small_resnet's own node


def test_dataset_backbone_keys_follow_the_users_backbone(run_cli, results_dir, capsys):
    # multimnist tunes small_cnn (backbone.stem_stride=2): kept for small_cnn, not applied to mlp
    assert main("run", "backbone=small_cnn", "--cfg", "job") == 0
    assert yaml.safe_load(capsys.readouterr().out)["backbone"]["stem_stride"] == 2
    assert main("run", "backbone=mlp", "--cfg", "job") == 0
    note, text = capsys.readouterr().out.split("\n", 1)
    assert "backbone.stem_stride (for small_cnn) not applied" in note
    assert "stem_stride" not in yaml.safe_load(text)["backbone"]
    assert run_cli("backbone=mlp") == 0  # trains (mlp takes no stem_stride)
    capsys.readouterr()
    assert main("run", "-m", "backbone=mlp", "dataset=scenes,multimnist", f"results_dir={results_dir}") == 2
    assert "run dataset=multimnist in a command of its own" in one_line(capsys)
    assert main("run", "-m", "method=stl,hard_sharing", "--cfg", "job") == 2  # not Hydra's traceback
    assert "cannot be combined with -m" in one_line(capsys)
    assert len(list(results_dir.rglob("run.json"))) == 1  # the mlp run only


def test_list_and_help_import_no_torch():
    code = ("import sys; from mtlbench.cli.commands import main; main(['list']); main(['--help']); "
            "main(['run', '--help']); main(['report', '--help']); assert 'torch' not in sys.modules, 'torch'")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr[-800:]
    assert "archs: " in proc.stdout and "usage: python -m mtlbench run" in proc.stdout


def test_static_names_are_the_registry():
    assert static_names() == {kind: reg.names() for kind, reg in ALL.items()}


def _run(results, method, seed, status, reason="boom"):
    folder = RunFolder(results, "toy", method, f"s{seed}-{status}")
    folder.path.mkdir(parents=True)
    if status != "unfinished":
        atomic_write_json(folder.run_json, {"status": status, "run_id": folder.run_id, "reason": reason})
    return folder.path


def test_clean_removes_exactly_the_failed_then_the_unfinished(tmp_path, capsys):
    res = tmp_path / "results"
    done, failed, unfinished = _run(res, "a", 0, "completed"), _run(res, "b", 0, "failed"), _run(res, "a", 1, "unfinished")
    busy = _run(res, "a", 2, "unfinished")
    long = _run(res, "c", 0, "failed", "diverged " * 20)  # 180 characters: cut at a word, not mid-word
    (busy / ".lock").write_text(str(os.getpid()))  # held by a live process
    assert main("clean", f"results_dir={res}", "--failed", "--dry-run") == 0
    out = capsys.readouterr().out
    assert f"would remove {failed} (failed: boom)" in out and failed.exists()
    assert f"would remove {long} (failed: {'diverged ' * 10}...)" in out
    assert main("clean", "--failed", f"results_dir={res}") == 0
    assert not failed.exists() and not long.exists() and not (res / "toy" / "b").exists() and unfinished.exists() and done.exists()
    assert main("clean", f"results_dir={res}") == 0
    assert not unfinished.exists() and done.exists() and busy.exists()
    assert "skipped 1 in progress" in capsys.readouterr().out
    assert json.loads((done / "run.json").read_text())["status"] == "completed"
