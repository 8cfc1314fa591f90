"""People (and hands) in photographs: MediaPipe's detector, its alignment region, the landmark network.

The pipeline of BlazePose (and of MediaPipe Hands), batched over images and over people:

1. the detector sees each whole image letterboxed to its input (224 px; palms 192 px) and gives
   scored detections with keypoints; weighted NMS merges the anchors of one person;
2. each detection fixes a rotated square region: bodies from the alignment keypoints (hip centre
   -> the point above the head: twice their distance, x 1.25); palms from the palm's box (x 2.6,
   moved half a box towards the fingers), turned by wrist -> middle-finger base;
3. the landmark network sees that region upright (256 px; hands 224 px): 33 body landmarks
   (x, y in image pixels, z on the scale of x, visibility, presence), 33 world landmarks in
   metres (hip-centred), and a presence score that rejects regions without a person;
4. optionally a second landmark pass on the region the landmarks themselves give (MediaPipe's
   tracking region), which re-centres people the detector framed poorly;
5. the person's box is the landmarks' extent with the head's top and a margin added, clipped to
   the image; people found twice (overlapping detections of one body) are merged.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from fastmetro.errors import FastMetroError
from fastmetro.mediapipe import detection as det
from fastmetro.mediapipe.networks import HAND_LANDMARK_VARIANTS, POSE_LANDMARK_VARIANTS, load_network
from fastmetro.mediapipe.regions import Region

#: BlazePose's 33 published landmarks, in the network's order (6 auxiliary ones follow, unnamed).
POSE_LANDMARK_NAMES = (
    "nose",
    "left_eye_inner",
    "left_eye",
    "left_eye_outer",
    "right_eye_inner",
    "right_eye",
    "right_eye_outer",
    "left_ear",
    "right_ear",
    "mouth_left",
    "mouth_right",
    "left_shoulder",
    "right_shoulder",
    "left_elbow",
    "right_elbow",
    "left_wrist",
    "right_wrist",
    "left_pinky",
    "right_pinky",
    "left_index",
    "right_index",
    "left_thumb",
    "right_thumb",
    "left_hip",
    "right_hip",
    "left_knee",
    "right_knee",
    "left_ankle",
    "right_ankle",
    "left_heel",
    "right_heel",
    "left_foot_index",
    "right_foot_index",
)
#: MediaPipe Hands' 21 landmarks.
HAND_LANDMARK_NAMES = (
    "wrist",
    "thumb_cmc",
    "thumb_mcp",
    "thumb_ip",
    "thumb_tip",
    "index_finger_mcp",
    "index_finger_pip",
    "index_finger_dip",
    "index_finger_tip",
    "middle_finger_mcp",
    "middle_finger_pip",
    "middle_finger_dip",
    "middle_finger_tip",
    "ring_finger_mcp",
    "ring_finger_pip",
    "ring_finger_dip",
    "ring_finger_tip",
    "pinky_mcp",
    "pinky_pip",
    "pinky_dip",
    "pinky_tip",
)
POSE_CROP, HAND_CROP = 256, 224
# Landmark rows 33 and 34: the hip centre and the point that fixes the body's size and direction
# (what the detector's keypoints 0 and 1 are), from which MediaPipe tracks the next region.
_BODY_CENTRE, _BODY_END = 33, 34
_EYES, _MOUTH = (2, 5), (9, 10)


@dataclass
class FoundPerson:
    """One person (or hand) found in an image.

    Attributes:
        box: (x, y, w, h) pixels, the body's (hand's) extent clipped to the image.
        score: detector probability (0..1).
        presence: the landmark network's probability that a person (hand) is in its region;
            None without landmarks.
        region: the rotated square the landmark network saw.
        landmarks: (L, 5) x, y pixels, z (pixels, relative to the hips / wrist), visibility,
            presence (both 0..1; hands: 0); None without landmarks.
        world_landmarks: (L, 3) metres, hip-centred (hands: about the hand's centre), camera-aligned axes.
        side: "left"/"right" for hands (as seen in an unmirrored photo), None for bodies.
        handedness: probability of ``side`` (hands).
        alignment: (2, 2) pixels, the landmarks' hip centre and the point fixing the body's size
            and direction (bodies), from which MediaPipe makes the tracking region.
    """

    box: tuple[float, float, float, float]
    score: float
    region: Region
    presence: float | None = None
    landmarks: np.ndarray | None = None
    world_landmarks: np.ndarray | None = None
    side: str | None = None
    handedness: float | None = None
    alignment: np.ndarray | None = field(default=None, repr=False)
    landmark_names: tuple[str, ...] = field(default=POSE_LANDMARK_NAMES, repr=False)
    unconfirmed: int = field(default=0, repr=False)  # detector runs in a row that missed a followed person


@dataclass(frozen=True)
class _Kind:
    detector: str
    spec: det.DetectorSpec
    landmark_prefix: str
    variants: tuple[str, ...]
    crop: int
    align: tuple[int, int]  # detector keypoints: region centre, region direction
    scale: float
    shift_y: float
    border: str
    names: tuple[str, ...]
    sized_by_box: bool  # the region's size from the detection box (palms), else from the keypoints (bodies)
    unused: tuple[int, ...] = ()  # landmark network outputs the decoder does not read (not computed)


_POSE = _Kind(
    "pose_detection",
    det.POSE_DETECTOR,
    "pose_landmark",
    POSE_LANDMARK_VARIANTS,
    POSE_CROP,
    (0, 1),
    1.25,
    0.0,
    "replicate",
    POSE_LANDMARK_NAMES,
    False,
    (2, 3),  # the segmentation mask and the heat maps: a third of the full network's time
)
_HAND = _Kind(
    "palm_detection_full",
    det.PALM_DETECTOR,
    "hand_landmark",
    HAND_LANDMARK_VARIANTS,
    HAND_CROP,
    (0, 2),
    2.6,
    -0.5,
    "replicate",
    HAND_LANDMARK_NAMES,
    True,
)


class PeopleFinder:
    """Find every person (``kind="body"``) or hand (``kind="hand"``) in RGB images.

    Args:
        kind: "body" (BlazePose) or "hand" (MediaPipe Hands).
        landmarks: landmark network variant ("lite", "full", "heavy" for bodies; "lite", "full"
            for hands), or None for detector-only boxes (the alignment region's extent).
        threshold: detector probability kept (0..1).
        presence_threshold: the landmark network's presence probability kept (0..1).
        nms_iou: weighted-NMS overlap of one person's anchors.
        refine: run the landmark network a second time on the region its own landmarks give.
        flip: also run the detector on the mirrored image and merge both views' detections (people
            seen from behind or side-on score higher in one of the two).
        hands_from_bodies: hands: also look where BlazePose puts each person's wrists (the palm
            detector sees hands that fill much of the image, not the hands of a whole body).
        tiles: also run the detector on overlapping square tiles, this many across the image's
            shorter side (0: the whole image only); finds people too small for one pass at 224 px.
        max_people: keep the most confident N.
        device: torch device of the networks.
    """

    def __init__(
        self,
        kind: str = "body",
        landmarks: str | None = "full",
        threshold: float = 0.5,
        presence_threshold: float = 0.5,
        nms_iou: float = 0.3,
        refine: bool = False,
        flip: bool = True,
        tiles: int = 0,
        hands_from_bodies: bool = True,
        max_people: int = 20,
        device: str | torch.device = "cpu",
    ):
        if kind not in ("body", "hand"):
            raise FastMetroError(f"kind must be 'body' or 'hand', got {kind!r}")
        self.kind = _POSE if kind == "body" else _HAND
        if landmarks is not None and landmarks not in self.kind.variants:
            raise FastMetroError(f"{kind} landmarks must be one of {self.kind.variants} or None, got {landmarks!r}")
        for name, value in (("threshold", threshold), ("presence_threshold", presence_threshold), ("nms_iou", nms_iou)):
            if not 0.0 <= float(value) <= 1.0:
                raise FastMetroError(f"{name} must be within 0..1, got {value!r}")
        self.landmarks = landmarks
        self.threshold, self.presence_threshold, self.nms_iou = (
            float(threshold),
            float(presence_threshold),
            float(nms_iou),
        )
        self.refine = bool(refine) and kind == "body"  # hands: MediaPipe's palm region is already tight
        self.flip = bool(flip)
        if int(tiles) != tiles or not 0 <= tiles <= 8:
            raise FastMetroError(f"tiles must be an integer within 0..8, got {tiles!r}")
        self.tiles = int(tiles)
        self.max_people = int(max_people)
        self.device = torch.device(device)
        self.anchors = det.ssd_anchor_centres(self.kind.spec)
        self.detector = load_network(self.kind.detector, self.device)
        self.body_finder = None
        if kind == "hand" and hands_from_bodies and landmarks is not None:
            self.body_finder = PeopleFinder("body", "lite", refine=False, flip=flip, tiles=tiles, device=device)
        self.landmark_net = (
            None if landmarks is None else load_network(f"{self.kind.landmark_prefix}_{landmarks}", self.device)
        )

    def __call__(self, image: np.ndarray) -> list[FoundPerson]:
        """The people of one (H, W, 3) uint8 RGB image, most confident first."""
        return self.find([image])[0]

    @torch.inference_mode()
    def find(self, images: Sequence[np.ndarray]) -> list[list[FoundPerson]]:
        """The people of each (H, W, 3) uint8 RGB image; detector and landmarks batched across images."""
        candidates = self._detect(images)
        if self.landmark_net is None:
            found_people = [
                [self._region_only(region, score, image) for region, score in found]
                for found, image in zip(candidates, images)
            ]
            return [[p for p in found if p is not None][: self.max_people] for found in found_people]
        flat = [(i, region, score) for i, found in enumerate(candidates) for region, score in found]
        sides: list[str | None] = [None] * len(flat)
        if self.body_finder is not None:  # hands too small for the palm detector: from the bodies' wrists
            from_bodies = _hands_of_bodies(self.body_finder.find(images))
            flat += [item[:3] for item in from_bodies]
            sides += [item[3] for item in from_bodies]
        people = self._landmarks(images, flat)
        for (_, person), side in zip(people, sides):
            if side is not None:  # the body's own left or right wrist: surer than the handedness guess
                person.side, person.handedness = side, 1.0
        if self.refine:
            people = self._refined(images, people)
        result: list[list[FoundPerson]] = [[] for _ in images]
        for i, person in people:
            if _presence(person) > 0 and _presence(person) >= self.presence_threshold:
                result[i].append(person)
        return [merge_duplicates(found)[: self.max_people] for found in result]

    @torch.inference_mode()
    def follow(
        self, images: Sequence[np.ndarray], previous: Sequence[Sequence[FoundPerson]]
    ) -> list[list[FoundPerson]]:
        """The people of each image found again from ``previous`` (those of the image before):
        the landmark network on each one's tracking region, no detector (MediaPipe's video mode).
        Bodies only; a person it loses (presence under the threshold, or a box resized past
        MAX_FOLLOW_RESIZE since the frame before) is left out."""
        if self.kind is not _POSE or self.landmark_net is None:
            raise FastMetroError("following people needs the body landmark network")
        for image in images:
            _check_image(image)
        sources = [
            (i, _landmark_region(person), person)
            for i, people in enumerate(previous)
            for person in people
            if person.alignment is not None
        ]
        sources = [item for item in sources if item[1].size >= 1.0]
        flat = [(i, region, person.score) for i, region, person in sources]
        result: list[list[FoundPerson]] = [[] for _ in images]
        for (i, person), (_, _, source) in zip(self._landmarks(images, flat), sources):
            person.unconfirmed = source.unconfirmed
            if _presence(person) > 0 and _presence(person) >= self.presence_threshold and _plausible(person, source):
                result[i].append(person)
        return [merge_duplicates(found)[: self.max_people] for found in result]

    # ------------------------------------------------------------------ stages
    def _detect(self, images: Sequence[np.ndarray]) -> list[list[tuple[Region, float]]]:
        """Detector on every view (the whole image, its tiles, their mirrors), one batch; the
        detections of all views of an image merged by weighted NMS in image pixels."""
        spec = self.kind.spec
        views, inputs = [], []
        for index, image in enumerate(images):
            _check_image(image)
            height, width = image.shape[:2]
            for x, y, w, h in [(0, 0, width, height), *det.tile_grid(width, height, self.tiles)]:
                letterbox = det.Letterbox.of((w, h), spec.input_size)
                boxed = det.normalise(letterbox.apply(image[y : y + h, x : x + w]), spec.value_range)
                for mirrored in (False, True) if self.flip else (False,):
                    views.append((index, (x, y), letterbox, mirrored))
                    inputs.append(boxed[:, ::-1] if mirrored else boxed)
        raw_boxes, raw_scores = self._run(self.detector, inputs)
        detections: list[list[det.RawDetection]] = [[] for _ in images]
        for (index, offset, letterbox, mirrored), boxes, scores in zip(views, raw_boxes, raw_scores):
            for detection in det.decode(boxes, scores, self.anchors, spec, self.threshold):
                detection = det.in_image(det.mirrored(detection) if mirrored else detection, letterbox, offset)
                if not _cut_by_tile(detection.box, offset, letterbox, images[index].shape):
                    detections[index].append(detection)
        found = []
        for candidates in detections:
            regions = []
            for detection in det.weighted_nms(candidates, self.nms_iou)[: 2 * self.max_people]:
                start, end = detection.keypoints[self.kind.align[0]], detection.keypoints[self.kind.align[1]]
                if self.kind.sized_by_box:
                    region = Region.from_box(detection.box, start, end, self.kind.scale, self.kind.shift_y)
                else:
                    region = Region.from_alignment(start, end, self.kind.scale, self.kind.shift_y)
                if region.size >= 1.0:
                    regions.append((region, detection.score))
            found.append(regions)
        return found

    def _landmarks(self, images, flat: list[tuple[int, Region, float]]) -> list[tuple[int, FoundPerson]]:
        crop = self.kind.crop
        people: list[tuple[int, FoundPerson]] = []
        if not flat:
            return people
        crops = [det.normalise(region.crop(images[i], crop, self.kind.border), (0.0, 1.0)) for i, region, _ in flat]
        outputs = self._run(self.landmark_net, crops, skip=self.kind.unused)
        decode = _decode_pose if self.kind is _POSE else _decode_hand
        for n, (i, region, score) in enumerate(flat):
            person = decode([None if o is None else o[n] for o in outputs], region, score)
            box = _landmark_box(person, images[i].shape, self.kind is _POSE)
            if box is None:  # no landmark inside the image: the network lost the person
                person.presence = 0.0
            else:
                person.box = box
            people.append((i, person))
        return people

    def _refined(self, images, people: list[tuple[int, FoundPerson]]) -> list[tuple[int, FoundPerson]]:
        """A second landmark pass on each person's tracking region (MediaPipe's region from the
        landmarks), kept unless it loses the person the first pass saw."""
        again = [(n, i, _landmark_region(p), p.score) for n, (i, p) in enumerate(people)]
        again = [item for item in again if item[2].size >= 1.0]
        people = list(people)
        for (n, *_), second in zip(again, self._landmarks(images, [item[1:] for item in again])):
            first = people[n][1]
            presence = _presence(second[1])
            lost = presence == 0 or presence < min(self.presence_threshold, _presence(first))
            if not lost:
                people[n] = second
        return people

    def _region_only(self, region: Region, score: float, image: np.ndarray) -> FoundPerson | None:
        """The detector's region as a person without landmarks; None when it lies outside the image."""
        corners = region.corners()
        box = _clip_box(corners.min(axis=0), corners.max(axis=0), image.shape)
        return None if box is None else FoundPerson(box, score, region, landmark_names=self.kind.names)

    def _run(self, net, inputs: Sequence[np.ndarray], skip: Sequence[int] = ()) -> list[Any]:
        """The network on (H, W, 3) float32 inputs, 32 at a time (bounded memory); outputs stacked
        (None for the ``skip`` positions, not computed)."""
        chunks = []
        for start in range(0, len(inputs), 32):
            batch = torch.from_numpy(np.ascontiguousarray(np.stack(inputs[start : start + 32]))).to(self.device)
            chunks.append([None if o is None else o.float().cpu().numpy() for o in net(batch, skip=skip)])
        return [None if parts[0] is None else np.concatenate(parts) for parts in zip(*chunks)]


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-np.asarray(x, dtype=np.float64)))


