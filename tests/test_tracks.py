"""IoU track following: a track (and so a clip) never mixes identities."""

from datasets.tracks import iou, link_tracks, track_clips


def _box(x: float, y: float = 10.0, side: float = 20.0):
    return (x, y, x + side, y + side)


def test_iou():
    assert iou(_box(0), _box(0)) == 1.0
    assert iou(_box(0), _box(100)) == 0.0
    assert abs(iou(_box(0), _box(10)) - 200 / 600) < 1e-9


def test_one_moving_face_is_one_track():
    frames = [[_box(3.0 * i)] for i in range(10)]
    assert link_tracks(frames) == [[(i, 0) for i in range(10)]]


def test_crossing_faces_never_mix():
    # Face A moves right from x=0, face B left from x=60, 4 px per frame; they cross
    # at frame 7-8. Box order within a frame is shuffled so the index says nothing.
    frames, truth = [], {}
    for i in range(16):
        a, b = _box(4.0 * i), _box(60.0 - 4.0 * i)
        order = [a, b] if i % 3 else [b, a]
        frames.append(order)
        truth[(i, order.index(a))] = "A"
        truth[(i, order.index(b))] = "B"
    tracks = link_tracks(frames)
    assert sum(len(t) for t in tracks) == 32
    for track in tracks:
        assert len({truth[m] for m in track}) == 1, track
    assert max(len(t) for t in tracks) >= 5  # it does follow faces away from the crossing


def test_greedy_without_cut_would_swap():
    # A face that stops while another passes over it: the cut keeps identities apart.
    frames = [[_box(30.0), _box(4.0 * i)] for i in range(16)]
    for track in link_tracks(frames):
        assert len({b for _, b in track}) == 1


def test_track_clips():
    assert track_clips(10, 4, 3) == [[0, 1, 2, 3], [3, 4, 5, 6], [6, 7, 8, 9]]
    assert track_clips(10, 3, 1, stride=2) == [[2, 4, 6]]
    assert track_clips(4, 5, 2) == []
    assert track_clips(5, 5, 3) == [[0, 1, 2, 3, 4]]
