"""Cluster splitting of Clustered FL (Sattler, Müller and Samek, "Clustered Federated Learning",
IEEE TNNLS 2020, Algorithm 1), jittable: all on dense ``[C]`` / ``[C, C]`` arrays.

A cluster ``c`` is split in two when the norm of its members' mean update is small (it sits near
a stationary point of the joint objective) while some member's own update is still large:
``||sum_i w_i dtheta_i|| / sum_i w_i < tol_1`` and ``max_i ||dtheta_i|| > tol_2``, and it has more
than two members. The bipartition is complete-linkage agglomerative clustering on the cosine
distances ``1 - cos(dtheta_i, dtheta_j)`` between the members' updates.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def update_gram(deltas) -> jax.Array:
    """``G[i, j] = <dtheta_i, dtheta_j>`` over every leaf of a pytree of ``[C, ...]`` updates."""
    flat = [d.reshape(d.shape[0], -1) for d in jax.tree.leaves(deltas)]
    return sum(jnp.einsum("ik,jk->ij", d, d) for d in flat)


def cosine_distances(gram: jax.Array, eps: float = 1e-12) -> jax.Array:
    """``1 - cos`` between updates, from their Gram matrix (zero updates: distance 1)."""
    norms = jnp.sqrt(jnp.maximum(jnp.diag(gram), 0.0))
    return 1.0 - gram / jnp.maximum(norms[:, None] * norms[None, :], eps)


def complete_linkage_bipartition(distances: jax.Array, members: jax.Array) -> jax.Array:
    """Split ``members`` (``[C]`` bool, at least 2 of them) into two groups by complete linkage.

    Merges the two closest groups (distance = the *largest* pairwise distance between them) until
    two remain. Returns ``[C]`` bool: the members of the group holding the lowest-index member
    are False, the others True; non-members are False.
    """
    n = members.shape[0]
    big = jnp.finfo(distances.dtype).max
    pair_ok = members[:, None] & members[None, :] & ~jnp.eye(n, dtype=bool)
    group_dist = jnp.where(pair_ok, distances, big)

    def merge(_, carry):
        labels, group_dist, alive, n_groups = carry

        def do_merge(carry):
            labels, group_dist, alive, n_groups = carry
            flat = jnp.argmin(group_dist)
            a, b = jnp.minimum(flat // n, flat % n), jnp.maximum(flat // n, flat % n)
            merged = jnp.maximum(group_dist[a], group_dist[b])  # complete linkage
            merged = jnp.where(alive & (jnp.arange(n) != a) & (jnp.arange(n) != b), merged, big)
            group_dist = group_dist.at[a, :].set(merged).at[:, a].set(merged)
            group_dist = group_dist.at[b, :].set(big).at[:, b].set(big)
            labels = jnp.where(labels == b, a, labels)
            return labels, group_dist, alive.at[b].set(False), n_groups - 1

        return jax.lax.cond(n_groups > 2, do_merge, lambda c: c, (labels, group_dist, alive, n_groups))

    start = (jnp.arange(n), group_dist, members, members.sum())
    labels, _, _, _ = jax.lax.fori_loop(0, n, merge, start)
    first = jnp.argmax(members)  # lowest-index member
    return members & (labels != labels[first])


def split_clusters(gram, weights, cluster_id, n_clusters, tol_1: float, tol_2: float):
    """One pass of Clustered FL's splitting over every current cluster.

    Args:
      gram: ``[C, C]`` Gram matrix of this round's client updates.
      weights: ``[C]`` aggregation weights ``n_t / n`` (0 for clients that did not train).
      cluster_id: ``[C]`` int cluster of each client, in ``[0, n_clusters)``.

    Returns ``(cluster_id, n_clusters)``; a split cluster keeps its id for one half and the other
    half gets the next free id.
    """
    n = cluster_id.shape[0]
    distances = cosine_distances(gram)
    sq_norms = jnp.maximum(jnp.diag(gram), 0.0)
    existing = n_clusters

    def visit(k, carry):
        cluster_id, n_clusters = carry
        members = (cluster_id == k) & (weights > 0)
        w = jnp.where(members, weights, 0.0)
        mean_norm = jnp.sqrt(jnp.maximum(w @ gram @ w, 0.0)) / jnp.maximum(w.sum(), 1e-30)
        max_norm = jnp.sqrt(jnp.max(jnp.where(members, sq_norms, 0.0)))
        split = (k < existing) & (members.sum() > 2) & (mean_norm < tol_1) & (max_norm > tol_2)

        def do_split(carry):
            cluster_id, n_clusters = carry
            moved = complete_linkage_bipartition(distances, members)
            return jnp.where(moved, n_clusters, cluster_id), n_clusters + 1

        return jax.lax.cond(split, do_split, lambda c: c, (cluster_id, n_clusters))

    return jax.lax.fori_loop(0, n, visit, (cluster_id, n_clusters))


def cluster_average(client_params, weights, cluster_id, n_slots: int | None = None, client_sum=lambda x: x):
    """Every client receives its cluster's ``weights``-weighted average model (leaves ``[C, ...]``).

    ``n_slots`` bounds the cluster ids (default: ``C``); ``client_sum`` adds the per-cluster sums
    of every block of clients when the client axis is sharded.
    """
    n = cluster_id.shape[0] if n_slots is None else n_slots
    mass = client_sum(jax.ops.segment_sum(weights, cluster_id, n))

    def leaf(a):
        w = weights.reshape((-1,) + (1,) * (a.ndim - 1)).astype(a.dtype)
        sums = client_sum(jax.ops.segment_sum(w * a, cluster_id, n))
        means = sums / jnp.maximum(mass, 1e-30).reshape((n,) + (1,) * (a.ndim - 1)).astype(a.dtype)
        return means[cluster_id]

    return jax.tree.map(leaf, client_params)
