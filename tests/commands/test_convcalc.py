"""`ptool convcalc` end to end: the real console script, its stdout, stderr and exit codes."""

from __future__ import annotations

import json
import re

import pytest

from tests.conftest import run_ptool

CHAIN = "conv k3 p1 c32; maxpool k2; conv k3 s2 c64; convT k4 s2 p1 c32"


def convcalc(*args: str, input: str | None = None, env: dict[str, str] | None = None):
    return run_ptool("convcalc", *args, input=input, env=env, timeout=60)


def test_users_example():
    proc = convcalc("--h", "32", "--k", "3", "--s", "2")
    assert proc.returncode == 0, proc.stderr
    assert "conv: 32 -> 15" in proc.stdout
    assert proc.stderr == ""


def test_json_shape():
    proc = convcalc("--h", "32", "--k", "3", "--s", "2", "--json")
    doc = json.loads(proc.stdout)
    assert doc["layer"] == "conv"
    assert doc["input"] == {"h": 32} and doc["output"] == {"h": 15}
    assert doc["receptive_field"] == {"h": 3} and doc["jump"] == {"h": 2}
    assert list(doc)[:3] == ["layer", "input", "output"]
    pytorch_names = convcalc("--h", "32", "--kernel-size", "3", "--stride", "2", "--json")
    assert json.loads(pytorch_names.stdout) == doc  # the short flags' aliases


def test_explain_prints_the_formula_with_numbers():
    proc = convcalc("--h", "32", "--k", "3", "--s", "2", "--explain")
    assert "h: floor((32 + 2*0 - 1*(3-1) - 1) / 2) + 1 = 15" in proc.stdout
    proc = convcalc("--size", "6x7", "--layer", "maxpool", "--k", "1", "--s", "2", "--ceil-mode")
    assert "maxpool: 6x7 -> 3x4" in proc.stdout


def test_per_dimension_values_and_size():
    proc = convcalc("--size", "16x32x32", "--k", "3x5x5", "--p", "1x2x2", "--json")
    assert json.loads(proc.stdout)["output"] == {"d": 16, "h": 32, "w": 32}
    proc = convcalc("--size", "16x32x32", "--k", "3x5")
    assert proc.returncode == 2
    assert "kernel_size has 2 values but the input has 3 dimensions" in proc.stderr


def test_channels_and_params():
    proc = convcalc(
        "--size", "224x224", "--in-channels", "3", "--out-channels", "64", "--k", "7",
        "--s", "2", "--p", "3", "--no-bias", "--json",
    )  # fmt: skip
    doc = json.loads(proc.stdout)
    assert doc["output"] == {"h": 112, "w": 112}
    assert doc["params"] == 64 * 3 * 7 * 7 and doc["out_channels"] == 64


def test_chain_table_and_json(tmp_path):
    proc = convcalc("--size", "32x32", "--in-channels", "3", "--chain", CHAIN)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert any("convT k4 s2 p1" in line and "14x14" in line for line in lines)
    assert any("total" in line and "52,192" in line for line in lines)
    chain_file = tmp_path / "net.txt"
    chain_file.write_text("# my net\n" + CHAIN.replace("; ", "\n") + "\n")
    proc = convcalc(
        "--size", "32x32", "--in-channels", "3", "--chain-file", str(chain_file), "--json"
    )
    doc = json.loads(proc.stdout)
    assert [row["output"]["h"] for row in doc["layers"]] == [32, 16, 7, 14]
    assert doc["params"] == 52192 and doc["output"] == {"h": 14, "w": 14}
    assert doc["receptive_field"] == {"h": 14, "w": 14}


def test_target_solves_or_says_nearest():
    proc = convcalc("--h", "32", "--k", "3", "--s", "2", "--target", "16", "--json")
    assert proc.returncode == 0
    assert json.loads(proc.stdout)["solutions"]["h"][0]["padding"] == 1
    proc = convcalc("--w", "9", "--layer", "maxpool", "--k", "2", "--target", "7")
    assert proc.returncode == 1
    assert "w: no padding gives 7; nearest: 5" in proc.stderr
    assert "(nearest)" in proc.stdout


def test_stdin_json_lines_with_a_bad_line():
    lines = "\n".join(
        [
            '{"layer": "conv", "k": 5, "h": 28}',
            "maxpool k2",
            '{"k": 9, "h": 4}',
            "conv k3 s2; maxpool k2 ceil",
        ]
    )
    proc = convcalc("--h", "32", "--stdin", input=lines)
    rows = [json.loads(line) for line in proc.stdout.splitlines()]
    assert rows[0]["output"] == {"h": 24}
    assert rows[1]["output"] == {"h": 16}
    assert rows[2]["line"] == 3 and "kernel size can't be greater" in rows[2]["error"]
    assert rows[3]["output"] == {"h": 8} and len(rows[3]["layers"]) == 2
    assert proc.returncode == 1
    assert "1 of 4 lines failed" in proc.stderr


