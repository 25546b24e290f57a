//! `cairn eval retrieval | fusion | answers`: quality reports over a dataset or a question file.
//! `eval answers --mode` compares plain RAG with agent mode; `--scripted` starts the scripted
//! planner (`eval::planner`) and points the agent route at it before the engine opens.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use clap::Subcommand;

use crate::answer::events::Mode;
use crate::config::Config;
use crate::engine::{Engine, OpenOptions};
use crate::eval::answers::{AnswerReport, ModeComparison};

#[derive(Debug, Subcommand)]
pub enum EvalCommand {
    /// nDCG@10, Recall@10/100, MRR@10 and latency per retrieval mode.
    #[command(
        after_help = "Example:\n  cairn eval retrieval --dataset ../data/scifact --split train --json"
    )]
    Retrieval {
        /// Folder with corpus.jsonl, queries.jsonl and qrels/<split>.tsv.
        #[arg(long)]
        dataset: PathBuf,
        #[arg(long, default_value = "test")]
        split: String,
        /// bm25, dense, hybrid, hybrid+rerank, or all (repeatable).
        #[arg(long, default_value = "all")]
        mode: Vec<String>,
        /// Evaluate only the first N judged queries (0 = all).
        #[arg(long, default_value_t = 0)]
        limit: usize,
        /// One JSON object per mode, one per line.
        #[arg(long)]
        json: bool,
    },
    /// Sweeps fusion settings (RRF k and weights, convex alpha) over stored retriever lists,
    /// with a two-fold check that the best setting holds on queries it was not chosen on.
    #[command(
        after_help = "Example:\n  cairn eval fusion --dataset ../data/scifact --split train --json"
    )]
    Fusion {
        /// Folder with corpus.jsonl, queries.jsonl and qrels/<split>.tsv.
        #[arg(long)]
        dataset: PathBuf,
        #[arg(long, default_value = "test")]
        split: String,
        /// Evaluate only the first N judged queries (0 = all).
        #[arg(long, default_value_t = 0)]
        limit: usize,
        /// The whole report as one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Citation validity, precision/recall, "I don't know" rate, gold-answer rate, cost and latency.
    #[command(
        after_help = "Without --mode the questions run in plain RAG mode and the report is one object; with --mode the output is {\"agent_model\", \"note\", \"modes\": [one report per mode]}.\n--scripted answers agent turns with the built-in scripted planner (it searches each question's `hops`, then quotes the best sentence of each result): it measures cairn's tool loop, not a model.\nExamples:\n  cairn eval answers --qa samples/qa.jsonl --json\n  cairn eval answers --qa samples/multihop.jsonl --mode both --scripted"
    )]
    Answers {
        /// JSON lines: {"question", "answers"?, "facts"?, "sources"?, "unanswerable"?,
        /// "conversation"?, "hops"?}.
        #[arg(long)]
        qa: PathBuf,
        /// Print the report (with every question's outcome) as one JSON object.
        #[arg(long)]
        json: bool,
        /// Ask in plain RAG mode, agent mode (`[agent] route`), or both, and report per mode.
        #[arg(long, value_parser = ["rag", "agent", "both"])]
        mode: Option<String>,
        /// Serve agent mode with the built-in scripted planner on 127.0.0.1 (needs --mode agent
        /// or both).
        #[arg(long, requires = "mode")]
        scripted: bool,
    },
}

/// Runs one `cairn eval` command.
pub(super) fn run(
    engine: &Arc<Engine>,
    runtime: &tokio::runtime::Runtime,
    cmd: EvalCommand,
) -> anyhow::Result<ExitCode> {
    match cmd {
        EvalCommand::Retrieval {
            dataset,
            split,
            mode,
            limit,
            json,
        } => retrieval(engine, dataset, split, &mode, limit, json),
        EvalCommand::Fusion {
            dataset,
            split,
            limit,
            json,
        } => fusion(engine, dataset, split, limit, json),
        EvalCommand::Answers { qa, json, mode, .. } => match mode {
            None => answers(engine, runtime, &qa, json),
            Some(m) => {
                let items = crate::eval::qa::read_qa(&qa)?;
                compare(engine, runtime, &items, &modes_of(&m), false, json)
            }
        },
    }
}

/// The modes `--mode` names.
fn modes_of(mode: &str) -> Vec<Mode> {
    match mode {
        "rag" => vec![Mode::Rag],
        "agent" => vec![Mode::Agent],
        _ => vec![Mode::Rag, Mode::Agent],
    }
}

