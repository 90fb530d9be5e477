"""The `motion-adapter` command: each subcommand parses its arguments and calls one library function."""

import argparse
import json
import sys


def _inspect(args) -> int:
    from .format import read_info
    from .hub import resolve_source

    info = read_info(resolve_source(args.source, revision=args.revision))
    print(json.dumps({**info.header(), "file_bytes": info.file_bytes, "path": info.path}, indent=2) if args.json else info)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="motion-adapter", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    inspect = commands.add_parser("inspect", help="print an adapter's kind, tokens, base model, preset, rank, size")
    inspect.add_argument("source", help="an adapter folder, a .safetensors file, or a Hub repo id")
    inspect.add_argument("--revision", default=None, help="Hub branch, tag or commit")
    inspect.add_argument("--json", action="store_true", help="print the header as JSON")
    inspect.set_defaults(run=_inspect)
    return parser


def main(argv=None) -> int:
    from .errors import MotionAdapterError

    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except (MotionAdapterError, FileNotFoundError) as error:
        print(f"motion-adapter {args.command}: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
