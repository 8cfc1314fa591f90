"""People through the frames of a video, as MediaPipe's video mode finds them: the detector now
and then, the landmark network on each person's last region in between.

Detection is the costly part of finding people (the whole frame and its mirror, and the tiles
for small people); a person seen in the last frame is almost where the landmarks put them, so
their tracking region (hip centre -> size point, x 1.25, the region the landmarks themselves
give) is enough for the landmark network to find them again. The detector still runs

* on the first frame and every ``detect_every`` frames after the last detection (newcomers);
* on any frame where someone followed from the frame before was lost (presence under the
  threshold, merged into another person, or a box that grew or shrank past
  :data:`~fastmetro.mediapipe.people.MAX_FOLLOW_RESIZE` in one frame: the landmark network has
  taken someone else in the region), and on frames where nobody is followed.

People found by both are merged (:func:`~fastmetro.mediapipe.people.merge_duplicates`), so a
detection does not double a followed person. The landmark network's presence alone does not
tell a person from a scene that changed (on scikit-image's coffee photo, in the astronaut's
region, it says 0.97), so a followed person whom ``confirm`` detector runs in a row did not see
is dropped: a ghost lasts at most about ``confirm * detect_every`` frames. Frames must come in
order; :meth:`reset` starts a new video.
"""

from __future__ import annotations

import numpy as np

from fastmetro.errors import FastMetroError
from fastmetro.mediapipe.people import FoundPerson, PeopleFinder, merge_duplicates, same_person


class PeopleFollower:
    """Frame-by-frame people of one video (see the module docstring).

    Args:
        finder: a body :class:`~fastmetro.mediapipe.people.PeopleFinder` with landmarks.
        detect_every: run the detector at least every N frames (1: every frame).
        confirm: drop a followed person that this many detector runs in a row missed.
    """

    def __init__(self, finder: PeopleFinder, detect_every: int = 5, confirm: int = 2):
        for name, value in (("detect_every", detect_every), ("confirm", confirm)):
            if int(value) != value or value < 1:
                raise FastMetroError(f"{name} must be an integer >= 1, got {value!r}")
        self.finder = finder
        self.detect_every = int(detect_every)
        self.confirm = int(confirm)
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
            for person in followed:
                seen = any(same_person(person, other) for other in found)
                person.unconfirmed = 0 if seen else person.unconfirmed + 1
            followed = [person for person in followed if person.unconfirmed < self.confirm]
            followed = merge_duplicates([*followed, *found])[: self.finder.max_people]
            self.since_detection = 0
            self.detections += 1
        self.people = followed
        return followed


__all__ = ["PeopleFollower"]
