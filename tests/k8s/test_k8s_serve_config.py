"""serveConfigV2 is the Serve config file, byte for byte: one drift check per overlay.

The config files themselves (Serve's schema, AppConfig, typos, the shipped values) are checked
once, in tests/unit/test_config_and_builder.py; here only the rendering and its drift.
"""

from __future__ import annotations

import pytest
import yaml
from ray.serve.schema import ServeDeploySchema

from manifest_checks import OVERLAYS, REPO_ROOT, only, rendered
from tools import manifests


def test_rendered_serve_config_is_the_config_file(overlay: str) -> None:
    """Drift: the generated patches are current, and Kustomize renders the config file verbatim."""
    assert manifests.check() == [], "run: make manifests"
    rs = only(rendered(overlay), "RayService")
    assert rs["spec"]["serveConfigV2"] == (REPO_ROOT / OVERLAYS[overlay]).read_text(encoding="utf-8")


def test_check_reports_a_stale_patch(tmp_path, monkeypatch) -> None:
    target = manifests.TARGETS[0]
    monkeypatch.setattr(manifests, "REPO_ROOT", tmp_path)
    (tmp_path / "k8s" / "overlays" / target.name).mkdir(parents=True)
    config = (REPO_ROOT / target.serve_config).read_text()
    (tmp_path / target.serve_config).write_text(config)
    assert manifests.check((target,)) == [target.patch_path]
    assert manifests.write((target,)) == [target.patch_path]
    assert manifests.check((target,)) == []
    (tmp_path / target.serve_config).write_text(config.replace("max_model_len: 32768", "max_model_len: 16384"))
    assert manifests.check((target,)) == [target.patch_path]
    assert manifests.main(["--check"]) == 1


def test_render_patch_round_trips_awkward_text() -> None:
    target = manifests.TARGETS[0]
    for text in ["a: 1\n", "a: 1", "a: 1\n\n\n", "# c\n\nb:\n  - 'x: #y'\n"]:
        assert yaml.safe_load(manifests.render_patch(target, text))["spec"]["serveConfigV2"] == text


@pytest.mark.parametrize("section, typo", [(None, "proxy_locaton"), ("http_options", "request_timeout"), (0, "import_pth")])
def test_renderer_rejects_unknown_serve_keys(section, typo) -> None:
    """Ray Serve's own schema ignores unknown keys; the renderer does not."""
    doc = yaml.safe_load((REPO_ROOT / "config.yaml").read_text())
    node = doc if section is None else (doc["applications"][section] if section == 0 else doc[section])
    node[typo] = "x"
    ServeDeploySchema.model_validate(doc)  # Serve alone would accept it
    with pytest.raises(ValueError, match=typo):
        manifests.validate_serve_config(doc)
