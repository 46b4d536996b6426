"""The benchmark scripts: the pieces whose logic a wrong number would hide, and quick end-to-end runs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCH))

import bench_gpu
import bench_knn


def test_attention_flops_are_counted_on_the_fused_and_the_unfused_path():
    from torch.utils.flop_counter import FlopCounterMode

    torch.manual_seed(0)
    b, n, e = 3, 10, 64
    mha = torch.nn.MultiheadAttention(e, 4, batch_first=True).eval()
    x = torch.randn(b, n, e)
    expected = 2 * b * n * e * e * 4 + 2 * 2 * b * n * n * e  # four projections, QK^T and AV
    fused = FlopCounterMode(display=False, custom_mapping=bench_gpu.EXTRA_FLOPS)
    with torch.inference_mode(), fused:  # the fast path: one fused op
        mha(x, x, x, need_weights=False)
    plain = FlopCounterMode(display=False, custom_mapping=bench_gpu.EXTRA_FLOPS)
    with plain:  # grad enabled and trainable weights: projections and scaled_dot_product_attention
        mha(x, x, x, need_weights=False)
    assert "aten._native_multi_head_attention" in {str(k) for k in fused.get_flop_counts()["Global"]}
    assert fused.get_total_flops() == plain.get_total_flops() == expected


def test_recall_counts_shared_neighbours():
    exact = np.array([[0, 1, 2, 3], [4, 5, 6, 7]])
    found = np.array([[3, 2, 9, 8], [4, 5, 6, 7]])
    assert bench_knn.recall(found, exact) == pytest.approx((2 / 4 + 1) / 2)


def test_synthetic_vectors_are_unit_and_seeded():
    X, Q = bench_knn.synthetic(200, 10, 16, clusters=5, noise=1.0, seed=3)
    assert X.shape == (200, 16) and Q.shape == (10, 16)
    np.testing.assert_allclose(np.linalg.norm(X, axis=1), 1.0, rtol=1e-5)
    np.testing.assert_array_equal(X, bench_knn.synthetic(200, 10, 16, clusters=5, noise=1.0, seed=3)[0])


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present: the script would measure it")
def test_bench_gpu_says_so_without_a_gpu():
    res = subprocess.run([sys.executable, str(BENCH / "bench_gpu.py")], capture_output=True, text=True, check=False, timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "no CUDA GPU: nothing to measure"


@pytest.mark.slow
def test_bench_knn_quick_prints_its_table():
    cmd = [sys.executable, str(BENCH / "bench_knn.py"), "--quick", "--n", "3000", "--queries", "20", "--rounds", "1"]
    res = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=300)
    assert res.returncode == 0, res.stderr
    assert "| sklearn brute | " in res.stdout and "recall@10" in res.stdout
    flat = next(line for line in res.stdout.splitlines() if line.startswith("| genrekit Flat |"))
    assert flat.split("|")[5].strip() == "1.000"  # exact FAISS search finds the exact neighbours


def test_bench_startup_times_the_first_byte_and_the_answer_in_a_terminal():
    import bench_startup

    script = "import sys, time; print('tty' if sys.stdout.isatty() else 'pipe', flush=True); time.sleep(0.3); print('answer')"
    first, seen, code = bench_startup.first_output([sys.executable, "-c", script], b"answer")
    assert code == 0 and first is not None and seen is not None
    assert seen - first >= 0.25  # the answer came after the first byte, by the sleep
    first, seen, code = bench_startup.first_output([sys.executable, "-c", "import sys; sys.exit(3)"], b"answer")
    assert code == 3 and seen is None
