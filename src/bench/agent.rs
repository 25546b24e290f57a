//! `cairn bench agent`: what one agent step costs beyond the model's own time.
//!
//! The answer route and `[agent] route` are pointed at the scripted planner
//! (`eval::planner`), which answers each call at once, and the answer cache is off. Each
//! iteration asks, in this process and in turn: one plain answer (retrieval, one model call:
//! the baseline) and one agent answer per requested step count `k` (k `search` calls, each a
//! model turn through the gateway and a tool run, then the closing model call). Reported per
//! variant: medians of the whole answer, of the tool runs (the `step` events' `ms`), of the
//! model's own time (the planner's time composing replies) and of the rest per model call (the
//! gateway round trip: request building, loopback HTTP, SSE parsing, tool-call assembly, the
//! loop's bookkeeping); per `k` the time added per step over the baseline,
//! `(median agent_k − median plain) / k`, less the model's own time per step (for small `k`
//! this mixes in the plain answer's own retrieval, which agent mode replaces by its searches);
//! and the marginal cost of one more step: the slope of the agent medians over `k`, less the
//! model's own time per step, split into the tool run and the rest.

use std::sync::Arc;
use std::time::Instant;

use serde::Serialize;
use tokio::sync::mpsc;

use crate::agent;
use crate::answer::events::{AnswerEvent, AskRequest};
use crate::config::Config;
use crate::engine::{Engine, OpenOptions};
use crate::eval::planner::{Planner, Script};
use cairn_index::Filter;

/// Searches the agent variants make, in turn (all answerable from the sample corpus).
const HOPS: &[&str] = &[
    "refund window for unused items",
    "express shipping cost",
    "warranty against manufacturing defects",
    "password reset link validity",
    "delivery times to Norway",
    "flat fee for paid repairs",
];

/// Options of `cairn bench agent`.
#[derive(Debug, Clone)]
pub struct AgentBenchOptions {
    /// Measured iterations (after `warmup` unmeasured ones).
    pub runs: usize,
    pub warmup: usize,
    /// Step counts of the agent variants.
    pub steps: Vec<usize>,
    /// The question the plain baseline asks.
    pub question: String,
}

/// One variant's medians, in milliseconds.
#[derive(Debug, Clone, Serialize)]
pub struct Variant {
    /// `plain` or `agent`.
    pub mode: &'static str,
    /// Tool calls per answer (0 for plain).
    pub steps: usize,
    pub model_calls: u32,
    pub total_ms: f64,
    pub tools_ms: f64,
    pub model_ms: f64,
    /// (total − tools − model) / model calls.
    pub rest_per_model_call_ms: f64,
    /// Agent only: (total − plain total) / steps − the model's own time per step.
    pub added_per_step_ms: Option<f64>,
}

/// What `cairn bench agent` prints.
#[derive(Debug, Clone, Serialize)]
pub struct AgentBenchReport {
    pub runs: usize,
    pub variants: Vec<Variant>,
    /// What one more step costs: the least-squares slope of the agent variants' median totals
    /// over their step counts, less the model's own time per step (with two step counts or more).
    pub marginal_step_ms: Option<f64>,
    /// Of that, the tool run: the slope of the median tool times.
    pub marginal_tool_ms: Option<f64>,
    pub note: &'static str,
}

const NOTE: &str = "in-process answers against the scripted planner on loopback (it replies at once): the figures are cairn's own cost per step (gateway round trip, tool run, loop), not a model's";

/// One answer's timings.
#[derive(Debug, Clone, Copy, Default)]
struct Sample {
    total_ms: f64,
    tools_ms: f64,
    model_ms: f64,
    model_calls: u32,
}

/// The question of the agent variant with `k` steps, and its searches.
fn agent_question(k: usize) -> (String, Vec<String>) {
    let hops = (0..k).map(|i| HOPS[i % HOPS.len()].to_string()).collect();
    (format!("Benchmark question with {k} lookups"), hops)
}

