"""One CLI shape: every subcommand lives in convolab.commands, takes ``--json FILE`` the same
way, and the cheap ones write the JSON they promise."""

import json

import numpy as np
import pytest

from convolab.cli import COMMAND_MODULES, build_parser, main


def _leaves(parser, prefix=()):
    subs = [a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction"]
    if not subs:
        yield prefix, parser
        return
    for name, p in subs[0].choices.items():
        yield from _leaves(p, (*prefix, name))


LEAVES = dict(_leaves(build_parser()))


def test_every_subcommand_is_in_commands():
    assert all(m.startswith("convolab.commands.") for m in COMMAND_MODULES)


@pytest.mark.parametrize("path", sorted(LEAVES), ids=" ".join)
def test_every_subcommand_takes_json_file(path):
    action = next(a for a in LEAVES[path]._actions if "--json" in a.option_strings)
    assert action.dest == "json" and action.metavar == "FILE" and action.default is None


def test_json_of_cheap_commands(tmp_path, capsys):
    out = tmp_path / "a.json"
    assert main(["algorithms", "--json", str(out)]) == 0
    caps = json.loads(out.read_text())
    assert "direct" in caps and caps["direct"]["deterministic"] == "yes"
    img = tmp_path / "in.npy"
    np.save(img, np.random.default_rng(0).random((12, 10)).astype(np.float32))
    out = tmp_path / "b.json"
    assert main(["bilateral", str(img), str(tmp_path / "out.npy"), "--sigma-spatial", "2",
                 "--sigma-color", "0.1", "--json", str(out)]) == 0
    run = json.loads(out.read_text())
    assert run["shape"] == [12, 10] and run["method"] == "permutohedral" and run["seconds"] > 0
    assert f"wrote {out}" in capsys.readouterr().out


def test_json_to_an_unwritable_place_is_a_clear_error(tmp_path, capsys):
    bad = tmp_path / "no-such-dir" / "a.json"
    assert main(["algorithms", "--json", str(bad)]) == 2
    assert f"cannot write {bad}" in capsys.readouterr().err
    assert not bad.parent.exists()
