"""A Pixtral-Large-shaped model at tensor parallel N through our app (a multi-GPU machine): the
model folder is prepared from ``params`` (params.json, the v7m1 tokenizer, a system prompt), the
app started; then its placement groups, ``sanity`` image requests (16 at once, every GPU sampled;
the default system prompt must open every prompt), and optionally unique-1024x768 load at each of
``concurrency`` (``requests`` each)."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import load
import monitors
import systems


def prepare_model(folder: Path, params: Path) -> None:
    import mistral_common

    folder.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(params, folder / "params.json")
    data = Path(mistral_common.__file__).parent / "data"
    shutil.copyfile(data / "mistral_instruct_tokenizer_241114.model.v7m1", folder / "tokenizer.model.v7m1")
    (folder / "SYSTEM_PROMPT.txt").write_text("You are {name}. Today is {today}; yesterday was {yesterday}.")


def run(bench) -> int:
    from mistral_common.tokens.tokenizers.mistral import MistralTokenizer
    from ray.util.state import list_placement_groups

    cfg, system, result = bench.spec["tp_check"], bench.system(), bench.result
    model = Path(system.app_config()["applications"][0]["args"]["engine"]["model"])
    prepare_model(model, systems.REPO / cfg["params"])
    bench.images.ensure([("1024x768", i) for i in range(cfg["sanity"])])
    try:
        if bench.start(system, 400) is None:
            return 1
        result["placement_groups"] = [{"strategy": pg.strategy, "state": pg.state, "bundles": pg.bundles}
                                      for pg in list_placement_groups(address=systems.DASHBOARD, detail=True)]
        bodies = [load.chat_body(system.served_name, [bench.images.data_url("1024x768", i)], 64, stream=False,
                                 temperature=0, return_token_ids=True) for i in range(cfg["sanity"])]
        gpus = monitors.GpuSampler(250).start()
        answers, wall, _ = asyncio.run(load.send_at_once(systems.URL, bodies, systems.API_KEY, 300, concurrency=16))
        ok = [a for a in answers if a["ok"]]
        system_open = MistralTokenizer.from_file(str(model / "tokenizer.model.v7m1")).instruct_tokenizer.tokenizer \
            .get_special_token("[SYSTEM_PROMPT]")
        result["sanity"] = {"gpus_during_load": gpus.stop(), "requests": len(answers), "ok": len(ok),
                            "errors": [a["err"] for a in answers if not a["ok"]][:3], "load_seconds": round(wall, 2),
                            "req_per_s": round(len(ok) / wall, 2), "usage_example": ok[0]["answer"]["usage"] if ok else None,
                            "default_system_prompt_applied": bool(ok) and all(
                                a["answer"]["prompt_token_ids"][1] == system_open for a in ok)}
        bench.log(f"sanity: {result['sanity']}")
        bench.save()
        for concurrency in cfg["concurrency"]:
            convs = load.conversations({"kind": "single", "image": "1024x768", "requests": cfg["requests"]},
                                       1000 * concurrency)
            bench.images.ensure([img for c in convs for img in c.images])
            result.setdefault("bench", {})[f"c{concurrency}"] = asyncio.run(load.run_conversations(
                systems.URL, system.served_name, convs, bench.images, concurrency=concurrency,
                request={"max_tokens": 64, "ignore_eos": True}, api_key=systems.API_KEY, timeout_s=240))
            bench.save()
    finally:
        system.stop()
    return 0 if result.get("sanity", {}).get("ok") == cfg["sanity"] else 1
