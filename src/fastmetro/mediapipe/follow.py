"""People through the frames of a video, as MediaPipe's video mode finds them: the detector now
and then, the landmark network on each person's last region in between.

Detection is the costly part of finding people (the whole frame and its mirror, and the tiles
for small people); a person seen in the last frame is almost where the landmarks put them, so
their tracking region (hip centre -> size point, x 1.25, the region the landmarks themselves
give) is enough for the landmark network to find them again. The detector still runs

* on the first frame and every ``detect_every`` frames after the last detection (newcomers);
* on any frame where someone followed from the frame before was lost (presence under the
  threshold, or merged into another person), and on frames where nobody is followed.

People found by both are merged (:func:`~fastmetro.mediapipe.people.merge_duplicates`), so a
detection does not double a followed person. Frames must come in order; :meth:`reset` starts a
new video.
"""

from __future__ import annotations

import numpy as np

from fastmetro.errors import FastMetroError
from fastmetro.mediapipe.people import FoundPerson, PeopleFinder, merge_duplicates


class PeopleFollower:
    """Frame-by-frame people of one video (see the module docstring).

    Args:
        finder: a body :class:`~fastmetro.mediapipe.people.PeopleFinder` with landmarks.
        detect_every: run the detector at least every N frames (1: every frame).
    """

    def __init__(self, finder: PeopleFinder, detect_every: int = 5):
        if int(detect_every) != detect_every or detect_every < 1:
            raise FastMetroError(f"detect_every must be an integer >= 1, got {detect_every!r}")
        self.finder = finder
        self.detect_every = int(detect_every)
        self.reset()

    def reset(self) -> None:
        self.people: list[FoundPerson] = []
        self.since_detection = 0
        self.detections = 0  # frames the detector ran on (a measure of the saving)
        self.frames = 0

    def __call__(self, image: np.ndarray) -> list[FoundPerson]:
        """The people of the next frame, (H, W, 3) uint8 RGB, most confident first."""
        followed = self.finder.follow([image], [self.people])[0] if self.people else []
        self.since_detection += 1
        self.frames += 1
        lost = len(followed) < len(self.people)
        if not followed or lost or self.since_detection >= self.detect_every:
            found = self.finder.find([image])[0]
            followed = merge_duplicates([*followed, *found])[: self.finder.max_people]
            self.since_detection = 0
            self.detections += 1
        self.people = followed
        return followed


__all__ = ["PeopleFollower"]
