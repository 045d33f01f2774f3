"""glimpse.resize: IMAGE and MASK batches at another view size."""
import torch

from glimpse.resize import resize_to


def test_same_size_is_the_input_itself():
    x = torch.rand(2, 8, 12, 3)
    assert resize_to(x, (8, 12)) is x


def test_images_and_masks_shrink_antialiased_and_grow_bilinear_in_range():
    img = torch.zeros(1, 8, 8, 3)
    img[:, :, 4:] = 1.0  # left half black, right half white
    small = resize_to(img, (4, 4))
    assert small.shape == (1, 4, 4, 3) and small.dtype == torch.float32
    cols = small[0, 0, :, 0].tolist()
    assert cols[0] == 0 and cols[3] == 1 and 0 < cols[1] < 0.5 < cols[2] < 1  # a soft, symmetric edge
    assert abs(cols[1] + cols[2] - 1) < 1e-6 and torch.equal(small, small[:, :1].expand(1, 4, 4, 3))
    # one white pixel in 8x8 still shows at 2x2 (antialiased), where point sampling could miss it
    dot = torch.zeros(1, 8, 8)
    dot[0, 0, 0] = 1.0
    assert resize_to(dot, (2, 2))[0, 0, 0].item() > 0.01
    mask = (torch.rand(3, 5, 7) > 0.5).float()
    big = resize_to(mask, (20, 28))
    assert big.shape == (3, 20, 28) and float(big.min()) >= 0 and float(big.max()) <= 1
    assert torch.equal(big[:, 2::4, 2::4] > 0.5, mask > 0.5)  # each source pixel keeps its value near its centre
    assert resize_to(torch.full((1, 4, 4), 1.0, dtype=torch.float64), (3, 3)).max() <= 1.0
