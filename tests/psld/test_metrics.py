"""Image metrics (psld/metrics.py): PSNR, SSIM (Wang et al. 2004) and the measurement residual, per image."""
import math

import pytest
import torch

from psld.metrics import gaussian_window, measurement_rmse, mse, psnr, ssim, ssim_window_size
from psld.operators import Inpainting, SuperResolution, box_mask


def images(batch=3, channels=3, size=32, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(batch, channels, size, size, generator=g, dtype=dtype)


def noisy(ref, level, seed=1):
    g = torch.Generator().manual_seed(seed)
    return ref + level * torch.randn(ref.shape, generator=g, dtype=ref.dtype)


def direct_ssim(x, ref, data_range=1.0):
    """SSIM written out window by window from Wang et al. (2004): an independent check of the filtered version."""
    size = ssim_window_size(x.shape[-2], x.shape[-1])
    w1 = gaussian_window(size, 1.5, dtype=x.dtype)
    w = w1[:, None] * w1[None, :]
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    values = []
    for b in range(x.shape[0]):
        per_image = []
        for c in range(x.shape[1]):
            for i in range(x.shape[-2] - size + 1):
                for j in range(x.shape[-1] - size + 1):
                    a, r = x[b, c, i:i + size, j:j + size], ref[b, c, i:i + size, j:j + size]
                    mu_a, mu_r = (w * a).sum(), (w * r).sum()
                    var_a, var_r = (w * (a - mu_a) ** 2).sum(), (w * (r - mu_r) ** 2).sum()
                    cov = (w * (a - mu_a) * (r - mu_r)).sum()
                    per_image.append((2 * mu_a * mu_r + c1) * (2 * cov + c2)
                                     / ((mu_a ** 2 + mu_r ** 2 + c1) * (var_a + var_r + c2)))
        values.append(torch.stack(per_image).mean())
    return torch.stack(values)


def test_psnr_of_a_known_mse():
    ref = torch.full((2, 3, 8, 8), 0.5, dtype=torch.float64)
    x = ref.clone()
    x[0] += 0.1  # MSE 0.01 -> 20 dB
    x[1, :, ::2] -= 0.2  # half the pixels off by 0.2: MSE 0.02 -> 10 log10(50) dB
    torch.testing.assert_close(mse(x, ref), torch.tensor([0.01, 0.02], dtype=torch.float64))
    torch.testing.assert_close(psnr(x, ref), torch.tensor([20.0, 10 * math.log10(50.0)], dtype=torch.float64))
    # data_range L scales the peak: [-1, 1] images with L = 2 give the same dB as [0, 1] images with L = 1
    torch.testing.assert_close(psnr(2 * x - 1, 2 * ref - 1, data_range=2.0), psnr(x, ref))
    assert torch.isinf(psnr(ref, ref)).all()


def test_ssim_of_an_image_with_itself_is_one():
    ref = images()
    torch.testing.assert_close(ssim(ref, ref), torch.ones(3, dtype=torch.float64))


def test_ssim_matches_the_window_by_window_definition():
    ref = images(batch=2, channels=2, size=16)
    x = noisy(ref, 0.2).clamp(0, 1)
    torch.testing.assert_close(ssim(x, ref), direct_ssim(x, ref), rtol=1e-10, atol=1e-12)
    small_ref, small_x = ref[..., :8, :9], x[..., :8, :9]  # smaller than 11 px: a 7 x 7 window
    assert ssim_window_size(8, 9) == 7
    torch.testing.assert_close(ssim(small_x, small_ref), direct_ssim(small_x, small_ref), rtol=1e-10, atol=1e-12)


def test_metrics_get_worse_as_noise_grows():
    ref = images()
    levels = [0.01, 0.03, 0.1, 0.3]
    p = torch.stack([psnr(noisy(ref, s), ref) for s in levels])
    s = torch.stack([ssim(noisy(ref, s), ref) for s in levels])
    assert (p[1:] < p[:-1]).all() and (s[1:] < s[:-1]).all()


def test_metrics_are_symmetric_and_per_image():
    ref, x = images(seed=2), noisy(images(seed=2), 0.1)
    torch.testing.assert_close(psnr(x, ref), psnr(ref, x))
    torch.testing.assert_close(ssim(x, ref), ssim(ref, x))
    torch.testing.assert_close(ssim(x[1:2], ref[1:2]), ssim(x, ref)[1:2])  # no coupling between batch items
    torch.testing.assert_close(psnr(x[2:], ref[2:]), psnr(x, ref)[2:])


def test_float32_inputs_give_float32_results():
    ref = images(dtype=torch.float32)
    assert ssim(noisy(ref, 0.1), ref).dtype == torch.float32
    assert psnr(noisy(ref, 0.1), ref).dtype == torch.float32


def test_measurement_rmse_is_the_residual_norm_over_the_root_of_its_size():
    x = images(batch=2) * 2 - 1
    operator = SuperResolution(scale=4)
    y = noisy(operator.forward(x), 0.05)
    expected = torch.stack([(operator.forward(x)[b] - y[b]).norm() / math.sqrt(y[b].numel()) for b in range(2)])
    torch.testing.assert_close(measurement_rmse(operator, x, y), expected)
    inpaint = Inpainting(mask=box_mask(32, 32, centred=True))
    assert float(measurement_rmse(inpaint, x, inpaint.forward(x)).abs().max()) == 0.0


@pytest.mark.parametrize("call, argument", [
    (lambda: psnr(torch.rand(1, 3, 8, 8), torch.rand(1, 3, 8, 9)), "x has shape"),
    (lambda: ssim(torch.rand(3, 8, 8), torch.rand(3, 8, 8)), "x is a tensor"),
    (lambda: ssim(torch.rand(1, 3, 8, 8), torch.ones(1, 3, 8, 8, dtype=torch.int64)), "ref is a tensor"),
    (lambda: psnr(torch.full((1, 1, 4, 4), float("nan")), torch.rand(1, 1, 4, 4)), "x (a tensor"),
    (lambda: psnr(torch.rand(1, 1, 4, 4), torch.rand(1, 1, 4, 4), data_range=0), "data_range=0"),
    (lambda: ssim(torch.rand(1, 1, 4, 4), torch.rand(1, 1, 4, 4), data_range=-1.0), "data_range=-1.0"),
    (lambda: measurement_rmse(SuperResolution(scale=4), torch.rand(1, 3, 8, 8), torch.rand(1, 3, 8, 8)),
     "y has shape"),
])
def test_bad_arguments_raise_value_errors_naming_them(call, argument):
    with pytest.raises(ValueError) as error:
        call()
    assert argument in str(error.value)
