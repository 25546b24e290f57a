//! The scripted planner: a stand-in tool-calling model for `cairn eval answers --scripted` and
//! `cairn bench agent`, served over HTTP on `127.0.0.1:0` in the OpenAI chat-completions
//! streaming wire format, so the real provider client, gateway, tool-call parsing and agent
//! loop run against it.
//!
//! It does not think. For a question of its script it asks for one `search` per scripted hop
//! (the `hops` of the question file), in order, one call per turn; once every hop has a tool
//! result (or when tools are refused: the closing turn) it answers with the sentence of each
//! result that shares the most words with that hop's query, each followed by the passage's
//! `[n]`. An unscripted question gets one search for the question itself. A request without
//! tools (a plain answer) is answered with the best sentence of the passages in its prompt.
//! Token counts in its usage are estimates (characters / 4); it has no price, so the gateway
//! meters its calls at $0.
//!
//! Must not: be configured by users or reached from the server; only the evaluation and the
//! benchmark start it, and it stops with them.

use std::collections::HashMap;
use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use axum::body::{Body, Bytes};
use axum::response::Response;
use serde_json::{Value, json};

use crate::config::Config;
use crate::providers::config::{ProviderConfig, ProviderKind};
use crate::providers::extractive::{sentences, terms};

/// The provider and model name the planner is configured under.
pub const NAME: &str = "scripted-planner";

/// Questions (as asked) and the searches the planner makes for each.
#[derive(Debug, Clone, Default)]
pub struct Script {
    hops: HashMap<String, Vec<String>>,
}

impl Script {
    pub fn new<'a>(items: impl IntoIterator<Item = (&'a str, &'a [String])>) -> Script {
        Script {
            hops: items
                .into_iter()
                .filter(|(_, h)| !h.is_empty())
                .map(|(q, h)| (key(q), h.to_vec()))
                .collect(),
        }
    }

    /// The searches for `question`: its scripted hops, or the question itself.
    fn hops_of(&self, question: &str) -> Vec<String> {
        self.hops
            .get(&key(question))
            .cloned()
            .unwrap_or_else(|| vec![question.trim().to_string()])
    }
}

fn key(question: &str) -> String {
    question
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .to_lowercase()
}

/// What the planner does in one turn.
#[derive(Debug, Clone, PartialEq)]
pub enum Turn {
    Search { call_id: String, query: String },
    Answer(String),
}

/// Undoes the prompt's escaping of `<`, `>`, `&` and `"`.
fn unescape(s: &str) -> String {
    s.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&amp;", "&")
}

/// The `<source n="...">` passages of a prompt or tool result: (n, text).
pub fn passages(text: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    for part in text.split("<source n=\"").skip(1) {
        let Some(n) = part.split('"').next().and_then(|n| n.parse().ok()) else {
            continue;
        };
        let Some(open_end) = part.find('>') else {
            continue;
        };
        let body = &part[open_end + 1..];
        let body = body.split("</source>").next().unwrap_or(body);
        out.push((n, unescape(body.trim())));
    }
    out
}

/// The sentence of `passages` (of three content words or more) sharing the most content words
/// with `query` (the earlier one on ties), as "sentence [n]."; `None` when no sentence shares
/// a word.
pub fn best_sentence(query: &str, passages: &[(usize, String)]) -> Option<String> {
    let q: HashSet<String> = terms(query).into_iter().collect();
    let mut best: Option<(usize, usize, String)> = None;
    for (n, text) in passages {
        for s in sentences(text) {
            let st: HashSet<String> = terms(&s).into_iter().collect();
            // Headings and fragments are not answers (as for the extractive provider).
            if st.len() < 3 {
                continue;
            }
            let overlap = q.intersection(&st).count();
            if overlap > 0 && best.as_ref().is_none_or(|(b, _, _)| overlap > *b) {
                best = Some((overlap, *n, s));
            }
        }
    }
    best.map(|(_, n, s)| {
        let body = s.trim_end_matches(['.', '!', '?']).trim_end();
        format!("{body} [{n}].")
    })
}

/// The last user message of a request.
fn last_user(body: &Value) -> &str {
    body["messages"]
        .as_array()
        .into_iter()
        .flatten()
        .rev()
        .find(|m| m["role"] == "user")
        .and_then(|m| m["content"].as_str())
        .unwrap_or_default()
}

/// The user's question in a request: the last user message, without the prompt's
/// `Question:` label and escaping.
fn question_of(body: &Value) -> String {
    let text = last_user(body);
    let q = text
        .rsplit_once("Question:")
        .map_or(text, |(_, q)| q)
        .trim();
    unescape(q)
}