/// Points both routes at a started planner, turns the cache off, opens the engine (ingesting
/// into an empty index) and runs the iterations.
pub fn run(
    mut config: Config,
    open: &OpenOptions,
    o: &AgentBenchOptions,
) -> anyhow::Result<AgentBenchReport> {
    anyhow::ensure!(o.runs > 0, "--runs must be at least 1");
    anyhow::ensure!(
        o.steps.iter().all(|k| *k > 0),
        "--steps values must be at least 1"
    );
    let max_steps = o.steps.iter().copied().max().unwrap_or(1);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let questions: Vec<(String, Vec<String>)> =
        o.steps.iter().map(|k| agent_question(*k)).collect();
    let script = Script::new(questions.iter().map(|(q, h)| (q.as_str(), h.as_slice())));
    let planner = runtime.block_on(Planner::start(script))?;
    planner.configure(&mut config, true);
    config.cache.enabled = false;
    let budget = &mut config.agent.budget;
    budget.max_steps = budget.max_steps.max(max_steps as u32 + 1);
    budget.max_tool_calls = budget.max_tool_calls.max(max_steps as u32);
    let engine = super::open_ingested(config, open)?;
    let samples = runtime.block_on(iterate(&engine, &planner, o, &questions))?;
    Ok(summarise(o, &samples))
}

/// Runs `warmup + runs` iterations; returns the measured samples per variant (plain first).
async fn iterate(
    engine: &Arc<Engine>,
    planner: &Planner,
    o: &AgentBenchOptions,
    questions: &[(String, Vec<String>)],
) -> anyhow::Result<Vec<Vec<Sample>>> {
    let mut samples = vec![Vec::with_capacity(o.runs); questions.len() + 1];
    for i in 0..o.warmup + o.runs {
        let plain = one(engine, planner, &o.question, false).await?;
        let mut row = vec![plain];
        for (q, hops) in questions {
            let s = one(engine, planner, q, true).await?;
            anyhow::ensure!(
                s.model_calls as usize == hops.len() + 1,
                "the agent made {} model calls for {} lookups; expected one per lookup and the answer",
                s.model_calls,
                hops.len()
            );
            row.push(s);
        }
        if i >= o.warmup {
            for (v, s) in samples.iter_mut().zip(row) {
                v.push(s);
            }
        }
    }
    Ok(samples)
}

/// Asks one question (in agent mode when `as_agent`) and times it.
async fn one(
    engine: &Arc<Engine>,
    planner: &Planner,
    question: &str,
    as_agent: bool,
) -> anyhow::Result<Sample> {
    let (tx, mut rx) = mpsc::channel(64);
    let req = AskRequest {
        question: question.to_string(),
        filter: Filter::default(),
        top_k: engine.config.retrieval.top_k,
        conversation: Vec::new(),
        budget_key: None,
        thread_id: None,
        agent: as_agent.then_some(engine.config.agent.budget),
    };
    let busy_before = planner.busy_ms();
    let calls_before = planner.calls();
    let started = Instant::now();
    let from = agent::Origin {
        caller: "bench".into(),
        http_route: None,
        lane: crate::answer::load::Lane::Background,
    };
    let task = tokio::spawn(agent::answer_as(engine.clone(), req, from, tx));
    let mut s = Sample::default();
    let mut outcome = String::new();
    while let Some(ev) = rx.recv().await {
        match ev {
            AnswerEvent::Step(step) => s.tools_ms += step.ms,
            AnswerEvent::Done { outcome: o, .. } => outcome = o.to_string(),
            AnswerEvent::Error { code, message } => anyhow::bail!("{code}: {message}"),
            _ => {}
        }
    }
    task.await?;
    s.total_ms = started.elapsed().as_secs_f64() * 1000.0;
    s.model_ms = planner.busy_ms() - busy_before;
    s.model_calls = (planner.calls() - calls_before) as u32;
    anyhow::ensure!(
        outcome == "answered",
        "a benchmark answer ended `{outcome}`, not `answered`"
    );
    Ok(s)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

/// Medians per variant and the added time per step.
fn summarise(o: &AgentBenchOptions, samples: &[Vec<Sample>]) -> AgentBenchReport {
    let med = |v: &[Sample], f: &dyn Fn(&Sample) -> f64| median(v.iter().map(f).collect());
    let plain_total = med(&samples[0], &|s| s.total_ms);
    let variants: Vec<Variant> = samples
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let steps = if i == 0 { 0 } else { o.steps[i - 1] };
            let total = med(v, &|s| s.total_ms);
            let model_calls = v.first().map_or(0, |s| s.model_calls);
            let model = med(v, &|s| s.model_ms);
            Variant {
                mode: if i == 0 { "plain" } else { "agent" },
                steps,
                model_calls,
                total_ms: total,
                tools_ms: med(v, &|s| s.tools_ms),
                model_ms: model,
                rest_per_model_call_ms: med(v, &|s| {
                    (s.total_ms - s.tools_ms - s.model_ms) / f64::from(s.model_calls.max(1))
                }),
                added_per_step_ms: (steps > 0).then(|| {
                    (total - plain_total) / steps as f64 - model / f64::from(model_calls.max(1))
                }),
            }
        })
        .collect();
    let agents: Vec<&Variant> = variants.iter().filter(|v| v.steps > 0).collect();
    let model_per_call = agents
        .iter()
        .map(|v| v.model_ms / f64::from(v.model_calls.max(1)))
        .sum::<f64>()
        / agents.len().max(1) as f64;
    AgentBenchReport {
        runs: o.runs,
        marginal_step_ms: slope(&agents, |v| v.total_ms).map(|s| s - model_per_call),
        marginal_tool_ms: slope(&agents, |v| v.tools_ms),
        variants,
        note: NOTE,
    }
}

