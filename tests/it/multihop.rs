//! The multi-hop evaluation (`cairn eval answers --mode ... --scripted` over
//! `samples/multihop.jsonl`) and the agent-step benchmark (`cairn bench agent`), driven through
//! the binary: the scripted planner speaks the OpenAI wire format over loopback, so the real
//! provider client, gateway and agent loop run; the report's shape, the agent's citations, and
//! the flags' errors are checked.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

use crate::support;

fn cairn() -> Command {
    Command::new(env!("CARGO_BIN_EXE_cairn"))
}

fn ok(out: Output) -> Vec<u8> {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// A config serving the sample help centre, cairn docs and CRM accounts, ingested.
fn ingested(dir: &Path) -> PathBuf {
    let crm = support::repo().join("samples/crm/accounts.csv");
    let config = support::write_config(
        dir,
        &format!(
            r#"[[sources]]
name = "crm"
kind = "crm"
path = {crm:?}
id = "Id"
id_kind = "salesforce"
title = "{{Name}} ({{BillingCity}})"
body = ["Name", "Industry", "BillingCity", "Support_Tier__c", "Account_Manager__c", "Notes__c"]
"#
        ),
    );
    ok(cairn()
        .arg("--config")
        .arg(&config)
        .args(["-q", "ingest"])
        .output()
        .expect("run"));
    config
}

/// The lines of `samples/multihop.jsonl` with these ids, written to `dir/subset.jsonl`.
fn subset(dir: &Path, ids: &[&str]) -> PathBuf {
    let all = std::fs::read_to_string(support::repo().join("samples/multihop.jsonl"))
        .expect("samples/multihop.jsonl");
    let lines: Vec<&str> = all
        .lines()
        .filter(|l| {
            let v: Value = serde_json::from_str(l).expect("json line");
            ids.contains(&v["id"].as_str().unwrap_or_default())
        })
        .collect();
    assert_eq!(lines.len(), ids.len(), "every id is in the file");
    let path = dir.join("subset.jsonl");
    std::fs::write(&path, lines.join("\n")).expect("write");
    path
}

fn eval(config: &Path, qa: &Path, args: &[&str]) -> Output {
    cairn()
        .arg("--config")
        .arg(config)
        .args(["-q", "eval", "answers", "--json", "--qa"])
        .arg(qa)
        .args(args)
        .output()
        .expect("run")
}

/// The bundled file: at least 20 questions, each with two hops, gold facts and two sources.
#[test]
fn the_multihop_file_has_twenty_two_hop_questions_with_facts_and_sources() {
    let all = std::fs::read_to_string(support::repo().join("samples/multihop.jsonl"))
        .expect("samples/multihop.jsonl");
    let items: Vec<Value> = all
        .lines()
        .map(|l| serde_json::from_str(l).expect("json line"))
        .collect();
    assert!(items.len() >= 20, "{} questions", items.len());
    for i in &items {
        assert_eq!(i["hops"].as_array().map(Vec::len), Some(2), "{i}");
        assert!(i["facts"].as_array().is_some_and(|f| f.len() >= 2), "{i}");
        let sources = i["sources"].as_array().expect("sources");
        assert_eq!(sources.len(), 2, "{i}");
        assert_ne!(sources[0], sources[1], "two different documents: {i}");
    }
}

/// Three questions in both modes with the scripted planner: one report per mode with the
/// per-question steps, model calls and returned documents; every agent citation names a
/// passage its tool calls returned; and the agent cites both expected documents of a question
/// where plain RAG does not. Without `--scripted`, the offline default runs agent requests as
/// RAG and the report says so.
#[test]
fn eval_answers_compares_rag_and_the_scripted_agent_on_multihop_questions() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = ingested(dir.path());
    let qa = subset(
        dir.path(),
        &[
            "tiers-riverside-fjord",
            "fjord-city-delivery",
            "express-vs-zip-repair",
        ],
    );
    let out = ok(eval(&config, &qa, &["--mode", "both", "--scripted"]));
    let report: Value = serde_json::from_slice(&out).expect("json");
    assert_eq!(report["agent_model"], "scripted-planner", "{report:#}");
    assert!(
        report["note"]
            .as_str()
            .is_some_and(|n| n.contains("scripted planner") && n.contains("not a language model")),
        "{report:#}"
    );
    let modes = report["modes"].as_array().expect("modes");
    assert_eq!(modes.len(), 2);
    let (rag, agent) = (&modes[0], &modes[1]);
    assert_eq!(rag["mode"], "rag");
    assert_eq!(agent["mode"], "agent");
    for m in modes {
        assert_eq!(m["questions"], 3);
        for key in [
            "answer_contains_gold",
            "citation_validity_expected",
            "all_sources_returned",
            "all_sources_cited",
            "tokens_per_question",
            "cost_usd_per_answer",
        ] {
            assert!(m[key].is_number(), "{key}: {m:#}");
        }
    }
    assert_eq!(agent["ran_as_rag"], 0, "{agent:#}");
    assert_eq!(agent["steps_per_question"], 2.0, "{agent:#}");
    assert_eq!(agent["model_calls_per_question"], 3.0, "{agent:#}");
    assert!(rag["steps_per_question"].is_null(), "{rag:#}");
    // Agent citations are numbered by the tool results: each names a returned chunk.
    assert_eq!(agent["citations_returned"], 1.0, "{agent:#}");
    let items = |m: &Value| m["items"].as_array().expect("items").clone();
    let (rag_items, agent_items) = (items(rag), items(agent));
    for a in &agent_items {
        assert_eq!(a["mode"], "agent", "{a:#}");
        assert_eq!(a["steps"], 2, "{a:#}");
        assert!(a["tokens"].as_u64().is_some_and(|t| t > 0), "{a:#}");
    }
    let agent_only: Vec<&Value> = rag_items
        .iter()
        .zip(&agent_items)
        .filter(|(r, a)| r["all_sources_cited"] == false && a["all_sources_cited"] == true)
        .map(|(r, _)| &r["id"])
        .collect();
    assert!(
        !agent_only.is_empty(),
        "no question where the agent cited both sources and RAG did not: {report:#}"
    );

    // The offline default cannot call tools: agent requests run as plain RAG, and say so.
    let out = ok(eval(&config, &qa, &["--mode", "agent"]));
    let report: Value = serde_json::from_slice(&out).expect("json");
    assert!(
        report["note"]
            .as_str()
            .is_some_and(|n| n.contains("cannot call tools")),
        "{report:#}"
    );
    assert_eq!(report["modes"][0]["mode"], "agent");
    assert_eq!(report["modes"][0]["ran_as_rag"], 3, "{report:#}");
}