/// The planner's turn for one chat request (pure).
pub fn plan(script: &Script, body: &Value) -> Turn {
    let question = question_of(body);
    let hops = script.hops_of(&question);
    let offered = body["tools"].as_array().is_some_and(|t| !t.is_empty());
    let results: Vec<&str> = body["messages"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|m| m["role"] == "tool")
        .map(|m| m["content"].as_str().unwrap_or_default())
        .collect();
    if !offered {
        // A plain answer: the passages are in the prompt.
        let text = best_sentence(&question, &passages(last_user(body)));
        return Turn::Answer(text.unwrap_or_else(|| "I don't know.".into()));
    }
    if body["tool_choice"] != "none" && results.len() < hops.len() {
        return Turn::Search {
            call_id: format!("call_{}", results.len() + 1),
            query: hops[results.len()].clone(),
        };
    }
    let mut said: Vec<String> = Vec::new();
    for (i, result) in results.iter().enumerate() {
        let query = hops.get(i).map_or(question.as_str(), String::as_str);
        if let Some(s) = best_sentence(query, &passages(result))
            && !said.contains(&s)
        {
            said.push(s);
        }
    }
    if said.is_empty() {
        return Turn::Answer("I don't know.".into());
    }
    Turn::Answer(said.join(" "))
}

/// One `data:` event of a chat-completion chunk.
fn chunk(delta: &Value, finish: Option<&str>) -> String {
    let c = json!({
        "id": "chatcmpl-scripted",
        "object": "chat.completion.chunk",
        "created": 0,
        "model": NAME,
        "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}],
    });
    format!("data: {c}\n\n")
}

/// The SSE frames of a turn, as OpenAI streams them: a tool call's arguments arrive in two
/// deltas; usage (estimated) comes last, then `[DONE]`.
pub fn frames(turn: &Turn, prompt_chars: usize) -> Vec<String> {
    let mut f = Vec::new();
    let (finish, out_chars) = match turn {
        Turn::Search { call_id, query } => {
            f.push(chunk(
                &json!({"role": "assistant", "content": null, "tool_calls": [{
                    "index": 0, "id": call_id, "type": "function",
                    "function": {"name": "search", "arguments": ""}}]}),
                None,
            ));
            let args = json!({"query": query}).to_string();
            let cut = args
                .char_indices()
                .nth(args.len() / 2)
                .map_or(0, |(i, _)| i);
            for part in [&args[..cut], &args[cut..]] {
                f.push(chunk(
                    &json!({"tool_calls": [{"index": 0, "function": {"arguments": part}}]}),
                    None,
                ));
            }
            ("tool_calls", args.len())
        }
        Turn::Answer(text) => {
            f.push(chunk(&json!({"role": "assistant", "content": ""}), None));
            let words: Vec<&str> = text.split_inclusive(' ').collect();
            for piece in words.chunks(6) {
                f.push(chunk(&json!({"content": piece.concat()}), None));
            }
            ("stop", text.len())
        }
    };
    f.push(chunk(&json!({}), Some(finish)));
    let (input, output) = (prompt_chars.div_ceil(4), out_chars.div_ceil(4));
    let usage = json!({
        "id": "chatcmpl-scripted", "object": "chat.completion.chunk", "created": 0, "model": NAME,
        "choices": [],
        "usage": {"prompt_tokens": input, "completion_tokens": output, "total_tokens": input + output},
    });
    f.push(format!("data: {usage}\n\n"));
    f.push("data: [DONE]\n\n".into());
    f
}

