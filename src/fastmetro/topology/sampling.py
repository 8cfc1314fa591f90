"""COMA-style mesh sampling: edge collapse onto original vertices, and barycentric upsampling.

Downsampling (Ranjan et al. 2018, as GraphCMR used for SMPL) keeps a subset of the original
vertices: each collapse merges an edge into one of its two endpoints, so every coarse vertex
sits exactly where it was in the full mesh and downsampling is plain vertex selection.
Upsampling writes every vertex of the finer level with the barycentric coordinates (w.r.t. the
closest face of the coarser mesh) of its orthogonal projection onto that face's plane, so rows
sum to exactly 1; a kept vertex is reproduced exactly (its row is one-hot).

Which collapse comes next is decided by a priority queue over directed edges (both endpoints
are candidates to survive). COMA ranks collapses by quadric error alone; we rank by

    cost = QEM_WEIGHT * quadric error + DISTANCE_WEIGHT * increase of sum of squared distances

where the second term tracks every removed vertex: each is assigned to its closest face of the
current mesh, and a collapse re-assigns the removed vertex and the vertices on the faces that
change to the new fan of faces. This is the reconstruction error the upsampling will make, so it
is the quantity we want small; on the SMPL template it beats GraphCMR's released matrices in
mean and max error at 1723 and 431 vertices (see tests/test_topology_sampling.py). Costs of
queued entries go stale as neighbours collapse: an entry is re-evaluated when popped and
re-queued if its cost grew (lazy greedy), and entries whose endpoints changed are skipped.

Collapses that would flip or degenerate a face, or break manifoldness (the link condition), are
refused, so every level stays a valid triangle mesh. Everything is deterministic for a given
mesh and sizes: ties break on vertex indices.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
from scipy.spatial import cKDTree

from fastmetro.errors import FastMetroError

# Planes through boundary edges (perpendicular to the face) get this weight relative to a face
# plane, so open borders (eye sockets, cut meshes) keep their outline instead of shrinking.
BOUNDARY_WEIGHT = 10.0
# A collapse is refused if any moved face turns by more than 60 degrees (cos < 0.5).
MIN_NORMAL_COSINE = 0.5
# Collapse cost = QEM_WEIGHT * quadric error + DISTANCE_WEIGHT * increase of the squared
# distances from removed vertices to the surface (both in squared mesh units).
QEM_WEIGHT = 0.1
DISTANCE_WEIGHT = 1.0


@dataclass(frozen=True)
class SamplingLevels:
    """Result of :func:`sample_mesh` for levels 0 (input) .. L (coarsest).

    Attributes:
        vertex_counts: (V_0, ..., V_L).
        faces: per level, (F_l, 3) int64 into that level's vertices.
        kept_indices: per step l, (V_{l+1},) int64 indices into level l (ascending).
        upsample: per step l, sparse (V_l, V_{l+1}) barycentric matrix (rows sum to 1).
    """

    vertex_counts: tuple[int, ...]
    faces: tuple[np.ndarray, ...]
    kept_indices: tuple[np.ndarray, ...]
    upsample: tuple[sp.csr_matrix, ...]


# ---------------------------------------------------------------------------- quadrics
def _face_planes(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """(F, 4) unit plane (n, d) per face with n.x + d = 0."""
    a, b, c = (vertices[faces[:, k]] for k in range(3))
    normal = np.cross(b - a, c - a)
    unit = normal / np.maximum(np.linalg.norm(normal, axis=1), 1e-300)[:, None]
    return np.concatenate([unit, -(unit * a).sum(1, keepdims=True)], axis=1)


def vertex_quadrics(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """(V, 4, 4) error quadrics: sum of squared distances to the planes of incident faces.

    Planes are unweighted, as in COMA (each face counts once, like the per-vertex error we
    measure; area weighting measured worse on SMPL); boundary edges add a perpendicular plane.
    """
    num_vertices = len(vertices)
    planes = _face_planes(vertices, faces)
    plane_quadrics = planes[:, :, None] * planes[:, None, :]
    quadrics = np.zeros((num_vertices, 4, 4))
    for k in range(3):
        np.add.at(quadrics, faces[:, k], plane_quadrics)

    # Boundary edges: those used by exactly one face.
    edges = np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]])
    edge_face = np.tile(np.arange(len(faces)), 3)
    keys = np.sort(edges, axis=1)
    _, inverse, counts = np.unique(keys, axis=0, return_inverse=True, return_counts=True)
    boundary = counts[inverse.ravel()] == 1
    if boundary.any():
        start, end = vertices[edges[boundary, 0]], vertices[edges[boundary, 1]]
        face_normal = planes[edge_face[boundary], :3]
        normal = np.cross(end - start, face_normal)
        normal /= np.maximum(np.linalg.norm(normal, axis=1), 1e-300)[:, None]
        border_planes = np.concatenate([normal, -(normal * start).sum(1, keepdims=True)], axis=1)
        border_quadrics = BOUNDARY_WEIGHT * border_planes[:, :, None] * border_planes[:, None, :]
        for k in range(2):
            np.add.at(quadrics, edges[boundary, k], border_quadrics)
    return quadrics


# ---------------------------------------------------------------------------- collapse
class _Collapser:
    """Mutable state of one edge-collapse run (vertex positions never change)."""

    def __init__(self, vertices: np.ndarray, faces: np.ndarray):
        self.vertices = vertices
        self.homogeneous = np.concatenate([vertices, np.ones((len(vertices), 1))], axis=1)
        self.faces = faces.copy()
        # The same corners as Python lists: the collapse loop reads single faces constantly.
        self.face_list: list[list[int]] = faces.tolist()
        self.face_alive = np.ones(len(faces), dtype=bool)
        self.quadrics = vertex_quadrics(vertices, faces)
        self.alive = np.zeros(len(vertices), dtype=bool)
        self.alive[np.unique(faces)] = True
        self.stamp = np.zeros(len(vertices), dtype=np.int64)
        self.vertex_faces: list[set[int]] = [set() for _ in range(len(vertices))]
        for face_index, face in enumerate(faces.tolist()):
            for vertex in face:
                self.vertex_faces[vertex].add(face_index)
        self.heap: list[tuple[float, int, int, int, int]] = []
        # Removed vertices ("points") are assigned to their closest current face.
        self.face_points: list[list[int]] = [[] for _ in range(len(faces))]
        self.point_distance2 = np.zeros(len(vertices))
        self.num_alive = int(self.alive.sum())
        self.strict = True

    def neighbours(self, vertex: int) -> set[int]:
        out: set[int] = set()
        faces = self.face_list
        for face_index in self.vertex_faces[vertex]:
            out.update(faces[face_index])
        out.discard(vertex)
        return out

    def push_edges(self, vertex: int, others) -> None:
        """Queue both directions of the edges (vertex, other)."""
        self.push_pairs([(vertex, other) for other in others])

    def push_pairs(self, edges: list[tuple[int, int]]) -> None:
        """Queue both collapse directions of each edge (u, v) with its current cost."""
        if not edges:
            return
        first = np.fromiter((u for u, _ in edges), dtype=np.int64, count=len(edges))
        second = np.fromiter((v for _, v in edges), dtype=np.int64, count=len(edges))
        combined = self.quadrics[first] + self.quadrics[second]  # (E, 4, 4)
        keep_first = np.einsum("ki,kij,kj->k", self.homogeneous[first], combined, self.homogeneous[first])
        keep_second = np.einsum("ki,kij,kj->k", self.homogeneous[second], combined, self.homogeneous[second])
        keep_first, keep_second = QEM_WEIGHT * keep_first, QEM_WEIGHT * keep_second
        if DISTANCE_WEIGHT:
            directed = [(v, u) for u, v in edges] + [(u, v) for u, v in edges]
            distance = self.assign_costs(directed)
            keep_first += DISTANCE_WEIGHT * distance[: len(edges)]
            keep_second += DISTANCE_WEIGHT * distance[len(edges) :]
        stamp = self.stamp
        for (u, v), cost_keep_u, cost_keep_v in zip(edges, keep_first.tolist(), keep_second.tolist()):
            # Entries: (cost, removed, kept, stamp_removed, stamp_kept).
            heapq.heappush(self.heap, (cost_keep_u, v, u, int(stamp[v]), int(stamp[u])))
            heapq.heappush(self.heap, (cost_keep_v, u, v, int(stamp[u]), int(stamp[v])))

    def new_fan(self, removed: int, kept: int) -> tuple[list[int], list[list[int]]]:
        """Face ids and corners around ``kept`` after collapsing ``removed`` into it."""
        faces = self.face_list
        ids, corners = [], []
        for f in self.vertex_faces[kept]:
            face = faces[f]
            if removed not in face:
                ids.append(f)
                corners.append(face)
        for f in self.vertex_faces[removed]:
            face = faces[f]
            if kept not in face:
                ids.append(f)
                corners.append([kept if x == removed else x for x in face])
        return ids, corners

    def affected_points(self, removed: int) -> list[int]:
        points = [removed]
        for f in self.vertex_faces[removed]:
            points += self.face_points[f]
        return points

    def nearest(self, groups) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """For groups [(points, fan corners)], per point (in order): group index, position of
        the closest fan triangle, squared distance to it.

        All (point, triangle) combinations of all groups are formed with a few vectorised
        operations (the per-call overhead, not the arithmetic, dominates here)."""
        point_counts = np.fromiter((len(points) for points, _ in groups), dtype=np.int64, count=len(groups))
        fan_counts = np.fromiter((len(fan) for _, fan in groups), dtype=np.int64, count=len(groups))
        if np.any((fan_counts == 0) & (point_counts > 0)):
            raise FastMetroError("internal error: a collapse would leave points without faces")
        points = np.fromiter(
            (p for group_points, _ in groups for p in group_points), dtype=np.int64, count=int(point_counts.sum())
        )
        fans = np.array([corners for _, fan in groups for corners in fan], dtype=np.int64).reshape(-1, 3)
        num_slots = len(points)
        slot_group = np.repeat(np.arange(len(groups)), point_counts)
        if num_slots == 0:
            return slot_group, np.zeros(0, dtype=np.int64), np.zeros(0)
        fan_start = np.concatenate([[0], np.cumsum(fan_counts)[:-1]])
        per_slot = fan_counts[slot_group]  # triangles to test for each point
        pair_slot = np.repeat(np.arange(num_slots), per_slot)
        pair_start = np.concatenate([[0], np.cumsum(per_slot)[:-1]])
        position = np.arange(len(pair_slot)) - pair_start[pair_slot]
        corners = fans[fan_start[slot_group[pair_slot]] + position]
        vertices = self.vertices
        d2 = squared_distance_to_triangles(
            vertices[points[pair_slot]], vertices[corners[:, 0]], vertices[corners[:, 1]], vertices[corners[:, 2]]
        )
        # Per slot: minimum over its contiguous run of pairs.
        best = np.minimum.reduceat(d2, pair_start)
        first = np.flatnonzero(d2 <= best[pair_slot])
        first = first[np.unique(pair_slot[first], return_index=True)[1]]
        return slot_group, position[first], best

    def assign_costs(self, pairs) -> np.ndarray:
        """Per (removed, kept): increase of the squared distances of the points whose faces
        change (plus ``removed`` itself) to the surface after the collapse."""
        groups, old = [], []
        for removed, kept in pairs:
            points = self.affected_points(removed)
            groups.append((points, self.new_fan(removed, kept)[1]))
            old.append(self.point_distance2[points].sum())
        slot_group, _, best = self.nearest(groups)
        out = np.zeros(len(pairs))
        np.add.at(out, slot_group, best)
        out -= np.asarray(old)
        return out

    def pair_cost(self, removed: int, kept: int) -> float:
        combined = self.quadrics[removed] + self.quadrics[kept]
        here = self.homogeneous[kept]
        return float(QEM_WEIGHT * here @ combined @ here + DISTANCE_WEIGHT * self.assign_costs([(removed, kept)])[0])

    def fill_heap(self) -> None:
        self.heap = []
        edges = [(u, v) for u in np.flatnonzero(self.alive).tolist() for v in self.neighbours(u) if v > u]
        for start in range(0, len(edges), 4096):
            self.push_pairs(edges[start : start + 4096])

    def can_collapse(self, removed: int, kept: int) -> bool:
        faces = self.face_list
        shared = [f for f in self.vertex_faces[removed] if kept in faces[f]]
        if not shared:
            return False
        # Link condition: the only common neighbours are the apexes of the shared faces.
        apexes = set()
        for face_index in shared:
            apexes.update(faces[face_index])
        apexes.discard(removed)
        apexes.discard(kept)
        if self.neighbours(removed) & self.neighbours(kept) != apexes:
            return False
        if len(self.neighbours(removed) | self.neighbours(kept)) <= 3:
            return False  # would collapse a tetrahedron into a flat pair of faces
        if not self.strict:
            return True
        moved = [f for f in self.vertex_faces[removed] if f not in shared]
        if not moved:
            return True
        corners = self.faces[moved]  # (m, 3)
        old = self.vertices[corners]
        new_corners = np.where(corners == removed, kept, corners)
        new = self.vertices[new_corners]
        old_normal = np.cross(old[:, 1] - old[:, 0], old[:, 2] - old[:, 0])
        new_normal = np.cross(new[:, 1] - new[:, 0], new[:, 2] - new[:, 0])
        old_norm = np.linalg.norm(old_normal, axis=1)
        new_norm = np.linalg.norm(new_normal, axis=1)
        if np.any(new_norm <= 1e-12 * np.maximum(old_norm.max(), 1e-300)):
            return False
        cosine = (old_normal * new_normal).sum(1) / np.maximum(old_norm * new_norm, 1e-300)
        return bool(np.all(cosine > MIN_NORMAL_COSINE))

    def collapse(self, removed: int, kept: int) -> None:
        faces = self.faces
        # Re-assign the removed vertex and the points of the faces that change.
        points = self.affected_points(removed)
        fan_ids, fan_corners = self.new_fan(removed, kept)
        _, position, best = self.nearest([(points, fan_corners)])
        for f in self.vertex_faces[removed]:
            self.face_points[f] = []
        for point, pos, d2 in zip(points, position.tolist(), best.tolist()):
            self.face_points[fan_ids[pos]].append(point)
            self.point_distance2[point] = d2
        for face_index in list(self.vertex_faces[removed]):
            face = self.face_list[face_index]
            if kept in face:
                self.face_alive[face_index] = False
                for vertex in face:
                    self.vertex_faces[vertex].discard(face_index)
            else:
                face[face.index(removed)] = kept
                faces[face_index] = face
                self.vertex_faces[kept].add(face_index)
        self.vertex_faces[removed] = set()
        self.alive[removed] = False
        self.num_alive -= 1
        self.quadrics[kept] += self.quadrics[removed]
        self.stamp[kept] += 1
        self.push_edges(kept, self.neighbours(kept))

    def run_until(self, target: int) -> None:
        while self.num_alive > target:
            if not self.heap:
                if not self.strict:
                    raise FastMetroError(
                        f"cannot collapse the mesh below {self.num_alive} vertices (target {target}): "
                        "every remaining edge collapse would break the mesh"
                    )
                self.strict = False  # last resort: allow face flips, keep manifoldness
                self.fill_heap()
                continue
            popped_cost, removed, kept, stamp_removed, stamp_kept = heapq.heappop(self.heap)
            if not (self.alive[removed] and self.alive[kept]):
                continue
            if self.stamp[removed] != stamp_removed or self.stamp[kept] != stamp_kept:
                continue
            if not self.can_collapse(removed, kept):
                continue
            if DISTANCE_WEIGHT:
                # Costs depend on points moved by nearby collapses: re-check before acting.
                cost_now = self.pair_cost(removed, kept)
                if cost_now > popped_cost + 1e-12 * abs(popped_cost) + 1e-18:
                    heapq.heappush(self.heap, (cost_now, removed, kept, stamp_removed, stamp_kept))
                    continue
            self.collapse(removed, kept)

    def snapshot(self) -> tuple[np.ndarray, np.ndarray]:
        """(alive original vertex ids ascending, faces over original ids)."""
        faces = self.faces[self.face_alive]
        return np.flatnonzero(self.alive), faces.copy()


# ---------------------------------------------------------------------------- projection
def _cross(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    # np.cross is slow on the many small arrays of the collapse loop.
    return np.stack(
        [
            x[:, 1] * y[:, 2] - x[:, 2] * y[:, 1],
            x[:, 2] * y[:, 0] - x[:, 0] * y[:, 2],
            x[:, 0] * y[:, 1] - x[:, 1] * y[:, 0],
        ],
        axis=1,
    )


def _squared_distance_to_segments(points, start, end):
    direction = end - start
    offset = points - start
    t = (offset * direction).sum(1) / np.maximum((direction * direction).sum(1), 1e-300)
    np.clip(t, 0.0, 1.0, out=t)
    residual = offset - t[:, None] * direction
    return (residual * residual).sum(1)


def squared_distance_to_triangles(points: np.ndarray, a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    """(N,) squared distance from each point to its triangle (all inputs (N, 3)).

    Same value as the closest point of :func:`closest_point_barycentric`, computed faster:
    the plane distance when the projection falls inside, else the nearest edge.
    """
    ab, ac, ap = b - a, c - a, points - a
    normal = _cross(ab, ac)
    normal_sq = (normal * normal).sum(1)
    inv = 1.0 / np.maximum(normal_sq, 1e-300)
    # Barycentric coordinates of the projection onto the plane.
    v = (_cross(ap, ac) * normal).sum(1) * inv
    w = (_cross(ab, ap) * normal).sum(1) * inv
    outside = (v < 0) | (w < 0) | (v + w > 1) | (normal_sq <= 0)
    out = (ap * normal).sum(1) ** 2 * inv
    if outside.any():
        p, a_o, b_o, c_o = points[outside], a[outside], b[outside], c[outside]
        out[outside] = np.minimum(
            np.minimum(_squared_distance_to_segments(p, a_o, b_o), _squared_distance_to_segments(p, b_o, c_o)),
            _squared_distance_to_segments(p, c_o, a_o),
        )
    return out


def closest_point_barycentric(points: np.ndarray, a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    """Barycentric weights (N, 3) of the closest point to ``points`` on triangles (a, b, c).

    All inputs (N, 3). Weights are non-negative and sum to 1 (the closest point lies on the
    triangle, its border included). Follows the Voronoi-region case analysis of Ericson,
    Real-Time Collision Detection, 5.1.5.
    """
    ab, ac = b - a, c - a
    ap, bp, cp = points - a, points - b, points - c
    d1, d2 = (ab * ap).sum(1), (ac * ap).sum(1)
    d3, d4 = (ab * bp).sum(1), (ac * bp).sum(1)
    d5, d6 = (ab * cp).sum(1), (ac * cp).sum(1)
    va, vb, vc = d3 * d6 - d5 * d4, d5 * d2 - d1 * d6, d1 * d4 - d3 * d2
    with np.errstate(divide="ignore", invalid="ignore"):
        total = va + vb + vc
        inside_v = np.where(total != 0, vb / total, 1 / 3)
        inside_w = np.where(total != 0, vc / total, 1 / 3)
        ab_t = np.clip(np.where(d1 - d3 != 0, d1 / (d1 - d3), 0.0), 0, 1)
        ac_t = np.clip(np.where(d2 - d6 != 0, d2 / (d2 - d6), 0.0), 0, 1)
        bc_den = (d4 - d3) + (d5 - d6)
        bc_t = np.clip(np.where(bc_den != 0, (d4 - d3) / bc_den, 0.0), 0, 1)
    weights = np.stack([1 - inside_v - inside_w, inside_v, inside_w], axis=1)
    # Later assignments win, so apply the region tests in reverse order of priority.
    cases = [
        ((va <= 0) & (d4 - d3 >= 0) & (d5 - d6 >= 0), np.stack([0 * bc_t, 1 - bc_t, bc_t], 1)),
        ((vb <= 0) & (d2 >= 0) & (d6 <= 0), np.stack([1 - ac_t, 0 * ac_t, ac_t], 1)),
        ((d6 >= 0) & (d5 <= d6), np.array([0.0, 0.0, 1.0])),
        ((vc <= 0) & (d1 >= 0) & (d3 <= 0), np.stack([1 - ab_t, ab_t, 0 * ab_t], 1)),
        ((d3 >= 0) & (d4 <= d3), np.array([0.0, 1.0, 0.0])),
        ((d1 <= 0) & (d2 <= 0), np.array([1.0, 0.0, 0.0])),
    ]
    for mask, value in cases:
        weights = np.where(mask[:, None], value, weights)
    return np.clip(weights, 0.0, 1.0) / np.clip(weights, 0.0, 1.0).sum(1, keepdims=True)


def plane_barycentric(points: np.ndarray, a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    """(N, 3) barycentric coordinates (summing to 1) of the points' projections onto the planes
    of triangles (a, b, c); all inputs (N, 3)."""
    ab, ac, ap = b - a, c - a, points - a
    d00, d01, d11 = (ab * ab).sum(1), (ab * ac).sum(1), (ac * ac).sum(1)
    d20, d21 = (ap * ab).sum(1), (ap * ac).sum(1)
    den = d00 * d11 - d01 * d01
    den = np.where(den > 0, den, np.inf)  # degenerate face: fall back to its first corner
    v = (d11 * d20 - d01 * d21) / den
    w = (d00 * d21 - d01 * d20) / den
    return np.stack([1 - v - w, v, w], 1)


def closest_faces(points: np.ndarray, vertices: np.ndarray, faces: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Exact closest face and barycentric weights for each point.

    Returns (face index (N,), weights (N, 3)). Candidates come from a KD-tree over face
    centroids: after a first guess at distance d, every face whose centroid is within
    d + (largest centroid-to-corner radius) is tested, which cannot miss the closest face.
    """
    corners = vertices[faces]  # (F, 3, 3)
    centroids = corners.mean(1)
    radius = np.linalg.norm(corners - centroids[:, None], axis=2).max()
    tree = cKDTree(centroids)
    _, guess = tree.query(points, k=1)
    guess_weights = closest_point_barycentric(points, *(corners[guess, k] for k in range(3)))
    guess_distance = np.linalg.norm(np.einsum("nk,nkd->nd", guess_weights, corners[guess]) - points, axis=1)
    candidates = tree.query_ball_point(points, guess_distance + radius + 1e-12)
    lengths = np.fromiter((len(c) for c in candidates), dtype=np.int64, count=len(points))
    point_index = np.repeat(np.arange(len(points)), lengths)
    face_index = np.fromiter((f for c in candidates for f in c), dtype=np.int64, count=int(lengths.sum()))
    # Visit candidates in face order so ties resolve to the lowest face index (determinism).
    order = np.lexsort((face_index, point_index))
    point_index, face_index = point_index[order], face_index[order]
    weights = np.empty((len(point_index), 3))
    distance = np.empty(len(point_index))
    for start in range(0, len(point_index), 200_000):
        chunk = slice(start, start + 200_000)
        tri = corners[face_index[chunk]]
        w = closest_point_barycentric(points[point_index[chunk]], tri[:, 0], tri[:, 1], tri[:, 2])
        weights[chunk] = w
        distance[chunk] = np.linalg.norm(np.einsum("nk,nkd->nd", w, tri) - points[point_index[chunk]], axis=1)
    # Per point, the first candidate with the minimum distance.
    best = np.full(len(points), np.inf)
    np.minimum.at(best, point_index, distance)
    is_best = distance <= best[point_index]
    first = np.flatnonzero(is_best)
    first = first[np.unique(point_index[first], return_index=True)[1]]
    return face_index[first], weights[first]