/// The new flags' contract: `--mode` takes rag, agent or both; `--scripted` needs `--mode`
/// and an agent mode; `bench agent` refuses zero runs or steps. Each error names the flag.
#[test]
fn eval_mode_and_scripted_flags_refuse_what_they_cannot_do() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = support::write_config(dir.path(), "");
    let qa = support::repo().join("samples/multihop.jsonl");
    let err = |out: Output| {
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let e = err(eval(&config, &qa, &["--mode", "sideways"]));
    assert!(
        e.contains("sideways") && e.contains("rag") && e.contains("both"),
        "{e}"
    );
    let e = err(eval(&config, &qa, &["--scripted"]));
    assert!(e.contains("--mode"), "{e}");
    let e = err(eval(&config, &qa, &["--mode", "rag", "--scripted"]));
    assert!(
        e.contains("--scripted serves agent mode") && e.contains("--mode both"),
        "{e}"
    );
    for (flag, value) in [("--runs", "0"), ("--steps", "0")] {
        let out = cairn()
            .arg("--config")
            .arg(&config)
            .args(["-q", "bench", "agent", flag, value])
            .output()
            .expect("run");
        let e = err(out);
        assert!(e.contains(flag), "{e}");
    }
}

/// `cairn bench agent` measures plain and agent answers against the instant planner: one
/// variant per step count, the agent making one model call per step plus the answer, and a
/// positive time per step.
#[test]
fn bench_agent_reports_the_time_a_step_adds() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = ingested(dir.path());
    let out = ok(cairn()
        .arg("--config")
        .arg(&config)
        .args([
            "-q", "bench", "agent", "--runs", "3", "--warmup", "1", "--steps", "1", "--steps", "2",
            "--json",
        ])
        .output()
        .expect("run"));
    let r: Value = serde_json::from_slice(&out).expect("json");
    let v = r["variants"].as_array().expect("variants");
    assert_eq!(v.len(), 3, "{r:#}");
    assert_eq!(v[0]["mode"], "plain");
    assert_eq!(v[0]["model_calls"], 1);
    for (i, k) in [(1, 1), (2, 2)] {
        assert_eq!(v[i]["mode"], "agent");
        assert_eq!(v[i]["steps"], k);
        assert_eq!(v[i]["model_calls"], k + 1);
        assert!(v[i]["tools_ms"].as_f64().is_some_and(|t| t > 0.0), "{r:#}");
        assert!(v[i]["added_per_step_ms"].is_number(), "{r:#}");
    }
    let (step, tool) = (&r["marginal_step_ms"], &r["marginal_tool_ms"]);
    assert!(
        step.as_f64()
            .zip(tool.as_f64())
            .is_some_and(|(s, t)| s > 0.0 && t > 0.0),
        "{r:#}"
    );
}