def _decode_pose(outputs: list[Any], region: Region, score: float) -> FoundPerson:
    """Outputs of the pose landmark network for one crop: (195,), (1,), mask, heat maps, (117,).

    The mask and the heat maps may be None (not computed: not read here)."""
    raw = outputs[0].reshape(39, 5).astype(np.float64)
    xy = region.to_image(raw[:, :2], POSE_CROP)
    z = raw[:, 2:3] * region.size / POSE_CROP
    landmarks = np.concatenate([xy, z, _sigmoid(raw[:, 3:5])], axis=1)
    world = region.rotate(outputs[4].reshape(39, 3))
    named = len(POSE_LANDMARK_NAMES)
    return FoundPerson(
        (0, 0, 1, 1),
        score,
        region,
        float(outputs[1].reshape(-1)[0]),
        landmarks[:named],
        world[:named],
        alignment=landmarks[[_BODY_CENTRE, _BODY_END], :2],
    )


def _decode_hand(outputs: list[Any], region: Region, score: float) -> FoundPerson:
    """Outputs of the hand landmark network for one crop: (63,), presence, handedness, world (63,)."""
    raw = outputs[0].reshape(21, 3).astype(np.float64)
    xy = region.to_image(raw[:, :2], HAND_CROP)
    z = raw[:, 2:3] * region.size / HAND_CROP
    landmarks = np.concatenate([xy, z, np.zeros((21, 2))], axis=1)
    world = region.rotate(outputs[3].reshape(21, 3))
    # The network labels hands as seen in a mirrored (selfie) image: its "right" is a left hand here.
    right_if_mirrored = float(outputs[2].reshape(-1)[0])
    side = "left" if right_if_mirrored >= 0.5 else "right"
    return FoundPerson(
        (0, 0, 1, 1),
        score,
        region,
        float(outputs[1].reshape(-1)[0]),
        landmarks,
        world,
        side=side,
        handedness=max(right_if_mirrored, 1.0 - right_if_mirrored),
        landmark_names=HAND_LANDMARK_NAMES,
    )


