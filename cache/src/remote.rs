//! The remote cache's index: which cache keys a shared cache holds, and the layers each one's result is made of.
//!
//! One small JSON document lists every entry (key → diff_ids, with when the result was made and when the entry
//! was last exported) and every layer blob those entries need (diff_id → compressed blob). A reader therefore
//! finds all of a build's hits with one manifest and one blob request, whatever the number of steps, instead of
//! one request per key; the blobs themselves are fetched only when a later step or an output needs their bytes.
//!
//! Writers merge: an export reads the index that is there, adds its own entries (a key exported again keeps the
//! newer record), drops what is over the age or size limit, oldest first, and writes the union. A key names a
//! step's definition and its inputs (see `rbuild_solver::key`), so two runners that made the same key made
//! equivalent results (their files may differ in times only) and merging never has to choose between different
//! answers to one question.

use crate::store::LayerBlob;
use rbuild_solver::explain::StepInputs;
use rbuild_types::Digest;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

/// The media type of the index blob (the config of a cache manifest).
pub const MEDIA_CACHE_INDEX: &str = "application/vnd.rbuild.cache.index.v1+json";
/// The artifact type a cache manifest declares.
pub const ARTIFACT_CACHE: &str = "application/vnd.rbuild.cache.v1";
/// The image config field an inline cache is kept in.
pub const INLINE_CONFIG_FIELD: &str = "rbuild.cache.v1";
/// The version of the index format.
pub const INDEX_VERSION: u32 = 1;

/// One cached result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexEntry {
    /// The diff_ids of the result's root filesystem, bottom first.
    pub layers: Vec<Digest>,
    /// When the result was first made (unix seconds): kept, so a hit dates its history entry as the original did.
    pub created: i64,
    /// When the entry was last exported (unix seconds): what `max-age` measures and what is dropped first.
    pub exported: i64,
}

/// A remote cache's index.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CacheIndex {
    pub version: u32,
    /// Cache key → result.
    pub entries: BTreeMap<Digest, IndexEntry>,
    /// diff_id → the compressed blob the cache holds for it.
    pub blobs: BTreeMap<Digest, LayerBlob>,
    /// `RUN --mount=type=cache` contents by cache id, as one layer blob each (`cache-mounts=true`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub mounts: BTreeMap<String, LayerBlob>,
    /// The journal tags (one per export, see `rbuild_image::remote_cache`) whose entries this index holds: a reader
    /// reads only the journals that are not listed here.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub journals: BTreeSet<String>,
    /// What went into the key of each exported step, by its portable identity (Dockerfile name, target, stage and
    /// depth): another machine's `--explain-cache` compares a step that missed with it.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub steps: BTreeMap<String, StepInputs>,
}

/// Limits a writer applies to the merged index.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Limits {
    /// Drop entries last exported longer ago than this many seconds.
    pub max_age: Option<i64>,
    /// Drop the oldest entries until the blobs the rest need add up to at most this many bytes.
    pub max_size: Option<u64>,
}

impl Default for CacheIndex {
    /// An empty index of the current version.
    fn default() -> Self {
        CacheIndex {
            version: INDEX_VERSION,
            entries: BTreeMap::new(),
            blobs: BTreeMap::new(),
            mounts: BTreeMap::new(),
            journals: BTreeSet::new(),
            steps: BTreeMap::new(),
        }
    }
}

impl CacheIndex {
    pub fn new() -> CacheIndex {
        CacheIndex::default()
    }

    /// Reads an index; `None` for anything that is not one of this version (another tool's cache, a newer rbuild).
    pub fn parse(bytes: &[u8]) -> Option<CacheIndex> {
        let index: CacheIndex = serde_json::from_slice(bytes).ok()?;
        (index.version == INDEX_VERSION).then_some(index)
    }

