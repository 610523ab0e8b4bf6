"""tools/tiny_model.py: the tiny checkpoint, and real-size weights in the shapes of any params.json."""

import math

from safetensors import safe_open

from tools.tiny_model import main, shape_of, weight_shapes, write_tiny_model

# Pixtral-12B-2409's params.json (dimensions only)
PIXTRAL_12B = {
    "dim": 5120, "n_layers": 40, "head_dim": 128, "hidden_dim": 14336, "n_heads": 32, "n_kv_heads": 8,
    "vocab_size": 131072,
    "vision_encoder": {"hidden_size": 1024, "num_channels": 3, "image_size": 1024, "patch_size": 16,
                       "intermediate_size": 4096, "num_hidden_layers": 24, "num_attention_heads": 16,
                       "image_token_id": 10, "image_break_token_id": 12, "image_end_token_id": 13},
}


def tensors(path):
    with safe_open(str(path), "pt") as f:
        return {name: f.get_tensor(name) for name in f.keys()}


def test_weights_for_a_params_json_are_the_checkpoint_the_tiny_model_writes(tmp_path):
    tiny = write_tiny_model(tmp_path / "tiny")
    main([str(tmp_path / "again"), "--weights-for", str(tiny / "params.json")])
    assert sorted(p.name for p in (tmp_path / "again").iterdir()) == ["consolidated.safetensors"]
    want, got = tensors(tiny / "consolidated.safetensors"), tensors(tmp_path / "again/consolidated.safetensors")
    assert want.keys() == got.keys()
    assert all(want[name].equal(got[name]) for name in want)


def test_pixtral_12b_shapes_are_its_cards_12b_decoder_and_400m_vision_encoder():
    shapes = weight_shapes(shape_of(PIXTRAL_12B))
    total = sum(math.prod(dims) for dims in shapes.values())
    vision = sum(math.prod(dims) for name, dims in shapes.items() if name.startswith("vision_encoder."))
    assert round((total - vision) / 1e9) == 12 and round(vision / 1e9, 1) == 0.4
    assert total * 2 == 25_365_479_424  # bf16 bytes: the 25.4 GB file the H200 run of 2026-12-07 loaded
    assert shapes["layers.39.attention.wk.weight"] == (8 * 128, 5120)
    assert "layers.40.attention.wk.weight" not in shapes
