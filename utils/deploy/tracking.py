"""Object tracking: persistent IDs for one stream's detections, frame after frame, with ByteTrack.

ByteTrack comes from Roboflow's ``trackers`` library (requirements-track.txt), not our own Kalman filter
and assignment: it is kept up to date, it takes each frame's capture time, so that a stream that drops
frames still predicts motion over the real gap, and it needs nothing but numpy and scipy at run time.
``Tracker`` adapts it to our detections, Tensor[n, 6] (x1, y1, x2, y2, score, class) in, Tensor[m, 7]
(the same with the track ID, 1, 2, ... in order of first confirmation) out.

ByteTrack matches in two rounds: boxes scoring at least HIGH_CONF first, then the low-scoring ones (down
to ``low``) to the tracks left over, which keeps a track through a partial occlusion; a box needs
NEW_TRACK_CONF to start a track. A tracking detector therefore runs NMS at ``low``, and of the tracked
boxes only those scoring at least ``conf`` (detect.py's --conf-thres) are returned: a new object gets its
ID on its second frame. The thresholds are the library's defaults; on the synthetic video they beat
ByteTrack with --conf-thres as its first-round and new-track threshold (IDF1 0.85 against 0.77 on
seeds 0-2 with bench/video.py's model; seeds 3-5 are the ones reported, see bench/README.md).
"""

from __future__ import annotations

import numpy as np
import torch

from utils.errors import ConfigError

TRACK_REQUIREMENTS = "requirements-track.txt"
LOW_CONF = 0.1  # the second round's floor, as in ByteTrack's paper and Ultralytics' defaults
HIGH_CONF, NEW_TRACK_CONF = 0.6, 0.7  # the first round's threshold and a new track's (trackers' defaults)
LOST_SECONDS = 1.0  # a track unseen this long ends; a later detection there starts a new ID


def import_trackers():
    """The ``trackers`` and ``supervision`` modules, or one sentence naming what to install."""
    try:
        import supervision
        import trackers
    except ImportError as error:
        raise ConfigError(
            f"tracking needs Roboflow's trackers library ({error.name} is missing); "
            f"pip install -r {TRACK_REQUIREMENTS}"
        ) from None
    return trackers, supervision


def low_conf(conf: float) -> float:
    """The score down to which a tracking detector keeps boxes, for ByteTrack's second round."""
    return min(LOW_CONF, conf)


class Tracker:
    """ByteTrack over one stream (see module docstring). conf: the score a tracked box needs to be
    returned; fps: the stream's frame rate, which scales how long a lost track is kept (``LOST_SECONDS``)."""

    def __init__(self, conf: float = 0.25, fps: float = 30.0) -> None:
        trackers, self._sv = import_trackers()
        self.conf, self.low = conf, low_conf(conf)
        self._tracker = trackers.ByteTrackTracker(
            lost_track_buffer=round(LOST_SECONDS * 30),  # counted in 30 fps frames, scaled by frame_rate
            frame_rate=fps,
            track_activation_threshold=NEW_TRACK_CONF,
            high_conf_det_threshold=HIGH_CONF,
            minimum_consecutive_frames=2,
            minimum_iou_threshold=0.1,
        )

    def update(self, detections: torch.Tensor, timestamp: float | None = None) -> torch.Tensor:
        """One frame's detections (n, 6), scored down to ``low``, and the frame's time in seconds (None: one
        frame after the last) -> its tracked boxes (m, 7): x1, y1, x2, y2, score, class, track ID."""
        rows = detections.detach().cpu().double().numpy().reshape(-1, 6)
        found = self._sv.Detections(
            xyxy=rows[:, :4].astype(np.float32),
            confidence=rows[:, 4].astype(np.float32),
            class_id=rows[:, 5].astype(int),
        )
        tracked = self._tracker.update(found, timestamp=timestamp)
        ids = np.asarray(tracked.tracker_id if tracked.tracker_id is not None else [], dtype=np.int64)
        keep = (ids >= 0) & (np.asarray(tracked.confidence) >= self.conf)
        if not keep.any():
            return torch.zeros(0, 7)
        columns = [
            tracked.xyxy[keep],
            tracked.confidence[keep, None],
            tracked.class_id[keep, None],
            ids[keep, None] + 1,  # MOTChallenge's IDs start at 1
        ]
        return torch.from_numpy(np.concatenate([np.asarray(c, dtype=np.float64) for c in columns], 1)).float()

    def reset(self) -> None:
        self._tracker.reset()
