"""Every numeric option of ``sbir-prep`` and ``sbir`` has its range checked by click: a bad value is click's usage
error (exit status 2, the option named), never a traceback or a silently accepted value."""

from __future__ import annotations

import click
import pytest

from sbir.cli import SEED
from sbir.cli.main import main as sbir_main
from sbir.cli.prep import main as prep_main
from tests.helpers import runner

GROUPS = {"sbir-prep": prep_main, "sbir": sbir_main}

#: what each command needs besides the option tested (its required options and arguments)
REQUIRED = {
    ("sbir-prep", "download"): ["--dataset", "synthetic"],
    ("sbir-prep", "shard"): ["--dataset", "synthetic"],
    ("sbir-prep", "verify"): ["no-such-shards"],
    ("sbir", "embed"): [],
    ("sbir", "evaluate"): [],
    ("sbir", "train"): [],
    ("sbir", "search"): ["--sketch", "no-such-sketch.png"],
    ("sbir", "index"): ["no-such-photos", "--out", "no-such-index"],
    ("sbir", "explain"): ["--sketch", "no-such-sketch.png", "--photo", "no-such-photo.jpg"],
    ("sbir", "serve"): ["--index", "no-such-index"],
}

SEED_MAX = str(2**32 - 1)

#: (group, command, option, a value out of its range)
BAD = [
    ("sbir-prep", "download", "--seed", "-1"),
    ("sbir-prep", "shard", "--image-size", "-5"),
    ("sbir-prep", "shard", "--image-size", "8"),
    ("sbir-prep", "shard", "--image-size", "5000"),
    ("sbir-prep", "shard", "--shard-size", "0"),
    ("sbir-prep", "shard", "--val-fraction", "1.5"),
    ("sbir-prep", "shard", "--val-fraction", "1"),
    ("sbir-prep", "shard", "--val-fraction", "-0.5"),
    ("sbir-prep", "shard", "--val-fraction", "nan"),
    ("sbir-prep", "shard", "--seed", "-1"),
    ("sbir-prep", "shard", "--seed", str(2**32)),
    ("sbir-prep", "shard", "--max-per-class", "-1"),
    ("sbir-prep", "shard", "--workers", "-1"),
    ("sbir-prep", "shard", "--workers", "0"),
    ("sbir-prep", "shard", "--max-bad", "1.5"),
    ("sbir-prep", "shard", "--max-bad", "-0.1"),
    ("sbir-prep", "verify", "--workers", "0"),
    ("sbir", "embed", "--batch-size", "0"),
    ("sbir", "embed", "--workers", "-1"),
    ("sbir", "embed", "--threads", "-1"),
    ("sbir", "evaluate", "--block-size", "0"),
    ("sbir", "evaluate", "--pr-levels", "1"),
    ("sbir", "evaluate", "--grid-queries", "-1"),
    ("sbir", "evaluate", "--grid-top", "0"),
    ("sbir", "evaluate", "--seed", "-1"),
    ("sbir", "evaluate", "--top-k", "0"),
    ("sbir", "evaluate", "--batch-size", "0"),
    ("sbir", "evaluate", "--workers", "-1"),
    ("sbir", "train", "--steps", "0"),
    ("sbir", "train", "--batch-size", "0"),
    ("sbir", "train", "--lr", "0"),
    ("sbir", "train", "--lr", "-0.001"),
    ("sbir", "train", "--lr", "nan"),
    ("sbir", "train", "--lr", "inf"),
    ("sbir", "train", "--weight-decay", "-0.01"),
    ("sbir", "train", "--eval-every", "0"),
    ("sbir", "train", "--checkpoint-every", "0"),
    ("sbir", "train", "--seed", "-1"),
    ("sbir", "train", "--workers", "-1"),
    ("sbir", "search", "--top-k", "0"),
    ("sbir", "search", "--shortlist", "0"),
    ("sbir", "index", "--batch-size", "0"),
    ("sbir", "index", "--nlist", "0"),
    ("sbir", "index", "--nprobe", "0"),
    ("sbir", "index", "--hnsw-m", "1"),
    ("sbir", "index", "--ef-search", "0"),
    ("sbir", "serve", "--port", "-1"),
    ("sbir", "serve", "--port", "65536"),
    ("sbir", "serve", "--top-k", "0"),
    ("sbir", "serve", "--top-k", "101"),
    ("sbir", "serve", "--max-upload-mb", "0"),
    ("sbir", "serve", "--max-upload-mb", "nan"),
    ("sbir", "explain", "--top", "0"),
]

