//! RFC 9162 Merkle trees: hashing, inclusion and consistency proofs and their verification.
//! Nothing here touches server state: proofs read complete-subtree hashes through
//! [`HashReader`], so a store that keeps every complete subtree hash (the tlog "stored hashes")
//! answers a root or a proof in O(log n) reads.
//!
//! Notation follows RFC 9162 §2.1: `D[n]` is the list of `n` leaves, `MTH(D[n])` its root,
//! `D[a:b]` the leaves `a..b`, `k` the largest power of two smaller than `n`.

use sha2::{Digest, Sha256};

/// A SHA-256 hash.
pub type Hash = [u8; 32];

/// Why a proof could not be made or did not verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MerkleError {
    /// An index or size is out of range.
    #[error("{0}")]
    OutOfRange(String),
    /// The proof has the wrong number of hashes.
    #[error("proof has {got} hashes, expected {want}")]
    WrongProofSize {
        /// Hashes in the proof.
        got: usize,
        /// Hashes expected.
        want: usize,
    },
    /// The proof leads to another root.
    #[error("computed root {got} does not match expected root {expected}")]
    RootMismatch {
        /// The root the proof should lead to, hex.
        expected: String,
        /// The root it leads to, hex.
        got: String,
    },
    /// A stored hash could not be read.
    #[error("stored hash at level {level}, index {index} unavailable: {reason}")]
    Unavailable {
        /// Level of the subtree (0 = leaf).
        level: u8,
        /// Index of the subtree at that level.
        index: u64,
        /// Why.
        reason: String,
    },
}

/// Reads the hash of a complete subtree: level `level` (leaves are level 0), covering leaves
/// `index << level .. (index + 1) << level`.
pub trait HashReader {
    /// The stored hash.
    ///
    /// # Errors
    /// `MerkleError::Unavailable` if it is not stored.
    fn hash(&self, level: u8, index: u64) -> Result<Hash, MerkleError>;
}

/// `HASH(0x00 || d)`: the hash of a leaf (RFC 9162 §2.1.1).
pub fn hash_leaf(leaf: &[u8]) -> Hash {
    let mut hasher = Sha256::new();
    hasher.update([0x00]);
    hasher.update(leaf);
    hasher.finalize().into()
}

/// `HASH(0x01 || left || right)`: the hash of an interior node (RFC 9162 §2.1.1).
pub fn hash_children(left: &Hash, right: &Hash) -> Hash {
    let mut hasher = Sha256::new();
    hasher.update([0x01]);
    hasher.update(left);
    hasher.update(right);
    hasher.finalize().into()
}

/// `MTH({})`: the root of the empty tree, the hash of the empty string.
pub fn empty_root() -> Hash {
    Sha256::digest([]).into()
}

/// The largest power of two smaller than `n` (`k` in RFC 9162 §2.1.1); `n` must be > 1.
fn split(n: u64) -> u64 {
    1 << (63 - (n - 1).leading_zeros())
}

/// The hashes that a new leaf completes, as `(level, index, hash)`, bottom up: the leaf itself,
/// then each subtree it closes. `frontier` holds the roots of the complete subtrees of the
/// binary decomposition of the tree before the append (largest first) and is updated.
pub fn append(
    frontier: &mut Vec<(u8, Hash)>,
    size_before: u64,
    leaf_hash: Hash,
) -> Vec<(u8, u64, Hash)> {
    let mut completed = vec![(0, size_before, leaf_hash)];
    let mut hash = leaf_hash;
    let mut level = 0u8;
    let mut index = size_before;
    while index & 1 == 1 {
        let Some((_, left)) = frontier.pop() else {
            break;
        };
        hash = hash_children(&left, &hash);
        level += 1;
        index >>= 1;
        completed.push((level, index, hash));
    }
    frontier.push((level, hash));
    completed
}

/// The frontier of a tree of `size` leaves (see [`append`]), read from stored hashes.
///
/// # Errors
/// A stored hash is unavailable.
pub fn frontier(reader: &impl HashReader, size: u64) -> Result<Vec<(u8, Hash)>, MerkleError> {
    let mut frontier = Vec::new();
    let mut start = 0u64;
    for level in (0..64u8).rev() {
        if size & (1 << level) != 0 {
            frontier.push((level, reader.hash(level, start >> level)?));
            start += 1 << level;
        }
    }
    Ok(frontier)
}