    /// The canonical bytes (sorted maps, no whitespace).
    pub fn to_bytes(&self) -> Vec<u8> {
        // Plain maps of strings and numbers: serialising cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Adds `other`'s entries and blobs. Of a key both have, this index's result is kept (dated with the later
    /// export): the two are equivalent, and keeping the one readers already fetched saves them a download.
    pub fn merge(&mut self, other: CacheIndex) {
        for (key, entry) in other.entries {
            match self.entries.get_mut(&key) {
                Some(mine) => mine.exported = mine.exported.max(entry.exported),
                None => {
                    self.entries.insert(key, entry);
                }
            }
        }
        for (diff_id, blob) in other.blobs {
            self.blobs.entry(diff_id).or_insert(blob);
        }
        // A cache mount's newest contents win: they are what the next runner should start from.
        self.mounts.extend(other.mounts);
        self.journals.extend(other.journals);
        // The newest record of a step explains best what a build now differs in.
        self.steps.extend(other.steps);
    }

    /// Whether every entry of `other` is here (used to check that a write was not overwritten by another writer).
    pub fn contains_all(&self, other: &CacheIndex) -> bool {
        other.entries.keys().all(|k| self.entries.contains_key(k))
    }

    /// Applies `limits` at time `now`, then drops the blobs no entry needs any more.
    pub fn prune(&mut self, limits: Limits, now: i64) {
        if let Some(age) = limits.max_age {
            self.entries.retain(|_, e| now.saturating_sub(e.exported) <= age);
        }
        if let Some(max) = limits.max_size {
            // Newest first: an entry is kept while the layers of everything kept so far fit.
            let mut order: Vec<(&Digest, &IndexEntry)> = self.entries.iter().collect();
            order.sort_by(|a, b| b.1.exported.cmp(&a.1.exported).then_with(|| a.0.cmp(b.0)));
            let mut counted = BTreeSet::new();
            let mut total = 0u64;
            let mut keep = BTreeSet::new();
            for (key, entry) in order {
                let extra: u64 = entry
                    .layers
                    .iter()
                    .filter(|l| !counted.contains(*l))
                    .map(|l| self.blobs.get(l).map_or(0, |b| b.size))
                    .sum();
                if total + extra > max {
                    continue;
                }
                total += extra;
                counted.extend(entry.layers.iter().cloned());
                keep.insert(key.clone());
            }
            self.entries.retain(|k, _| keep.contains(k));
        }
        let entries = &self.entries;
        self.steps.retain(|_, s| entries.contains_key(&s.key));
        let used: BTreeSet<&Digest> = self.entries.values().flat_map(|e| &e.layers).collect();
        self.blobs.retain(|d, _| used.contains(d));
    }

    /// Whether every entry's layers have a blob (an index that would promise results it cannot deliver is never
    /// written).
    pub fn is_complete(&self) -> bool {
        self.entries.values().all(|e| e.layers.iter().all(|l| self.blobs.contains_key(l)))
    }

    /// The blobs, in a fixed order (by blob digest, each once).
    pub fn blob_list(&self) -> Vec<LayerBlob> {
        let mut by_digest: BTreeMap<&Digest, &LayerBlob> = BTreeMap::new();
        for b in self.blobs.values().chain(self.mounts.values()) {
            by_digest.insert(&b.digest, b);
        }
        by_digest.into_values().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blob(n: &str, size: u64) -> LayerBlob {
        LayerBlob {
            media_type: "application/vnd.oci.image.layer.v1.tar+gzip".into(),
            digest: Digest::of(n.as_bytes()),
            size,
        }
    }

    fn index(entries: &[(&str, &[&str], i64)]) -> CacheIndex {
        let mut i = CacheIndex::new();
        for (key, layers, exported) in entries {
            let layers: Vec<Digest> = layers.iter().map(|l| Digest::of(l.as_bytes())).collect();
            for l in layers.iter() {
                i.blobs.insert(l.clone(), blob(&format!("blob-{l}"), 100));
            }
            i.entries.insert(Digest::of(key.as_bytes()), IndexEntry { layers, created: 1, exported: *exported });
        }
        i
    }

    #[test]
    fn merging_keeps_both_writers_entries_and_the_first_result() {
        let mut a = index(&[("k1", &["l1"], 10), ("shared", &["l1"], 10)]);
        let b = index(&[("k2", &["l2"], 20), ("shared", &["l2"], 20)]);
        a.merge(b.clone());
        assert!(a.contains_all(&b));
        assert_eq!(a.entries.len(), 3);
        let shared = &a.entries[&Digest::of(b"shared")];
        assert_eq!((shared.layers.clone(), shared.exported), (vec![Digest::of(b"l1")], 20));
        assert!(a.is_complete());
        let round = CacheIndex::parse(&a.to_bytes()).expect("parses");
        assert_eq!(round, a);
    }

    #[test]
    fn pruning_drops_the_oldest_first_and_unused_blobs() {
        let mut i = index(&[("old", &["l1"], 10), ("mid", &["l2"], 20), ("new", &["l3"], 30)]);
        i.prune(Limits { max_age: Some(15), max_size: None }, 30);
        assert_eq!(i.entries.len(), 2, "older than 15 s is gone");
        i.prune(Limits { max_age: None, max_size: Some(150) }, 30);
        assert_eq!(i.entries.keys().collect::<Vec<_>>(), [&Digest::of(b"new")]);
        assert_eq!(i.blobs.len(), 1, "blobs of dropped entries go too");
    }

    #[test]
    fn journals_merge_and_step_records_go_with_their_entries() {
        let record = |key: &str| StepInputs {
            key: Digest::of(key.as_bytes()),
            name: "[stage] RUN make".into(),
            op: serde_json::Value::Null,
            inputs: vec![],
            content: vec![],
            files: vec![],
        };
        let mut a = index(&[("old", &["l1"], 10)]);
        a.journals.insert("t-rbuild-journal-1".into());
        a.steps.insert("Dockerfile\n\n[stage]#1".into(), record("old"));
        let mut b = index(&[("new", &["l2"], 30)]);
        b.journals.insert("t-rbuild-journal-2".into());
        b.steps.insert("Dockerfile\n\n[stage]#2".into(), record("new"));
        a.merge(b);
        assert_eq!(a.journals.len(), 2, "a merged index lists both writers' journals");
        a.prune(Limits { max_age: Some(5), max_size: None }, 30);
        assert_eq!(a.steps.keys().collect::<Vec<_>>(), ["Dockerfile\n\n[stage]#2"], "a pruned entry's record goes");
        assert_eq!(CacheIndex::parse(&a.to_bytes()).expect("parses"), a);
    }

    #[test]
    fn other_versions_are_not_read() {
        assert!(CacheIndex::parse(br#"{"version":2,"entries":{},"blobs":{}}"#).is_none());
        assert!(CacheIndex::parse(b"not json").is_none());
    }
}