def test_stdin_errors_show_values_as_json():
    lines = '{"k": true, "h": 5}\n{"k": 3, "h": 5, "ceil_mode": 1}\n{"k": "3y", "h": 5}'
    # a list holds one integer per dimension: [[3, 5]] and ["3x5", 2] were cut to 3 and (3, 2)
    lines += '\n{"k": "\uff13", "h": 5}\n{"k": "3x3", "w": 10}'
    lines += '\n{"k": [[3, 5]], "w": 10}\n{"k": ["3x5", 2], "h": 9, "w": 9}'
    proc = convcalc("--stdin", input=lines)
    errors = [json.loads(line)["error"] for line in proc.stdout.splitlines()]
    assert errors == [
        "kernel_size expects integers like 3 or 3x5, got true",
        "ceil_mode expects true or false, got 1",
        "kernel_size expects integers like 3 or 3x5, got '3y'",
        "kernel_size expects integers like 3 or 3x5, got '\uff13'",  # a full-width 3 passed
        "kernel_size has 2 values but the input has 1 dimension (w)",
        "kernel_size expects integers like 3 or 3x5, got [[3, 5]]",
        'kernel_size expects integers like 3 or 3x5, got ["3x5", 2]',
    ]
    assert proc.returncode == 1


def test_stdin_lines_with_non_text_layers_or_chains_fail_alone():
    bad = [
        '{"chain": 5, "h": 10}',
        '{"layer": ["conv"], "k": 3, "h": 10}',
        '{"chain": ["conv k3"], "h": 9}',
    ]
    proc = convcalc("--stdin", input="\ufeff" + "\n".join([*bad, '{"k": 3, "h": 12}']))
    rows = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [row.get("error") for row in rows] == [
        "chain expects text like 'conv k3 p1; maxpool k2', got 5",
        "layer expects text like 'conv', got [\"conv\"]",
        "chain expects text like 'conv k3 p1; maxpool k2', got [\"conv k3\"]",
        None,
    ]
    assert rows[3]["output"] == {"h": 10}  # the lines after a bad one go on
    assert proc.returncode == 1 and "3 of 4 lines failed" in proc.stderr


BIG = "--size 123456789x123456789 "


@pytest.mark.parametrize("columns", [80, 60])
@pytest.mark.parametrize(
    ("args", "numbers"),
    [
        (["--size", "224x224", "--in-channels", "3", "--chain", f"{CHAIN}; conv k3 c256; conv k3"],
         ["224x224", "110x110", "106x106", "73,984", "590,080", "716,256", "256"]),
        ((BIG + "--in-channels 3000 --out-channels 64000 --k 7 --s 2 --p 3").split(),
         ["123456789", "61728395", "9,408,064,000"]),
        ((BIG + "--layer convT --k 7 --s 3 --p 3").split(), ["123456789", "370370365"]),
        ((BIG + "--layer convT --k 7 --s 3 --target 370370367x370370368").split(),
         ["123456789", "370370367", "370370368"]),
    ],
)  # fmt: skip
def test_numbers_are_never_cut_in_a_narrow_terminal(args, numbers, columns):
    """Before: rich shrank every column of a table too wide for the terminal and cut the
    numbers ('1,180,…', '224x2…'). Now text wraps, and the receptive field's columns go where
    even that does not fit."""
    proc = convcalc(*args, env={"COLUMNS": str(columns)})
    assert proc.returncode == 0, proc.stderr
    assert "…" not in proc.stdout
    assert all(len(line) <= columns for line in proc.stdout.splitlines())
    for number in numbers:
        assert re.search(rf"(?<![\d,]){number}(?![\d,])", proc.stdout), (number, proc.stdout)
    caption = re.search(r"not shown at this width: (.*) \(--json has them\)", proc.stdout)
    left_out = set(caption[1].split(", ")) if caption else set()
    headers = {word for line in proc.stdout.splitlines() if "┃" in line for word in line.split()}
    assert left_out <= {"start", "jump", "RF"} and not left_out & headers


def test_exact_receptive_fields_after_a_stride_3_transposed_conv():
    """Before: 0.333333333 for the jump, and 2.999999999 for a field of 3."""
    chain = "convT k3 s3; conv k3; conv k3; conv k3; conv k3; conv k5 s3; conv k3"
    proc = convcalc("--h", "64", "--chain", chain)
    assert re.search(r"total .* 23/3 │ +1 │ +8/3 │", proc.stdout), proc.stdout
    assert "0.33" not in proc.stdout and "2.99" not in proc.stdout
    doc = json.loads(convcalc("--h", "64", "--chain", chain, "--json").stdout)
    assert [row["receptive_field"]["h"] for row in doc["layers"]][2] == 3
    assert doc["jump"] == {"h": 1} and doc["layers"][0]["jump"] == {"h": 1 / 3}