/// `MTH(D[start:end])` where `start` is a multiple of a power of two at least `end - start`,
/// as in every range the RFC's recursions visit: the fold, right to left, of the complete
/// subtrees of the binary decomposition of the range.
fn range_hash(reader: &impl HashReader, start: u64, end: u64) -> Result<Hash, MerkleError> {
    let mut hashes = Vec::new();
    let mut at = start;
    for level in (0..64u8).rev() {
        let width = 1u64 << level;
        if end - at >= width && at % width == 0 {
            hashes.push(reader.hash(level, at >> level)?);
            at += width;
        }
    }
    let mut root = hashes
        .pop()
        .ok_or_else(|| MerkleError::OutOfRange("empty range".into()))?;
    while let Some(left) = hashes.pop() {
        root = hash_children(&left, &root);
    }
    Ok(root)
}

/// `MTH(D[n])`, the root of the first `size` leaves.
///
/// # Errors
/// A stored hash is unavailable.
pub fn root(reader: &impl HashReader, size: u64) -> Result<Hash, MerkleError> {
    if size == 0 {
        return Ok(empty_root());
    }
    range_hash(reader, 0, size)
}

/// `PATH(m, D[n])`: the inclusion proof of leaf `m` in the tree of size `n` (RFC 9162
/// §2.1.3.1), leaf to root.
///
/// # Errors
/// `m >= n`, or a stored hash is unavailable.
pub fn inclusion_proof(reader: &impl HashReader, m: u64, n: u64) -> Result<Vec<Hash>, MerkleError> {
    if m >= n {
        return Err(MerkleError::OutOfRange(format!(
            "leaf index {m} is not below tree size {n}"
        )));
    }
    // Walk down from the root, then reverse: the RFC lists the path leaf first.
    let mut path = Vec::new();
    let (mut start, mut end, mut m) = (0u64, n, m);
    while end - start > 1 {
        let k = split(end - start);
        if m < k {
            path.push(range_hash(reader, start + k, end)?);
            end = start + k;
        } else {
            path.push(range_hash(reader, start, start + k)?);
            start += k;
            m -= k;
        }
    }
    path.reverse();
    Ok(path)
}

/// `PROOF(m, D[n])`: the consistency proof between the trees of sizes `m` and `n` (RFC 9162
/// §2.1.4.1). Empty when `m == n` or `m == 0`.
///
/// # Errors
/// `m > n`, or a stored hash is unavailable.
pub fn consistency_proof(
    reader: &impl HashReader,
    m: u64,
    n: u64,
) -> Result<Vec<Hash>, MerkleError> {
    if m > n {
        return Err(MerkleError::OutOfRange(format!(
            "old size {m} is larger than new size {n}"
        )));
    }
    if m == 0 || m == n {
        return Ok(Vec::new());
    }
    // SUBPROOF(m, D[start:end], b), unrolled; hashes are collected root side first.
    let mut proof = Vec::new();
    let (mut start, mut end, mut m, mut b) = (0u64, n, m, true);
    loop {
        let width = end - start;
        if m == width {
            if !b {
                proof.push(range_hash(reader, start, end)?);
            }
            break;
        }
        let k = split(width);
        if m <= k {
            proof.push(range_hash(reader, start + k, end)?);
            end = start + k;
        } else {
            proof.push(range_hash(reader, start, start + k)?);
            start += k;
            m -= k;
            b = false;
        }
    }
    proof.reverse();
    Ok(proof)
}

fn check_root(expected: &Hash, got: &Hash) -> Result<(), MerkleError> {
    if expected == got {
        Ok(())
    } else {
        Err(MerkleError::RootMismatch {
            expected: hex::encode(expected),
            got: hex::encode(got),
        })
    }
}

