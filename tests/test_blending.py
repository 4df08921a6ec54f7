"""Blending utilities shared by SBI and Face X-ray: exact values on crafted arrays."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import ndimage
from scipy.spatial import Delaunay

from deepsift.core.records import Record
from detectors.layers import blending as B


def _inside_hull(points: np.ndarray, shape: tuple[int, int], tolerance: float) -> np.ndarray:
    """Which pixel centres lie inside the hull of ``points`` grown by ``tolerance`` px."""
    centre = points.mean(0)
    grown = centre + (points - centre) * (1 + tolerance / np.abs(points - centre).max())
    ys, xs = np.mgrid[0 : shape[0], 0 : shape[1]]
    pixels = np.stack([xs.ravel(), ys.ravel()], 1)
    return (Delaunay(grown).find_simplex(pixels) >= 0).reshape(shape)


def test_convex_hull_mask_fills_the_hull_and_nothing_else() -> None:
    points = np.array([[10.0, 12.0], [50.0, 8.0], [58.0, 40.0], [30.0, 55.0], [8.0, 35.0]])
    points = np.vstack([points, [[30.0, 30.0], [20.0, 25.0]]])  # interior points change nothing
    mask = B.fill_convex_hull(points, (64, 64))
    assert mask.dtype == np.float32 and set(np.unique(mask)) == {0.0, 1.0}
    assert not (mask.astype(bool) & ~_inside_hull(points, (64, 64), 1.5)).any()
    strict = _inside_hull(points, (64, 64), -1.5)  # the hull shrunk by 1.5 px is all filled
    assert mask[strict].all()
    for vertex in points[:5].astype(int):  # vertices are on (cv2.fillConvexPoly includes edges)
        assert mask[vertex[1], vertex[0]] == 1


@pytest.mark.parametrize("kind", B.HULL_KINDS)
def test_hull_masks_follow_deepfakemask(kind: str) -> None:
    lm = B.template_landmarks(128, 128)
    mask = B.hull_mask(lm, (128, 128), kind)
    face = B.fill_convex_hull(lm.astype(np.int64), (128, 128))
    assert 0.4 * face.sum() < mask.sum()
    if kind == "extended":  # brows pushed up the forehead: grows above the 68-point hull
        top = int(lm[17:27, 1].min())
        assert mask[: top - 1].sum() > 0 and face[: top - 1].sum() == 0
    else:  # every other hull stays within the 68-point hull (its edges included)
        assert not (mask.astype(bool) & ~face.astype(bool)).any()
    if kind == "facehull":
        np.testing.assert_array_equal(mask, face)


def test_hull_mask_uses_the_forehead_of_81_points() -> None:
    lm = B.template_landmarks(128, 128, forehead=True)
    with81 = B.hull_mask(lm, (128, 128), "facehull")
    with68 = B.hull_mask(lm[:68], (128, 128), "facehull")
    assert with81.sum() > with68.sum() and not (with68.astype(bool) & ~with81.astype(bool)).any()
    with pytest.raises(ValueError, match="unknown hull kind"):
        B.hull_mask(lm, (128, 128), "square")


def test_boundary_formula_and_alpha_blend_on_crafted_arrays() -> None:
    mask = np.array([[0.0, 0.25, 0.5], [0.75, 1.0, 0.1]])
    np.testing.assert_allclose(
        B.blending_boundary(mask), [[0.0, 0.75, 1.0], [0.75, 0.0, 0.36]], atol=1e-12
    )
    torch.testing.assert_close(
        B.blending_boundary(torch.tensor([0.0, 0.5, 1.0])), torch.tensor([0.0, 1.0, 0.0])
    )
    source = np.full((2, 3, 3), 200, np.uint8)
    target = np.arange(18, dtype=np.uint8).reshape(2, 3, 3) * 10
    out = B.alpha_blend(source, target, mask)
    for y in range(2):
        for x in range(3):
            m = mask[y, x]
            np.testing.assert_allclose(out[y, x], m * 200 + (1 - m) * target[y, x].astype(float))


def test_gaussian_kernel_and_blur_follow_opencv() -> None:
    np.testing.assert_allclose(B.gaussian_kernel(5), [1 / 16, 4 / 16, 6 / 16, 4 / 16, 1 / 16])
    sigma = 0.3 * ((9 - 1) * 0.5 - 1) + 0.8  # OpenCV's sigma for ksize 9 and sigma 0
    x = np.arange(9) - 4.0
    expected = np.exp(-(x**2) / (2 * sigma**2))
    np.testing.assert_allclose(B.gaussian_kernel(9), expected / expected.sum())
    with pytest.raises(ValueError, match="odd"):
        B.gaussian_kernel(4)
    # BORDER_REFLECT_101: an impulse next to the border is mirrored onto row -1 (= row 1)
    image = np.zeros((6, 6))
    image[1, 3] = 1.0
    out = B.gaussian_blur(image, 3)
    k = np.array([0.25, 0.5, 0.25])
    assert out[0, 3] == pytest.approx((k[0] + k[2]) * k[1])  # direct and mirrored taps
    assert out[1, 3] == pytest.approx(k[1] * k[1])
    assert out[2, 3] == pytest.approx(k[0] * k[1])
    assert out.sum() == pytest.approx(1.25)


def test_colour_and_frequency_augmentations_exact() -> None:
    image = np.array([[[10, 100, 250], [0, 128, 255]]], dtype=np.uint8)
    np.testing.assert_array_equal(
        B.rgb_shift(image, [5.7, -20.0, 10.2]), [[[15, 80, 255], [5, 108, 255]]]
    )
    np.testing.assert_array_equal(
        B.brightness_contrast(image, 1.1, 0.05), [[[23, 122, 255], [12, 153, 255]]]
    )
    flat = np.full((5, 5, 3), 100, np.uint8)  # sharpening scales a flat image by 1 - a + a L
    np.testing.assert_array_equal(B.sharpen(flat, 0.5, 0.8), np.full((5, 5, 3), 90, np.uint8))
    gray = np.full((3, 3, 3), 100, np.uint8)  # albumentations: a negative shift lowers by 1
    np.testing.assert_array_equal(B.hsv_shift(gray, 0.0, 0.0, -0.2), gray - 1)
    np.testing.assert_array_equal(B.hsv_shift(gray, 0.0, 0.0, 0.2), gray)
    blocks = np.kron(np.arange(16, dtype=np.uint8).reshape(4, 4) * 10, np.ones((2, 2), np.uint8))
    blocks = np.repeat(blocks[..., None], 3, axis=2)
    small = B.resize(blocks, (4, 4), mode="nearest")  # nearest picks each 2x2 block's corner
    np.testing.assert_array_equal(small[..., 0], np.arange(16).reshape(4, 4) * 10)
    assert B.downscale(blocks, 2).shape == blocks.shape
    decoded = B.jpeg(np.full((16, 16, 3), 128, np.uint8), 90)
    assert decoded.dtype == np.uint8 and np.abs(decoded.astype(int) - 128).max() <= 1


def test_color_transfer_matches_the_masked_mean() -> None:
    rng = np.random.default_rng(0)
    reference = rng.integers(100, 140, (32, 32, 3), dtype=np.uint8)
    image = rng.integers(40, 80, (32, 32, 3), dtype=np.uint8)
    mask = np.zeros((32, 32))
    mask[8:24, 8:24] = 1
    out = B.color_transfer_mean(reference, image, mask)
    inside = mask.astype(bool)
    np.testing.assert_array_equal(out[~inside], image[~inside])
    np.testing.assert_allclose(
        out[inside].mean(0), reference[inside].mean(0), atol=1.0
    )  # truncation to uint8 loses < 1


def test_degenerate_hulls_are_a_point_or_a_segment() -> None:
    """Tiny warped masks (one pixel, one row) happen at small crops: never a crash."""
    one = B.fill_convex_hull(np.array([[5, 3]]), (8, 8))
    assert one.sum() == 1 and one[3, 5] == 1
    assert B.fill_convex_hull(np.array([[5, 3], [5, 3]]), (8, 8)).sum() == 1
    row = B.fill_convex_hull(np.array([[6, 2], [1, 2], [3, 2]]), (8, 8))
    assert row.sum() == 6 and row[2, 1:7].all()
    column = B.fill_convex_hull(np.array([[4, 7], [4, 0]]), (8, 8))
    assert column.sum() == 8 and column[:, 4].all()
    assert B.fill_convex_hull(np.zeros((0, 2)), (8, 8)).sum() == 0
    pixel = np.zeros((8, 8), np.float32)
    pixel[3, 5] = 1
    assert B.feather_weights(pixel).max() == 0  # on the hull's edge: weight 0, as cv2 gives


def test_feather_weights() -> None:
    mask = np.zeros((64, 64), np.float32)
    mask[12:52, 12:52] = 1
    w = B.feather_weights(mask, amount=0.2)
    assert w[~mask.astype(bool)].max() == 0 and w.max() == 1.0
    # 40 px square: 0 on the hull's edge, full weight 0.2 * 39 = 7.8 px inside it
    assert w[32, 32] == 1.0 and 0 == w[32, 12] < w[32, 13] < w[32, 15] < w[32, 19] <= 1.0
    np.testing.assert_allclose(w[32, 12:22], np.clip(np.arange(10) / 7.8, 0, 1), atol=1e-6)
    assert B.feather_weights(np.zeros((8, 8))).max() == 0


def test_similarity_transform_and_warp() -> None:
    rng = np.random.default_rng(1)
    src = rng.uniform(10, 50, (68, 2))
    angle, scale, shift = 0.2, 1.3, np.array([4.0, -3.0])
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    dst = scale * src @ rot.T + shift
    matrix = B.similarity_matrix(src, dst)
    np.testing.assert_allclose(matrix[:, :2], scale * rot, atol=1e-9)
    np.testing.assert_allclose(matrix[:, 2], shift, atol=1e-9)
    image = np.zeros((32, 32, 3), np.uint8)
    image[10, 5] = 255
    moved = B.warp_affine(image, np.array([[1.0, 0, 7], [0, 1.0, 3]]), (32, 32))
    assert moved[13, 12].tolist() == [255, 255, 255]
    # cv2.BORDER_REFLECT: output x = 1 samples input x = -6, reflected to 5
    assert moved[13, 1].tolist() == [255, 255, 255] and moved.sum() == 6 * 255


def test_mask_deformations_are_deterministic_for_a_seed() -> None:
    mask = B.hull_mask(B.template_landmarks(96, 96), (96, 96), "facehull")
    image = np.random.default_rng(0).integers(0, 256, (96, 96, 3), dtype=np.uint8)

    def run(seed: int) -> list[np.ndarray]:
        rng = np.random.default_rng(seed)
        moved_image, moved = B.random_affine(image, mask, rng)
        params = B.sample_source_augment(rng)
        return [
            moved_image,
            moved,
            B.elastic_deform(mask, rng),
            B.grid_deform(mask, rng),
            B.random_erode_dilate(mask, rng),
            B.ellipse_mask((96, 96), rng),
            B.source_augment(image, params),
        ]

    first, again, other = run(7), run(7), run(8)
    for a, b in zip(first, again, strict=True):
        np.testing.assert_array_equal(a, b)
    assert any(not np.array_equal(a, c) for a, c in zip(first, other, strict=True))
    for deformed in first[1:5]:  # still a face-sized mask near the original
        assert 0.2 * mask.sum() < deformed.sum() < 3 * mask.sum()
        assert deformed.min() >= 0 and deformed.max() <= 1


def test_landmarks_flip_and_scale() -> None:
    lm = B.template_landmarks(100, 120, forehead=True)
    flipped = B.flip_landmarks(lm, 100)
    np.testing.assert_allclose(B.flip_landmarks(flipped, 100), lm, atol=1e-4)
    # the template is symmetric: mirroring and renumbering gives the same face
    np.testing.assert_allclose(flipped, lm, atol=1e-3)
    np.testing.assert_allclose(flipped[36], [99 - lm[45, 0], lm[45, 1]])  # eye corners swap
    scaled = B.scale_landmarks(lm, (120, 100), (240, 200))
    np.testing.assert_allclose(scaled, (lm + 0.5) * 2 - 0.5, rtol=1e-6)


def test_read_landmarks_and_status(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    lm68 = B.template_landmarks(64, 64)
    np.save(tmp_path / "a.npy", lm68)
    got, status = B.read_landmarks(Record("a.png", 0, extra={"landmarks": str(tmp_path / "a.npy")}))
    np.testing.assert_array_equal(got, lm68)
    assert got.dtype == np.float32 and status == B.LANDMARKS_OK
    raw81 = np.arange(162, dtype=np.float32).reshape(81, 2)
    np.save(tmp_path / "b.npy", raw81[None])  # SBI's own files are (1, 81, 2)
    got = B.load_landmarks(Record("b.png", 0, extra={"landmarks": str(tmp_path / "b.npy")}))
    np.testing.assert_array_equal(got[:68], raw81[:68])
    np.testing.assert_array_equal(got[68:], raw81[list(B.DLIB81_FOREHEAD_ORDER)])
    assert B.read_landmarks(Record("c.png", 0)) == (None, B.LANDMARKS_MISSING)
    assert B.read_landmarks(None) == (None, B.LANDMARKS_MISSING)
    np.save(tmp_path / "bad.npy", np.zeros((5, 2)))
    bad = Record("d.png", 0, extra={"landmarks": str(tmp_path / "bad.npy")})
    assert B.read_landmarks(bad) == (None, B.LANDMARKS_BAD_SHAPE)
    missing = Record("e.png", 0, extra={"landmarks": str(tmp_path / "missing.npy")})
    assert B.read_landmarks(missing) == (None, B.LANDMARKS_UNREADABLE)

    for code in (1, 2, 3):
        B._WARNED.discard(f"X-landmarks-{code}")
    with caplog.at_level(logging.WARNING, logger="detectors.layers.blending"):
        for _ in range(3):  # once per kind of problem, however many batches show it
            B.warn_landmark_status(torch.tensor([0, 1, 1, 3]), "X", "ellipses")
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 2 and "no landmarks" in messages[0] and "(68, 2)" in messages[1]


def test_ellipse_fallback_is_a_centred_face_sized_blob() -> None:
    mask = B.ellipse_mask((100, 80), np.random.default_rng(0))
    rows, cols = np.nonzero(mask)
    assert 0.25 < mask.mean() < 0.6
    assert abs(cols.mean() - 40) < 6 and abs(rows.mean() - 55) < 7


def test_paired_inputs_and_weighted_bce() -> None:
    batch = {
        "image": torch.zeros(2, 3, 4, 4),
        "image_blended": torch.ones(2, 3, 4, 4),
        "label": torch.tensor([0.0, 1.0]),
        "weight_image": torch.tensor([1.0, 0.0]),
        "weight_blended": torch.tensor([1.0, 0.0]),
    }
    images, targets, weights = B.paired_inputs(batch)
    assert images.shape == (4, 3, 4, 4) and images[2:].eq(1).all()
    assert targets.tolist() == [0.0, 1.0, 1.0, 1.0] and weights.tolist() == [1.0, 0.0, 1.0, 0.0]
    logits = torch.tensor([-2.0, 5.0, 3.0, -7.0], requires_grad=True)
    loss = B.weighted_bce(logits, targets, weights)
    expected = (np.log1p(np.exp(-2.0)) + np.log1p(np.exp(-3.0))) / 2
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    zero = B.weighted_bce(logits, targets, torch.zeros(4))
    zero.backward()  # all weights 0: a zero loss that still back-propagates
    assert zero.item() == 0 and logits.grad is not None


# -- the library semantics the blending functions follow --------------------------------
def _colourful(side: int = 48, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (6, 6, 3)).astype(np.float32)
    smooth = B.resize(coarse, (side, side))
    return np.clip(smooth + rng.normal(0, 10, smooth.shape), 0, 255).astype(np.uint8)


def test_hsv_shift_is_opencvs_8bit_round_trip_with_albumentations_luts() -> None:
    import cv2

    image = _colourful()
    hsv = cv2.cvtColor(image, cv2.COLOR_RGB2HSV)
    np.testing.assert_array_equal(B.hsv_shift(image, 0, 0, 0), cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB))
    for hue, sat, val in ((-0.3, 0.2, -0.1), (7.6, -12.2, 30.5), (-100.0, 0.0, -300.0)):
        h, s, v = (hsv[..., c].astype(np.float64) for c in range(3))
        shifted = np.stack(  # albumentations' shift_hsv_uint8: (x + shift), truncated
            [np.mod(h + hue, 180), np.clip(s + sat, 0, 255), np.clip(v + val, 0, 255)], -1
        ).astype(np.uint8)
        expected = cv2.cvtColor(shifted, cv2.COLOR_HSV2RGB)
        np.testing.assert_array_equal(B.hsv_shift(image, hue, sat, val), expected)


def test_similarity_is_scikit_images_umeyama() -> None:
    from skimage.transform import estimate_transform

    from datasets.faces import similarity

    rng = np.random.default_rng(3)
    for _ in range(5):
        src = rng.uniform(0, 200, (68, 2))
        dst = src @ rng.normal(size=(2, 2)) + rng.normal(0, 5, (68, 2))  # not a similarity
        expected = estimate_transform("similarity", src, dst).params[:2]
        np.testing.assert_allclose(B.similarity_matrix(src, dst), expected, atol=1e-10)
        np.testing.assert_allclose(similarity(src, dst), expected, atol=1e-10)
    # a known similarity is recovered exactly, by both
    angle, scale, shift = -0.7, 0.45, np.array([-20.0, 13.0])
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    truth = np.hstack([scale * rot, shift[:, None]])
    src = rng.uniform(0, 200, (5, 2))
    dst = src @ truth[:, :2].T + shift
    np.testing.assert_allclose(B.similarity_matrix(src, dst), truth, atol=1e-10)
    np.testing.assert_allclose(similarity(src, dst), truth, atol=1e-10)
    # points that fix no similarity: a translation here, NaNs for the crop code
    same = np.ones((4, 2))
    np.testing.assert_allclose(
        B.similarity_matrix(same, same + np.array([3.0, -2.0])), [[1, 0, 3], [0, 1, -2]]
    )
    assert np.isnan(similarity(same, same)).all()


def test_gaussian_blur_is_a_separable_reflect101_filter_with_opencvs_kernel() -> None:
    image = np.random.default_rng(0).random((30, 41))
    for ksize, sigma in ((3, 0.0), (9, 0.0), (25, 0.0), (25, 17.0)):
        k = B.gaussian_kernel(ksize, sigma)
        r = ksize // 2
        padded = np.pad(image, r, mode="reflect")  # numpy's reflect = BORDER_REFLECT_101
        rows = sum(k[i] * padded[i : i + image.shape[0], :] for i in range(ksize))
        both = sum(k[i] * rows[:, i : i + image.shape[1]] for i in range(ksize))
        np.testing.assert_allclose(B.gaussian_blur(image, ksize, sigma), both, atol=1e-12)


def test_resize_is_half_pixel_bilinear_and_floor_nearest() -> None:
    image = np.random.default_rng(1).random((23, 31, 3)).astype(np.float32)
    t = torch.from_numpy(image).permute(2, 0, 1)[None]
    for size in ((40, 17), (11, 62)):
        bilinear = torch.nn.functional.interpolate(t, size=size, mode="bilinear")
        expected = bilinear[0].permute(1, 2, 0).numpy()
        np.testing.assert_allclose(B.resize(image, size), expected, atol=1e-5)
        rows = np.floor(np.arange(size[0]) * 23 / size[0]).astype(int)
        cols = np.floor(np.arange(size[1]) * 31 / size[1]).astype(int)
        np.testing.assert_array_equal(B.resize(image, size, "nearest"), image[rows][:, cols])
    grey = (image * 255).astype(np.uint8)  # uint8 stays uint8, rounded within a grey level
    as_uint8 = B.resize(grey, (40, 17))
    assert as_uint8.dtype == np.uint8
    assert np.abs(as_uint8 - B.resize(grey.astype(np.float32), (40, 17))).max() <= 1.0


def test_random_affine_maps_pixels_as_albumentations_affine() -> None:
    h, w = 40, 50
    mask = np.zeros((h, w), np.float32)
    mask[12:30, 15:37] = 1
    image = np.repeat((mask * 200)[..., None], 3, axis=2).astype(np.uint8)
    seed = 5
    draws = np.random.default_rng(seed)  # the documented draws: scales, then x and y shifts
    sx, sy = draws.uniform(0.95, 1 / 0.95, size=2)
    tx, ty = draws.uniform(-0.03, 0.03) * w, draws.uniform(-0.015, 0.015) * h
    moved_image, moved = B.random_affine(image, mask, np.random.default_rng(seed))
    ys, xs = np.mgrid[0:h, 0:w]
    src_x = (xs - (w - 1) / 2 - tx) / sx + (w - 1) / 2  # nearest input pixel of each output
    src_y = (ys - (h - 1) / 2 - ty) / sy + (h - 1) / 2
    sx_i, sy_i = np.rint(src_x).astype(int), np.rint(src_y).astype(int)
    valid = (sx_i >= 0) & (sx_i < w) & (sy_i >= 0) & (sy_i < h)
    expected = np.where(valid, mask[sy_i.clip(0, h - 1), sx_i.clip(0, w - 1)], 0)
    ambiguous = (np.abs(src_x - np.floor(src_x) - 0.5) < 0.02) | (
        np.abs(src_y - np.floor(src_y) - 0.5) < 0.02
    )  # half-way samples: rounding conventions may differ
    assert (moved != expected)[~ambiguous].sum() == 0
    assert moved_image.dtype == np.uint8 and moved_image.shape == image.shape


def test_random_erode_dilate_follows_the_reference_morphology() -> None:
    mask = np.zeros((40, 40), np.float32)
    mask[:25, 5:30] = 1  # touches the top border: erosion keeps it (OpenCV's default border)
    mask[30, 30] = 0.7  # below 1: dropped, as the reference's astype(np.uint8)
    binary = mask >= 1
    seen = set()
    for seed in range(12):
        draws = np.random.default_rng(seed)
        erode = draws.random() > 0.5
        k = int(draws.integers(1, 22 if erode else 6))
        k += k % 2 == 0
        square = np.ones((k, k), bool)
        if erode:
            expected = ndimage.binary_erosion(binary, square, border_value=1)
        else:
            expected = ndimage.binary_dilation(binary, square)
        out = B.random_erode_dilate(mask, np.random.default_rng(seed))
        np.testing.assert_array_equal(out, expected.astype(np.float32))
        seen.add(erode)
    assert seen == {True, False}


def test_feather_weights_follow_point_polygon_distances() -> None:
    import cv2

    mask = B.hull_mask(B.template_landmarks(96, 96), (96, 96), "components")
    mask = B.random_erode_dilate(
        B.grid_deform(mask, np.random.default_rng(2)), np.random.default_rng(0)
    )
    weights = B.feather_weights(mask)
    ys, xs = np.nonzero(mask)
    points = np.stack([xs, ys], 1).astype(np.int32)
    hull = cv2.convexHull(points)
    amount = 0.2 * max(np.ptp(xs), np.ptp(ys))
    reference = np.array(
        [cv2.pointPolygonTest(hull, (float(x), float(y)), True) for x, y in points]
    )
    reference = np.clip(reference / amount, 0, 1)
    # a pixel's distance is off by less than one pixel; edge pixels weigh 0 as the reference's
    assert np.abs(weights[ys, xs] - reference).max() < 1.0 / amount
    assert (weights[ys, xs][reference == 0] == 0).all()


def test_jpeg_keeps_the_rgb_order() -> None:
    from io import BytesIO

    from PIL import Image

    image = _colourful(64, seed=4)
    image[:32, :32] = (230, 20, 40)  # a saturated red block: chroma weights matter
    out = B.jpeg(image, 60)
    buffer = BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=60)
    pil = np.asarray(Image.open(BytesIO(buffer.getvalue())).convert("RGB"))
    assert out.dtype == np.uint8 and out.shape == image.shape
    assert np.abs(out.astype(int) - pil.astype(int)).max() <= 2  # both libjpeg, RGB in
    assert np.abs(out[:32, :32].mean((0, 1)) - [230, 20, 40]).max() < 6