def _presence(person: FoundPerson) -> float:
    """The landmark network's presence probability; 0 for a person it lost (no landmark inside
    the image), whom no threshold keeps."""
    return 0.0 if person.presence is None else person.presence


def _landmark_region(person: FoundPerson) -> Region:
    """MediaPipe's tracking region from the landmarks' hip centre and size point (x 1.25)."""
    assert person.alignment is not None  # set by the pose decoder
    return Region.from_alignment(person.alignment[0], person.alignment[1], _POSE.scale)


#: BlazePose landmarks of each hand: wrist, pinky knuckle, index knuckle.
_BODY_HANDS = {"left": (15, 17, 19), "right": (16, 18, 20)}


def _hands_of_bodies(bodies: list[list[FoundPerson]]) -> list[tuple[int, Region, float, str]]:
    """(image index, hand region, score, side) for every visible wrist of the bodies found.

    The region is what the palm detector's would be: the wrist -> knuckles direction upright,
    centred about one palm length from the wrist towards the fingers, 3.2 palm lengths wide.
    """
    hands = []
    for index, people in enumerate(bodies):
        for person in people:
            assert person.landmarks is not None  # bodies from the landmark network
            for side, (wrist, pinky, finger) in _BODY_HANDS.items():
                points = person.landmarks[[wrist, pinky, finger]]
                visibility = float(points[:, 3].min())
                knuckles = points[1:, :2].mean(axis=0)
                palm = float(np.linalg.norm(knuckles - points[0, :2]))
                if visibility < 0.5 or palm < 2.0:
                    continue
                region = Region.from_alignment(points[0, :2], knuckles, scale=1.6, shift_y=-0.5)
                hands.append((index, region, person.score * visibility, side))
    return hands