/// Verifies an inclusion proof (RFC 9162 §2.1.3.2).
///
/// # Errors
/// `OutOfRange`, `WrongProofSize` or `RootMismatch`.
pub fn verify_inclusion(
    leaf_hash: &Hash,
    leaf_index: u64,
    tree_size: u64,
    proof: &[Hash],
    root: &Hash,
) -> Result<(), MerkleError> {
    if leaf_index >= tree_size {
        return Err(MerkleError::OutOfRange(format!(
            "leaf index {leaf_index} is not below tree size {tree_size}"
        )));
    }
    // fn, sn and r in RFC 9162 §2.1.3.2.
    let (mut fn_, mut sn) = (leaf_index, tree_size - 1);
    let mut r = *leaf_hash;
    for p in proof {
        if sn == 0 {
            return Err(MerkleError::WrongProofSize {
                got: proof.len(),
                want: inclusion_proof_len(leaf_index, tree_size),
            });
        }
        if fn_ & 1 == 1 || fn_ == sn {
            r = hash_children(p, &r);
            if fn_ & 1 == 0 {
                while fn_ & 1 == 0 && fn_ != 0 {
                    fn_ >>= 1;
                    sn >>= 1;
                }
            }
        } else {
            r = hash_children(&r, p);
        }
        fn_ >>= 1;
        sn >>= 1;
    }
    if sn != 0 {
        return Err(MerkleError::WrongProofSize {
            got: proof.len(),
            want: inclusion_proof_len(leaf_index, tree_size),
        });
    }
    check_root(root, &r)
}

fn inclusion_proof_len(mut m: u64, n: u64) -> usize {
    let (mut start, mut end, mut len) = (0u64, n, 0);
    while end - start > 1 {
        let k = split(end - start);
        if m < k {
            end = start + k;
        } else {
            start += k;
            m -= k;
        }
        len += 1;
    }
    len
}

/// Verifies a consistency proof from `old_root` of size `m` to `new_root` of size `n`
/// (RFC 9162 §2.1.4.2).
///
/// # Errors
/// `OutOfRange`, `WrongProofSize` or `RootMismatch`.
pub fn verify_consistency(
    m: u64,
    n: u64,
    proof: &[Hash],
    old_root: &Hash,
    new_root: &Hash,
) -> Result<(), MerkleError> {
    if m > n {
        return Err(MerkleError::OutOfRange(format!(
            "old size {m} is larger than new size {n}"
        )));
    }
    if m == n {
        if !proof.is_empty() {
            return Err(MerkleError::WrongProofSize {
                got: proof.len(),
                want: 0,
            });
        }
        return check_root(new_root, old_root);
    }
    if m == 0 {
        if !proof.is_empty() {
            return Err(MerkleError::WrongProofSize {
                got: proof.len(),
                want: 0,
            });
        }
        return Ok(());
    }
    if proof.is_empty() {
        return Err(MerkleError::WrongProofSize { got: 0, want: 1 });
    }
    // Steps 2-7 of RFC 9162 §2.1.4.2.
    let mut proof = proof.to_vec();
    if m.is_power_of_two() {
        proof.insert(0, *old_root);
    }
    let (mut fn_, mut sn) = (m - 1, n - 1);
    while fn_ & 1 == 1 {
        fn_ >>= 1;
        sn >>= 1;
    }
    let (mut fr, mut sr) = (proof[0], proof[0]);
    for c in &proof[1..] {
        if sn == 0 {
            return Err(MerkleError::WrongProofSize {
                got: proof.len(),
                want: 0,
            });
        }
        if fn_ & 1 == 1 || fn_ == sn {
            fr = hash_children(c, &fr);
            sr = hash_children(c, &sr);
            if fn_ & 1 == 0 {
                while fn_ & 1 == 0 && fn_ != 0 {
                    fn_ >>= 1;
                    sn >>= 1;
                }
            }
        } else {
            sr = hash_children(&sr, c);
        }
        fn_ >>= 1;
        sn >>= 1;
    }
    if sn != 0 {
        return Err(MerkleError::WrongProofSize {
            got: proof.len(),
            want: 0,
        });
    }
    check_root(old_root, &fr)?;
    check_root(new_root, &sr)
}

