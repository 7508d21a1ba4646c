"""No line can stop the reader: every malformation becomes that line's error record."""

from __future__ import annotations

import json

from batchllm.batch.requests_jsonl import (
    auto_custom_id,
    is_auto_custom_id,
    line_hash,
    parse_request_line,
    read_request_records,
)


def test_malformed_lines_become_error_records():
    cases = {
        b"[" * 100_000 + b"]" * 100_000: "nested too deeply",
        b'{"prompt": "x", "max_tokens": ' + b"9" * 5000 + b"}": "invalid JSON",
        b"\xff\xfe{}": "not UTF-8",
        b'{"prompt": "x"': "invalid JSON",
        b"[1, 2]": "expected a JSON object",
        b'{"custom_id": "a", "prompt": "\\ud800"}': "lone surrogate",
        b'{"custom_id": "a", "messages": [{"role": "user", "content": "\\udfff"}]}': "lone surrogate",
        b'{"custom_id": "\\ud800", "prompt": "x"}': "lone surrogate",
        b'{"custom_id": "a", "body": 3}': "'body' must be a JSON object",
    }
    for line, message in cases.items():
        record = parse_request_line(line, 2)
        assert record is not None and not record.ok and message in record.error, (line[:40], record)
        assert record.line_hash == line_hash(line)


def test_a_surrogate_pair_is_unicode_and_parses():
    record = parse_request_line(b'{"prompt": "smile \\ud83d\\ude00"}', 1)
    assert record.ok and record.prompt == "smile \U0001F600"


def test_a_byte_order_mark_on_the_first_line_is_skipped(tmp_path):
    path = tmp_path / "in.jsonl"
    path.write_bytes(b'\xef\xbb\xbf{"custom_id": "a", "prompt": "x"}\n{"custom_id": "b", "prompt": "y"}\n')
    records = list(read_request_records(str(path)))
    assert [(r.custom_id, r.ok) for r in records] == [("a", True), ("b", True)]
    assert not parse_request_line(b'\xef\xbb\xbf{"prompt": "x"}', 2).ok  # only at the start of the file


def test_custom_ids_of_other_types():
    assert parse_request_line(b'{"custom_id": 17, "prompt": "x"}', 1).custom_id == "17"
    for value in (b"true", b"null", b"[1]", b"{}", b"1.5"):
        assert parse_request_line(b'{"custom_id": ' + value + b', "prompt": "x"}', 1).custom_id is None


def test_auto_ids_depend_on_content_only():
    line = json.dumps({"prompt": "x"}).encode()
    assert line_hash(line) == line_hash(b"  " + line + b"\r\n")
    assert auto_custom_id(line_hash(line), 1) != auto_custom_id(line_hash(line), 2)
    assert is_auto_custom_id(auto_custom_id(line_hash(line), 3))
    assert not is_auto_custom_id("line-3") and not is_auto_custom_id("auto-xyz-1")
