import sys
import textwrap
from contextlib import contextmanager

import pytest

import mtlbench.cli
import mtlbench.core.registry as registry
from mtlbench.core.registry import ARCHS, BALANCERS, DATASETS, PROCEDURES, Registry, RegistryError


# ----------------------------------------------------------------- Registry basics
def test_register_get_names():
    reg = Registry("widget")

    @reg.register("b_widget")
    class B:
        pass

    @reg.register("a_widget")
    def a():
        return 1

    assert reg.get("b_widget") is B
    assert reg.get("a_widget") is a
    assert reg.names() == ["a_widget", "b_widget"]  # sorted
    assert "a_widget" in reg and "c_widget" not in reg
    assert list(reg) == ["a_widget", "b_widget"]


def test_unknown_name_is_one_line_listing_known_names():
    with pytest.raises(RegistryError) as info:
        ARCHS.get("nope")
    msg = str(info.value)
    assert "\n" not in msg
    assert "'nope'" in msg
    for known in ARCHS.names():
        assert known in msg
    assert "hard_sharing" in msg and "independent" in msg


def test_unknown_name_in_empty_registry_says_none():
    msg = str(pytest.raises(RegistryError, Registry("gizmo").get, "x").value)
    assert "\n" not in msg and "unknown gizmo 'x'" in msg and "(none)" in msg


def test_registry_error_is_a_keyerror_without_quotes():
    err = RegistryError("plain message")
    assert isinstance(err, KeyError)
    assert str(err) == "plain message"


def test_duplicate_registration_of_a_different_object_raises():
    reg = Registry("widget")

    @reg.register("w")
    class First:
        pass

    class Second:
        pass

    with pytest.raises(RegistryError) as info:
        reg.register("w")(Second)
    msg = str(info.value)
    assert "\n" not in msg and "'w'" in msg and "twice" in msg
    assert reg.get("w") is First  # the first registration is kept


def test_duplicate_on_a_real_registry_keeps_the_builtin():
    original = ARCHS.get("hard_sharing")

    class Impostor:
        pass

    with pytest.raises(RegistryError):
        ARCHS.register("hard_sharing")(Impostor)
    assert ARCHS.get("hard_sharing") is original


def test_same_object_twice_is_fine():
    reg = Registry("widget")

    class W:
        pass

    assert reg.register("w")(W) is W
    assert reg.register("w")(W) is W
    assert reg.names() == ["w"]


def test_builtins_are_registered():
    assert {"hard_sharing", "independent"} <= set(ARCHS.names())
    assert {"equal", "static"} <= set(BALANCERS.names())
    assert "single" in PROCEDURES.names()
    assert "multimnist" in DATASETS.names()


# ----------------------------------------------------------------- `list` command
def test_list_command(capsys):
    assert mtlbench.cli.main(["list"]) == 0
    out = capsys.readouterr().out
    lines = {line.split(":", 1)[0]: line.split(":", 1)[1] for line in out.splitlines() if ":" in line}
    archs = [s.strip() for s in lines["archs"].split(",")]
    balancers = [s.strip() for s in lines["balancers"].split(",")]
    assert {"hard_sharing", "independent"} <= set(archs)
    assert {"equal", "static"} <= set(balancers)
    assert "multimnist" in lines["datasets"]
    assert "single" in lines["procedures"]
    presets = [s.strip() for s in lines["methods (presets)"].split(",")]
    assert {"stl", "hard_sharing"} <= set(presets)


# ----------------------------------------------------------------- entry-point plugins
def _fake_distribution(root, dist: str, entry_name: str, module: str, module_source: str) -> None:
    (root / f"{module}.py").write_text(textwrap.dedent(module_source))
    info = root / f"{dist}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[mtlbench.methods]\n{entry_name} = {module}\n")


@contextmanager
def plugin_sandbox(plugin_dir):
    """``plugin_dir`` on sys.path and a registry that rescans entry points on the next
    lookup; on exit the plugin's registrations, modules and path entry are gone."""
    registry.load_all()
    before = {kind: dict(reg._items) for kind, reg in registry.ALL.items()}
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(registry, "_loaded", False)
            mp.syspath_prepend(str(plugin_dir))
            yield
    finally:
        for kind, reg in registry.ALL.items():
            reg._items.clear()
            reg._items.update(before[kind])
        for mod in [m for m in sys.modules if m.startswith("myplugin")]:
            del sys.modules[mod]


def test_entry_point_plugin_registers_an_arch(tmp_path, monkeypatch):
    _fake_distribution(tmp_path, "myplugin", "plugin", "myplugin_mod", """
        from mtlbench.core.model import MTLModel
        from mtlbench.core.registry import ARCHS


        @ARCHS.register("plugin_arch")
        class PluginArch(MTLModel):
            pass
    """)
    with plugin_sandbox(tmp_path):
        assert "plugin_arch" not in ARCHS._items
        cls = ARCHS.get("plugin_arch")
        assert cls.__name__ == "PluginArch" and cls.__module__ == "myplugin_mod"
        assert "plugin_arch" in ARCHS.names()
        assert "hard_sharing" in ARCHS.names()  # built-ins still there
    # cleaned up, even after a forced rescan of the entry points
    monkeypatch.setattr(registry, "_loaded", False)
    assert "plugin_arch" not in ARCHS.names()
    assert "hard_sharing" in ARCHS.names()
    assert "myplugin_mod" not in sys.modules


def test_broken_plugin_names_its_entry_point(tmp_path):
    _fake_distribution(tmp_path, "myplugin-broken", "broken_plugin", "myplugin_broken_mod", """
        raise RuntimeError("boom at import")
    """)
    with plugin_sandbox(tmp_path):
        with pytest.raises(RegistryError) as info:
            ARCHS.get("hard_sharing")
    msg = str(info.value)
    assert "\n" not in msg
    assert "broken_plugin" in msg and "myplugin_broken_mod" in msg
    assert "boom at import" in msg


def test_broken_plugin_is_one_line_error_on_cli(tmp_path, capsys):
    _fake_distribution(tmp_path, "myplugin-broken2", "broken_cli", "myplugin_broken2_mod", """
        raise ImportError("missing dependency xyz")
    """)
    with plugin_sandbox(tmp_path):
        assert mtlbench.cli.main(["list"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1
    assert err.startswith("mtlbench: error:") and "broken_cli" in err


def test_broken_plugin_keeps_failing(tmp_path):
    _fake_distribution(tmp_path, "myplugin-broken3", "broken_again", "myplugin_broken3_mod", """
        raise RuntimeError("still broken")
    """)
    with plugin_sandbox(tmp_path):
        with pytest.raises(RegistryError):
            ARCHS.get("hard_sharing")
        with pytest.raises(RegistryError, match="broken_again"):
            ARCHS.get("hard_sharing")
