"""The README opens with the two commands and documents every setting."""

from __future__ import annotations

import re
from pathlib import Path

from gpt_observatory.telemetry.settings import OTEL_ENV, Settings

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()


def test_readme_opens_with_exactly_two_commands():
    block = re.search(r"```bash\n(.*?)```", README, re.S)
    assert block and README.index(block.group(0)) < README.index("## ")
    commands = [line for line in block.group(1).splitlines() if line.strip()]
    assert len(commands) == 2
    assert "observatory demo" in commands[0] and "torch==2.13.0" in commands[0]
    ci = (Path(__file__).resolve().parent.parent / ".ci" / "run").read_text()
    assert commands[1] == "make test" and "make test" in ci


def test_every_setting_and_variable_is_documented():
    for field in Settings.model_fields:
        assert f"`{field}`" in README, field
        assert f"OBSERVATORY_{field.upper()}" in README, field
    for var in OTEL_ENV:
        assert var in README, var


def test_serving_pipeline_and_canary_settings_are_documented():
    from gpt_observatory.flows.settings import CanarySettings, PipelineSettings
    from gpt_observatory.serving_hooks._auth_settings import AuthSettings
    from gpt_observatory.serving_hooks.settings import ServeSettings

    for cls, prefix in ((ServeSettings, "OBSERVATORY_SERVE_"), (AuthSettings, "OBSERVATORY_AUTH_"),
                        (PipelineSettings, "OBSERVATORY_PIPELINE_"), (CanarySettings, "OBSERVATORY_CANARY_")):
        for field in cls.model_fields:
            assert f"{prefix}{field.upper()}" in README, (cls.__name__, field)


def test_the_layout_table_names_files_that_exist():
    section = README[README.index("### Where things live"):]
    table = [line for line in section.splitlines() if line.startswith("| ") and "`" in line.split("|")[2]]
    paths = {p for line in table for p in re.findall(r"`([\w./-]+/[\w./-]*|[\w-]+\.(?:py|yaml|md))`", line.split("|")[2])}
    assert len(paths) > 30
    root = Path(__file__).resolve().parent.parent
    assert sorted(p for p in paths if not (root / p).exists()) == []
