"""The JIT-build setting: present GPU only, a user's own arch list kept, nothing left behind."""

from __future__ import annotations

import os

import pytest
import torch

from avatar.cuda.build import build_for_present_gpu


def test_user_arch_list_is_kept(monkeypatch):
    monkeypatch.setenv("TORCH_CUDA_ARCH_LIST", "8.0;9.0")
    with build_for_present_gpu():
        assert os.environ["TORCH_CUDA_ARCH_LIST"] == "8.0;9.0"
    assert os.environ["TORCH_CUDA_ARCH_LIST"] == "8.0;9.0"


def test_no_gpu_sets_nothing(monkeypatch):
    monkeypatch.delenv("TORCH_CUDA_ARCH_LIST", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with build_for_present_gpu():
        assert "TORCH_CUDA_ARCH_LIST" not in os.environ


def test_present_gpu_only_while_building(monkeypatch):
    monkeypatch.delenv("TORCH_CUDA_ARCH_LIST", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *_: (9, 0))
    with pytest.raises(RuntimeError):
        with build_for_present_gpu():
            assert os.environ["TORCH_CUDA_ARCH_LIST"] == "9.0"
            raise RuntimeError("nvcc failed")
    assert "TORCH_CUDA_ARCH_LIST" not in os.environ
