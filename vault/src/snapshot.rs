//! Snapshot manifests and the tree of entries they point to.
//!
//! The manifest is a sealed object (type 5) named by its content hash; it is the backup's only
//! commit point. The tree is a stream of CBOR-encoded [`Node`]s in path order, chunked like file data
//! and stored as tree chunks in packs, so an unchanged tree costs nothing in the next snapshot.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::ids::{ChunkId, SessionId, SnapshotId};

/// What kind of entry a node is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeKind {
    /// Regular file.
    File,
    /// Directory.
    Dir,
    /// Symbolic link (`target` holds the link text).
    Symlink,
    /// Another name of a file earlier in the tree (`target` holds that file's path).
    Hardlink,
    /// Named pipe.
    Fifo,
}

/// A run of file data starting at `offset`; holes between extents are sparse.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Extent {
    /// Byte offset in the file.
    pub offset: u64,
    /// Chunks in order.
    pub chunks: Vec<ChunkId>,
}

/// One extended attribute.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Xattr {
    /// Name bytes.
    #[serde(with = "serde_bytes")]
    pub name: Vec<u8>,
    /// Value bytes.
    #[serde(with = "serde_bytes")]
    pub value: Vec<u8>,
}

/// One entry of a snapshot's tree.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Node {
    /// Absolute path without the leading `/`, as raw bytes (names need not be UTF-8).
    #[serde(with = "serde_bytes")]
    pub path: Vec<u8>,
    /// Entry kind.
    pub kind: NodeKind,
    /// Permission bits and file type bits as `st_mode`.
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Modification time, nanoseconds since the epoch.
    pub mtime_ns: i64,
    /// Status change time (change detection only).
    #[serde(default)]
    pub ctime_ns: i64,
    /// Inode (change detection only).
    #[serde(default)]
    pub inode: u64,
    /// Logical size in bytes.
    #[serde(default)]
    pub size: u64,
    /// Symlink text or hardlink target path.
    #[serde(default, with = "serde_bytes")]
    pub target: Option<Vec<u8>>,
    /// Extended attributes.
    #[serde(default)]
    pub xattrs: Vec<Xattr>,
    /// File data.
    #[serde(default)]
    pub extents: Vec<Extent>,
    /// BLAKE3 of the whole logical content (holes read as zeros).
    #[serde(default, with = "serde_bytes")]
    pub hash: Option<Vec<u8>>,
    /// For model weight files: the tensors, so a restored copy is checked tensor by tensor.
    /// Absent for everything else (and then not written at all, so older trees read the same).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<ModelLayout>,
}

/// The layout of a model weight file as parsed at backup time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelLayout {
    /// `safetensors`, `gguf` or `pytorch-zip`.
    pub format: String,
    /// Tensors in file order.
    pub tensors: Vec<TensorRecord>,
}

/// One tensor (or, in a PyTorch zip, one storage record) of a model file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TensorRecord {
    /// Name as the file gives it.
    pub name: String,
    /// Element type as the file names it (`BF16`, `F32`, `Q4_K`, ...).
    pub dtype: String,
    /// Dimensions as the file lists them.
    pub shape: Vec<u64>,
    /// Absolute byte offset of its data in the file.
    pub offset: u64,
    /// Bytes of data.
    pub len: u64,
    /// BLAKE3 of those bytes.
    #[serde(with = "serde_bytes")]
    pub hash: Vec<u8>,
}

/// A source other than plain paths captured into a snapshot, with what its verifier needs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceRecord {
    /// The kind (`model`, `sqlite`, `postgres`, `faiss`, ...).
    pub kind: String,
    /// The spec as given (`KIND:SPEC` without the kind).
    pub spec: String,
    /// Where its data sits in the tree (absolute paths).
    pub paths: Vec<String>,
    /// Facts recorded at backup time that must hold on a restored copy.
    #[serde(default)]
    pub probes: BTreeMap<String, String>,
}

impl Node {
    /// A directory entry with permission bits `perm` (the type bits are added).
    pub fn dir(path: Vec<u8>, perm: u32, uid: u32, gid: u32, mtime_ns: i64) -> Self {
        Self {
            path,
            kind: NodeKind::Dir,
            mode: 0o040000 | (perm & 0o7777),
            uid,
            gid,
            mtime_ns,
            ctime_ns: 0,
            inode: 0,
            size: 0,
            target: None,
            xattrs: Vec::new(),
            extents: Vec::new(),
            hash: None,
            model: None,
        }
    }

    /// The path for display (lossy).
    pub fn display_path(&self) -> String {
        format!("/{}", String::from_utf8_lossy(&self.path))
    }