/// The running planner: its base URL, and what it has served.
pub struct Planner {
    pub base: String,
    calls: Arc<AtomicU64>,
    busy_ns: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Planner {
    /// Serves `script` on `127.0.0.1:0` (call inside a tokio runtime).
    pub async fn start(script: Script) -> anyhow::Result<Planner> {
        let script = Arc::new(script);
        let calls = Arc::new(AtomicU64::new(0));
        let busy_ns = Arc::new(AtomicU64::new(0));
        let (c, b) = (calls.clone(), busy_ns.clone());
        let app = axum::Router::new().fallback(move |body: Bytes| {
            let (script, c, b) = (script.clone(), c.clone(), b.clone());
            async move {
                let started = Instant::now();
                let reply = reply(&script, &body);
                c.fetch_add(1, Ordering::Relaxed);
                b.fetch_add(started.elapsed().as_nanos() as u64, Ordering::Relaxed);
                reply
            }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Planner {
            base: format!("http://{addr}/v1"),
            calls,
            busy_ns,
            task,
        })
    }

    /// Chat calls answered so far.
    pub fn calls(&self) -> u64 {
        self.calls.load(Ordering::Relaxed)
    }

    /// Milliseconds spent composing replies (the model's own time), over all calls.
    pub fn busy_ms(&self) -> f64 {
        self.busy_ns.load(Ordering::Relaxed) as f64 / 1e6
    }

    /// Adds the planner as a provider and points `[agent] route` (and, with `answer`, the
    /// answer route too) at it.
    pub fn configure(&self, config: &mut Config, answer: bool) {
        let mut p = ProviderConfig::new(NAME, ProviderKind::OpenaiCompatible, Some(&self.base));
        p.settings.max_retries = 0;
        config.providers.insert(NAME.into(), p);
        config
            .routes
            .insert(NAME.into(), vec![(NAME.into(), NAME.into())]);
        config.agent.route = NAME.into();
        if answer {
            config.routes.insert(
                config.answer.route.clone(),
                vec![(NAME.into(), NAME.into())],
            );
        }
    }
}

impl Drop for Planner {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The HTTP reply to one chat request: SSE frames, or a 400 in OpenAI's error shape.
fn reply(script: &Script, body: &[u8]) -> Response {
    let Ok(parsed) = serde_json::from_slice::<Value>(body) else {
        let err =
            json!({"error": {"message": "the body is not JSON", "type": "invalid_request_error"}});
        return Response::builder()
            .status(400)
            .header("content-type", "application/json")
            .body(Body::from(err.to_string()))
            .unwrap_or_default();
    };
    let text: String = frames(&plan(script, &parsed), body.len()).concat();
    Response::builder()
        .header("content-type", "text/event-stream")
        .body(Body::from(text))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn script() -> Script {
        let hops = vec!["refund window".to_string(), "express cost".to_string()];
        Script::new([("Refund window and express cost?", hops.as_slice())])
    }

    fn body(results: &[&str], tool_choice: &str) -> Value {
        let mut messages = vec![
            json!({"role": "system", "content": "rules"}),
            json!({"role": "user", "content": "Question: Refund   window and express cost?"}),
        ];
        for r in results {
            messages.push(json!({"role": "tool", "tool_call_id": "x", "content": r}));
        }
        json!({"messages": messages, "tools": [{"type": "function"}], "tool_choice": tool_choice})
    }

    const R1: &str = "<source n=\"1\" title=\"Refunds\" doc_id=\"a\" source=\"s\">\nThe refund window is 30 days. Labels are prepaid.\n</source>";
    const R2: &str = "<source n=\"2\" title=\"Shipping\" doc_id=\"b\" source=\"s\">\nStandard is free. Express shipping costs 12 euros &amp; more.\n</source>";

    #[test]
    fn searches_each_hop_in_order_then_answers_citing_each_result() {
        let s = script();
        assert_eq!(
            plan(&s, &body(&[], "auto")),
            Turn::Search {
                call_id: "call_1".into(),
                query: "refund window".into()
            }
        );
        assert_eq!(
            plan(&s, &body(&[R1], "auto")),
            Turn::Search {
                call_id: "call_2".into(),
                query: "express cost".into()
            }
        );
        let Turn::Answer(a) = plan(&s, &body(&[R1, R2], "auto")) else {
            panic!("expected an answer")
        };
        assert_eq!(
            a,
            "The refund window is 30 days [1]. Express shipping costs 12 euros & more [2]."
        );
    }

    #[test]
    fn the_closing_turn_answers_from_what_it_has_and_unknown_questions_search_themselves() {
        let Turn::Answer(a) = plan(&script(), &body(&[R1], "none")) else {
            panic!("expected an answer")
        };
        assert_eq!(a, "The refund window is 30 days [1].");
        let other = json!({"messages": [{"role": "user", "content": "Question: anything else"}],
            "tools": [{"type": "function"}], "tool_choice": "auto"});
        assert!(
            matches!(plan(&script(), &other), Turn::Search { query, .. } if query == "anything else")
        );
    }

    #[test]
    fn a_tool_call_streams_its_arguments_in_two_deltas_that_join_to_json() {
        let f = frames(
            &Turn::Search {
                call_id: "c".into(),
                query: "q \"x\"".into(),
            },
            40,
        );
        let args: String = f[1..3]
            .iter()
            .map(|e| {
                let v: Value = serde_json::from_str(e.trim_start_matches("data: ").trim())
                    .expect("chunk is JSON");
                v["choices"][0]["delta"]["tool_calls"][0]["function"]["arguments"]
                    .as_str()
                    .expect("arguments")
                    .to_string()
            })
            .collect();
        assert_eq!(args, json!({"query": "q \"x\""}).to_string());
        assert!(f.last().is_some_and(|l| l == "data: [DONE]\n\n"));
    }
}
