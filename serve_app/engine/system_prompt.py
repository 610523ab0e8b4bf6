"""The default system prompt: a template file with {name}, {today} and {yesterday}.

Pixtral-Large's model card recommends always sending a system prompt and ships
SYSTEM_PROMPT.txt with those placeholders; we fill them at request time, in the
server's configured timezone, and use the result only when the request has no
system message of its own.
"""

from __future__ import annotations

from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from serve_app.config import AppConfig


class DefaultSystemPrompt:
    def __init__(self, template: str, *, name: str, timezone: str = "UTC"):
        self.template = template
        self.name = name
        self.zone = ZoneInfo(timezone)

    @classmethod
    def from_config(cls, config: AppConfig) -> "DefaultSystemPrompt | None":
        settings = config.system_prompt
        if settings is None:
            return None
        path = Path(settings.file).expanduser()
        if not path.is_absolute():
            path = Path(config.engine.model) / path if Path(config.engine.model).is_dir() else _from_hub(
                config.engine.model, settings.file
            )
        if not path.is_file():
            raise FileNotFoundError(f"system_prompt.file {settings.file!r} was not found (looked at {path})")
        name = settings.model_name or config.engine.model.rstrip("/").split("/")[-1]
        return cls(path.read_text(encoding="utf-8"), name=name, timezone=settings.timezone)

    def render(self, today: date | None = None) -> str:
        today = today or datetime.now(self.zone).date()
        yesterday = today - timedelta(days=1)
        # Plain replacement: a prompt may contain other braces that str.format would trip on.
        return (
            self.template.replace("{name}", self.name)
            .replace("{today}", today.isoformat())
            .replace("{yesterday}", yesterday.isoformat())
        )

    def apply(self, messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """``messages`` with the default system prompt first, unless they have their own."""
        if any(message["role"] == "system" for message in messages):
            return messages
        return [{"role": "system", "content": self.render()}, *messages]


def _from_hub(repo_id: str, filename: str) -> Path:
    """The file from the model's Hub repo (the replica downloads the weights from there too)."""
    from huggingface_hub import hf_hub_download

    return Path(hf_hub_download(repo_id=repo_id, filename=filename))
