"""`ptool convcalc`: output sizes, parameters and receptive fields of conv / pooling layers.

Pure arithmetic (ptool.core.convcalc): never imports torch, answers as fast as Typer starts.
"""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from ptool.commands._options import JsonOpt, QuietOpt, examples

EXAMPLES = examples(
    "ptool convcalc --h 32 --k 3 --s 2",
    "ptool convcalc --size 16x32x32 --layer convT --k 4 --s 2 --p 1 --explain",
    "ptool convcalc --h 6 --w 7 --layer maxpool --k 1 --s 2 --ceil-mode",
    "ptool convcalc --size 224x224 --in-channels 3 --out-channels 64 --k 7 --s 2 --p 3",
    'ptool convcalc --size 32x32 --in-channels 3 --chain "conv k3 p1 c32; maxpool k2; '
    'conv k3 s2 c64; convT k4 s2 p1 c32"',
    "ptool convcalc --h 32 --k 3 --s 2 --target 16",
    "ptool convcalc --size 32x28 --layer adaptive --output-size 7",
    'echo \'{"layer": "conv", "k": 5, "h": 28}\' | ptool convcalc --stdin',
)


def _value(flag: str, help: str, metavar: str = "N", *aliases: str):
    """A value option: a string that ptool.core.convcalc parses (per-dimension values too)."""
    option = typer.Option(flag, *aliases, help=help, metavar=metavar, show_default=False)
    return Annotated[str | None, option]


PER_DIM = "; 3 for every dimension or 3x5 per dimension"
SizeOpt = _value("--size", "Input size: 32 (w), 32x32 (h, w) or 16x32x32 (d, h, w).", "DxHxW")
LayerOpt = _value("--layer", "conv, convT, maxpool, avgpool or adaptive. \\[default: conv]", "NAME")
# short flags, and PyTorch's names as aliases
KOpt = _value("--k", f"kernel_size{PER_DIM}.", "NxN", "--kernel-size")
SOpt = _value("--s", f"stride{PER_DIM} \\[default: 1; pooling: the kernel].", "NxN", "--stride")
POpt = _value(
    "--p",
    f"padding{PER_DIM}; conv also takes same (stride 1) or valid. \\[default: 0]",
    "N",
    "--padding",
)
DilationOpt = _value("--dilation", f"dilation{PER_DIM}. \\[default: 1]", "NxN")
OutputPaddingOpt = _value(
    "--output-padding",
    f"convT output_padding{PER_DIM}; below max(stride, dilation). \\[default: 0]",
    "NxN",
)
CeilOpt = Annotated[
    bool, typer.Option("--ceil-mode", help="Pooling: ceil instead of floor (PyTorch's ceil_mode).")
]
InChannelsOpt = _value("--in-channels", "Input channels (for channels and parameter counts).")
OutChannelsOpt = _value("--out-channels", "conv/convT output channels. \\[default: --in-channels]")
GroupsOpt = _value("--groups", "conv/convT groups. \\[default: 1]")
NoBiasOpt = Annotated[bool, typer.Option("--no-bias", help="conv/convT without bias (bias=False).")]
OutputSizeOpt = _value("--output-size", f"adaptive pooling output_size{PER_DIM}.", "NxN")
ChainOpt = _value(
    "--chain",
    'Layers separated by ";": a name (conv, convT, maxpool, avgpool, adaptive) then '
    "k3 (or k3x5), s2, p1 / psame / pvalid, d2, op1, c32, g2, o7, ceil, nobias.",
    "LAYERS",
)
ChainFileOpt = _value("--chain-file", "A file with one layer per line ('#' comments).", "PATH")
TargetOpt = _value(
    "--target",
    "Find the padding (and convT output_padding) that gives this output size; exit 1 when "
    "none does.",
    "NxN",
)
ExplainOpt = Annotated[bool, typer.Option("--explain", help="Show each formula with the numbers.")]
StdinOpt = Annotated[
    bool,
    typer.Option(
        "--stdin",
        help="Read one request per line (a JSON object of these options, or chain syntax) over "
        "the command line's and write one JSON line each; a line that fails (a bad request, a "
        "target no padding gives) says so in an error key, exit 1 at the end.",
    ),
]