def _landmark_box(person: FoundPerson, shape, body: bool) -> tuple[float, float, float, float] | None:
    """The landmarks' extent plus what they do not reach: the top of the head and the skin around
    the joints (bodies: the crown is about 1.3 eye-to-mouth distances above the eyes)."""
    assert person.landmarks is not None  # decoded by the landmark network
    points = person.landmarks[:, :2]
    if body:
        eyes = points[list(_EYES)].mean(axis=0)
        mouth = points[list(_MOUTH)].mean(axis=0)
        points = np.vstack([points, eyes + 1.3 * (eyes - mouth)])
    low, high = points.min(axis=0), points.max(axis=0)
    margin = (0.04 if body else 0.08) * float(max(high - low))
    return _clip_box(low - margin, high + margin, shape)


def _clip_box(low, high, shape) -> tuple[float, float, float, float] | None:
    """(x, y, w, h) of the part of the box inside the image; None when under a pixel is inside."""
    height, width = shape[:2]
    x0, y0 = max(0.0, float(low[0])), max(0.0, float(low[1]))
    x1, y1 = min(float(width), float(high[0])), min(float(height), float(high[1]))
    if x1 - x0 < 1.0 or y1 - y0 < 1.0:
        return None
    return (x0, y0, x1 - x0, y1 - y0)


