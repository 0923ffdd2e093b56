"""data: bad lines are skipped and counted with their line numbers, or (strict) stop the load
with one line naming file:line; files are read a line at a time."""

import json
from pathlib import Path

import pytest

from data import load_rows, load_train_eval
from model.errors import UserError


def row_line(i, **kw) -> bytes:
    d = {"instruction": "Be kind.", "input": f"message {i}", "output": f"reply {i}"}
    d.update(kw)
    return (json.dumps(d) + "\n").encode()


NOT_UTF8 = b'{"instruction": "Be kind.", "input": "caf\xe9", "output": "x"}\n'  # latin-1 e-acute


def test_a_non_utf8_line_is_skipped_and_counted_with_its_line_number(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_bytes(row_line(1) + NOT_UTF8 + row_line(3))
    rows, stats = load_rows(path)
    assert [r.input for r in rows] == ["message 1", "message 3"]
    assert (stats.not_utf8, stats.not_utf8_where) == (1, ["rows.jsonl:2"])
    assert "skipped 1 non-UTF-8 line (rows.jsonl:2)" in stats.summary()


def test_malformed_json_lines_are_skipped_and_the_first_few_named(tmp_path):
    path = tmp_path / "rows.jsonl"
    broken = b'{"input": "x", "output": \n'
    lines = [row_line(1), broken, row_line(3), broken, broken, b"[1, 2]\n", broken, broken,
             broken, row_line(10)]
    path.write_bytes(b"".join(lines))
    rows, stats = load_rows(path)
    assert [r.input for r in rows] == ["message 1", "message 3", "message 10"]
    assert stats.malformed == 7
    assert stats.malformed_where == [f"rows.jsonl:{n}" for n in (2, 4, 5, 6, 7)]
    assert "skipped 7 malformed lines (rows.jsonl:2, :4, :5, :6, :7, ...)" in stats.summary()


def test_a_truncated_last_line_is_skipped(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_bytes(row_line(1) + row_line(2)[:20])  # the write stopped half-way
    rows, stats = load_rows(path)
    assert [r.input for r in rows] == ["message 1"]
    assert stats.malformed_where == ["rows.jsonl:2"]


@pytest.mark.parametrize("content, what", [
    (row_line(1) + NOT_UTF8, r"rows\.jsonl:2 is not UTF-8 text \(byte 0xe9"),
    (row_line(1) + b"{oops\n", r"rows\.jsonl:2 is not valid JSON"),
    (row_line(1) + b'"just a string"\n', r"rows\.jsonl:2 is a JSON str, not an object"),
    (row_line(1) + row_line(2, output="  "), r"rows\.jsonl:2 has an empty or missing output"),
])
def test_strict_raises_one_line_naming_file_and_line(tmp_path, content, what):
    path = tmp_path / "rows.jsonl"
    path.write_bytes(content)
    with pytest.raises(UserError, match=what) as info:
        load_rows(path, strict=True)
    assert "\n" not in str(info.value)
    assert str(info.value).startswith(str(path))


def test_strict_loads_a_clean_file_like_the_default(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_bytes(row_line(1) + row_line(2))
    assert load_rows(path, strict=True)[0] == load_rows(path)[0]


def test_a_line_with_u2028_inside_a_string_is_one_row(tmp_path):
    # JSON allows U+2028 unescaped; str.splitlines() would cut the line there.
    path = tmp_path / "rows.jsonl"
    path.write_bytes(json.dumps({"input": "a\u2028b", "output": "c"}, ensure_ascii=False).encode()
                     + b"\n")
    rows, stats = load_rows(path)
    assert [r.input for r in rows] == ["a\u2028b"] and stats.malformed == 0


def test_jsonl_is_read_a_line_at_a_time_not_whole(tmp_path, monkeypatch):
    path = tmp_path / "rows.jsonl"
    path.write_bytes(row_line(1) + row_line(2))

    def whole_file(*args, **kwargs):
        raise AssertionError("the whole file was read at once")

    monkeypatch.setattr(Path, "read_text", whole_file)
    monkeypatch.setattr(Path, "read_bytes", whole_file)
    rows, _ = load_rows(path)
    assert len(rows) == 2


def test_a_file_of_only_bad_lines_raises_naming_the_count(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_bytes(b"{oops\n" + NOT_UTF8)
    with pytest.raises(UserError, match=r"rows\.jsonl holds no readable row \(2 lines skipped"):
        load_rows(path)


def test_skips_in_several_files_name_each_file(tmp_path):
    (tmp_path / "a.jsonl").write_bytes(row_line(1) + b"{oops\n" + b"{oops\n")
    (tmp_path / "b.jsonl").write_bytes(b"{oops\n" + row_line(2))
    _, stats = load_rows(tmp_path)
    assert "skipped 3 malformed lines (a.jsonl:2, :3, b.jsonl:1)" in stats.summary()


def test_skipped_lines_in_the_evaluation_file_show_in_the_summary(tmp_path):
    (tmp_path / "train.jsonl").write_bytes(row_line(1) + row_line(2))
    (tmp_path / "eval.jsonl").write_bytes(row_line(3) + NOT_UTF8)
    train, evals, stats = load_train_eval(tmp_path)
    assert len(train) == 2 and len(evals) == 1
    assert stats.evaluation.not_utf8_where == ["eval.jsonl:2"]
    assert "non-UTF-8 line (eval.jsonl:2)" in stats.summary()


# ------------------------------------------------------------------------------------ csv
def test_csv_non_utf8_line_is_skipped_and_the_records_after_it_kept(tmp_path):
    path = tmp_path / "rows.csv"
    path.write_bytes(b'instruction,input,output\n'
                     b'a,caf\xe9,c\n'
                     b'a,"two\nlines",c\n'
                     b'a,last,c\n')
    rows, stats = load_rows(path)
    assert [r.input for r in rows] == ["two\nlines", "last"]
    assert stats.not_utf8_where == ["rows.csv:2"]


def test_csv_bad_quoting_and_extra_fields_are_skipped_and_counted(tmp_path):
    path = tmp_path / "rows.csv"
    path.write_text('instruction,input,output\na,b,c\na,"b"x,c\na,b,c,d\na,e,f\n')
    rows, stats = load_rows(path)
    assert [r.input for r in rows] == ["b", "e"]
    assert stats.malformed_where == ["rows.csv:3", "rows.csv:4"]


def test_csv_field_over_the_csv_module_limit_loads(tmp_path):
    path = tmp_path / "rows.csv"
    path.write_text("instruction,input,output\na,b," + "x" * 200_000 + "\n")  # csv's limit: 131072
    rows, _ = load_rows(path)
    assert len(rows[0].output) == 200_000


def test_strict_csv_non_utf8_line_names_the_line(tmp_path):
    path = tmp_path / "rows.csv"
    path.write_bytes(b"instruction,input,output\na,b,c\na,caf\xe9,c\n")
    with pytest.raises(UserError, match=r"rows\.csv:3 is not UTF-8 text"):
        load_rows(path, strict=True)


# ------------------------------------------------------------------------------------ json array
def test_json_array_items_that_are_not_utf8_or_not_objects_are_skipped(tmp_path):
    path = tmp_path / "rows.json"
    path.write_bytes(b'[\n {"input": "a", "output": "b"},\n {"input": "caf\xe9", "output": "d"},\n'
                     b' 7,\n {"input": "e", "output": "f"}\n]\n')
    rows, stats = load_rows(path)
    assert [r.input for r in rows] == ["a", "e"]
    assert stats.not_utf8_where == ["rows.json item 2"]
    assert stats.malformed_where == ["rows.json item 3"]


def test_strict_json_array_with_a_non_utf8_byte_names_its_line(tmp_path):
    path = tmp_path / "rows.json"
    path.write_bytes(b'[\n {"input": "a", "output": "b"},\n {"input": "caf\xe9", "output": "d"}\n]')
    with pytest.raises(UserError, match=r"rows\.json:3 is not UTF-8 text \(byte 0xe9 at column 16"):
        load_rows(path, strict=True)


def test_json_file_of_json_lines_skips_its_bad_lines(tmp_path):
    path = tmp_path / "rows.json"
    path.write_bytes(row_line(1) + b"{oops\n" + row_line(3))
    rows, stats = load_rows(path)
    assert [r.input for r in rows] == ["message 1", "message 3"]
    assert stats.malformed_where == ["rows.json:2"]


# ------------------------------------------------------------------------------------ max_chars
def test_max_chars_cuts_a_long_field_at_load_and_counts_it(tmp_path):
    path = tmp_path / "rows.jsonl"
    long_reply = "word " * 200_000  # 1 MB
    path.write_bytes(row_line(1) + row_line(2, output=long_reply))
    rows, stats = load_rows(path, max_chars=5000)
    assert rows[0].output == "reply 1"
    assert len(rows[1].output) <= 5000 and long_reply.startswith(rows[1].output)
    assert stats.capped == 1
    assert "1 with a field cut to 5000 characters" in stats.summary()
