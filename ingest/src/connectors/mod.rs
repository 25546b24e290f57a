//! Connectors: each lists a source's documents with stable ids and reports what it could not
//! read. The pipeline decides what is new, changed, unchanged or gone.

pub mod crm;
pub mod files;
pub mod kb_api;

use crate::source::SourceDocument;

/// One entry of a listing.
#[derive(Debug)]
pub enum Item {
    Document(SourceDocument),
    /// Deliberately not indexed (e.g. an encrypted PDF, a draft article), with the reason.
    Skipped {
        external_id: String,
        reason: String,
    },
    /// Could not be read, with the error; the previous indexed version (if any) is kept.
    Failed {
        external_id: String,
        error: String,
    },
}

impl Item {
    pub fn external_id(&self) -> &str {
        match self {
            Item::Document(d) => &d.external_id,
            Item::Skipped { external_id, .. } | Item::Failed { external_id, .. } => external_id,
        }
    }
}

/// What a source remembers between runs.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize, PartialEq)]
pub struct SyncState {
    /// Connector-defined position (e.g. the last `updated_at` seen), for incremental sync.
    pub watermark: Option<String>,
    /// RFC 3339 time of the last complete listing reconciled against the index.
    pub last_reconciled: Option<String>,
}

/// How a listing ended.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SyncSummary {
    /// True only when every current document of the source was listed, so documents the index
    /// holds that were not listed can be deleted. A partial or failed listing never deletes.
    pub complete: bool,
    /// Ids the source reported as deleted explicitly (incremental APIs).
    pub deleted: Vec<String>,
    pub watermark: Option<String>,
}

/// A source of documents.
pub trait Connector: Send {
    /// The configured source name.
    fn name(&self) -> &str;

    /// How many items [`Connector::list`] will emit, when the connector can tell cheaply
    /// before listing (progress bars show an ETA from it). `None` — the default — means the
    /// total is known only once the listing finished.
    fn count_hint(&mut self, _state: &SyncState, _full: bool) -> Option<usize> {
        None
    }

    /// Lists documents (all of them, or those changed since `state.watermark` when the
    /// connector syncs incrementally and `full` is false), handing each to `emit`. `emit`
    /// returns false to ask the connector to stop early (cancellation).
    fn list(
        &mut self,
        state: &SyncState,
        full: bool,
        emit: &mut dyn FnMut(Item) -> bool,
    ) -> Result<SyncSummary, crate::IngestError>;
}
