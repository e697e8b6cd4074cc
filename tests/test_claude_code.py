"""Claude Code log import: de-duplication, attribution, normalization, bad lines (fixture logs in tests/fixtures)."""

from __future__ import annotations

import json
import logging
import shutil
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest

from llmbudget.errors import NotFound
from llmbudget.quota import claude_code as cc

FIXTURES = Path(__file__).parent / "fixtures" / "claude_code"
WEBAPP_S1 = "5f0c8a8e-1b1e-4c35-9a51-0d6a3b7f1a01"
WEBAPP_S2 = "7d2e4b90-93c1-4f8e-8a0e-5c1f2d9e6b02"
API_S3 = "a3b9c1d2-4e5f-4061-8728-394a5b6c7d03"


@pytest.fixture
def logs(tmp_path: Path) -> Path:
    """A copy of the fixture Claude config dir (tests may add files to it)."""
    dest = tmp_path / "claude"
    shutil.copytree(FIXTURES, dest)
    return dest


def _by_msg(events: list, message_id: str):
    matches = [e for e in events if e.id == cc.event_id_for(message_id, _req(message_id))]
    assert len(matches) == 1, message_id
    return matches[0]


def _req(message_id: str) -> str | None:
    return None if message_id == "msg_04NotesI" else message_id.replace("msg_", "req_")


def test_one_event_per_response_across_all_files(logs: Path) -> None:
    events, scan = cc.load_events([logs], prices=None)
    assert scan.files == 4
    assert scan.lines == 24
    # 9 real responses; the content-block repeats and the resumed session's copies merge into them
    assert len(events) == 9
    assert scan.duplicates == 4
    assert scan.synthetic == 1
    assert all(e.model != "<synthetic>" for e in events)
    assert len({e.id for e in events}) == 9


def test_largest_usage_line_wins_and_first_session_keeps_the_response(logs: Path) -> None:
    events, _ = cc.load_events([logs], prices=None)
    a = _by_msg(events, "msg_01WebA")
    # logged three times (thinking, text, tool_use) with output growing 3 -> 180 -> 410
    assert a.output_tokens == 410
    assert a.timestamp == datetime(2026, 11, 20, 9, 12, 9, 500000, tzinfo=UTC)
    b = _by_msg(events, "msg_01WebB")
    # re-logged by the resumed session: attributed to the session that made the call
    assert b.session == WEBAPP_S1
    d = _by_msg(events, "msg_02WebD")
    assert d.session == WEBAPP_S2


def test_tokens_are_normalized_with_anthropic_semantics(logs: Path) -> None:
    events, _ = cc.load_events([logs], prices=None)
    a = _by_msg(events, "msg_01WebA")
    # input_tokens 12 excludes cache: the event's input includes the 4200 written and 11800 read
    assert a.input_tokens == 12 + 4200 + 11800
    assert a.cached_input_tokens == 11800
    assert a.cache_write_tokens == 4200
    assert a.output_tokens == 410


def test_attribution(logs: Path) -> None:
    events, _ = cc.load_events([logs], prices=None)
    for e in events:
        assert (e.backend, e.provider, e.agent, e.source) == (
            "claude-code",
            "anthropic",
            "claude-code",
            "import",
        )
    projects = {e.session: e.tags["project"] for e in events}
    assert projects[WEBAPP_S1] == "/home/alice/code/webapp"
    # these assistant lines carry no cwd: the folder's other lines give it (keeps the dash in api-server)
    assert projects[API_S3] == "/home/alice/code/api-server"
    # no cwd anywhere: decoded from the folder name -home-alice-notes
    notes = _by_msg(events, "msg_04NotesI")
    assert notes.tags["project"] == "/home/alice/notes"
    assert notes.tags["claude_code_version"] == "1.0.2"


def test_logged_cost_used_only_when_the_price_book_has_none(logs: Path) -> None:
    events, _ = cc.load_events([logs], prices=None)
    notes = _by_msg(events, "msg_04NotesI")
    assert notes.cost_usd == Decimal("0.0072")
    assert notes.price_status == "priced"
    assert notes.tags["cost_source"] == "claude-code"
    other = _by_msg(events, "msg_02WebE")
    assert other.cost_usd is None and other.price_status == "unpriced"