/// The least-squares slope of `y` over the variants' step counts; `None` with fewer than two
/// distinct step counts.
fn slope(vs: &[&Variant], y: impl Fn(&Variant) -> f64) -> Option<f64> {
    let n = vs.len() as f64;
    let mx = vs.iter().map(|v| v.steps as f64).sum::<f64>() / n;
    let my = vs.iter().map(|v| y(v)).sum::<f64>() / n;
    let sxx: f64 = vs.iter().map(|v| (v.steps as f64 - mx).powi(2)).sum();
    let sxy: f64 = vs.iter().map(|v| (v.steps as f64 - mx) * (y(v) - my)).sum();
    (sxx > 0.0).then(|| sxy / sxx)
}

/// The report as a table.
pub fn print(r: &AgentBenchReport) {
    println!("{} measured runs; {}", r.runs, r.note);
    println!(
        "{:<7} {:>5} {:>6} {:>10} {:>10} {:>10} {:>14} {:>14}",
        "mode",
        "steps",
        "calls",
        "total ms",
        "tools ms",
        "model ms",
        "rest/call ms",
        "added/step ms"
    );
    if let (Some(step), Some(tool)) = (r.marginal_step_ms, r.marginal_tool_ms) {
        println!(
            "one more step: {step:.2} ms beyond the model's own time, of which the tool run {tool:.2} ms and the rest (gateway round trip, loop) {:.2} ms",
            step - tool
        );
    }
    for v in &r.variants {
        println!(
            "{:<7} {:>5} {:>6} {:>10.2} {:>10.2} {:>10.3} {:>14.2} {:>14}",
            v.mode,
            v.steps,
            v.model_calls,
            v.total_ms,
            v.tools_ms,
            v.model_ms,
            v.rest_per_model_call_ms,
            v.added_per_step_ms
                .map_or("-".to_string(), |a| format!("{a:.2}"))
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn added_per_step_is_the_difference_over_steps_less_the_model_time() {
        let s = |total_ms, tools_ms, model_ms, model_calls| Sample {
            total_ms,
            tools_ms,
            model_ms,
            model_calls,
        };
        let o = AgentBenchOptions {
            runs: 3,
            warmup: 0,
            steps: vec![2],
            question: "q".into(),
        };
        let plain = vec![
            s(10.0, 0.0, 0.1, 1),
            s(12.0, 0.0, 0.1, 1),
            s(11.0, 0.0, 0.1, 1),
        ];
        let agent = vec![
            s(20.0, 4.0, 0.3, 3),
            s(21.0, 4.0, 0.3, 3),
            s(19.0, 4.0, 0.3, 3),
        ];
        let r = summarise(&o, &[plain, agent]);
        assert_eq!(r.variants[0].total_ms, 11.0);
        let a = &r.variants[1];
        assert_eq!(a.total_ms, 20.0);
        assert!((a.added_per_step_ms.expect("agent") - (4.5 - 0.1)).abs() < 1e-9);
        assert!((a.rest_per_model_call_ms - (20.0 - 4.0 - 0.3) / 3.0).abs() < 1e-9);
        assert!(r.marginal_step_ms.is_none(), "one step count has no slope");
    }

    #[test]
    fn the_marginal_step_is_the_slope_over_step_counts() {
        let v = |steps, total_ms, tools_ms| Variant {
            mode: "agent",
            steps,
            model_calls: steps as u32 + 1,
            total_ms,
            tools_ms,
            model_ms: 0.0,
            rest_per_model_call_ms: 0.0,
            added_per_step_ms: None,
        };
        let (a, b, c) = (v(1, 40.0, 30.0), v(2, 75.0, 60.0), v(4, 145.0, 120.0));
        assert!((slope(&[&a, &b, &c], |x| x.total_ms).expect("slope") - 35.0).abs() < 1e-9);
        assert!((slope(&[&a, &b, &c], |x| x.tools_ms).expect("slope") - 30.0).abs() < 1e-9);
    }
}
