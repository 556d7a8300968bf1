"""Line splitting and batching: pure logic."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from services.runner.output import Batch, Batcher, LineSplitter


def test_lines_are_cut_at_newlines_and_the_rest_kept_for_later() -> None:
    splitter = LineSplitter(100)
    assert splitter.feed(b"one\ntwo\nthr") == ["one", "two"]
    assert splitter.feed(b"ee\r\n") == ["three"]
    assert splitter.feed(b"tail") == []
    assert splitter.close() == ["tail"]
    assert splitter.close() == []


def test_long_lines_are_split_into_pieces_never_dropped() -> None:
    splitter = LineSplitter(4)
    assert splitter.feed(b"abcdefghij\nxy") == ["abcd", "efgh", "ij"]
    # An unfinished long line is emitted in pieces as it grows.
    assert splitter.feed(b"z" * 9) == ["xyzz", "zzzz"]
    assert splitter.close() == ["zzz"]


def test_utf8_split_across_chunks_and_invalid_bytes() -> None:
    splitter = LineSplitter(100)
    data = "héllo ✓\n".encode()
    assert splitter.feed(data[:2]) == []
    assert splitter.feed(data[2:]) == ["héllo ✓"]
    assert splitter.feed(b"bad \xff byte\n") == ["bad \ufffd byte"]


# What a job can print on one line: no line breaks, nothing UTF-8 cannot encode.
LINE_CHARACTERS = st.characters(codec="utf-8", exclude_characters="\n\r")


@given(st.lists(st.text(alphabet=LINE_CHARACTERS, max_size=30)),
       st.integers(min_value=1, max_value=64), st.integers(min_value=1, max_value=9))
def test_feeding_in_any_chunks_gives_the_same_pieces(
    lines: list[str], chunk: int, max_chars: int
) -> None:
    data = "".join(line + "\n" for line in lines).encode()
    splitter = LineSplitter(max_chars)
    out: list[str] = []
    for start in range(0, len(data), chunk):
        out += splitter.feed(data[start : start + chunk])
    out += splitter.close()
    expected = [
        line[i : i + max_chars] for line in lines for i in range(0, max(len(line), 1), max_chars)
    ]
    assert out == expected


def test_batches_keep_order_and_one_stream_each() -> None:
    batcher = Batcher(max_lines=3, max_bytes=1000)
    batcher.add("stdout", ["a", "b"])
    batcher.add("stdout", ["c", "d"])
    batcher.add("stderr", ["E"])
    batcher.add("stdout", ["f"])
    assert batcher.full()
    taken = []
    while (batch := batcher.take()) is not None:
        taken.append(batch)
    assert taken == [
        Batch("stdout", ["a", "b", "c"]), Batch("stdout", ["d"]),
        Batch("stderr", ["E"]), Batch("stdout", ["f"]),
    ]
    assert len(batcher) == 0 and not batcher.full()


def test_batches_respect_the_byte_limit_but_always_carry_one_line() -> None:
    batcher = Batcher(max_lines=100, max_bytes=10)
    batcher.add("stdout", ["12345", "12345", "x" * 50])
    assert batcher.full()
    assert batcher.take() == Batch("stdout", ["12345"])
    assert batcher.take() == Batch("stdout", ["12345"])
    assert batcher.take() == Batch("stdout", ["x" * 50])
    assert batcher.take() is None