    /// All chunk ids of this node in order.
    pub fn chunks(&self) -> impl Iterator<Item = &ChunkId> {
        self.extents.iter().flat_map(|e| e.chunks.iter())
    }
}

/// Totals recorded with a snapshot.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Summary {
    /// Regular files.
    pub files: u64,
    /// Directories.
    pub dirs: u64,
    /// Other entries.
    pub others: u64,
    /// Logical bytes of all files.
    pub bytes: u64,
    /// Bytes read from files this run (unchanged files are not read).
    pub bytes_read: u64,
    /// Chunks new to the vault.
    pub chunks_new: u64,
    /// Plaintext bytes of new chunks.
    pub bytes_new: u64,
    /// Bytes uploaded in packs.
    pub bytes_stored: u64,
    /// Files that could not be read (reported, skipped).
    pub errors: u64,
    /// Wall time in milliseconds.
    pub duration_ms: u64,
}

/// A snapshot manifest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// Manifest format version.
    pub v: u32,
    /// RFC 3339 time the backup started.
    pub time: String,
    /// Host that made it.
    pub host: String,
    /// Source kind ("files" for paths).
    pub source: String,
    /// Backed-up paths as given.
    pub paths: Vec<String>,
    /// Tags.
    #[serde(default)]
    pub tags: Vec<String>,
    /// Tree chunks in order.
    pub tree: Vec<ChunkId>,
    /// Nodes in the tree.
    pub tree_nodes: u64,
    /// Totals.
    pub summary: Summary,
    /// Writer session that made it.
    pub session: SessionId,
    /// Snapshot used for change detection.
    #[serde(default)]
    pub parent: Option<SnapshotId>,
    /// Application probes recorded at backup time (sources fill these).
    #[serde(default)]
    pub probes: BTreeMap<String, String>,
    /// Sources other than plain paths, with their verifiers' records. Absent when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sources: Vec<SourceRecord>,
}

/// Encode nodes as a tree stream.
pub fn encode_tree(nodes: &[Node]) -> Vec<u8> {
    let mut out = Vec::new();
    for n in nodes {
        let _ = ciborium::into_writer(n, &mut out);
    }
    out
}

/// Whether a stored path stays below the restore root: relative, no empty, `.` or `..` component,
/// no NUL. Trees come from storage and are not trusted to be well formed.
pub fn path_stays_below(path: &[u8]) -> bool {
    !path.is_empty()
        && !path.contains(&0)
        && path.split(|b| *b == b'/').all(|c| !c.is_empty() && c != b"." && c != b"..")
}

/// Decode a tree stream and check its shape ([`check_tree`]); errors name the position.
pub fn decode_tree(bytes: &[u8], expected: u64) -> Result<Vec<Node>, String> {
    let nodes = decode_nodes(bytes, expected)?;
    check_tree(&nodes)?;
    Ok(nodes)
}

/// The nodes of a tree stream, their shape unchecked.
fn decode_nodes(mut bytes: &[u8], expected: u64) -> Result<Vec<Node>, String> {
    // The count is the manifest's word; the bytes bound it too (a node's CBOR map is far above 8
    // bytes), so a short tree cannot make this reserve space for a million nodes.
    let mut nodes = Vec::with_capacity(expected.min(bytes.len() as u64 / 8).min(1 << 20) as usize);
    while !bytes.is_empty() {
        let node: Node = ciborium::from_reader(&mut bytes).map_err(|e| format!("tree node #{}: {e}", nodes.len()))?;
        nodes.push(node);
    }
    if nodes.len() as u64 != expected {
        return Err(format!("tree has {} nodes, manifest says {expected}", nodes.len()));
    }
    Ok(nodes)
}

