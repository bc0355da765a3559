"""Bipartite multigraph edge colouring with Delta colours (Konig's theorem), by alternating paths.

Pure index math: edges are (left, right) pairs, the result gives each edge a colour in ``0..D-1`` such that
no two edges sharing an endpoint have the same colour, where ``D`` is the maximum degree.
"""

from __future__ import annotations

import numpy as np


def max_degree(left: np.ndarray, right: np.ndarray) -> int:
    """Largest number of edges at any vertex (0 for no edges)."""
    if left.size == 0:
        return 0
    return int(max(np.bincount(left).max(), np.bincount(right).max()))


def edge_colouring(left: np.ndarray, right: np.ndarray) -> np.ndarray:
    """Colour the edges ``(left[i], right[i])`` of a bipartite multigraph with max-degree colours."""
    n_edges = int(left.size)
    degree = max_degree(left, right)
    colour = np.full(n_edges, -1, dtype=np.int64)
    if n_edges == 0:
        return colour
    n_left, n_right = int(left.max()) + 1, int(right.max()) + 1
    at_left = [[-1] * degree for _ in range(n_left)]  # at_left[u][c]: edge of colour c at u, or -1
    at_right = [[-1] * degree for _ in range(n_right)]
    lefts, rights = left.tolist(), right.tolist()
    cols = [-1] * n_edges
    for e in range(n_edges):
        u, v = lefts[e], rights[e]
        a = at_left[u].index(-1)
        if at_right[v][a] != -1:
            b = at_right[v].index(-1)
            # Swap colours a and b along the path from v that alternates a, b, a, ...; it cannot reach u.
            path, node, on_right, want = [], v, True, a
            while True:
                edge = (at_right if on_right else at_left)[node][want]
                if edge == -1:
                    break
                path.append(edge)
                node = lefts[edge] if on_right else rights[edge]
                on_right, want = not on_right, (b if want == a else a)
            for edge in path:
                at_left[lefts[edge]][cols[edge]] = -1
                at_right[rights[edge]][cols[edge]] = -1
            for edge in path:
                cols[edge] = b if cols[edge] == a else a
                at_left[lefts[edge]][cols[edge]] = edge
                at_right[rights[edge]][cols[edge]] = edge
        cols[e] = a
        at_left[u][a] = e
        at_right[v][a] = e
    colour[:] = cols
    return colour