def convcalc(
    h: _value("--h", "Input size along h.") = None,
    w: _value("--w", "Input size along w.") = None,
    d: _value("--d", "Input size along d.") = None,
    size: SizeOpt = None,
    layer: LayerOpt = None,
    k: KOpt = None,
    s: SOpt = None,
    p: POpt = None,
    dilation: DilationOpt = None,
    output_padding: OutputPaddingOpt = None,
    ceil_mode: CeilOpt = False,
    in_channels: InChannelsOpt = None,
    out_channels: OutChannelsOpt = None,
    groups: GroupsOpt = None,
    no_bias: NoBiasOpt = False,
    output_size: OutputSizeOpt = None,
    chain: ChainOpt = None,
    chain_file: ChainFileOpt = None,
    target: TargetOpt = None,
    explain: ExplainOpt = False,
    stdin: StdinOpt = False,
    json: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Output sizes, parameters and receptive fields of conv / pooling layers and chains.

    1-D, 2-D or 3-D by which of --d --h --w (or --size) are given. Never imports torch.
    """
    from ptool.core import convcalc as core
    from ptool.core.errors import UsageError
    from ptool.ui.output import Output

    out = Output(json=json or stdin, quiet=quiet)
    if chain is not None and chain_file is not None:
        raise UsageError("give --chain or --chain-file, not both")
    if chain_file is not None:
        chain = _read_chain_file(chain_file)
    request = {
        "h": h,
        "w": w,
        "d": d,
        "size": size,
        "layer": layer,
        "k": k,
        "s": s,
        "p": p,
        "dilation": dilation,
        "output_padding": output_padding,
        "ceil_mode": ceil_mode or None,
        "in_channels": in_channels,
        "out_channels": out_channels,
        "groups": groups,
        "bias": False if no_bias else None,
        "output_size": output_size,
        "chain": chain,
        "target": target,
    }
    if stdin:
        _stream(out, {key: value for key, value in request.items() if value is not None})
        return
    result = core.run_request(request)
    _show(out, result, explain=explain)


def _read_chain_file(path: str) -> str:
    """The file's text; a file that is missing, unreadable or not text is a bad flag value (exit
    2), as --config's is."""
    from ptool.core.errors import UsageError

    try:
        with open(path, encoding="utf-8-sig") as file:
            text = file.read()
    except FileNotFoundError:
        raise UsageError(f"--chain-file: no such file: {path}") from None
    except OSError as exc:  # a directory, no permission
        raise UsageError(f"--chain-file: cannot read {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        text = None
    if text is None or "\0" in text:  # binary data may decode as UTF-8, but has NUL bytes
        raise UsageError(
            f"--chain-file: {path} is not a text file (a checkpoint or other binary file?)",
            hint="give a text file with one layer per line, e.g. conv k3 p1 c32",
        )
    return text


def _show(out, result, *, explain: bool) -> None:
    from ptool.core import convcalc as core
    from ptool.core.errors import PtoolError
    from ptool.ui import convcalc_view as view

    if isinstance(result, core.SolveResult):
        out.result(view.json_data(result), lambda: view.solve_table(result))
        if not result.solved:
            raise PtoolError(view.unsolved_message(result), hint=view.UNSOLVED_HINT)
    else:
        table = view.chain_table if isinstance(result, core.ChainResult) else view.layer_table
        out.result(view.json_data(result), lambda: table(result))
        if explain:
            out.print(view.explanation(result), soft_wrap=True)


def _stream(out, defaults: dict) -> None:
    """--stdin: each line's options over the command line's; one JSON line per input line. A
    target with no padding fails its line, as it fails the command: the line carries the
    search's result and the error."""
    from ptool.core import convcalc as core
    from ptool.core.errors import PtoolError, UsageError
    from ptool.ui import convcalc_view as view

    failed = total = 0
    for number, line in enumerate(sys.stdin, 1):
        line = line.removeprefix("\ufeff")  # a byte-order mark opening the stream
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        total += 1
        try:
            result = core.run_request(core.overlay(defaults, core.parse_request_line(line)))
        except UsageError as exc:
            failed += 1
            out.json_line({"line": number, "error": str(exc)})
            continue
        document = view.json_data(result)
        if isinstance(result, core.SolveResult) and not result.solved:
            failed += 1
            document |= {"line": number, "error": view.unsolved_message(result)}
        out.json_line(document)
    if failed:
        raise PtoolError(f"{failed} of {total} lines failed (see their error lines)")


def register(app: typer.Typer) -> None:
    app.command("convcalc", epilog=EXAMPLES, help=convcalc.__doc__, no_args_is_help=True)(convcalc)
