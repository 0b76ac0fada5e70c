//! The Merkle tree a batch of bundle ids is signed through: one signature over the root of the
//! ids sealed together, and for each bundle the inclusion path that leads from its id to that
//! root, so one bundle still verifies alone. The tree is RFC 9162's (Certificate Transparency
//! v2), hashed with blake3: leaf = H(0x00 ‖ id), node = H(0x01 ‖ left ‖ right), the left subtree
//! of `n` leaves holding the largest power of two below `n`. Written here rather than taken from
//! a transparency-log crate: it is forty lines, and an auditor's code should stay small.

use crate::Digest;

/// Longest inclusion path a verifier follows: a tree of `u64::MAX` leaves is 64 levels deep, so
/// a longer path can only be an attack on the verifier's time.
pub const INCLUSION_PATH_LEN_MAX: usize = 64;

const LEAF: u8 = 0x00;
const NODE: u8 = 0x01;

/// The leaf hash of a bundle id: H(0x00 ‖ id), never equal to a node's hash.
pub fn leaf_hash(id: &Digest) -> Digest {
    let mut hasher = blake3::Hasher::new();
    hasher.update(&[LEAF]);
    hasher.update(id.as_bytes());
    Digest::from_bytes(*hasher.finalize().as_bytes())
}

fn node_hash(left: &Digest, right: &Digest) -> Digest {
    let mut hasher = blake3::Hasher::new();
    hasher.update(&[NODE]);
    hasher.update(left.as_bytes());
    hasher.update(right.as_bytes());
    Digest::from_bytes(*hasher.finalize().as_bytes())
}

/// The root of the tree over `ids` (in order), and each id's inclusion path: sibling hashes from
/// its leaf upward. `None` for no ids. Costs about `2n` hashes of 65 bytes for `n` ids.
pub fn root_and_paths(ids: &[Digest]) -> Option<(Digest, Vec<Vec<Digest>>)> {
    if ids.is_empty() {
        return None;
    }
    let leaves: Vec<Digest> = ids.iter().map(leaf_hash).collect();
    let mut paths = vec![Vec::new(); ids.len()];
    let root = subtree(&leaves, &mut paths);
    Some((root, paths))
}

/// The hash of `leaves`, appending to each leaf's path (bottom-up, so in path order) the sibling
/// it meets at each level.
fn subtree(leaves: &[Digest], paths: &mut [Vec<Digest>]) -> Digest {
    if let [leaf] = leaves {
        return *leaf;
    }
    // The largest power of two below the count: RFC 9162's split.
    let split = 1 << (usize::BITS - 1 - (leaves.len() - 1).leading_zeros());
    let (left_paths, right_paths) = paths.split_at_mut(split);
    let left = subtree(&leaves[..split], left_paths);
    let right = subtree(&leaves[split..], right_paths);
    left_paths.iter_mut().for_each(|p| p.push(right));
    right_paths.iter_mut().for_each(|p| p.push(left));
    node_hash(&left, &right)
}

/// The root that `path` leads to from the leaf of `id` at `leaf_index` in a tree of `tree_size`
/// leaves (RFC 9162 §2.1.3.2), or `None` when the path cannot belong to that position: the index
/// is past the end, or the path is longer or shorter than that position's path in a tree of that
/// size. So a path cannot be read at another index or size than the one it was made for.
pub fn root_from_path(id: &Digest, leaf_index: u64, tree_size: u64, path: &[Digest]) -> Option<Digest> {
    if leaf_index >= tree_size || path.len() > INCLUSION_PATH_LEN_MAX {
        return None;
    }
    let (mut index, mut last) = (leaf_index, tree_size - 1);
    let mut hash = leaf_hash(id);
    for sibling in path {
        if last == 0 {
            return None;
        }
        if index & 1 == 1 || index == last {
            hash = node_hash(sibling, &hash);
            // A right edge without a sibling at this level: climb until there is one.
            while index & 1 == 0 && index != 0 {
                index >>= 1;
                last >>= 1;
            }
        } else {
            hash = node_hash(&hash, sibling);
        }
        index >>= 1;
        last >>= 1;
    }
    (last == 0).then_some(hash)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(n: usize) -> Vec<Digest> {
        (0..n).map(|i| Digest::of(format!("bundle {i}").as_bytes())).collect()
    }

    /// RFC 9162's MTH, written the way the RFC states it, to check the iterative code against.
    fn reference_root(leaves: &[Digest]) -> Digest {
        if let [leaf] = leaves {
            return leaf_hash(leaf);
        }
        let mut k = 1;
        while k * 2 < leaves.len() {
            k *= 2;
        }
        node_hash(&reference_root(&leaves[..k]), &reference_root(&leaves[k..]))
    }

    #[test]
    fn every_path_of_every_size_leads_to_the_root_and_only_from_its_own_leaf() {
        for n in 1..=70 {
            let ids = ids(n);
            let (root, paths) = root_and_paths(&ids).expect("a root");
            assert_eq!(root, reference_root(&ids), "size {n}");
            let size = n as u64;
            for (i, (id, path)) in ids.iter().zip(&paths).enumerate() {
                let index = i as u64;
                assert!(path.len() <= 7, "size {n}: a path of {} nodes", path.len());
                assert_eq!(root_from_path(id, index, size, path), Some(root), "size {n} leaf {i}");
                // Another index or another leaf: never the same root.
                for other in 0..size + 2 {
                    if other != index {
                        assert_ne!(root_from_path(id, other, size, path), Some(root), "size {n}: {i} read as {other}");
                    }
                }
                // Another size may lead to the same root (leaf 0 of 3 and of 4 climb alike): that
                // is why a batch signs its size with its root.
                let stranger = Digest::of(b"not in the batch");
                assert_ne!(root_from_path(&stranger, index, size, path), Some(root));
            }
        }
    }

    #[test]
    fn a_batch_of_one_is_its_leaf_hash_with_an_empty_path() {
        let id = Digest::of(b"alone");
        let (root, paths) = root_and_paths(&[id]).expect("a root");
        assert_eq!(root, leaf_hash(&id));
        assert_eq!(paths, vec![Vec::<Digest>::new()]);
        assert_ne!(root, id, "the leaf is domain-separated from the id");
        assert_eq!(root_from_path(&id, 0, 1, &[]), Some(root));
        assert_eq!(root_from_path(&id, 0, 0, &[]), None);
        assert!(root_and_paths(&[]).is_none());
    }

    #[test]
    fn overlong_paths_are_refused_before_hashing() {
        let path = vec![Digest::of(b"x"); INCLUSION_PATH_LEN_MAX + 1];
        assert_eq!(root_from_path(&Digest::of(b"id"), 0, u64::MAX, &path), None);
    }
}