#: (group, command, option, a boundary value accepted, the value the command gets)
GOOD = [
    ("sbir-prep", "download", "--seed", SEED_MAX, 2**32 - 1),
    ("sbir-prep", "shard", "--image-size", "0", 0),
    ("sbir-prep", "shard", "--image-size", "16", 16),
    ("sbir-prep", "shard", "--image-size", "4096", 4096),
    ("sbir-prep", "shard", "--shard-size", "1", 1),
    ("sbir-prep", "shard", "--val-fraction", "0", 0.0),
    ("sbir-prep", "shard", "--val-fraction", "0.999", 0.999),
    ("sbir-prep", "shard", "--seed", "0", 0),
    ("sbir-prep", "shard", "--max-per-class", "0", 0),
    ("sbir-prep", "shard", "--workers", "1", 1),
    ("sbir-prep", "shard", "--max-bad", "0", 0.0),
    ("sbir-prep", "shard", "--max-bad", "1", 1.0),
    ("sbir-prep", "verify", "--workers", "1", 1),
    ("sbir", "embed", "--batch-size", "1", 1),
    ("sbir", "embed", "--workers", "0", 0),
    ("sbir", "embed", "--threads", "0", 0),
    ("sbir", "evaluate", "--pr-levels", "2", 2),
    ("sbir", "evaluate", "--grid-queries", "0", 0),
    ("sbir", "evaluate", "--top-k", "1", 1),
    ("sbir", "evaluate", "--workers", "0", 0),
    ("sbir", "train", "--steps", "1", 1),
    ("sbir", "train", "--lr", "1e-9", 1e-9),
    ("sbir", "train", "--weight-decay", "0", 0.0),
    ("sbir", "train", "--seed", SEED_MAX, 2**32 - 1),
    ("sbir", "index", "--nlist", "1", 1),
    ("sbir", "index", "--hnsw-m", "2", 2),
    ("sbir", "serve", "--port", "0", 0),
    ("sbir", "serve", "--port", "65535", 65535),
    ("sbir", "serve", "--top-k", "100", 100),
]


def command(group: str, name: str) -> click.Command:
    return GROUPS[group].commands[name]


def numeric_options() -> list[tuple[str, str, click.Option]]:
    """(group, command, option) of every option taking a number, in every command of both tools."""
    found = []
    for group, main in GROUPS.items():
        for name, cmd in main.commands.items():
            for param in cmd.params:
                if isinstance(param, click.Option) and isinstance(param.type, (click.types.IntParamType,
                                                                               click.types.FloatParamType)):
                    found.append((group, name, param))
    return found


def test_every_numeric_option_has_a_range_and_a_bad_value_tested() -> None:
    options = numeric_options()
    assert len(options) == 39
    unranged = [f"{g} {c} {p.opts[0]}" for g, c, p in options if not isinstance(p.type, click.types._NumberRangeBase)]
    assert unranged == []
    untested = {(g, c, p.opts[0]) for g, c, p in options} - {(g, c, o) for g, c, o, _ in BAD}
    assert untested == set()
    assert {(g, c) for g, c, _ in options} <= set(REQUIRED)


@pytest.mark.parametrize("group, name, option, value", BAD, ids=[f"{c}{o}={v}" for _, c, o, v in BAD])
def test_out_of_range_values_are_usage_errors(tmp_path, monkeypatch, group, name, option, value) -> None:
    monkeypatch.chdir(tmp_path)  # nothing may be written where the tests run, should a value get through
    result = runner().invoke(GROUPS[group], [name, *REQUIRED[group, name], option, value])
    assert result.exit_code == 2, result.output
    assert isinstance(result.exception, SystemExit)
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, result.stderr
    assert f"Invalid value for '{option}'" in errors[0] and "is not in the range" in errors[0]
    assert "Traceback" not in result.output + result.stderr
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("group, name, option, value, parsed", GOOD, ids=[f"{c}{o}={v}" for _, c, o, v, _ in GOOD])
def test_boundary_values_are_accepted(group, name, option, value, parsed) -> None:
    """Parsed only (the command is not run): the value reaches the command unchanged."""
    cmd = command(group, name)
    with cmd.make_context(name, [*REQUIRED[group, name], option, value]) as ctx:
        key = next(p.name for p in cmd.params if option in p.opts)
        assert ctx.params[key] == parsed


def test_ranges_are_shown_in_the_help() -> None:
    result = runner().invoke(prep_main, ["shard", "--help"])
    assert result.exit_code == 0, result.output
    text = " ".join(result.stdout.split())
    for shown in ("0 or 16<=x<=4096", "0<=x<1", f"0<=x<={SEED.max}", "x>=1"):
        assert shown in text, shown


def test_image_size_below_16_names_what_is_allowed() -> None:
    result = runner().invoke(prep_main, ["shard", "--dataset", "synthetic", "--image-size", "-5"])
    assert result.exit_code == 2
    assert "Error: Invalid value for '--image-size': -5 is not in the range 0 or 16<=x<=4096." in result.stderr
