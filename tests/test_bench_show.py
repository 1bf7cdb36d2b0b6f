"""A benchmark's progress and table (src/shmbroker/bench/show.py): rich on a real terminal (a pty), plain lines
on a pipe or in a file, as CI's logs get them."""
from __future__ import annotations

import io
import os
import re

import pytest

from shmbroker.bench.show import Progress, Table, close_all

ROWS = [("figure", "unit", "ring", "Pipe", "ring/best", "target"),
        ("64 B one-way", "msgs/s", "2.10 M", "310.0 k", "6.77x", ">= 1 M msgs/s: met"),
        ("64 B round trip p50", "us (lower)", "12.50", "40.10", "0.31x", "<= 20: NOT met")]


def _terminal() -> tuple[int, io.TextIOWrapper]:
    """A pty: its master's fd (what the terminal would show is read there) and its slave as a text file."""
    master, slave = os.openpty()
    os.set_blocking(master, False)
    return master, io.TextIOWrapper(os.fdopen(slave, "wb", buffering=0), encoding="utf-8", write_through=True)


def _read(master: int) -> str:
    chunks = []
    while True:
        try:
            chunk = os.read(master, 1 << 16)
        except BlockingIOError:
            break
        if not chunk:
            break
        chunks.append(chunk)
    return re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", b"".join(chunks).decode())  # the colours and moves away


def test_plain_text_where_the_output_is_no_terminal():
    out = io.StringIO()
    Table(["shmbroker bench ring", ""], ROWS, ["", "a note"]).show(out)
    text = out.getvalue()
    assert text == str(Table(["shmbroker bench ring", ""], ROWS, ["", "a note"])) + "\n"
    lines = text.splitlines()
    assert lines[2].split() == ["figure", "unit", "ring", "Pipe", "ring/best", "target"]
    assert set(lines[3]) == {"-"} and len(lines[3]) == len(lines[2])
    assert lines[4].index("2.10 M") + len("2.10 M") == lines[5].index("12.50") + len("12.50")  # right-aligned
    err = io.StringIO()
    p = Progress(2, err)
    p.start("64 B one-way - ring")
    p.end("2.10 M msgs/s")
    p.start("64 B round trip - ring")
    p.end("p50 12.50 us")
    done = err.getvalue().splitlines()
    assert re.fullmatch(r"\[ 1/2\] 64 B one-way - ring \.\.\. 2\.10 M msgs/s \(\d+\.\d s, \d+ s in all\)", done[0])
    assert done[1].startswith("[ 2/2] 64 B round trip - ring ... p50 12.50 us (")


def test_rich_draws_the_table_and_the_progress_on_a_terminal(monkeypatch):
    pytest.importorskip("rich")
    monkeypatch.setenv("COLUMNS", "150")  # a terminal wide enough for the table (rich wraps it in a narrow one)
    master, term = _terminal()
    try:
        Table(["shmbroker bench ring"], ROWS, ["a note"]).show(term)
        shown = _read(master)
        assert "shmbroker bench ring" in shown and "a note" in shown
        head = next(line for line in shown.splitlines() if "figure" in line)
        assert head.split() == ["figure", "unit", "ring", "Pipe", "ring/best", "target"]
        assert any(set(line.strip()) <= set("─ ") and "─" in line for line in shown.splitlines())  # rich's rule
        assert "NOT met" in shown and "2.10 M" in shown
        p = Progress(2, term)
        p.start("64 B one-way - ring")
        p.end("2.10 M msgs/s")
        p.start("64 B round trip - ring")
        drawn = _read(master)
        assert "64 B round trip - ring" in drawn and "1/2" in drawn  # the bar: the step, how far
        assert "64 B one-way - ring: 2.10 M msgs/s" in drawn  # the finished step above it
        close_all()  # cut short: the bar goes
        assert p._bar is None
    finally:
        close_all()
        term.close()
        os.close(master)
