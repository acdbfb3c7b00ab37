"""Side-by-side composition."""

import numpy as np
import pytest

from retarget.video import side_by_side, side_by_side_chunk


def test_panels_scaled_to_common_height_and_placed_in_order():
    driving = np.full((100, 80, 3), 10, np.uint8)
    result = np.full((50, 50, 3), 200, np.uint8)
    source = np.full((200, 100, 3), 90, np.uint8)
    out = side_by_side([driving, result, source])
    assert out.shape == (200, 160 + 200 + 100, 3)
    assert (out[:, :160] == 10).all() and (out[:, 160:360] == 200).all() and (out[:, 360:] == 90).all()
    assert side_by_side([driving, result], height=50).shape == (50, 40 + 50, 3)


def test_chunk_composition_uses_result_height():
    driving = np.zeros((3, 64, 48, 3), np.uint8)
    result = np.ones((3, 32, 32, 3), np.uint8)
    out = side_by_side_chunk(driving, result, source=np.full((16, 16, 3), 5, np.uint8))
    assert out.shape == (3, 32, 24 + 32 + 32, 3)
    with pytest.raises(ValueError):
        side_by_side_chunk(driving, result[:2])
