"""The `tf-ecqx` command."""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tf-ecqx", description="Entropy-constrained low-bit quantization for Keras.")
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser(
        "demo", help="train a float CNN on Fashion-MNIST, quantize it with ECQ and ECQx, fine-tune, compare, export"
    )
    demo.add_argument("--bits", type=int, default=4, help="kernel bit width, 2..8 (default 4)")
    demo.add_argument("--lambda", dest="lambda_", type=float, default=0.2, help="entropy weight (default 0.2)")
    demo.add_argument("--epochs", type=int, default=2, help="fine-tuning epochs (default 2)")
    demo.add_argument(
        "--relevance", default="epsilon_plus_flat_bn_pass", help="LRP composite of ECQx (default: the reference's)"
    )
    demo.add_argument("--p", type=float, default=0.1, help="sparsity ECQx may give back vs ECQ (default 0.1)")
    demo.add_argument("--out", default="demo_output", help="where the exported files go (default demo_output/)")
    demo.add_argument("--quiet", action="store_true", help="no progress output")
    args = parser.parse_args(argv)

    from tf_ecqx.demo import DemoSettings, run_demo  # TensorFlow loads only once the arguments are valid

    try:
        settings = DemoSettings(
            bits=args.bits, lambda_=args.lambda_, finetune_epochs=args.epochs, relevance=args.relevance, p=args.p
        )
        run_demo(settings, verbose=0 if args.quiet else 2, output_dir=args.out)
    except (ValueError, OSError, RuntimeError) as error:
        print(f"tf-ecqx: error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
