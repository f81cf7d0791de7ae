"""The demo end to end on the full Fashion-MNIST (what `make demo` runs), and the CLI's usage errors."""

import subprocess
import sys

import pytest

from tf_ecqx.cli import main
from tf_ecqx.demo import DemoSettings, run_demo


def test_cli_bad_usage_exits_2(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["demo", "--bits", "four"])
    assert exit_info.value.code == 2
    assert "invalid int value: 'four'" in capsys.readouterr().err


def test_cli_refuses_bits_out_of_range_with_exit_1(capsys):
    assert main(["demo", "--bits", "9", "--quiet"]) == 1
    assert "bits=9 is not supported" in capsys.readouterr().err


def test_cli_help_lists_the_demo():
    result = subprocess.run([sys.executable, "-m", "tf_ecqx.cli", "--help"], capture_output=True, text=True, check=True)
    assert "demo" in result.stdout


def test_demo_quantizes_the_cnn_with_ecq_and_ecqx_to_sparse_4_bit_models_and_keeps_accuracy(capsys):
    result = run_demo(DemoSettings(finetune_epochs=1), verbose=0)
    printed = capsys.readouterr().out
    assert "fc1" in printed and "sparsity" in printed and "total" in printed and "ECQx" in printed
    assert result["float_accuracy"] > 0.85
    for method in ("ecq", "ecqx"):
        assert result[f"{method}_sparsity"] > 0.5
        assert result[f"{method}_accuracy"] > result["float_accuracy"] - 0.02
    # per layer ECQx gives back at most p = 0.1 of ECQ's sparsity (the two runs' weights differ, hence the margin)
    assert result["ecqx_sparsity"] > result["ecq_sparsity"] - 0.15