def test_event_ids_are_deterministic(logs: Path, tmp_path: Path) -> None:
    first, _ = cc.load_events([logs], prices=None)
    # the same response found in another copy of the logs maps to the same ids
    other = tmp_path / "other"
    shutil.copytree(FIXTURES, other)
    second, _ = cc.load_events([other], prices=None)
    assert [e.id for e in first] == [e.id for e in second]


def test_corrupted_lines_are_skipped_with_file_and_line(logs: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="llmbudget.quota.claude_code"):
        _, scan = cc.load_events([logs], prices=None)
    assert len(scan.warnings) == 2
    s1 = logs / "projects" / "-home-alice-code-webapp" / f"{WEBAPP_S1}.jsonl"
    s2 = logs / "projects" / "-home-alice-code-webapp" / f"{WEBAPP_S2}.jsonl"
    assert any(w.startswith(f"{s1}:7: skipped: not valid JSON") for w in scan.warnings)
    assert any(w.startswith(f"{s2}:6: skipped: not valid JSON") for w in scan.warnings)
    assert any(f"file={s2} line=6" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize(
    ("usage", "field"),
    [
        ({"input_tokens": -5, "output_tokens": 1}, "input_tokens"),
        ({"input_tokens": 5, "output_tokens": "many"}, "output_tokens"),
        ({"input_tokens": 5, "output_tokens": 1, "cache_read_input_tokens": 1.5}, "cache_read_input_tokens"),
    ],
)
def test_bad_usage_values_are_skipped_naming_the_field(tmp_path: Path, usage: dict, field: str) -> None:
    f = tmp_path / "projects" / "-tmp-x" / "s.jsonl"
    f.parent.mkdir(parents=True)
    good = {
        "type": "assistant",
        "timestamp": "2026-11-20T10:00:00Z",
        "sessionId": "s",
        "requestId": "r1",
        "message": {
            "id": "m1",
            "model": "claude-sonnet-4-5",
            "usage": {"input_tokens": 1, "output_tokens": 2},
        },
    }
    bad = {**good, "requestId": "r2", "message": {**good["message"], "id": "m2", "usage": usage}}
    f.write_text(json.dumps(good) + "\n" + json.dumps(bad) + "\n")
    events, scan = cc.load_events([tmp_path], prices=None)
    assert len(events) == 1
    assert scan.warnings == [
        f"{f}:2: skipped: message.usage.{field}: must be a non-negative integer, got {usage[field]!r}"
    ]


def test_bad_timestamp_is_skipped(tmp_path: Path) -> None:
    f = tmp_path / "s.jsonl"
    f.write_text(
        json.dumps(
            {
                "type": "assistant",
                "timestamp": "yesterday",
                "message": {"id": "m", "model": "x", "usage": {"input_tokens": 1, "output_tokens": 1}},
            }
        )
        + "\n"
    )
    events, scan = cc.load_events([f], prices=None)
    assert events == []
    assert len(scan.warnings) == 1 and scan.warnings[0].startswith(f"{f}:1: skipped: timestamp:")


def test_default_locations_and_claude_config_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home = Path.home()  # the hermetic temp home
    with pytest.raises(NotFound, match="no Claude Code logs found"):
        cc.find_log_files(None)
    shutil.copytree(
        FIXTURES / "projects" / "-home-alice-notes", home / ".claude" / "projects" / "-home-alice-notes"
    )
    assert len(cc.find_log_files(None)) == 1
    a, b = tmp_path / "cfg-a", tmp_path / "cfg-b"
    shutil.copytree(FIXTURES, a)
    shutil.copytree(FIXTURES / "projects" / "-home-alice-code-api-server", b / "projects" / "p")
    monkeypatch.setenv("CLAUDE_CONFIG_DIR", f"{a}, {b}")
    dirs = cc.default_log_dirs()
    assert dirs[:2] == [a / "projects", b / "projects"]
    assert len(cc.find_log_files(None)) == 4 + 1 + 1


def test_missing_path_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(NotFound, match="no such file or directory"):
        cc.find_log_files([tmp_path / "nope"])


def test_folder_name_decoding_prefers_existing_directories(tmp_path: Path) -> None:
    (tmp_path / "code" / "api-server").mkdir(parents=True)
    encoded = str(tmp_path / "code" / "api-server").replace("/", "-")
    assert cc.decode_project_dir(encoded) == str(tmp_path / "code" / "api-server")
    # nothing on disk: every dash is a separator
    assert cc.decode_project_dir("-srv-nowhere-my-app") == "/srv/nowhere/my/app"
