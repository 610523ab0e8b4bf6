"""The default system prompt template (no Ray, no network)."""

from __future__ import annotations

from datetime import date, datetime
from zoneinfo import ZoneInfo

import pytest
from pydantic import ValidationError

from serve_app.config import AppConfig
from serve_app.engine.system_prompt import DefaultSystemPrompt


def test_placeholders_are_filled_and_other_braces_kept():
    prompt = DefaultSystemPrompt("I am {name}. Today {today}, yesterday {yesterday}. JSON: {\"a\": 1}", name="Pixtral")
    assert prompt.render(date(2026, 3, 1)) == 'I am Pixtral. Today 2026-03-01, yesterday 2026-02-28. JSON: {"a": 1}'


@pytest.mark.parametrize("zone", ["Pacific/Kiritimati", "Etc/GMT+12", "UTC"])
def test_today_follows_the_configured_timezone(zone):
    prompt = DefaultSystemPrompt("{today}", name="x", timezone=zone)
    before = datetime.now(ZoneInfo(zone)).date()
    rendered = prompt.render()
    after = datetime.now(ZoneInfo(zone)).date()
    assert rendered in {before.isoformat(), after.isoformat()}


def test_applied_only_without_a_system_message():
    prompt = DefaultSystemPrompt("default", name="x")
    user = [{"role": "user", "content": "hi"}]
    assert prompt.apply(user) == [{"role": "system", "content": "default"}, *user]
    own = [{"role": "system", "content": "mine"}, *user]
    assert prompt.apply(own) is own


def test_config_reads_the_file_from_the_model_folder(tmp_path):
    (tmp_path / "SYSTEM_PROMPT.txt").write_text("You are {name}.")
    config = AppConfig.model_validate(
        {
            "served_model_name": "m",
            "engine": {"model": str(tmp_path / ""), "tokenizer": "mistral_common:tekken_240911.json"},
            "system_prompt": {"file": "SYSTEM_PROMPT.txt"},
        }
    )
    prompt = DefaultSystemPrompt.from_config(config)
    assert prompt.render() == f"You are {tmp_path.name}."


def test_unknown_timezone_is_a_config_error():
    with pytest.raises(ValidationError, match="timezone"):
        AppConfig.model_validate(
            {"served_model_name": "m", "engine": {"model": "x"}, "system_prompt": {"file": "f", "timezone": "Mars/Olympus"}}
        )
