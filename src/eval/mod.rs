//! `cairn eval retrieval`: retrieval quality on any dataset in the BEIR layout
//! (`corpus.jsonl`, `queries.jsonl`, `qrels/<split>.tsv`). The corpus is ingested with the
//! configured embedder and chunker into a throw-away index of the configured backend (cached
//! under the data directory, or in a schema of its own with `[index] backend = "postgres"`,
//! keyed by the corpus file and the embedder; a build counts only once it wrote its completion
//! marker, so an interrupted one is rebuilt), every judged query is run, chunk hits are folded
//! into documents (best rank wins), and nDCG@10, Recall@10/100 and MRR@10 are reported per mode
//! with latency (`hybrid+rerank` applies the configured `[rerank]` reranker). Metric functions are pure and tested against hand-computed cases.

use std::collections::{BTreeMap, HashMap};
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Instant;

use anyhow::Context;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use cairn_index::{Filter, Index, IndexBackend, SearchMode, SearchRequest};
use cairn_ingest::pipeline::{self, PipelineOptions, Progress, Report};
use cairn_ingest::{Body, Connector, IngestError, Item, SourceDocument, SyncState, SyncSummary};

use crate::engine::{Engine, index_options};
use crate::eval::metrics::{Metrics, Qrels, distinct_documents};

pub mod answers;
pub mod fusion;
pub mod metrics;
pub mod planner;
pub mod qa;

/// One mode's results, as printed by `--json` (one object per line).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ModeResult {
    pub mode: String,
    pub queries: usize,
    #[serde(flatten)]
    pub metrics: Metrics,
    pub latency_p50_ms: f64,
    pub latency_p99_ms: f64,
}

#[derive(Deserialize)]
struct RawCorpusDoc {
    #[serde(rename = "_id")]
    id: String,
    #[serde(default)]
    title: String,
    #[serde(default)]
    text: String,
}

#[derive(Deserialize)]
struct RawQuery {
    #[serde(rename = "_id")]
    id: String,
    text: String,
}

/// Reads `qrels/<split>.tsv` (header line optional).
pub fn read_qrels(path: &Path) -> anyhow::Result<Qrels> {
    let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut out: Qrels = HashMap::new();
    for (i, line) in std::io::BufReader::new(file).lines().enumerate() {
        let line = line?;
        let cols: Vec<&str> = line.split('\t').collect();
        if cols.len() < 3 {
            continue;
        }
        let Ok(score) = cols[2].trim().parse::<u32>() else {
            if i == 0 {
                continue; // header
            }
            anyhow::bail!(
                "{}:{}: score `{}` is not a number",
                path.display(),
                i + 1,
                cols[2]
            );
        };
        out.entry(cols[0].to_string())
            .or_default()
            .insert(cols[1].to_string(), score);
    }
    Ok(out)
}

/// Lists a BEIR corpus (`corpus.jsonl`) as documents (title and text as plain text); a line
/// that is not a corpus record becomes a failed item.
pub struct BeirCorpus {
    path: PathBuf,
}

impl BeirCorpus {
    /// The corpus file itself, e.g. `<dataset>/corpus.jsonl`.
    pub fn new(path: PathBuf) -> BeirCorpus {
        BeirCorpus { path }
    }
}

impl Connector for BeirCorpus {
    fn name(&self) -> &str {
        "beir"
    }

    /// Non-blank lines, counted by reading the file once more (cheap next to embedding).
    fn count_hint(&mut self, _state: &SyncState, _full: bool) -> Option<usize> {
        let file = std::fs::File::open(&self.path).ok()?;
        let mut count = 0;
        for line in std::io::BufReader::new(file).lines() {
            if !line.ok()?.trim().is_empty() {
                count += 1;
            }
        }
        Some(count)
    }