/// The shape every tree Tresor writes has, and every restore relies on: each path stays below
/// the restore root, appears once, and sits in a directory given earlier in the same tree (or at
/// the top); a hardlink names an earlier regular file. Children need not be sorted: PostgreSQL
/// trees keep the order of `pg_basebackup`'s archive. Trees come from storage and any key holder
/// can write one, so a restore never trusts a tree this has not passed.
pub fn check_tree(nodes: &[Node]) -> Result<(), String> {
    let bad = |i: usize, why: &str| format!("tree node #{i} ({}): {why}", nodes[i].display_path());
    for (i, n) in nodes.iter().enumerate() {
        if !path_stays_below(&n.path) {
            return Err(bad(i, "its path would leave the restore root"));
        }
        if n.kind == NodeKind::Hardlink && !n.target.as_deref().is_some_and(path_stays_below) {
            return Err(bad(i, "its hardlink target would leave the restore root"));
        }
    }
    // Node numbers sorted by path: duplicates sit side by side, and a parent is a binary search away.
    let mut by_path: Vec<usize> = (0..nodes.len()).collect();
    by_path.sort_unstable_by(|a, b| nodes[*a].path.cmp(&nodes[*b].path).then(a.cmp(b)));
    if let Some(w) = by_path.windows(2).find(|w| nodes[w[0]].path == nodes[w[1]].path) {
        return Err(bad(w[1], &format!("the same path as node #{}", w[0])));
    }
    let find = |path: &[u8]| by_path.binary_search_by(|i| nodes[*i].path.as_slice().cmp(path)).ok().map(|k| by_path[k]);
    for (i, n) in nodes.iter().enumerate() {
        if let Some(slash) = n.path.iter().rposition(|b| *b == b'/') {
            match find(&n.path[..slash]) {
                Some(p) if p < i && nodes[p].kind == NodeKind::Dir => {}
                Some(p) if p < i => return Err(bad(i, &format!("its parent (node #{p}) is not a directory"))),
                Some(p) => return Err(bad(i, &format!("its parent directory comes later (node #{p})"))),
                None => return Err(bad(i, "its parent directory is not in the tree")),
            }
        }
        if n.kind == NodeKind::Hardlink {
            let target = n.target.as_deref().unwrap_or_default();
            match find(target) {
                Some(t) if t < i && nodes[t].kind == NodeKind::File => {}
                _ => return Err(bad(i, "its hardlink target is not an earlier regular file of the tree")),
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn node() -> impl Strategy<Value = Node> {
        (
            "[a-z0-9_ .\u{e9}-]{0,8}[a-z0-9](/[a-z0-9_.-]{0,8}[a-z0-9]){0,3}".prop_map(String::into_bytes),
            0u8..5,
            any::<u32>(),
            any::<i64>(),
            any::<u64>(),
            proptest::option::of("[a-z0-9]{1,8}(/[a-z0-9]{1,8}){0,2}".prop_map(String::into_bytes)),
            proptest::collection::vec((any::<u64>(), proptest::collection::vec(any::<[u8; 32]>(), 0..3)), 0..3),
        )
            .prop_map(|(path, k, mode, mtime_ns, size, target, ext)| Node {
                path,
                kind: [NodeKind::File, NodeKind::Dir, NodeKind::Symlink, NodeKind::Hardlink, NodeKind::Fifo]
                    [k as usize],
                mode,
                uid: mode / 3,
                gid: mode / 5,
                mtime_ns,
                ctime_ns: mtime_ns / 2,
                inode: size / 7,
                size,
                // A hardlink always names its first file.
                target: if k == 3 { Some(target.unwrap_or_else(|| b"first".to_vec())) } else { target },
                xattrs: vec![Xattr { name: b"user.x".to_vec(), value: vec![0, 255] }],
                extents: ext
                    .into_iter()
                    .map(|(offset, c)| Extent { offset, chunks: c.into_iter().map(ChunkId).collect() })
                    .collect(),
                hash: Some(vec![1; 32]),
                model: (size % 3 == 0).then(|| ModelLayout {
                    format: "safetensors".into(),
                    tensors: vec![TensorRecord {
                        name: "w".into(),
                        dtype: "BF16".into(),
                        shape: vec![size % 7, 2],
                        offset: size / 2,
                        len: size / 3,
                        hash: vec![7; 32],
                    }],
                }),
            })
    }

    proptest! {
        #[test]
        fn nodes_round_trip(nodes in proptest::collection::vec(node(), 0..20)) {
            let bytes = encode_tree(&nodes);
            prop_assert_eq!(decode_nodes(&bytes, nodes.len() as u64).unwrap(), nodes);
        }

        /// Any tree built top down passes; moving a node before its parent, repeating a path or
        /// hanging a node under a non-directory is refused.
        #[test]
        fn tree_shape_is_checked(
            picks in proptest::collection::vec((any::<proptest::sample::Index>(), 0u8..5), 1..30),
            break_at in any::<proptest::sample::Index>(),
            how in 0u8..3,
        ) {
            let mut nodes = vec![Node::dir(b"top".to_vec(), 0o755, 0, 0, 0)];
            for (k, (parent, kind)) in picks.iter().enumerate() {
                let dirs: Vec<&Node> = nodes.iter().filter(|n| n.kind == NodeKind::Dir).collect();
                let mut n = Node::dir(dirs[parent.index(dirs.len())].path.clone(), 0o700, 0, 0, 0);
                n.path.extend_from_slice(format!("/n{k}").as_bytes());
                let files: Vec<&Node> = nodes.iter().filter(|n| n.kind == NodeKind::File).collect();
                n.kind = match kind {
                    0 => NodeKind::Dir,
                    1 => NodeKind::File,
                    2 => NodeKind::Symlink,
                    3 if !files.is_empty() => NodeKind::Hardlink,
                    _ => NodeKind::Fifo,
                };
                if n.kind == NodeKind::Hardlink {
                    n.target = Some(files[k % files.len()].path.clone());
                }
                nodes.push(n);
            }
            prop_assert!(decode_tree(&encode_tree(&nodes), nodes.len() as u64).is_ok());
            let i = break_at.index(nodes.len());
            let mut broken = nodes.clone();
            match how {
                0 => broken.push(nodes[i].clone()),
                1 => {
                    let mut child = Node::dir(nodes[i].path.clone(), 0o700, 0, 0, 0);
                    child.path.extend_from_slice(b"/under");
                    broken.insert(i, child);
                }
                _ => {
                    let mut child = Node::dir(nodes[i].path.clone(), 0o700, 0, 0, 0);
                    child.path.extend_from_slice(b"/under");
                    broken.push(child);
                }
            }
            let refused = decode_tree(&encode_tree(&broken), broken.len() as u64);
            // Only a child pushed last under a directory is still a well-formed tree.
            let still_fine = how == 2 && nodes[i].kind == NodeKind::Dir;
            prop_assert_eq!(refused.is_ok(), still_fine, "{:?}", refused);
        }

        #[test]
        fn garbage_trees_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
            let _ = decode_tree(&bytes, 3);
        }
    }

    #[test]
    fn paths_leaving_the_root_are_refused() {
        let bad: [&[u8]; 7] = [b"/etc/passwd", b"a/../../etc", b"..", b"a//b", b"a/./b", b"", b"a\0b"];
        for (bad, as_target) in bad.iter().flat_map(|b| [(b.to_vec(), false), (b.to_vec(), true)]) {
            let mut n = Node::dir(b"ok/dir".to_vec(), 0o755, 0, 0, 0);
            if as_target {
                n.kind = NodeKind::Hardlink;
                n.target = Some(bad);
            } else {
                n.path = bad;
            }
            let err = decode_tree(&encode_tree(&[n]), 1).unwrap_err();
            assert!(err.contains("would leave the restore root"), "{err}");
            assert!(check_tree(&[Node { path: b"ok".to_vec(), ..Node::dir(vec![], 0, 0, 0, 0) }]).is_ok());
        }
    }

    /// Once a proptest regression: a hardlink must name what it links to.
    #[test]
    fn a_hardlink_without_a_target_is_refused() {
        let mut n = Node::dir(b"0".to_vec(), 0, 0, 0, 0);
        n.kind = NodeKind::Hardlink;
        assert!(decode_tree(&encode_tree(&[n]), 1).unwrap_err().contains("would leave the restore root"));
    }

    /// The crafted trees of issue 12, each refused with a reason that names it.
    #[test]
    fn hostile_tree_shapes_are_named() {
        let dir = |p: &[u8]| Node::dir(p.to_vec(), 0o755, 0, 0, 0);
        let with = |p: &[u8], kind: NodeKind, target: Option<&[u8]>| Node {
            kind,
            target: target.map(<[u8]>::to_vec),
            ..Node::dir(p.to_vec(), 0o4777, 0, 0, 0)
        };
        let cases: Vec<(Vec<Node>, &str)> = vec![
            (
                vec![with(b"x", NodeKind::Symlink, Some(b"/etc/shadow")), with(b"x", NodeKind::Fifo, None)],
                "the same path as node #0",
            ),
            (
                vec![with(b"s", NodeKind::Symlink, Some(b"/")), with(b"s/etc/passwd", NodeKind::File, None)],
                "its parent directory is not in the tree",
            ),
            (
                vec![with(b"s", NodeKind::Symlink, Some(b"/")), with(b"h", NodeKind::Hardlink, Some(b"s/etc/passwd"))],
                "its hardlink target is not an earlier regular file",
            ),
            (vec![with(b"f", NodeKind::File, None), with(b"f/g", NodeKind::File, None)], "is not a directory"),
            (vec![with(b"d/f", NodeKind::File, None), dir(b"d")], "its parent directory comes later"),
            (vec![dir(b"d"), with(b"h", NodeKind::Hardlink, Some(b"d"))], "not an earlier regular file"),
        ];
        for (nodes, why) in cases {
            let err = decode_tree(&encode_tree(&nodes), nodes.len() as u64).unwrap_err();
            assert!(err.contains(why), "{err} (wanted {why:?})");
        }
    }
}
