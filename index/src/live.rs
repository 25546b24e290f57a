//! The live chunks of one generation and the lookups filters need: each live chunk's document
//! and the place of its vector in the generation's segments, plus live chunk ids grouped by
//! source, metadata pair and access group.
//!
//! A [`LiveSet`] is built once per commit, in O(live chunks), and never changes afterwards, so
//! a search finds the chunks a filter allows by walking the shortest matching id list instead
//! of testing every live chunk. It holds no vectors and does no I/O.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Arc;

use crate::types::{DocumentRecord, Filter};
use crate::vectors::Segment;

/// Hashes chunk ids (sequential u64s) with one multiplication: the map lookups sit in the
/// inner loop of filtered searches, where SipHash cost more than the rest of the check.
#[derive(Default, Clone, Copy)]
pub struct IdHasher(u64);

impl Hasher for IdHasher {
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.write_u64(self.0.rotate_left(8) ^ u64::from(*b));
        }
    }

    fn write_u64(&mut self, n: u64) {
        // An odd multiplier permutes the low bits (bucket index) of sequential ids and mixes
        // them into the high bits (hashbrown's control byte).
        self.0 = n.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

/// A map keyed by chunk id.
pub type IdMap<V> = HashMap<u64, V, BuildHasherDefault<IdHasher>>;

/// Marks a segment row whose chunk is not live.
const DEAD: u32 = u32::MAX;

/// A live chunk: its id, its document and the (segment, row) holding its vector.
pub struct LiveChunk {
    pub id: u64,
    pub doc: Arc<DocumentRecord>,
    pub location: Option<(usize, usize)>,
}

/// Live chunks of a generation with posting lists by filterable value. Lists hold slots
/// (indexes into `chunks`), so walking them needs no hashing.
pub struct LiveSet {
    chunks: Vec<LiveChunk>,
    slot_of: IdMap<u32>,
    /// Per segment, the slot of each row's chunk, or [`DEAD`] for a tombstone.
    row_slots: Vec<Vec<u32>>,
    /// Chunks of documents without access groups.
    public: Vec<u32>,
    /// Per slot, whether its document has no access groups (saves reading the document).
    is_public: Vec<bool>,
    by_group: HashMap<String, Vec<u32>>,
    by_source: HashMap<String, Vec<u32>>,
    /// Metadata key → value → chunks.
    by_meta: HashMap<String, HashMap<String, Vec<u32>>>,
    /// Rows per segment whose chunk is not live (tombstones).
    dead_rows: Vec<usize>,
}

/// The constraint of a filter with the fewest candidate chunks.
enum Narrowest<'a> {
    /// No constraint has a list: every live chunk is a candidate.
    All,
    /// Disjoint lists (one per source, or one metadata pair), and the filter with the
    /// constraint the lists already satisfy taken out.
    Lists(Vec<&'a [u32]>, Filter),
    /// Public chunks, then the chunks of each caller group in turn; a chunk of several of the
    /// caller's groups appears in several lists.
    Groups(Vec<&'a str>),
}

impl LiveSet {
    /// Indexes `docs` (live chunk id → document) against the segments holding their vectors.
    pub fn new(docs: HashMap<u64, Arc<DocumentRecord>>, segments: &[Arc<Segment>]) -> LiveSet {
        let mut docs: Vec<(u64, Arc<DocumentRecord>)> = docs.into_iter().collect();
        // Slots in id order keep candidate order (and so tie-breaking work) deterministic.
        docs.sort_unstable_by_key(|(id, _)| *id);
        let mut set = LiveSet {
            chunks: Vec::with_capacity(docs.len()),
            slot_of: IdMap::default(),
            row_slots: Vec::with_capacity(segments.len()),
            public: Vec::new(),
            is_public: Vec::with_capacity(docs.len()),
            by_group: HashMap::new(),
            by_source: HashMap::new(),
            by_meta: HashMap::new(),
            dead_rows: Vec::with_capacity(segments.len()),
        };
        set.slot_of.reserve(docs.len());
        for (slot, (id, doc)) in docs.into_iter().enumerate() {
            let slot = slot as u32;
            set.slot_of.insert(id, slot);
            set.is_public.push(doc.access_groups.is_empty());
            if doc.access_groups.is_empty() {
                set.public.push(slot);
            }
            for g in &doc.access_groups {
                set.by_group.entry(g.clone()).or_default().push(slot);
            }
            set.by_source
                .entry(doc.source.clone())
                .or_default()
                .push(slot);
            for (k, v) in &doc.metadata {
                set.by_meta
                    .entry(k.clone())
                    .or_default()
                    .entry(v.clone())
                    .or_default()
                    .push(slot);
            }
            set.chunks.push(LiveChunk {
                id,
                doc,
                location: None,
            });
        }
        for (s, seg) in segments.iter().enumerate() {
            let mut dead = 0;
            let mut slots = Vec::with_capacity(seg.len());
            for (row, id) in seg.ids().iter().enumerate() {
                match set.slot_of.get(id) {
                    Some(&slot) => {
                        set.chunks[slot as usize].location = Some((s, row));
                        slots.push(slot);
                    }
                    None => {
                        dead += 1;
                        slots.push(DEAD);
                    }
                }
            }
            set.row_slots.push(slots);
            set.dead_rows.push(dead);
        }
        for c in &set.chunks {
            if c.location.is_none() {
                tracing::warn!(chunk = c.id, "live chunk without a vector in any segment");
            }
        }
        set
    }

    pub fn len(&self) -> usize {
        self.chunks.len()
    }

    pub fn contains(&self, id: u64) -> bool {
        self.slot_of.contains_key(&id)
    }

    pub fn get(&self, id: u64) -> Option<&LiveChunk> {
        self.slot_of.get(&id).map(|s| &self.chunks[*s as usize])
    }

    /// Live chunk ids with their documents, in id order.
    pub fn docs(&self) -> impl Iterator<Item = (u64, &Arc<DocumentRecord>)> {
        self.chunks.iter().map(|c| (c.id, &c.doc))
    }

    /// True when no live chunk carries access groups.
    pub fn all_public(&self) -> bool {
        self.public.len() == self.chunks.len()
    }

    /// Tombstones in segment `index` of the generation.
    pub fn dead_rows(&self, index: usize) -> usize {
        self.dead_rows.get(index).copied().unwrap_or(0)
    }

    /// Whether chunk `id` is live and passes `filter`.
    pub fn allowed(&self, id: u64, filter: &Filter) -> bool {
        self.get(id).is_some_and(|c| visible(&c.doc, filter))
    }

    /// Whether row `row` of segment `segment` holds a live chunk that passes `filter`.
    pub fn row_allowed(&self, segment: usize, row: usize, filter: &Filter) -> bool {
        match self.row_slots.get(segment).and_then(|s| s.get(row)) {
            Some(&slot) if slot != DEAD => {
                (self.slot_public(slot) && filter_is_open(filter))
                    || visible(&self.chunks[slot as usize].doc, filter)
            }
            _ => false,
        }
    }

    fn slot_public(&self, slot: u32) -> bool {
        self.is_public[slot as usize]
    }

    /// True when `filter` lets every live chunk through.
    pub fn passes_all(&self, filter: &Filter) -> bool {
        self.all_public() && filter_is_open(filter)
    }

    /// Calls `each` with every live chunk `filter` allows and returns how many there were, or
    /// `None` as soon as `limit` are found. Walks only the narrowest constraint's candidates,
    /// so a selective filter costs in proportion to what it keeps, not to the corpus.
    pub fn for_each_allowed(
        &self,
        filter: &Filter,
        limit: usize,
        mut each: impl FnMut(&LiveChunk),
    ) -> Option<usize> {
        if limit == 0 || (limit <= self.len() && self.passes_all(filter)) {
            return None;
        }
        let mut found = 0usize;
        let narrowest = self.narrowest(filter);
        let rest = match &narrowest {
            Narrowest::Lists(_, rest) => rest,
            _ => filter,
        };
        // Public chunks pass an open filter without reading their documents.
        let open = filter_is_open(rest);
        let public = |slot: u32| open && self.slot_public(slot);
        let mut take = |slot: u32| -> bool {
            let c = &self.chunks[slot as usize];
            if public(slot) || visible(&c.doc, rest) {
                each(c);
                found += 1;
            }
            found < limit
        };
        match &narrowest {
            Narrowest::All => {
                for slot in 0..self.chunks.len() as u32 {
                    if !take(slot) {
                        return None;
                    }
                }
            }
            Narrowest::Lists(lists, _) => {
                for slot in lists.iter().copied().flatten() {
                    if !take(*slot) {
                        return None;
                    }
                }
            }
            Narrowest::Groups(groups) => {
                for slot in &self.public {
                    if !take(*slot) {
                        return None;
                    }
                }
                for (i, g) in groups.iter().enumerate() {
                    for slot in self.by_group.get(*g).map_or(&[][..], Vec::as_slice) {
                        let doc = &self.chunks[*slot as usize].doc;
                        // Already taken from the list of an earlier caller group.
                        let seen = &groups[..i];
                        if doc.access_groups.iter().any(|a| seen.contains(&a.as_str())) {
                            continue;
                        }
                        if !take(*slot) {
                            return None;
                        }
                    }
                }
            }
        }
        Some(found)
    }

    /// The segment rows of every live chunk `filter` allows, as one bitmap per segment (bit
    /// `row % 64` of word `row / 64`), when fewer than `limit` chunks pass; `None` otherwise.
    /// Tombstones are never set. `segment_rows` is the row count of each segment.
    pub fn allowed_rows(
        &self,
        filter: &Filter,
        limit: usize,
        segment_rows: &[usize],
    ) -> Option<Vec<Vec<u64>>> {
        let mut masks: Vec<Vec<u64>> = segment_rows
            .iter()
            .map(|rows| vec![0u64; rows.div_ceil(64)])
            .collect();
        self.for_each_allowed(filter, limit, |c| {
            if let Some((s, row)) = c.location
                && let Some(word) = masks.get_mut(s).and_then(|m| m.get_mut(row / 64))
            {
                *word |= 1u64 << (row % 64);
            }
        })?;
        Some(masks)
    }

    fn narrowest<'a>(&'a self, filter: &'a Filter) -> Narrowest<'a> {
        let mut best = Narrowest::All;
        let mut best_len = self.len();
        let list = |l: Option<&'a Vec<u32>>| l.map_or(&[][..], Vec::as_slice);
        if !filter.sources.is_empty() {
            let mut names: Vec<&str> = filter.sources.iter().map(String::as_str).collect();
            names.sort_unstable();
            names.dedup();
            let lists: Vec<&[u32]> = names
                .into_iter()
                .map(|s| list(self.by_source.get(s)))
                .collect();
            let len = lists.iter().map(|l| l.len()).sum();
            if len < best_len {
                let rest = Filter {
                    sources: Vec::new(),
                    ..filter.clone()
                };
                (best, best_len) = (Narrowest::Lists(lists, rest), len);
            }
        }
        for (k, v) in &filter.metadata {
            let l = list(self.by_meta.get(k).and_then(|m| m.get(v)));
            if l.len() < best_len {
                let mut rest = filter.clone();
                rest.metadata.remove(k);
                (best, best_len) = (Narrowest::Lists(vec![l], rest), l.len());
            }
        }
        if !self.all_public() {
            let mut groups: Vec<&str> = filter.caller_groups.iter().map(String::as_str).collect();
            groups.sort_unstable();
            groups.dedup();
            let len = self.public.len()
                + groups
                    .iter()
                    .map(|g| list(self.by_group.get(*g)).len())
                    .sum::<usize>();
            if len < best_len {
                best = Narrowest::Groups(groups);
            }
        }
        best
    }
}

/// Whether `doc` passes `filter`, access groups included (deny by default).
pub fn visible(doc: &DocumentRecord, filter: &Filter) -> bool {
    if !doc.access_groups.is_empty()
        && !doc
            .access_groups
            .iter()
            .any(|g| filter.caller_groups.iter().any(|c| c == g))
    {
        return false;
    }
    if !filter.sources.is_empty() && !filter.sources.iter().any(|s| s == &doc.source) {
        return false;
    }
    if !filter
        .metadata
        .iter()
        .all(|(k, v)| doc.metadata.get(k) == Some(v))
    {
        return false;
    }
    if let Some(range) = &filter.updated {
        let Some(t) = doc.updated_at else {
            return false;
        };
        let ts = t.timestamp();
        if range.from.is_some_and(|f| ts < f.timestamp())
            || range.to.is_some_and(|x| ts > x.timestamp())
        {
            return false;
        }
    }
    true
}

/// True when `filter` constrains nothing but access groups.
pub fn filter_is_open(filter: &Filter) -> bool {
    filter.sources.is_empty() && filter.metadata.is_empty() && filter.updated.is_none()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc(i: usize) -> Arc<DocumentRecord> {
        let groups: &[&str] = match i % 4 {
            0 => &[],
            1 => &["hr"],
            2 => &["hr", "legal"],
            _ => &["legal"],
        };
        Arc::new(DocumentRecord {
            id: format!("d:{i}"),
            source: format!("s{}", i % 3),
            external_id: i.to_string(),
            title: String::new(),
            url: None,
            updated_at: None,
            metadata: [("bucket".to_string(), (i % 5).to_string())].into(),
            access_groups: groups.iter().map(|g| g.to_string()).collect(),
            content_hash: String::new(),
        })
    }

    #[test]
    fn allowed_ids_match_a_scan_of_every_chunk() {
        let docs: HashMap<u64, Arc<DocumentRecord>> =
            (0..120).map(|i| (i as u64, doc(i))).collect();
        let live = LiveSet::new(docs.clone(), &[]);
        let groups = |g: &[&str]| g.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let filters = [
            Filter::default(),
            Filter {
                caller_groups: groups(&["hr"]),
                ..Default::default()
            },
            Filter {
                caller_groups: groups(&["legal", "hr", "hr"]),
                ..Default::default()
            },
            Filter {
                sources: groups(&["s1", "s2", "s1"]),
                caller_groups: groups(&["legal"]),
                ..Default::default()
            },
            Filter {
                metadata: [("bucket".to_string(), "3".to_string())].into(),
                caller_groups: groups(&["hr"]),
                ..Default::default()
            },
            Filter {
                metadata: [("bucket".to_string(), "9".to_string())].into(),
                ..Default::default()
            },
        ];
        for f in &filters {
            let mut want: Vec<u64> = docs
                .iter()
                .filter(|(_, d)| visible(d, f))
                .map(|(id, _)| *id)
                .collect();
            want.sort_unstable();
            let mut got: Vec<u64> = Vec::new();
            let count = live.for_each_allowed(f, usize::MAX, |c| got.push(c.id));
            assert_eq!(count, Some(want.len()), "{f:?}");
            got.sort_unstable();
            assert_eq!(got, want, "{f:?}");
            // At the limit the search takes the graph instead: the walk stops.
            if !want.is_empty() {
                assert!(
                    live.for_each_allowed(f, want.len(), |_| ()).is_none(),
                    "{f:?}"
                );
                assert!(
                    live.for_each_allowed(f, want.len() + 1, |_| ()).is_some(),
                    "{f:?}"
                );
            }
        }
    }
}