def _cut_by_tile(box: np.ndarray, offset: tuple[int, int], letterbox: det.Letterbox, shape) -> bool:
    """A detection box (pixels) crossing an edge of its tile that lies inside the image: the tile
    saw part of a face (or palm), which the view that holds all of it finds better."""
    if letterbox.scale <= 0:
        return False
    side = letterbox.size / letterbox.scale
    x0, y0 = offset
    x1, y1 = x0 + side, y0 + side
    height, width = shape[:2]
    margin = 0.01 * side
    return bool(
        (x0 > 0 and box[0] < x0 + margin)
        or (y0 > 0 and box[1] < y0 + margin)
        or (x1 < width and box[2] > x1 - margin)
        or (y1 < height and box[3] > y1 - margin)
    )


#: The most a followed person's box may grow or shrink (width or height) from one frame to the
#: next. More is the landmark network taking someone else in the region (a person passing in
#: front of them): they count as lost, so the detector looks again.
MAX_FOLLOW_RESIZE = 1.5


def _plausible(found: FoundPerson, before: FoundPerson) -> bool:
    """Whether ``found`` can be ``before`` one frame later (its box's size; see MAX_FOLLOW_RESIZE)."""
    ratios = [new / old for new, old in zip(found.box[2:], before.box[2:]) if old > 0 and new > 0]
    return all(1 / MAX_FOLLOW_RESIZE <= ratio <= MAX_FOLLOW_RESIZE for ratio in ratios)


