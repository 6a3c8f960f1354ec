"""Reading key and proxy files: the pure parsers, and folders of real files on disk."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from tests.helpers import kubernetes_mount

from llmgateway.keyfiles import (
    KEY_CHARACTERS,
    PROBLEMS_PER_FILE,
    Parsed,
    key_problem,
    mask_proxy,
    parse_keys,
    parse_proxies,
    read_folder,
)

KEY_1 = "sk-proj-abcdefghijklmnop0001"
KEY_2 = "sk-proj-abcdefghijklmnop0002"
KEY_3 = "AIzaSyD-abcdefghijklmnopqrstu0003"


def test_keys_split_on_newlines_commas_and_whitespace_and_collapse() -> None:
    text = f"{KEY_1}\n{KEY_2},{KEY_3}\t{KEY_1}\n\n   \n{KEY_2} ,  {KEY_3}\n"
    assert parse_keys(text, "k.txt") == Parsed(frozenset({KEY_1, KEY_2, KEY_3}))


def test_bom_crlf_and_comments() -> None:
    text = f"\ufeff# my keys\r\n{KEY_1}\r\n{KEY_2} # the team's key\r\n#{KEY_3}\r\n"
    assert parse_keys(text, "k.txt") == Parsed(frozenset({KEY_1, KEY_2}))


@pytest.mark.parametrize(
    ("token", "why"),
    [
        ("abc1234", "too short: 7 characters"),
        ("x" * 1025, "too long: 1025 characters"),
        ('"sk-proj-abcdefghijkl"', "contains a quote"),
        ("sk-proj-abc\x07defghijkl", "control character U+0007"),
        ("sk-proj-abcdéfghijkl", "contains 'é'"),
        ("sk-proj-abc;defghijkl", "contains ';'"),
    ],
)
def test_what_is_not_a_key(token: str, why: str) -> None:
    problem = key_problem(token)
    assert problem is not None
    assert why in problem


@pytest.mark.parametrize("key", [KEY_1, KEY_3, "a" * 8, "ya29.a0AfB_byC+x/y=z:w~v", "k" * 1024])
def test_what_is_a_key(key: str) -> None:
    assert key_problem(key) is None


def test_garbage_is_reported_as_file_line_with_the_token_masked() -> None:
    secret = "sk-proj-SECRETSECRETSECRET;9999"
    parsed = parse_keys(f"{KEY_1}\n\n{secret}\nshort\n", "keys/a.txt")
    assert parsed.values == {KEY_1}
    assert [str(p) for p in parsed.problems] == [
        "keys/a.txt:3: sk-…9999 is not a key (contains ';'; keys use only letters, "
        "digits and . _ ~ + / = : -)",
        "keys/a.txt:4: … is not a key (too short: 5 characters, keys have at least 8)",
    ]
    assert parsed.complete
    assert "SECRET" not in "".join(str(p) for p in parsed.problems)


def test_a_control_character_is_never_printed() -> None:
    parsed = parse_keys("sk-proj-abcdefgh\x1b[2J\x07", "a.txt")
    (problem,) = parsed.problems
    assert "\x1b" not in str(problem)
    assert "\x07" not in str(problem)


def test_problems_per_file_are_capped() -> None:
    parsed = parse_keys("bad\n" * (PROBLEMS_PER_FILE + 7), "a.txt")
    assert len(parsed.problems) == PROBLEMS_PER_FILE + 1
    assert str(parsed.problems[-1]) == "a.txt: 7 more tokens that are not a key skipped"


@given(
    st.lists(
        st.text(alphabet=sorted(KEY_CHARACTERS), min_size=8, max_size=60),
        max_size=30,
    ),
    st.lists(st.sampled_from(["\n", "\r\n", ",", " ", "\t", " , ", "  # note\n"]), min_size=1),
)
def test_any_valid_keys_read_back_exactly(keys: list[str], separators: list[str]) -> None:
    text = "\ufeff" + "".join(key + separators[i % len(separators)] for i, key in enumerate(keys))
    assert parse_keys(text, "k.txt") == Parsed(frozenset(keys))


def test_proxies_parse_and_mask_their_password() -> None:
    text = (
        "http://10.0.0.1:3128\n"
        "https://user:pa55word-secret@proxy.example.com:8443 # paid\n"
        "socks5://10.0.0.3:1080, socks5://10.0.0.3:1080\n"
        "socks5h://u%40x:p%3Ass-secret@proxy.example:1080\n"
        "ftp://user:other-secret@10.0.0.4:21\n"
        "10.0.0.5:3128\n"
        "http://:80\n"
    )
    parsed = parse_proxies(text, "proxies.txt")
    assert parsed.values == {
        "http://10.0.0.1:3128",
        "https://user:pa55word-secret@proxy.example.com:8443",
        "socks5://10.0.0.3:1080",
        "socks5h://u%40x:p%3Ass-secret@proxy.example:1080",
    }
    shown = [str(p) for p in parsed.problems]
    assert [s.split(" is not")[0] for s in shown] == [
        "proxies.txt:5: ftp://user:…@10.0.0.4:21",
        "proxies.txt:6: 10…3128",
        "proxies.txt:7: http://:80",
    ]
    assert all("secret" not in s for s in shown)


def test_mask_proxy() -> None:
    assert mask_proxy("http://bob:correct-horse@h:1") == "http://bob:…@h:1"
    assert mask_proxy("socks5://h:1080") == "socks5://h:1080"
    assert mask_proxy("socks5h://h:1080") == "socks5h://h:1080"
    assert mask_proxy("socks5h://bob:s3cret-word@h:1080") == "socks5h://bob:…@h:1080"
    assert mask_proxy("http://bob:pw@h:1") == "http://bob:…@h:1"


# -- folders of real files -------------------------------------------------------------------


def write(path: Path, content: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, str):
        path.write_text(content, encoding="utf-8")
    else:
        path.write_bytes(content)
    return path


def test_a_folder_is_the_union_of_its_files_and_files_are_never_modified(tmp_path: Path) -> None:
    a = write(tmp_path / "a.txt", f"{KEY_1}\n{KEY_2}\n")
    b = write(tmp_path / "b.keys", f"{KEY_2},{KEY_3}\r\n")
    before = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in (a, b)}
    parsed = read_folder(tmp_path, parse_keys)
    assert parsed == Parsed(frozenset({KEY_1, KEY_2, KEY_3}))
    assert {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in (a, b)} == before


def test_hidden_files_and_editor_backups_are_skipped(tmp_path: Path) -> None:
    write(tmp_path / "keys.txt", KEY_1)
    write(tmp_path / ".keys.txt.swp", KEY_2)
    write(tmp_path / "keys.txt~", KEY_3)
    write(tmp_path / "#keys.txt#", "sk-proj-autosave-000000000")
    assert read_folder(tmp_path, parse_keys) == Parsed(frozenset({KEY_1}))


def test_an_empty_folder_is_zero_keys(tmp_path: Path) -> None:
    assert read_folder(tmp_path, parse_keys) == Parsed(frozenset(), (), complete=True)


def test_a_missing_folder_is_incomplete_not_empty(tmp_path: Path) -> None:
    parsed = read_folder(tmp_path / "nope", parse_keys)
    assert not parsed.complete
    assert [str(p) for p in parsed.problems] == [
        f"{tmp_path / 'nope'}: folder not found; create it or fix the path in the config"
    ]


def test_a_file_instead_of_a_folder(tmp_path: Path) -> None:
    parsed = read_folder(write(tmp_path / "keys.txt", KEY_1), parse_keys)
    assert not parsed.complete
    assert "is a file, not a folder" in str(parsed.problems[0])


def test_a_file_that_is_not_utf8_makes_the_read_incomplete(tmp_path: Path) -> None:
    write(tmp_path / "a.txt", KEY_1)
    write(tmp_path / "b.txt", b"sk-proj-\xff\xfe-latin1-key\n")
    parsed = read_folder(tmp_path, parse_keys)
    assert parsed.values == {KEY_1}
    assert not parsed.complete
    assert [str(p) for p in parsed.problems] == [
        f"{tmp_path / 'b.txt'}: not UTF-8 text (byte 8); save it as UTF-8; "
        "its keys are kept as they were"
    ]


def test_a_dangling_link_or_a_fifo_makes_the_read_incomplete(tmp_path: Path) -> None:
    write(tmp_path / "a.txt", KEY_1)
    (tmp_path / "gone.txt").symlink_to(tmp_path / "elsewhere.txt")
    assert not read_folder(tmp_path, parse_keys).complete
    (tmp_path / "gone.txt").unlink()
    os.mkfifo(tmp_path / "pipe")
    parsed = read_folder(tmp_path, parse_keys)  # must not block on the FIFO
    assert (parsed.values, parsed.complete) == (frozenset({KEY_1}), False)
    assert "not a regular file" in str(parsed.problems[0])


def test_a_sub_folder_is_skipped_and_a_socket_is_unreadable(tmp_path: Path) -> None:
    write(tmp_path / "a.txt", KEY_1)
    write(tmp_path / "old" / "b.txt", KEY_2)
    parsed = read_folder(tmp_path, parse_keys)
    assert (parsed.values, parsed.complete) == (frozenset({KEY_1}), True)
    assert str(parsed.problems[0]) == f"{tmp_path / 'old'}: sub-folder skipped (not read)"
    with socket.socket(socket.AF_UNIX) as server:
        server.bind(str(tmp_path / "sock"))
        assert not read_folder(tmp_path, parse_keys).complete


def test_a_link_to_a_file_inside_the_folder_is_read(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    write(keys / "a.txt", KEY_1)
    write(keys / "team" / "real.txt", KEY_2)
    (keys / "b.txt").symlink_to("team/real.txt")
    (keys / "c.txt").symlink_to(keys / "a.txt")  # absolute, and to a sibling: read twice, one key
    parsed = read_folder(keys, parse_keys)
    assert (parsed.values, parsed.complete) == (frozenset({KEY_1, KEY_2}), True)
    assert [str(p) for p in parsed.problems] == [f"{keys / 'team'}: sub-folder skipped (not read)"]


def test_a_kubernetes_secret_mount_is_read_and_follows_the_swap(tmp_path: Path) -> None:
    kubernetes_mount(tmp_path, "2024_01_01_10_00_00.1", KEY_1)
    assert read_folder(tmp_path, parse_keys) == Parsed(frozenset({KEY_1}))
    kubernetes_mount(tmp_path, "2024_02_01_10_00_00.2", f"{KEY_2}\n{KEY_3}")
    assert read_folder(tmp_path, parse_keys) == Parsed(frozenset({KEY_2, KEY_3}))


def test_a_folder_that_is_itself_a_link_is_read(tmp_path: Path) -> None:
    write(tmp_path / "real" / "a.txt", KEY_1)
    (tmp_path / "real" / "b.txt").symlink_to("a.txt")
    (tmp_path / "keys").symlink_to(tmp_path / "real")
    assert read_folder(tmp_path / "keys", parse_keys) == Parsed(frozenset({KEY_1}))


@pytest.mark.parametrize("target", ["/etc/passwd", "outside.txt", "elsewhere", "../keys-2/x.txt"])
def test_a_link_to_outside_the_folder_is_skipped_unread(tmp_path: Path, target: str) -> None:
    write(tmp_path / "outside.txt", KEY_2)
    write(tmp_path / "elsewhere" / "x.txt", KEY_3)
    write(tmp_path / "keys-2" / "x.txt", KEY_3)
    keys = tmp_path / "keys"
    write(keys / "a.txt", KEY_1)
    link = keys / "stolen.txt"
    link.symlink_to(target if target.startswith(("/", "..")) else tmp_path / target)
    parsed = read_folder(keys, parse_keys)
    assert parsed.values == {KEY_1}
    assert not parsed.complete  # the keys it gave before (if any) are kept
    resolved = os.path.realpath(link)
    assert [str(p) for p in parsed.problems] == [
        f"{link}: skipped, a link to outside the folder (it points to {resolved}); move the "
        "file into the folder; its keys are kept as they were"
    ]


def test_nothing_of_etc_passwd_shows(tmp_path: Path) -> None:
    (tmp_path / "passwd.txt").symlink_to("/etc/passwd")
    (tmp_path / "shadow.txt").symlink_to("/etc/../etc/passwd")
    shown = " ".join(str(p) for p in read_folder(tmp_path, parse_keys).problems)
    for line in Path("/etc/passwd").read_text().splitlines():
        assert line.partition(":")[2] not in shown
    assert ":x:0:0:" not in shown
    assert "is not a key" not in shown  # never parsed, so no token of it is even masked


def test_a_link_loop_is_skipped(tmp_path: Path) -> None:
    write(tmp_path / "a.txt", KEY_1)
    (tmp_path / "loop1.txt").symlink_to("loop2.txt")
    (tmp_path / "loop2.txt").symlink_to("loop1.txt")
    (tmp_path / "self.txt").symlink_to("self.txt")
    parsed = read_folder(tmp_path, parse_keys)
    assert parsed.values == {KEY_1}
    assert not parsed.complete
    assert [str(p) for p in parsed.problems] == [
        f"{tmp_path / name}: skipped, a link to outside the folder (a link loop: it never "
        "reaches a file); move the file into the folder; its keys are kept as they were"
        for name in ("loop1.txt", "loop2.txt", "self.txt")
    ]