def upsampling_matrix(
    fine_vertices: np.ndarray, coarse_vertices: np.ndarray, coarse_faces: np.ndarray, kept: np.ndarray
) -> sp.csr_matrix:
    """Sparse (V_fine, V_coarse) barycentric upsampling; kept vertices map one-hot to themselves."""
    num_fine, num_coarse = len(fine_vertices), len(coarse_vertices)
    face, weights = closest_faces(fine_vertices, coarse_vertices, coarse_faces)
    # Projection onto the closest face's plane: never further than the clipped closest point,
    # rows still sum to 1 (weights may leave [0, 1] a little beyond the face's edges).
    corners = coarse_vertices[coarse_faces[face]]
    weights = plane_barycentric(fine_vertices, corners[:, 0], corners[:, 1], corners[:, 2])
    rows = np.repeat(np.arange(num_fine), 3)
    cols = coarse_faces[face].ravel()
    data = weights.ravel()
    is_kept = np.zeros(num_fine, dtype=bool)
    is_kept[kept] = True
    keep_entry = ~is_kept[rows] & (data != 0)
    rows = np.concatenate([rows[keep_entry], kept])
    cols = np.concatenate([cols[keep_entry], np.arange(num_coarse)])
    data = np.concatenate([data[keep_entry], np.ones(num_coarse)])
    matrix = sp.coo_matrix((data, (rows, cols)), shape=(num_fine, num_coarse)).tocsr()
    matrix.sum_duplicates()
    return matrix


