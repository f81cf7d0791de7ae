"""The `tf-ecqx` command: demo, quantize, report, explain. Exit codes: 0 success, 2 bad usage, 1 failure."""

from __future__ import annotations

import argparse
import sys

from tf_ecqx.quantization.settings import DEFAULT_LAMBDA  # no TensorFlow: --help stays fast
from tf_ecqx.recipe import EPOCHS, LAYER_LAMBDAS, LR_SCHEDULES

LAMBDA_HELP = f"entropy weight, larger = sparser (default {DEFAULT_LAMBDA})"
DATA_HELP = "fashion_mnist (default), a directory with the four MNIST-format IDX files, or an .npz with x_train etc."


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tf-ecqx",
        description="Entropy-constrained low-bit quantization (ECQ/ECQx) of Keras models, for LiteRT and TFLM.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = commands.add_parser(
        "demo", help="train a float CNN on Fashion-MNIST, quantize it with ECQ and ECQx, fine-tune, compare, export"
    )
    demo.add_argument("--bits", type=int, default=4, help="kernel bit width, 2..8 (default 4)")
    demo.add_argument("--lambda", dest="lambda_", type=float, default=DEFAULT_LAMBDA, help=LAMBDA_HELP)
    demo.add_argument("--epochs", type=int, default=2, help="fine-tuning epochs (default 2)")
    demo.add_argument(
        "--relevance", default="epsilon_plus_flat_bn_pass", help="LRP composite of ECQx (default: the reference's)"
    )
    demo.add_argument("--p", type=float, default=0.1, help="sparsity ECQx may give back vs ECQ (default 0.1)")
    demo.add_argument("--out", default="demo_output", help="where the exported files go (default demo_output/)")
    demo.add_argument("--quiet", action="store_true", help="no progress output")

    quantize = commands.add_parser(
        "quantize",
        help="quantize a float .keras classifier, fine-tune it, export LiteRT/TFLM models, bitstream, report, plots",
        description="The model must output logits and be trained on integer class labels. Writes to --out: "
        "qat.keras, model_int8_sparse.tflite, model_micro.tflite, kernels.ecqx, report.json, layers.png, "
        "codes_<layer>.png and TensorBoard logs.",
    )
    quantize.add_argument("model", help="float model, .keras file from tf_keras or Keras 3")
    quantize.add_argument("--bits", type=int, default=4, help="kernel bit width, 2..8 (default 4)")
    quantize.add_argument("--lambda", dest="lambda_", type=float, default=DEFAULT_LAMBDA, help=LAMBDA_HELP)
    quantize.add_argument("--relevance", default=None, help="LRP composite for ECQx (default: none, plain ECQ)")
    quantize.add_argument("--p", type=float, default=0.1, help="sparsity ECQx may give back vs ECQ (default 0.1)")
    quantize.add_argument("--data", default="fashion_mnist", help=DATA_HELP)
    quantize.add_argument("--epochs", type=int, default=EPOCHS, help=f"fine-tuning epochs (default {EPOCHS})")
    quantize.add_argument(
        "--lr-schedule",
        choices=LR_SCHEDULES,
        default=LR_SCHEDULES[0],
        help="Adam's learning rate: 1e-3 decaying to 0 over the run (cosine, default) or a constant 1e-3",
    )
    quantize.add_argument(
        "--layer-lambdas",
        choices=LAYER_LAMBDAS,
        default=LAYER_LAMBDAS[0],
        help="per-layer lambda from the loss's sensitivity (allocate_rates, default) or from layer size (the "
        "reference's heuristic)",
    )
    quantize.add_argument("--out", required=True, help="output directory")
    quantize.add_argument(
        "--micro-ram",
        dest="micro_ram_kb",
        type=float,
        default=None,
        metavar="KB",
        help="RAM budget of model_micro.tflite, the TFLM arena in KB: filters whose decoding would exceed it stay "
        "uncompressed (default: no budget, smallest file)",
    )
    quantize.add_argument("--quiet", action="store_true", help="no progress output")

    report = commands.add_parser("report", help="per-layer table (and sizes) of a quantize directory or QAT model")
    report.add_argument("target", help="an output directory of `tf-ecqx quantize`, or a QAT .keras file")

    explain = commands.add_parser("explain", help="input-relevance (LRP) heatmaps of test images, as a PNG")
    explain.add_argument("model", help="float or QAT .keras file")
    explain.add_argument("--data", default="fashion_mnist", help=DATA_HELP)
    explain.add_argument("--samples", type=int, default=16, help="number of test images (default 16)")
    explain.add_argument("--out", default="heatmap.png", help="PNG to write (default heatmap.png)")
    return parser


def _run(args: argparse.Namespace) -> None:
    # TensorFlow loads only once the arguments are valid
    if args.command == "demo":
        from tf_ecqx.demo import DemoSettings, run_demo

        settings = DemoSettings(
            bits=args.bits, lambda_=args.lambda_, finetune_epochs=args.epochs, relevance=args.relevance, p=args.p
        )
        run_demo(settings, verbose=0 if args.quiet else 2, output_dir=args.out)
    elif args.command == "quantize":
        from tf_ecqx.commands import QuantizeSettings, quantize_to_directory

        settings = QuantizeSettings(
            bits=args.bits,
            lambda_=args.lambda_,
            relevance=args.relevance,
            p=args.p,
            epochs=args.epochs,
            lr_schedule=args.lr_schedule,
            layer_lambdas=args.layer_lambdas,
            micro_ram_kb=args.micro_ram_kb,
        )
        report = quantize_to_directory(args.model, args.data, args.out, settings, quiet=args.quiet)
        if not args.quiet:
            print(f"accuracy {report['accuracy']:.4f} (float {report['float_accuracy']:.4f}); files in {args.out}/")
    elif args.command == "report":
        from tf_ecqx.commands import report_text

        print(report_text(args.target))
    else:
        from tf_ecqx.commands import explain

        print(explain(args.model, args.data, args.out, args.samples))


def _reason(error: Exception) -> str:
    """One line that says what went wrong: the error's own first line, or for a TensorFlow op error the message of
    the check that failed inside the graph (its first line is only "Graph execution error:")."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    if type(error).__module__.startswith("tensorflow"):
        messages = [
            line for line in lines if not line.startswith(("Graph execution", "Detected at node", "File ", "[["))
        ]
        ours = [line for line in messages if "ECQx" in line or "tf_ecqx" in line]
        lines = ours or messages[-1:] or lines
    reason = lines[0] if lines else type(error).__name__
    if isinstance(error, (ValueError, TypeError, OSError, RuntimeError)):  # the errors tf_ecqx raises read as they are
        return reason
    return f"{type(error).__name__}: {reason}"


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        _run(args)
    except KeyboardInterrupt:
        print("tf-ecqx: interrupted; outputs of this run were not written", file=sys.stderr)
        return 130
    except Exception as error:  # every failure is one line on stderr and exit 1, never a traceback
        print(f"tf-ecqx: error: {_reason(error)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