    fn list(
        &mut self,
        _state: &SyncState,
        _full: bool,
        emit: &mut dyn FnMut(Item) -> bool,
    ) -> Result<SyncSummary, IngestError> {
        let err = |m: String| IngestError::Connector {
            source_name: "beir".into(),
            message: m,
        };
        let file = std::fs::File::open(&self.path)
            .map_err(|e| err(format!("{}: {e}", self.path.display())))?;
        for (i, line) in std::io::BufReader::new(file).lines().enumerate() {
            let line = line.map_err(|e| err(e.to_string()))?;
            if line.trim().is_empty() {
                continue;
            }
            let item = match serde_json::from_str::<RawCorpusDoc>(&line) {
                Ok(d) => Item::Document(SourceDocument {
                    external_id: d.id,
                    title: d.title,
                    url: None,
                    updated_at: None,
                    metadata: BTreeMap::new(),
                    access_groups: Vec::new(),
                    body: Body::Text(d.text),
                }),
                Err(e) => Item::Failed {
                    external_id: format!("line-{}", i + 1),
                    error: e.to_string(),
                },
            };
            if !emit(item) {
                break;
            }
        }
        Ok(SyncSummary {
            complete: true,
            deleted: Vec::new(),
            watermark: None,
        })
    }
}

/// A retrieval mode as `--mode` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EvalMode {
    Bm25,
    Dense,
    Hybrid,
    /// Hybrid, then the configured `[rerank]` reranker over the first `[rerank] candidates`.
    HybridRerank,
}

