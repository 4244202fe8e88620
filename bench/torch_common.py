"""Shared by the PyTorch baselines (torch_bench.py, torch_train_step.py): thread pools and GGUF loading."""

import os


def set_threads(n):
    """Size every OpenMP/MKL pool to `n` threads; call before anything imports torch."""
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(n)
    import torch

    torch.set_num_threads(n)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:
        pass


def load_gguf_f32(gguf_path):
    """A GGUF file through transformers, which dequantizes every tensor to f32 (an f32 model, not the quantized one)."""
    import torch
    from transformers import AutoModelForCausalLM

    path = os.path.abspath(gguf_path)
    kwargs = dict(gguf_file=os.path.basename(path))
    try:
        model = AutoModelForCausalLM.from_pretrained(os.path.dirname(path), dtype=torch.float32, **kwargs)
    except TypeError:  # transformers < 4.56 only knows torch_dtype
        model = AutoModelForCausalLM.from_pretrained(os.path.dirname(path), torch_dtype=torch.float32, **kwargs)
    model.eval()
    return model
