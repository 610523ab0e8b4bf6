"""serveConfigV2 is config.yaml (one source of truth) and parses as Ray Serve and our app do."""

from __future__ import annotations

import copy

import pydantic
import pytest
import yaml
from ray.serve.schema import ServeDeploySchema

from manifest_checks import OVERLAYS, REPO_ROOT, only, rendered, serve_config
from serve_app import manifests
from serve_app.config import AppConfig


def test_serve_config_v2_is_the_config_file_verbatim(overlay: str) -> None:
    """Drift: what Kustomize renders is, byte for byte, the Serve config file."""
    rs = only(rendered(overlay), "RayService")
    assert rs["spec"]["serveConfigV2"] == (REPO_ROOT / OVERLAYS[overlay]).read_text(encoding="utf-8")


def test_generated_patches_are_up_to_date() -> None:
    assert manifests.check() == [], "run: python -m serve_app.manifests"


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


def test_serve_config_parses_with_ray_serve_schema(overlay: str) -> None:
    doc = serve_config(only(rendered(overlay), "RayService"))
    schema = ServeDeploySchema.model_validate(doc)
    assert [app.import_path for app in schema.applications] == ["serve_app.app:build_app"]


def test_app_args_validate_with_app_config(overlay: str) -> None:
    for app in serve_config(only(rendered(overlay), "RayService"))["applications"]:
        AppConfig.model_validate(app["args"])


@pytest.mark.parametrize(
    "path, typo",
    [((), "served_model_nam"), (("engine",), "max_model_lenn"), (("image_pool", "autoscaling"), "max_replica")],
)
def test_app_config_rejects_typo(path: tuple, typo: str) -> None:
    args = copy.deepcopy(serve_config(only(rendered("pixtral-12b"), "RayService"))["applications"][0]["args"])
    node = args
    for key in path:
        node = node[key]
    node[typo] = 1
    with pytest.raises(pydantic.ValidationError, match=typo):
        AppConfig.model_validate(args)


@pytest.mark.parametrize("section, typo", [(None, "proxy_locaton"), ("http_options", "request_timeout"), (0, "import_pth")])
def test_renderer_rejects_unknown_serve_keys(section, typo) -> None:
    """Ray Serve's own schema ignores unknown keys; the renderer does not."""
    doc = yaml.safe_load((REPO_ROOT / "config.yaml").read_text())
    node = doc if section is None else (doc["applications"][section] if section == 0 else doc[section])
    node[typo] = "x"
    ServeDeploySchema.model_validate(doc)  # Serve alone would accept it
    with pytest.raises(ValueError, match=typo):
        manifests.validate_serve_config(doc)


def test_large_overlay_serves_pixtral_large() -> None:
    args = AppConfig.model_validate(serve_config(only(rendered("pixtral-large"), "RayService"))["applications"][0]["args"])
    assert args.served_model_name == args.engine.model == "mistralai/Pixtral-Large-Instruct-2411"
    assert args.engine.tokenizer == "mistral_common:mistral_instruct_tokenizer_241114.model.v7m1"
    assert (args.engine.tensor_parallel_size, args.engine.max_images_per_prompt, args.engine.max_model_len) == (8, 10, 65536)