impl EvalMode {
    /// Parses one `--mode` value; `all` expands to every mode.
    pub fn parse(name: &str) -> Option<Vec<EvalMode>> {
        Some(match name {
            "all" => vec![
                EvalMode::Bm25,
                EvalMode::Dense,
                EvalMode::Hybrid,
                EvalMode::HybridRerank,
            ],
            "bm25" => vec![EvalMode::Bm25],
            "dense" => vec![EvalMode::Dense],
            "hybrid" => vec![EvalMode::Hybrid],
            "hybrid+rerank" => vec![EvalMode::HybridRerank],
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            EvalMode::Bm25 => "bm25",
            EvalMode::Dense => "dense",
            EvalMode::Hybrid => "hybrid",
            EvalMode::HybridRerank => "hybrid+rerank",
        }
    }

    fn search_mode(self) -> SearchMode {
        match self {
            EvalMode::Bm25 => SearchMode::Bm25,
            EvalMode::Dense => SearchMode::Dense,
            EvalMode::Hybrid | EvalMode::HybridRerank => SearchMode::Hybrid,
        }
    }
}

/// Ingests a BEIR `corpus.jsonl` into `index` with the engine's chunker and embedder, as one
/// complete listing (documents the index holds that the corpus lacks are deleted).
pub fn ingest_corpus(
    engine: &Engine,
    corpus: &Path,
    index: &dyn cairn_index::IndexBackend,
    options: &PipelineOptions,
    progress: &(dyn Fn(&Progress) + Sync),
) -> Result<Report, IngestError> {
    pipeline::run(
        &mut BeirCorpus::new(corpus.to_path_buf()),
        index,
        &engine.chunker,
        &engine.embedder,
        &SyncState::default(),
        options,
        pipeline::Control {
            progress,
            cancel: &AtomicBool::new(false),
            gate: None,
        },
    )
}

/// Options of one evaluation.
pub struct EvalOptions {
    pub dataset: PathBuf,
    pub split: String,
    pub modes: Vec<EvalMode>,
    /// Evaluate only the first N judged queries (0 = all).
    pub limit: usize,
}

/// The evaluation index's cache key: the corpus file (path, size, time), embedder and chunking.
fn cache_key(engine: &Engine, corpus: &Path) -> anyhow::Result<String> {
    let meta =
        std::fs::metadata(corpus).with_context(|| format!("reading {}", corpus.display()))?;
    let mut h = Sha256::new();
    h.update(corpus.canonicalize()?.to_string_lossy().as_bytes());
    h.update(meta.len().to_le_bytes());
    h.update(format!("{:?}", meta.modified().ok()).as_bytes());
    h.update(engine.embedder.info().to_string().as_bytes());
    h.update(serde_json::to_vec(&engine.config.chunking)?);
    Ok(hex::encode(h.finalize())[..16].to_string())
}

/// A judged query of a BEIR dataset.
pub(crate) struct JudgedQuery {
    pub id: String,
    pub text: String,
}

/// Opens the dataset's cached evaluation index, building it on first use, with at least 100
/// candidates per retriever.
pub(crate) fn open_dataset_index(engine: &Engine, dataset: &Path) -> anyhow::Result<Index> {
    let corpus = dataset.join("corpus.jsonl");
    let dir = dataset_index_dir(engine, &corpus)?;
    let marker = dir.with_extension("complete.json");
    if dir.exists() && !marker.exists() {
        eprintln!(
            "the evaluation index in {} never recorded a finished build (an interrupted run?); \
             rebuilding it from scratch",
            dir.display()
        );
        std::fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
    }
    let mut index_options = index_options(&engine.config, engine.embedder.info());
    index_options.candidates = index_options.candidates.max(100);
    let index = Index::open(&dir, index_options)
        .with_context(|| format!("opening eval index {}", dir.display()))?;
    fill_dataset_index(engine, &corpus, &index, &dir.display().to_string(), &marker)?;
    Ok(index)
}

/// Where the embedded evaluation index of `corpus` lives: `<data_dir>/eval/<cache key>`.
fn dataset_index_dir(engine: &Engine, corpus: &Path) -> anyhow::Result<PathBuf> {
    Ok(engine
        .config
        .data_dir
        .join("eval")
        .join(cache_key(engine, corpus)?))
}

/// [`open_dataset_index`] in the configured backend: with PostgreSQL, the evaluation index is
/// the schema `<schema>_eval_<key>` next to the main one, cached the same way.
pub(crate) fn open_dataset_backend(
    engine: &Engine,
    dataset: &Path,
) -> anyhow::Result<Arc<dyn IndexBackend>> {
    let Some(pg) = &engine.config.postgres else {
        return Ok(Arc::new(open_dataset_index(engine, dataset)?));
    };
    let corpus = dataset.join("corpus.jsonl");
    let mut pg = pg.clone();
    pg.schema = format!("{}_eval_{}", pg.schema, cache_key(engine, &corpus)?);
    let mut index_options = index_options(&engine.config, engine.embedder.info());
    index_options.candidates = index_options.candidates.max(100);
    let index = cairn_pg::PgIndex::open(&pg, &index_options)
        .with_context(|| format!("opening the PostgreSQL eval index (schema `{}`)", pg.schema))?;
    let marker = engine
        .config
        .data_dir
        .join("eval")
        .join(format!("{}.complete.json", pg.schema));
    let place = format!("schema `{}`", pg.schema);
    fill_dataset_index(engine, &corpus, &index, &place, &marker)?;
    Ok(Arc::new(index))
}

/// What a finished evaluation build records, written last (beside the index): a build
/// counts as complete only when its marker exists and the index still holds what it recorded.
#[derive(Debug, Serialize, Deserialize, PartialEq)]
struct BuildMarker {
    corpus: String,
    documents: usize,
    chunks: usize,
    generation: u64,
}

impl BuildMarker {
    fn of(corpus: &Path, stats: &cairn_index::IndexStats) -> BuildMarker {
        BuildMarker {
            corpus: corpus.display().to_string(),
            documents: stats.documents,
            chunks: stats.chunks,
            generation: stats.generation,
        }
    }

    /// The marker at `path`, `None` when absent or unreadable (an unfinished build).
    fn read(path: &Path) -> Option<BuildMarker> {
        serde_json::from_slice(&std::fs::read(path).ok()?).ok()
    }