def same_person(a: FoundPerson, b: FoundPerson) -> bool:
    """Two findings of one body: landmarks nearly coincide (mean distance under 10 % of the box's
    longer side), or one box lies mostly inside the other (a partial view of the same body; not
    for hands, which often overlap each other)."""
    size = max(a.box[2], a.box[3])
    assert a.landmarks is not None and b.landmarks is not None  # merged after the landmark network
    if np.linalg.norm(a.landmarks[:, :2] - b.landmarks[:, :2], axis=1).mean() < 0.1 * size:
        return True
    if a.side is not None:
        return False
    width = min(a.box[0] + a.box[2], b.box[0] + b.box[2]) - max(a.box[0], b.box[0])
    height = min(a.box[1] + a.box[3], b.box[1] + b.box[3]) - max(a.box[1], b.box[1])
    inside = max(width, 0.0) * max(height, 0.0) / min(a.box[2] * a.box[3], b.box[2] * b.box[3])
    return inside > 0.7


def merge_duplicates(people: list[FoundPerson]) -> list[FoundPerson]:
    """One finding per person: the most confident of those :func:`same_person` pairs up."""
    kept: list[FoundPerson] = []
    for person in sorted(people, key=lambda p: -p.score * (p.presence or 1.0)):
        if person.landmarks is None or not any(same_person(person, other) for other in kept):
            kept.append(person)
    return kept


def _check_image(image) -> None:
    if not (isinstance(image, np.ndarray) and image.ndim == 3 and image.shape[2] == 3 and image.dtype == np.uint8):
        raise FastMetroError(f"expected an (H, W, 3) uint8 RGB image, got {getattr(image, 'shape', type(image))}")
    if min(image.shape[:2]) < 1:
        raise FastMetroError(f"empty image {image.shape}")


__all__ = [
    "PeopleFinder",
    "FoundPerson",
    "merge_duplicates",
    "same_person",
    "POSE_LANDMARK_NAMES",
    "HAND_LANDMARK_NAMES",
]