def test_a_huge_target_is_solved_at_once():
    """Before: 10**12 candidate paddings, gigabytes and a hang."""
    proc = convcalc("--h", "32", "--k", "3", "--s", "2", "--target", str(10**12), "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["solutions"]["h"][0]["padding"] == 10**12 - 15


def test_stdin_layer_lines_keep_the_command_lines_options():
    """Before: a line with "layer" dropped --k, --s and --p ('maxpool needs a kernel size')."""
    lines = '{"layer": "maxpool"}\n{"layer": "conv", "s": 1}'
    proc = convcalc("--h", "32", "--k", "3", "--s", "2", "--stdin", input=lines)
    assert proc.returncode == 0, proc.stdout
    pooled, conv = (json.loads(line) for line in proc.stdout.splitlines())
    assert pooled["output"] == {"h": 15} and pooled["kernel_size"] == {"h": 3}
    assert conv["output"] == {"h": 30} and conv["stride"] == {"h": 1}


def test_stdin_target_without_a_padding_fails_its_line():
    """Before: exit 0; the line now carries the search and the error, and the exit is 1, as
    for --target on the command line."""
    lines = '{"w": 9}\n{"w": 14}'
    proc = convcalc("--layer", "maxpool", "--k", "2", "--target", "7", "--stdin", input=lines)
    unsolved, solved = (json.loads(line) for line in proc.stdout.splitlines())
    assert unsolved["line"] == 1 and unsolved["error"] == "w: no padding gives 7; nearest: 5"
    assert unsolved["nearest"]["w"] == [{"padding": 1, "output_padding": 0, "output": 5}]
    assert solved["solutions"]["w"][0] == {"padding": 0, "output_padding": 0, "output": 7}
    assert "error" not in solved
    assert proc.returncode == 1 and "1 of 2 lines failed" in proc.stderr


def test_stdin_chain_line_with_a_target_is_refused_not_ignored():
    """Before: the chain was answered and --target silently dropped, exit 0."""
    proc = convcalc("--h", "32", "--target", "16", "--stdin", input="conv k3\n")
    assert json.loads(proc.stdout) == {
        "line": 1, "error": "a chain sets each layer itself; drop --target",
    }  # fmt: skip
    assert proc.returncode == 1


def test_a_chain_file_that_is_not_text_is_a_bad_option_value(tmp_path):
    """Before: 'unexpected UnicodeDecodeError' for a binary file, exit 1 for a directory."""
    import torch

    torch.save({"weight": torch.ones(3)}, tmp_path / "model.pt")
    (tmp_path / "random.bin").write_bytes(bytes(range(256)) * 4)
    (tmp_path / "nul.txt").write_bytes(b"conv k3\0\n")
    for name in ("model.pt", "random.bin", "nul.txt"):
        path = str(tmp_path / name)
        proc = convcalc("--h", "8", "--chain-file", path)
        assert proc.returncode == 2
        assert proc.stderr.startswith(f"error: --chain-file: {path} is not a text file")
        assert "Traceback" not in proc.stderr and "Unicode" not in proc.stderr
    proc = convcalc("--h", "8", "--chain-file", str(tmp_path))
    assert proc.returncode == 2
    assert proc.stderr == f"error: --chain-file: cannot read {tmp_path}: Is a directory\n"


@pytest.mark.parametrize(
    ("args", "rule"),
    [
        (["--h", "2", "--k", "3"], "kernel size can't be greater than actual input size"),
        (["--h", "8", "--k", "3", "--s", "2", "--p", "same"], "not supported for strided"),
        (["--h", "8", "--layer", "maxpool", "--k", "3", "--p", "2"], "pad should be at most half"),
        (["--h", "8", "--layer", "convT", "--k", "3", "--s", "2", "--output-padding", "2"],
         "output padding must be smaller than either stride or dilation"),
        (["--h", "8", "--k", "3", "--in-channels", "4", "--out-channels", "6", "--groups", "4"],
         "out_channels must be divisible by groups"),
        (["--h", "2", "--layer", "maxpool", "--k", "3"], "output size is too small"),
        (["--h", "8", "--chain", "conv k3 q4"], "unknown token 'q4'"),
        (["--h", "8", "--chain", "conv k3 s2 s3"], "'s3' sets stride again (after 's2')"),
        (["--h", "8", "--chain", "conv k3; ; conv k3"], "layer 2 is empty in 'conv k3; ; conv k3'"),
        (["--h", "8", "--chain-file", "no-such.txt"], "--chain-file: no such file: no-such.txt"),
    ],
)  # fmt: skip
def test_bad_geometry_exits_2_with_one_line(args, rule):
    proc = convcalc(*args)
    assert proc.returncode == 2
    assert rule in proc.stderr
    assert "Traceback" not in proc.stderr and proc.stdout == ""
    assert proc.stderr.startswith("error:")
    assert all(line.startswith(("error: ", "hint: ")) for line in proc.stderr.splitlines())


def test_starts_without_torch_or_pydantic():
    """Start-up is the feature: no torch, and no pydantic (Typer's option coercion)."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "sys.argv = ['ptool', 'convcalc', '--h', '32', '--k', '3', '--s', '2']\n"
        "from ptool.cli import main\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        "print(sorted(m for m in ('torch', 'pydantic') if m in sys.modules))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert "conv: 32 -> 15" in proc.stdout
    assert proc.stdout.strip().splitlines()[-1] == "[]"


def test_help_has_examples():
    proc = convcalc("--help")
    assert proc.returncode == 0
    assert "ptool convcalc --h 32 --k 3 --s 2" in proc.stdout
    assert "--chain" in proc.stdout and "--target" in proc.stdout