    /// Written to a temporary file and renamed, so a marker is never half there.
    fn write(&self, path: &Path) -> anyhow::Result<()> {
        let tmp = path.with_extension("tmp");
        std::fs::create_dir_all(path.parent().unwrap_or(Path::new(".")))?;
        std::fs::write(&tmp, serde_json::to_vec_pretty(self)?)
            .and_then(|()| std::fs::rename(&tmp, path))
            .with_context(|| format!("writing {}", path.display()))
    }
}

/// Builds the evaluation index (`place` names it in messages) unless `marker` records a
/// finished build of what it holds. A build that never finished is redone as a full run (every
/// document rewritten, any the corpus lacks deleted) and only then marked. Chunk vectors come
/// from the engine's embedding cache when an earlier build embedded them, so a second backend
/// (or a rebuilt cache) costs index writes, not embedding.
fn fill_dataset_index(
    engine: &Engine,
    corpus: &Path,
    index: &dyn IndexBackend,
    place: &str,
    marker: &Path,
) -> anyhow::Result<()> {
    let stats = index.stats()?;
    if BuildMarker::read(marker).is_some_and(|m| m == BuildMarker::of(corpus, &stats)) {
        return Ok(());
    }
    if stats.documents > 0 {
        eprintln!(
            "the evaluation index in {place} holds {} documents but no record of a finished \
             build (an interrupted run?); rebuilding it from scratch",
            stats.documents
        );
    } else {
        eprintln!("building the evaluation index in {place} (cached for later runs)");
    }
    if marker.exists() {
        std::fs::remove_file(marker).with_context(|| format!("removing {}", marker.display()))?;
    }
    let options = PipelineOptions {
        full: true,
        embedding_cache: Some(engine.embedding_cache()),
        ..PipelineOptions::default()
    };
    let report = ingest_corpus(engine, corpus, index, &options, &|_| {})?;
    eprintln!(
        "indexed {} documents ({} chunks) in {:.1} s",
        report.counts.indexed, report.counts.chunks, report.seconds
    );
    BuildMarker::of(corpus, &index.stats()?).write(marker)
}

/// The split's judgements and its judged queries sorted by id (the first `limit`, 0 = all).
pub(crate) fn judged_queries(
    dataset: &Path,
    split: &str,
    limit: usize,
) -> anyhow::Result<(Qrels, Vec<JudgedQuery>)> {
    let qrels = read_qrels(&dataset.join("qrels").join(format!("{split}.tsv")))?;
    let file = std::fs::File::open(dataset.join("queries.jsonl"))?;
    let mut queries: Vec<JudgedQuery> = Vec::new();
    for line in std::io::BufReader::new(file).lines() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        let q: RawQuery = serde_json::from_str(&line)?;
        if qrels.contains_key(&q.id) {
            queries.push(JudgedQuery {
                id: q.id,
                text: q.text,
            });
        }
    }
    queries.sort_by(|a, b| a.id.cmp(&b.id));
    if limit > 0 {
        queries.truncate(limit);
    }
    anyhow::ensure!(
        !queries.is_empty(),
        "no query of queries.jsonl is judged in split `{split}`"
    );
    Ok((qrels, queries))
}

