"""python -m gendistill.convert SRC OUT [--preset NAME] [--key ema] [--overwrite]: see gendistill/convert."""
import argparse
import sys

from gendistill import convert


def main(argv=None):
  parser = argparse.ArgumentParser(prog="python -m gendistill.convert", description=convert.__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("src", help="EDM .pkl, or a state dict (.pt/.pth, .safetensors, .npz) with --preset")
  parser.add_argument("out", help="output teacher directory (must not exist unless --overwrite)")
  parser.add_argument("--preset", default=None, help="architecture of a state-dict file (convert/presets.py)")
  parser.add_argument("--key", default=None, help="entry of a network pickle's dict (default: ema)")
  parser.add_argument("--overwrite", action="store_true")
  parser.add_argument("--export", action="store_true",
                      help="SRC is a run's workdir, OUT a .pt/.safetensors file: export the run's network")
  args = parser.parse_args(argv)
  if args.export:
    try:
      state = convert.export_run(args.src, args.out)
    except (convert.ConversionError, FileNotFoundError, ValueError) as e:
      print(f"error: {e}", file=sys.stderr)
      return 2
    print(f"Wrote {args.out}: {len(state)} tensors.")
    return 0
  try:
    info = convert.convert(args.src, args.out, preset=args.preset, key=args.key, overwrite=args.overwrite)
  except (convert.ConversionError, convert.WeightsFileError, FileNotFoundError, FileExistsError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  net = info["network"]
  print(f"Wrote {args.out}: {net['kind']} ({net['preconditioning']} preconditioning), data {info['spec']['shape']}, "
        f"{info['spec']['num_classes']} classes.")
  return 0


if __name__ == "__main__":
  sys.exit(main())
