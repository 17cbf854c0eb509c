"""psld.memory: weights by reference (no copies, no weight gradients) and recomputed block activations."""
import pytest
import torch
from torch import nn

from helpers.allocations import AllocationRecorder, SavedTensorBytes, weight_shapes
from psld.memory import WeightsByReference, checkpointed_forwards, plain_alias, weights_by_reference

pytestmark = pytest.mark.usefixtures("one_thread")


class Block(nn.Module):
    """A small residual block with every kind of weight a diffusion model has on its gradient path."""

    def __init__(self, channels=12):
        super().__init__()
        self.norm = nn.GroupNorm(3, channels)
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)
        self.proj = nn.Linear(channels, channels)
        self.layer_norm = nn.LayerNorm(channels)

    def forward(self, x):
        h = self.conv(torch.nn.functional.silu(self.norm(x)))
        h = self.layer_norm(self.proj(h.movedim(1, -1))).movedim(-1, 1)
        return x + h


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(4, 12, 3, padding=1)
        self.blocks = nn.ModuleList(Block() for _ in range(3))
        self.head = nn.Conv2d(12, 4, 1)

    def forward(self, x):
        h = self.stem(x)
        for block in self.blocks:
            h = block(h)
        return self.head(h)


def inference_net(seed=0) -> Net:
    """A Net whose weights are inference tensors, as a ComfyUI loader leaves them."""
    torch.manual_seed(seed)
    reference = Net()
    with torch.inference_mode():
        net = Net()
        net.load_state_dict(reference.state_dict())
    return net


def input_gradient(net, x, *, checkpoint_blocks=False):
    leaf = x.clone().requires_grad_(True)
    with torch.inference_mode(False), torch.enable_grad(), weights_by_reference():
        with checkpointed_forwards(list(net.blocks) if checkpoint_blocks else ()):
            out = net(leaf)
        (grad,) = torch.autograd.grad(out.square().sum(), leaf)
    return grad


def test_plain_alias_shares_memory_and_is_usable_by_autograd():
    with torch.inference_mode():
        weight = torch.randn(6, 5)
    alias = plain_alias(weight)
    assert weight.is_inference() and not alias.is_inference() and not alias.requires_grad
    assert alias.data_ptr() == weight.data_ptr() and torch.equal(alias, weight)
    x = torch.randn(3, 5, requires_grad=True)
    with pytest.raises(RuntimeError, match="Inference tensors cannot be saved for backward"):
        torch.nn.functional.linear(x, weight)
    (grad,) = torch.autograd.grad(torch.nn.functional.linear(x, alias).sum(), x)
    assert torch.allclose(grad, weight.sum(0).expand(3, 5))


def test_gradient_by_reference_equals_the_gradient_through_copied_weights():
    net = inference_net()
    copy = Net()
    copy.load_state_dict({k: v.clone() for k, v in net.state_dict().items()})
    x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    leaf = x.clone().requires_grad_(True)
    (expected,) = torch.autograd.grad(copy(leaf).square().sum(), leaf)
    assert torch.allclose(input_gradient(net, x), expected, rtol=1e-5, atol=1e-6)


def test_no_weight_is_copied_and_no_weight_gradient_is_computed():
    """Every tensor allocated in forward and backward is recorded: none has the shape of a weight matrix or kernel
    (a copy or a weight gradient would), and the weights autograd keeps are the weights themselves."""
    net = inference_net()
    x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(2))
    shapes = weight_shapes([net])
    assert {(12, 12, 3, 3), (12, 12), (12, 4, 3, 3), (4, 12, 1, 1)} <= shapes
    recorder = AllocationRecorder()
    with recorder, SavedTensorBytes(net.parameters()) as saved:
        input_gradient(net, x)
    assert not recorder.shapes & shapes
    assert saved.by_reference >= 5  # conv and linear weights are kept for the input gradient by reference

    control = AllocationRecorder()  # the detector sees a copy when there is one
    with control, torch.inference_mode(False):
        [p.clone() for p in net.parameters()]
    assert shapes <= control.shapes