/// Stored hashes of a list of leaves held in memory (for clients that rebuild a tree from
/// every leaf, and for tests).
#[derive(Debug, Default, Clone)]
pub struct MemoryTree {
    levels: Vec<Vec<Hash>>,
    frontier: Vec<(u8, Hash)>,
}

impl MemoryTree {
    /// Appends a leaf hash.
    pub fn push(&mut self, leaf_hash: Hash) {
        let size = self.levels.first().map_or(0, Vec::len) as u64;
        for (level, index, hash) in append(&mut self.frontier, size, leaf_hash) {
            let level = usize::from(level);
            if self.levels.len() <= level {
                self.levels.push(Vec::new());
            }
            debug_assert_eq!(self.levels[level].len() as u64, index);
            self.levels[level].push(hash);
        }
    }

    /// Number of leaves.
    pub fn size(&self) -> u64 {
        self.levels.first().map_or(0, Vec::len) as u64
    }
}

impl HashReader for MemoryTree {
    fn hash(&self, level: u8, index: u64) -> Result<Hash, MerkleError> {
        self.levels
            .get(usize::from(level))
            .and_then(|hashes| hashes.get(usize::try_from(index).ok()?))
            .copied()
            .ok_or_else(|| MerkleError::Unavailable {
                level,
                index,
                reason: "not in the tree".into(),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The leaves of the RFC 6962 / certificate-transparency test tree.
    const CT_LEAVES: [&[u8]; 8] = [
        b"",
        b"\x00",
        b"\x10",
        b"\x20\x21",
        b"\x30\x31",
        b"\x40\x41\x42\x43",
        b"\x50\x51\x52\x53\x54\x55\x56\x57",
        b"\x60\x61\x62\x63\x64\x65\x66\x67\x68\x69\x6a\x6b\x6c\x6d\x6e\x6f",
    ];

    /// Roots of the first 1..=8 leaves, published with the certificate-transparency test data.
    const CT_ROOTS: [&str; 8] = [
        "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
        "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
        "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
        "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
        "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
        "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
        "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
    ];

    fn tree(leaves: &[Vec<u8>]) -> MemoryTree {
        let mut tree = MemoryTree::default();
        for leaf in leaves {
            tree.push(hash_leaf(leaf));
        }
        tree
    }

    #[test]
    fn roots_match_the_published_vectors() {
        let leaves: Vec<Vec<u8>> = CT_LEAVES.iter().map(|l| l.to_vec()).collect();
        let tree = tree(&leaves);
        for (size, want) in CT_ROOTS.iter().enumerate() {
            let got = root(&tree, size as u64 + 1).unwrap();
            assert_eq!(hex::encode(got), *want, "size {}", size + 1);
        }
        assert_eq!(
            hex::encode(root(&tree, 0).unwrap()),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    /// An independent implementation (Go's tlog, ported in `tlog_tiles`) as the oracle.
    struct Oracle(Vec<tlog_tiles::tlog::Hash>);

    impl tlog_tiles::tlog::HashReader for Oracle {
        fn read_hashes(
            &self,
            indexes: &[u64],
        ) -> Result<Vec<tlog_tiles::tlog::Hash>, tlog_tiles::tlog::Error> {
            Ok(indexes.iter().map(|&i| self.0[i as usize]).collect())
        }
    }

    fn oracle(leaves: &[Vec<u8>]) -> Oracle {
        let mut oracle = Oracle(Vec::new());
        for (n, leaf) in leaves.iter().enumerate() {
            let hashes = tlog_tiles::tlog::stored_hashes(n as u64, leaf, &oracle).unwrap();
            oracle.0.extend(hashes);
        }
        oracle
    }

    fn as_oracle(hashes: &[Hash]) -> Vec<tlog_tiles::tlog::Hash> {
        hashes.iter().map(|h| tlog_tiles::tlog::Hash(*h)).collect()
    }

    #[test]
    fn roots_and_proofs_agree_with_an_independent_implementation_up_to_300_leaves() {
        const N: u64 = 300;
        let leaves: Vec<Vec<u8>> = (0..N).map(|i| format!("leaf {i}").into_bytes()).collect();
        let tree = tree(&leaves);
        let oracle = oracle(&leaves);
        let roots: Vec<Hash> = (0..=N).map(|n| root(&tree, n).unwrap()).collect();
        for n in 1..=N {
            let want = tlog_tiles::tlog::tree_hash(n, &oracle).unwrap();
            assert_eq!(roots[n as usize], want.0, "root of {n}");
            for m in 0..n {
                let proof = inclusion_proof(&tree, m, n).unwrap();
                let want = tlog_tiles::tlog::prove_record(n, m, &oracle).unwrap();
                assert_eq!(as_oracle(&proof), want, "inclusion of {m} in {n}");
                let leaf_hash = hash_leaf(&leaves[m as usize]);
                verify_inclusion(&leaf_hash, m, n, &proof, &roots[n as usize]).unwrap();
                tlog_tiles::tlog::check_record(
                    &want,
                    n,
                    tlog_tiles::tlog::Hash(roots[n as usize]),
                    m,
                    tlog_tiles::tlog::Hash(leaf_hash),
                )
                .unwrap();
            }
            for m in 1..=n {
                let proof = consistency_proof(&tree, m, n).unwrap();
                let want = tlog_tiles::tlog::prove_tree(n, m, &oracle).unwrap();
                assert_eq!(as_oracle(&proof), want, "consistency {m} -> {n}");
                verify_consistency(m, n, &proof, &roots[m as usize], &roots[n as usize]).unwrap();
            }
        }
    }

    #[test]
    fn edge_cases() {
        let leaves: Vec<Vec<u8>> = (0..16u8).map(|i| vec![i]).collect();
        let tree = tree(&leaves);
        let root16 = root(&tree, 16).unwrap();
        // Size 1: the root is the leaf hash, the proof is empty.
        assert_eq!(root(&tree, 1).unwrap(), hash_leaf(&leaves[0]));
        assert!(inclusion_proof(&tree, 0, 1).unwrap().is_empty());
        verify_inclusion(&hash_leaf(&leaves[0]), 0, 1, &[], &hash_leaf(&leaves[0])).unwrap();
        // The last leaf of a power of two.
        let proof = inclusion_proof(&tree, 15, 16).unwrap();
        assert_eq!(proof.len(), 4);
        verify_inclusion(&hash_leaf(&leaves[15]), 15, 16, &proof, &root16).unwrap();
        // Consistency from == to, and from 0.
        assert!(consistency_proof(&tree, 16, 16).unwrap().is_empty());
        verify_consistency(16, 16, &[], &root16, &root16).unwrap();
        verify_consistency(0, 16, &[], &empty_root(), &root16).unwrap();
        // Out of range.
        assert!(inclusion_proof(&tree, 16, 16).is_err());
        assert!(consistency_proof(&tree, 17, 16).is_err());
    }

    #[test]
    fn verification_names_the_failure() {
        let leaves: Vec<Vec<u8>> = (0..10u8).map(|i| vec![i]).collect();
        let tree = tree(&leaves);
        let root10 = root(&tree, 10).unwrap();
        let proof = inclusion_proof(&tree, 3, 10).unwrap();
        assert!(matches!(
            verify_inclusion(&hash_leaf(b"forged"), 3, 10, &proof, &root10),
            Err(MerkleError::RootMismatch { .. })
        ));
        assert!(matches!(
            verify_inclusion(&hash_leaf(&leaves[3]), 3, 10, &proof[1..], &root10),
            Err(MerkleError::WrongProofSize { .. })
        ));
        let consistency = consistency_proof(&tree, 6, 10).unwrap();
        let root6 = root(&tree, 6).unwrap();
        assert!(verify_consistency(6, 10, &consistency, &root6, &root10).is_ok());
        assert!(matches!(
            verify_consistency(6, 10, &consistency, &root10, &root10),
            Err(MerkleError::RootMismatch { .. })
        ));
        let mut extended = consistency.clone();
        extended.push(root6);
        assert!(verify_consistency(6, 10, &extended, &root6, &root10).is_err());
    }
}
