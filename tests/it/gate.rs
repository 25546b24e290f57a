//! The reindex quality gate: golden questions are scored on the generation a reindex prepared
//! before it is switched in; a reindex that makes them worse is discarded, the old generation
//! keeps serving, and the job and report say why.

use std::path::Path;
use std::sync::atomic::AtomicBool;

use cairn_index::{Filter, SearchMode};

use crate::support::{ADMIN, TestApp, reindex_and_wait};

const OTTERS: &str = "# Sea otters\n\nSea otters hold hands while they sleep so that the current \
    does not carry them apart. A group of resting otters is called a raft.";
const BADGERS: &str = "# Badgers\n\nBadgers dig large burrow systems called setts, which a \
    family may use for decades.";
const UNRELATED: &str = "# Quarterly budget\n\nThe finance team reviews travel spending every \
    quarter and publishes the totals on the intranet.";

fn write_kb(dir: &Path, otters: &str) {
    let kb = dir.join("kb");
    std::fs::create_dir_all(&kb).expect("mkdir");
    std::fs::write(kb.join("otters.md"), otters).expect("write");
    if !kb.join("badgers.md").exists() {
        std::fs::write(kb.join("badgers.md"), BADGERS).expect("write");
    }
}

fn gated_app() -> TestApp {
    TestApp::with_setup(|dir| {
        write_kb(dir, OTTERS);
        let golden = dir.join("golden.jsonl");
        std::fs::write(
            &golden,
            concat!(
                r#"{"question": "Why do sea otters hold hands when sleeping?", "sources": ["kb:otters.md"]}"#,
                "\n",
                r#"{"question": "What is a badger burrow called?", "sources": ["badgers.md"]}"#,
                "\n",
                r#"{"question": "Is there an answer to this?", "unanswerable": true}"#,
                "\n",
            ),
        )
        .expect("write golden");
        format!(
            "[quality_gate]\nfile = {golden:?}\nmax_drop = 0.05\n[auth]\n[[auth.keys]]\nname = \"admin\"\nhash = \"{}\"\nscopes = [\"admin\", \"ask\", \"search\"]\n[[sources]]\nname = \"kb\"\nkind = \"files\"\npath = {:?}\n",
            cairn::http::auth::hash_key(ADMIN),
            dir.join("kb"),
        )
    })
}

fn top_doc(app: &TestApp, text: &str) -> Option<String> {
    let hits = app
        .engine
        .search(text, 3, Filter::default(), SearchMode::Hybrid)
        .expect("search");
    hits.first().map(|h| h.document.id.clone())
}

fn ingest_kb(app: &TestApp) -> cairn_ingest::pipeline::Report {
    let mut reports = app
        .engine
        .ingest(Some("kb"), false, &|_, _| {}, &AtomicBool::new(false))
        .expect("ingest");
    reports.pop().expect("one report")
}

#[test]
fn a_reindex_that_loses_golden_answers_is_not_switched_in() {
    let app = gated_app();
    assert_eq!(app.engine.golden.as_ref().map(|g| g.len()), Some(2));
    let generation = app.engine.index.generation().expect("generation");
    assert_eq!(
        top_doc(&app, "sea otters hold hands").as_deref(),
        Some("kb:otters.md")
    );

    let state = app.engine.source_state("kb");
    assert!(state.last_reconciled.is_some());

    // The page that answered a golden question loses its content.
    write_kb(app.dir.path(), UNRELATED);
    let report = ingest_kb(&app);
    let gate = report.gate.as_ref().expect("the gate judged the run");
    assert!(!gate.passed, "{gate:?}");
    assert!(gate.reason.contains("ndcg@10 dropped"), "{}", gate.reason);
    assert!(
        gate.reason
            .contains(&format!("generation {generation} keeps serving")),
        "{}",
        gate.reason
    );
    assert_eq!(gate.questions, 2);
    assert!(gate.scores["ndcg@10"].serving > gate.scores["ndcg@10"].candidate + 0.05);
    assert_eq!(report.counts.indexed, 1);

    // Nothing switched: same generation, the old text still answers, the new one does not.
    assert_eq!(
        app.engine.index.generation().expect("generation"),
        generation
    );
    assert_eq!(
        top_doc(&app, "sea otters hold hands").as_deref(),
        Some("kb:otters.md")
    );
    let hits = app
        .engine
        .search(
            "quarterly travel spending",
            5,
            Filter::default(),
            SearchMode::Bm25,
        )
        .expect("search");
    assert!(hits.is_empty(), "discarded words are searchable: {hits:?}");
    // The saved sync state did not advance, so the next run retries the same change.
    assert_eq!(app.engine.source_state("kb"), state);

    // Putting the answer back (with more words) passes and is switched in.
    write_kb(
        app.dir.path(),
        &format!("{OTTERS} Otters also wrap themselves in kelp."),
    );
    let report = ingest_kb(&app);
    let gate = report.gate.as_ref().expect("judged");
    assert!(gate.passed, "{gate:?}");
    assert!(app.engine.index.generation().expect("generation") > generation);
    let hits = app
        .engine
        .search(
            "wrap themselves in kelp",
            3,
            Filter::default(),
            SearchMode::Bm25,
        )
        .expect("search");
    assert_eq!(
        hits.first().map(|h| h.document.id.as_str()),
        Some("kb:otters.md")
    );

    // A run that changes nothing prepares nothing and is not judged.
    assert!(ingest_kb(&app).gate.is_none());
}

#[tokio::test]
async fn a_refused_reindex_job_fails_and_says_why() {
    let app = gated_app();
    write_kb(app.dir.path(), UNRELATED);
    let job = reindex_and_wait(&app, r#"{"source":"kb"}"#).await;
    assert_eq!(job["state"], "failed", "{job}");
    let error = job["error"].as_str().expect("error");
    assert!(
        error.starts_with("quality gate: source `kb`: ndcg@10 dropped"),
        "{error}"
    );
    let gate = &job["reports"][0]["gate"];
    assert_eq!(gate["passed"], false, "{job}");
    assert!(
        gate["scores"]["recall@10"]["serving"].as_f64().is_some(),
        "{gate}"
    );
}

#[test]
fn a_golden_file_without_expected_sources_is_refused_at_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    let golden = dir.path().join("golden.jsonl");
    std::fs::write(&golden, "{\"question\": \"anything?\"}\n").expect("write");
    let path =
        crate::support::write_config(dir.path(), &format!("[quality_gate]\nfile = {golden:?}\n"));
    let config = cairn::config::Config::load(&path, true, &Default::default()).expect("config");
    let err = match cairn::engine::Engine::open(config) {
        Ok(_) => panic!("opened with a golden file the gate cannot score"),
        Err(e) => format!("{e:#}"),
    };
    assert!(err.contains("[quality_gate] file"), "{err}");
    assert!(
        err.contains("no question lists expected `sources`"),
        "{err}"
    );
}