/// `eval answers --mode ... --scripted`: starts the scripted planner with the file's hops,
/// points `[agent] route` at it, opens the engine (ingesting the configured sources into an
/// empty index) and compares the modes.
pub(super) fn scripted(
    mut config: Config,
    open: &OpenOptions,
    cmd: EvalCommand,
) -> anyhow::Result<ExitCode> {
    let EvalCommand::Answers { qa, json, mode, .. } = cmd else {
        return Ok(ExitCode::SUCCESS);
    };
    let modes = modes_of(mode.as_deref().unwrap_or("both"));
    anyhow::ensure!(
        modes.contains(&Mode::Agent),
        "--scripted serves agent mode: use it with --mode agent or --mode both"
    );
    let items = crate::eval::qa::read_qa(&qa)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let script = crate::eval::planner::Script::new(
        items
            .iter()
            .map(|i| (i.question.as_str(), i.hops.as_slice())),
    );
    let planner = runtime.block_on(crate::eval::planner::Planner::start(script))?;
    planner.configure(&mut config, false);
    let engine = Arc::new(Engine::open_with(config, open)?);
    engine.ingest_if_empty()?;
    let code = compare(&engine, &runtime, &items, &modes, true, json);
    drop(planner);
    code
}

fn compare(
    engine: &Arc<Engine>,
    runtime: &tokio::runtime::Runtime,
    items: &[crate::eval::qa::QaItem],
    modes: &[Mode],
    scripted: bool,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let report = runtime.block_on(crate::eval::answers::compare(
        engine.clone(),
        items,
        modes,
        scripted,
    ))?;
    engine.traces.flush_export();
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_comparison(&report);
    }
    Ok(ExitCode::SUCCESS)
}

fn answers(
    engine: &Arc<Engine>,
    runtime: &tokio::runtime::Runtime,
    qa: &Path,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let items = crate::eval::qa::read_qa(qa)?;
    let report = runtime.block_on(crate::eval::answers::answers(engine.clone(), &items))?;
    // Every answer left a trace: send queued spans before the process exits.
    engine.traces.flush_export();
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_answer_report(&report);
    }
    Ok(ExitCode::SUCCESS)
}

fn fusion(
    engine: &Engine,
    dataset: PathBuf,
    split: String,
    limit: usize,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let report = crate::eval::fusion::sweep(
        engine,
        &crate::eval::fusion::FusionOptions {
            dataset,
            split,
            limit,
        },
    )?;
    if json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print_fusion_report(&report);
    }
    Ok(ExitCode::SUCCESS)
}

/// The `--mode` values, each expanded (`all`) and kept once, in order.
fn parse_modes(mode: &[String]) -> anyhow::Result<Vec<crate::eval::EvalMode>> {
    let mut modes = Vec::new();
    for m in mode {
        let parsed = crate::eval::EvalMode::parse(m).ok_or_else(|| {
            anyhow::anyhow!("unknown --mode `{m}`; use bm25, dense, hybrid, hybrid+rerank or all")
        })?;
        for p in parsed {
            if !modes.contains(&p) {
                modes.push(p);
            }
        }
    }
    Ok(modes)
}