def test_parameters_that_require_grad_get_no_gradient_and_no_copy():
    torch.manual_seed(0)
    net = Net()  # ordinary parameters with requires_grad=True
    x = torch.randn(1, 4, 8, 8)
    recorder = AllocationRecorder()
    with recorder:
        grad = input_gradient(net, x)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0
    assert all(p.grad is None for p in net.parameters())
    assert not recorder.shapes & weight_shapes([net])


def test_a_write_into_a_weight_still_fails_and_leaves_it_unchanged():
    with torch.inference_mode():
        weight = torch.ones(4)
    plain = torch.zeros(4)
    with torch.inference_mode(False), weights_by_reference():
        with pytest.raises(RuntimeError, match="add_ would write into a model weight"):
            weight.add_(1.0)
        with pytest.raises(RuntimeError, match="__setitem__ would write into a model weight"):
            weight[0] = 5.0
        plain.add_(weight)  # reading a weight inside an in-place operation on another tensor is fine
    assert torch.equal(weight, torch.ones(4)) and torch.equal(plain, torch.ones(4))


def test_weights_assembled_in_a_shared_buffer_are_held_privately():
    """comfy.ops on a partially loaded model copies each layer's weight into one cast buffer that the next layer
    overwrites. Autograd must not keep the view into that buffer (its backward would see the last layer's weight, or
    fail on the buffer's version counter): the gradient equals the one through separate weights."""
    torch.manual_seed(0)
    with torch.inference_mode():
        weights = [torch.randn(16, 16) / 4 for _ in range(3)]
    buffer = torch.empty(16 * 16 * 2)

    def forward(x):
        for w in weights:
            view = buffer[:w.numel()].view_as(w)
            view.copy_(w)  # what cast_to(..., r=view) does
            x = torch.tanh(torch.nn.functional.linear(x, view))
        return x

    x = torch.randn(4, 16)
    leaf = x.clone().requires_grad_(True)
    with torch.inference_mode(False), torch.enable_grad(), weights_by_reference():
        (grad,) = torch.autograd.grad(forward(leaf).square().sum(), leaf)
    expected_leaf = x.clone().requires_grad_(True)
    h = expected_leaf
    for w in weights:
        h = torch.tanh(torch.nn.functional.linear(h, w.clone()))
    (expected,) = torch.autograd.grad(h.square().sum(), expected_leaf)
    assert torch.allclose(grad, expected, rtol=1e-5, atol=1e-6)


def test_opening_the_mode_twice_adds_nothing():
    with weights_by_reference() as outer:
        assert isinstance(outer, WeightsByReference)
        with weights_by_reference() as inner:
            assert inner is None


def test_recomputed_blocks_give_the_same_gradient_and_store_less():
    net = inference_net(3)
    x = torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(4))
    with SavedTensorBytes(net.parameters()) as stored:
        fast = input_gradient(net, x)
    with SavedTensorBytes(net.parameters()) as recomputed:
        low = input_gradient(net, x, checkpoint_blocks=True)
    assert torch.allclose(low, fast, rtol=1e-6, atol=1e-7)
    assert recomputed.total < stored.total / 3  # block inputs only (plus what the backward recompute saves)
    assert all("forward" not in vars(block) for block in net.blocks)  # restored exactly


def test_recomputed_blocks_run_as_always_outside_gradient_regions_and_respect_other_patches():
    net = inference_net(5)
    x = torch.randn(1, 4, 8, 8)
    own = []

    def someone_elses_forward(h):
        own.append(1)
        return type(net.blocks[0]).forward(net.blocks[0], h)

    net.blocks[0].forward = someone_elses_forward
    with torch.inference_mode():
        expected = net(x)
        with checkpointed_forwards(net.blocks) as patched:
            assert patched == [net.blocks[1], net.blocks[2]]
            assert torch.equal(net(x), expected)
    assert net.blocks[0].forward is someone_elses_forward and len(own) == 2
    assert "forward" not in vars(net.blocks[1])