# ---------------------------------------------------------------------------- driver
def _compact_faces(faces: np.ndarray, alive: np.ndarray, num_vertices: int) -> np.ndarray:
    new_index = np.full(num_vertices, -1, dtype=np.int64)
    new_index[alive] = np.arange(len(alive))
    out = new_index[faces]
    out = out[(out[:, 0] != out[:, 1]) & (out[:, 1] != out[:, 2]) & (out[:, 0] != out[:, 2])]
    return np.ascontiguousarray(out)


def check_mesh(vertices: np.ndarray, faces: np.ndarray, source: str = "mesh") -> tuple[np.ndarray, np.ndarray]:
    """Validate and convert a triangle mesh to float64 (V, 3) / int64 (F, 3)."""
    vertices = np.asarray(vertices, dtype=np.float64)
    faces = np.asarray(faces)
    if vertices.ndim != 2 or vertices.shape[1] != 3 or len(vertices) == 0:
        raise FastMetroError(f"{source}: vertices must have shape (V, 3), got {vertices.shape}")
    if not np.all(np.isfinite(vertices)):
        raise FastMetroError(f"{source}: vertices contain NaN or infinite values")
    if faces.ndim != 2 or faces.shape[1] != 3 or len(faces) == 0 or not np.issubdtype(faces.dtype, np.integer):
        raise FastMetroError(f"{source}: faces must be integer triangles of shape (F, 3), got {faces.shape}")
    faces = faces.astype(np.int64)
    if faces.min() < 0 or faces.max() >= len(vertices):
        raise FastMetroError(f"{source}: faces index vertices outside 0..{len(vertices) - 1}")
    return vertices, faces