/// Builds (or reuses) the dataset's index and evaluates every mode.
pub fn retrieval(engine: &Engine, options: &EvalOptions) -> anyhow::Result<Vec<ModeResult>> {
    let index = open_dataset_backend(engine, &options.dataset)?;
    let (qrels, queries) = judged_queries(&options.dataset, &options.split, options.limit)?;
    let mut results = Vec::new();
    for mode in &options.modes {
        let mut per_query = Vec::with_capacity(queries.len());
        let mut latencies = Vec::with_capacity(queries.len());
        for q in &queries {
            let started = Instant::now();
            let vector = match mode {
                EvalMode::Bm25 => None,
                _ => Some(engine.embed_query(&q.text)?),
            };
            let mut hits = index.search(&SearchRequest {
                text: q.text.clone(),
                vector,
                k: 300,
                mode: mode.search_mode(),
                filter: Filter::default(),
                snippets: false,
            })?;
            if *mode == EvalMode::HybridRerank {
                let n = engine.config.rerank.candidates.min(hits.len());
                let rest = hits.split_off(n);
                hits = crate::retrieval::rerank::apply(engine.reranker.as_ref(), &q.text, hits, n)?;
                hits.extend(rest);
            }
            latencies.push(started.elapsed().as_secs_f64() * 1000.0);
            let ranked = distinct_documents(hits.iter().map(|h| h.document.external_id.as_str()));
            per_query.push(Metrics::of(&ranked, &qrels[&q.id]));
        }
        latencies.sort_by(f64::total_cmp);
        let pct = |p: f64| latencies[((latencies.len() - 1) as f64 * p).round() as usize];
        results.push(ModeResult {
            mode: mode.name().to_string(),
            queries: queries.len(),
            metrics: Metrics::mean(&per_query),
            latency_p50_ms: pct(0.5),
            latency_p99_ms: pct(0.99),
        });
    }
    Ok(results)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An engine on the hash embedder with no sources, and a six-document BEIR dataset.
    fn engine_and_dataset(root: &Path) -> (Engine, PathBuf) {
        let config = root.join("config.toml");
        std::fs::write(
            &config,
            "data_dir = \"data\"\n[embedder]\nkind = \"hash\"\n",
        )
        .expect("config");
        let config = crate::config::Config::load(&config, true, &Default::default()).expect("load");
        let dataset = root.join("dataset");
        std::fs::create_dir_all(&dataset).expect("mkdir");
        let lines: Vec<String> = (0..6)
            .map(|i| {
                format!(
                    r#"{{"_id":"d{i}","title":"Doc {i}","text":"animal number {i} eats grass"}}"#
                )
            })
            .collect();
        std::fs::write(dataset.join("corpus.jsonl"), lines.join("\n")).expect("corpus");
        (
            crate::engine::Engine::open(config).expect("engine"),
            dataset,
        )
    }

    #[test]
    fn an_interrupted_evaluation_build_is_rebuilt_from_scratch_and_a_finished_one_reused() {
        let root = tempfile::tempdir().expect("tempdir");
        let (engine, dataset) = engine_and_dataset(root.path());
        let corpus = dataset.join("corpus.jsonl");
        // An interrupted build: half of the corpus committed in the directory the evaluation
        // index uses, then the process died.
        let half = root.path().join("half.jsonl");
        let text = std::fs::read_to_string(&corpus).expect("read");
        let head: Vec<&str> = text.lines().take(3).collect();
        std::fs::write(&half, head.join("\n")).expect("half");
        let dir = dataset_index_dir(&engine, &corpus).expect("dir");
        {
            let index = Index::open(&dir, index_options(&engine.config, engine.embedder.info()))
                .expect("open");
            ingest_corpus(&engine, &half, &index, &PipelineOptions::default(), &|_| {})
                .expect("partial build");
            assert_eq!(index.stats().documents, 3);
        }
        let index = open_dataset_index(&engine, &dataset).expect("eval index");
        assert_eq!(
            index.stats().documents,
            6,
            "evaluated on a half-built index"
        );
        let generation = index.stats().generation;
        drop(index);
        // A finished build is used as it is.
        let index = open_dataset_index(&engine, &dataset).expect("eval index");
        assert_eq!(index.stats().documents, 6);
        assert_eq!(
            index.stats().generation,
            generation,
            "a finished build was rebuilt"
        );
    }

    #[test]
    fn qrels_with_header() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("test.tsv");
        std::fs::write(&p, "query-id\tcorpus-id\tscore\nq1\td1\t1\nq1\td2\t2\n").expect("write");
        let q = read_qrels(&p).expect("qrels");
        assert_eq!(q["q1"]["d2"], 2);
    }
}