fn retrieval(
    engine: &Engine,
    dataset: PathBuf,
    split: String,
    mode: &[String],
    limit: usize,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let modes = parse_modes(mode)?;
    let results = crate::eval::retrieval(
        engine,
        &crate::eval::EvalOptions {
            dataset,
            split,
            modes,
            limit,
        },
    )?;
    if json {
        for r in &results {
            println!("{}", serde_json::to_string(r)?);
        }
    } else {
        println!(
            "{:<14} {:>8} {:>8} {:>10} {:>11} {:>8} {:>9} {:>9}",
            "mode", "queries", "nDCG@10", "Recall@10", "Recall@100", "MRR@10", "p50 ms", "p99 ms"
        );
        for r in &results {
            println!(
                "{:<14} {:>8} {:>8.4} {:>10.4} {:>11.4} {:>8.4} {:>9.2} {:>9.2}",
                r.mode,
                r.queries,
                r.metrics.ndcg_10,
                r.metrics.recall_10,
                r.metrics.recall_100,
                r.metrics.mrr_10,
                r.latency_p50_ms,
                r.latency_p99_ms
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn print_fusion_report(r: &crate::eval::fusion::FusionReport) {
    let mut rows: Vec<_> = r.results.iter().collect();
    rows.sort_by(|a, b| b.metrics.ndcg_10.total_cmp(&a.metrics.ndcg_10));
    println!(
        "{:<34} {:>8} {:>10} {:>11} {:>8} {:>9} {:>9}",
        "setting", "nDCG@10", "Recall@10", "Recall@100", "MRR@10", "even", "odd"
    );
    for x in rows {
        let mark = if x.setting == r.default_setting {
            " (default)"
        } else {
            ""
        };
        println!(
            "{:<34} {:>8.4} {:>10.4} {:>11.4} {:>8.4} {:>9.4} {:>9.4}{mark}",
            x.setting,
            x.metrics.ndcg_10,
            x.metrics.recall_10,
            x.metrics.recall_100,
            x.metrics.mrr_10,
            x.ndcg_10_folds[0],
            x.ndcg_10_folds[1]
        );
    }
    for h in &r.cross_validation {
        println!(
            "best on the {} queries: {} -> {:.4} nDCG@10 on the others (default there: {:.4})",
            if h.chosen_on_fold == 0 { "even" } else { "odd" },
            h.setting,
            h.held_out_ndcg_10,
            h.default_ndcg_10
        );
    }
}

fn print_answer_report(r: &crate::eval::answers::AnswerReport) {
    let pct = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{:.1} %", v * 100.0));
    println!("questions                     {}", r.questions);
    println!("citation validity             {}", pct(r.citation_validity));
    println!(
        "citation precision            {}",
        pct(r.citation_precision)
    );
    println!("citation recall               {}", pct(r.citation_recall));
    println!(
        "I don't know (unanswerable)   {}",
        pct(r.idk_rate_unanswerable)
    );
    println!(
        "I don't know (answerable)     {}",
        pct(r.idk_rate_answerable)
    );
    println!(
        "answer contains gold          {}",
        pct(r.answer_contains_gold)
    );
    println!("retrieval: first hit expected {}", pct(r.retrieval_top_hit));
    println!("retrieval: any hit expected   {}", pct(r.retrieval_any_hit));
    if r.condensed_by_model.is_some() {
        println!(
            "query made by condense model  {}",
            pct(r.condensed_by_model)
        );
        println!("condense model heard: person  {}", r.condense_human);
        for (reason, n) in &r.condense_fallbacks {
            println!("  heuristic instead: {reason:<13} {n}");
        }
    }
    println!(
        "cost per answer               {:.6} USD",
        r.cost_usd_per_answer
    );
    println!(
        "latency p50 / p99             {:.1} / {:.1} ms",
        r.latency_p50_ms, r.latency_p99_ms
    );
    for item in &r.items {
        let flag = match (item.said_idk, item.contains_gold) {
            (true, _) => "idk",
            (false, Some(true)) => "gold",
            (false, Some(false)) => "miss",
            (false, None) => "-",
        };
        println!(
            "  {:<20} {:<5} {}",
            item.id,
            flag,
            item.cited_docs.join(", ")
        );
    }
}

/// The per-mode table of `eval answers --mode`, then each question's outcome per mode.
fn print_comparison(r: &ModeComparison) {
    let pct = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{:.1} %", v * 100.0));
    let num = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.2}"));
    println!("agent model: {}", r.agent_model);
    println!("note: {}", r.note);
    print!("{:<38}", "");
    for m in &r.modes {
        print!(" {:>12}", m.mode);
    }
    println!();
    type Row<'a> = (&'a str, &'a dyn Fn(&AnswerReport) -> String);
    let rows: [Row; 10] = [
        ("questions", &|m| m.questions.to_string()),
        ("answer contains every gold fact", &|m| {
            pct(m.answer_contains_gold)
        }),
        ("citation validity (expected)", &|m| {
            pct(m.citation_validity_expected)
        }),
        ("citations quoting their chunk", &|m| {
            pct(m.citation_validity)
        }),
        ("every expected source returned", &|m| {
            pct(m.all_sources_returned)
        }),
        ("every expected source cited", &|m| pct(m.all_sources_cited)),
        ("steps per question", &|m| num(m.steps_per_question)),
        ("model calls per question", &|m| {
            num(m.model_calls_per_question)
        }),
        ("tokens per question", &|m| {
            format!("{:.0}", m.tokens_per_question)
        }),
        ("latency p50 ms", &|m| format!("{:.1}", m.latency_p50_ms)),
    ];
    for (name, value) in rows {
        print!("{name:<38}");
        for m in &r.modes {
            print!(" {:>12}", value(m));
        }
        println!();
    }
    for m in &r.modes {
        println!(
            "cost per answer ({}): {:.6} USD; ran as rag: {}",
            m.mode, m.cost_usd_per_answer, m.ran_as_rag
        );
    }
    for (i, item) in r.modes[0].items.iter().enumerate() {
        print!("  {:<36}", item.id);
        for m in &r.modes {
            let o = &m.items[i];
            let gold = match o.contains_gold {
                Some(true) => "gold",
                Some(false) => "miss",
                None => "-",
            };
            let both = if o.all_sources_cited == Some(true) {
                "both"
            } else {
                "part"
            };
            print!(" {:>12}", format!("{gold}/{both}"));
        }
        println!();
    }
}