def sample_mesh(vertices: np.ndarray, faces: np.ndarray, sizes: tuple[int, ...]) -> SamplingLevels:
    """Build the level pyramid: full mesh, then one level per entry of ``sizes`` (decreasing).

    Args:
        vertices: (V_0, 3) positions (any unit; metres for body models).
        faces: (F, 3) triangles. Vertices used by no face are removed at the first step.
        sizes: target vertex counts, strictly decreasing, each < V_0, e.g. (1723, 431).
    """
    vertices, faces = check_mesh(vertices, faces)
    sizes = tuple(int(s) for s in sizes)
    if not sizes or any(s < 4 for s in sizes) or any(a <= b for a, b in zip((len(vertices),) + sizes, sizes)):
        raise FastMetroError(f"sizes must be strictly decreasing, below {len(vertices)} and at least 4, got {sizes}")
    collapser = _Collapser(vertices, faces)
    collapser.fill_heap()
    level_vertices = [np.arange(len(vertices))]  # original ids per level
    level_faces = [faces]
    for size in sizes:
        collapser.run_until(size)
        alive, alive_faces = collapser.snapshot()
        level_vertices.append(alive)
        level_faces.append(_compact_faces(alive_faces, alive, len(vertices)))

    kept_indices, upsample = [], []
    for level in range(len(sizes)):
        finer, coarser = level_vertices[level], level_vertices[level + 1]
        kept = np.searchsorted(finer, coarser).astype(np.int64)  # both ascending
        kept_indices.append(kept)
        upsample.append(upsampling_matrix(vertices[finer], vertices[coarser], level_faces[level + 1], kept))
    return SamplingLevels(
        vertex_counts=tuple(len(v) for v in level_vertices),
        faces=tuple(level_faces),
        kept_indices=tuple(kept_indices),
        upsample=tuple(upsample),
    )


def reconstruction_error(
    vertices: np.ndarray, kept_indices, upsample, levels: int | None = None
) -> tuple[float, float]:
    """(mean, max) distance between ``vertices`` and their down-then-up-sampled copy.

    Downsamples through ``levels`` steps (default: all) by vertex selection, then upsamples
    back with the barycentric matrices. Same unit as ``vertices``.
    """
    steps = len(kept_indices) if levels is None else levels
    coarse = np.asarray(vertices, dtype=np.float64)
    for step in range(steps):
        coarse = coarse[kept_indices[step]]
    for step in range(steps - 1, -1, -1):
        coarse = upsample[step] @ coarse
    distance = np.linalg.norm(coarse - vertices, axis=1)
    return float(distance.mean()), float(distance.max())
