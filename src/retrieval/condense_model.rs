//! `[retrieval] condense = "model"`: a question's standalone query, and whether the caller asks
//! for a person, from a small model on the `[routes] condense` route — through the gateway,
//! under its own output-token limit (`condense_max_tokens`) and time limit
//! (`condense_timeout_ms`). The prompt is versioned (`prompts/condense.v1.toml`, compiled in,
//! or `[retrieval] condense_prompt`); the reply is asked for as JSON `{"query", "human"}`
//! (structured output where the vendor has it) and read leniently, then checked. Every failure
//! is a [`Fallback`] reason: the pipeline then runs the heuristic, so condensing never fails a
//! request.
//!
//! Must not: send assistant turns (only what the caller wrote steers retrieval), call a
//! provider except through the gateway, or depend on the engine.

use std::path::Path;
use std::time::{Duration, Instant};

use serde::Deserialize;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::answer::prompt::fence;
use crate::providers::gateway::Attempt;
use crate::providers::{
    ChatRequest, ChatResponse, FinishReason, GatewayError, Message, OutputSchema, ProviderError,
    Role, Router, TargetInfo,
};
use crate::retrieval::condense::salient;

/// The route the condense model is called on.
pub const ROUTE: &str = "condense";

/// A query longer than this (characters) is not a search query: the heuristic runs instead.
pub const MAX_QUERY_CHARS: usize = 400;

/// The condense prompt compiled into the binary (the text of `prompts/condense.v1.toml`).
const BUILT_IN: &str = include_str!("../../prompts/condense.v1.toml");

/// A versioned condense prompt.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CondensePrompt {
    pub version: String,
    pub system: String,
    pub user: String,
    pub turn: String,
}

impl CondensePrompt {
    /// The configured prompt file, or the built-in prompt when none is configured.
    pub fn load(path: Option<&Path>) -> Result<CondensePrompt, String> {
        match path {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|e| {
                    format!("cannot read condense prompt file {}: {e}", path.display())
                })?;
                Self::parse(&text, &format!("condense prompt file {}", path.display()))
            }
            None => Self::parse(BUILT_IN, "the built-in condense prompt"),
        }
    }

    /// Parses a prompt and checks its placeholders; `origin` names it in messages.
    fn parse(text: &str, origin: &str) -> Result<CondensePrompt, String> {
        let p: CondensePrompt =
            toml::from_str(text).map_err(|e| format!("{origin} is invalid: {e}"))?;
        for (name, field, needle) in [
            ("user", &p.user, "{conversation}"),
            ("user", &p.user, "{question}"),
            ("turn", &p.turn, "{text}"),
        ] {
            if !field.contains(needle) {
                return Err(format!("{origin}: `{name}` must contain {needle}"));
            }
        }
        Ok(p)
    }

    /// The request for `question` after the caller's `earlier` turns (oldest first), asking
    /// for at most `max_tokens` tokens of JSON.
    pub fn render(&self, question: &str, earlier: &[String], max_tokens: u32) -> ChatRequest {
        let conversation = if earlier.is_empty() {
            "(none)".to_string()
        } else {
            earlier
                .iter()
                .map(|t| self.turn.replace("{text}", &fence(t)))
                .collect::<Vec<_>>()
                .join("\n")
        };
        let user = self
            .user
            .replace("{conversation}", &conversation)
            .replace("{question}", &fence(question));
        ChatRequest {
            system: self.system.trim().to_string(),
            messages: vec![Message {
                role: Role::User,
                content: user.trim().to_string(),
            }],
            max_tokens: Some(max_tokens),
            temperature: Some(0.0),
            output_schema: Some(OutputSchema {
                name: "condensed".into(),
                schema: json!({
                    "type": "object",
                    "properties": {
                        "query": {"type": "string"},
                        "human": {"type": "boolean"}
                    },
                    "required": ["query", "human"],
                    "additionalProperties": false
                }),
            }),
            ..ChatRequest::default()
        }
    }
}

/// Why the model's rewrite was not used (the heuristic made the query instead).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fallback {
    /// `condense_timeout_ms` (or the request's deadline) passed first.
    Timeout,
    /// Every target of the route failed (or its stream broke).
    ProviderError,
    /// The budget refused the call.
    BudgetExhausted,
    /// The reply held no query.
    Empty,
    /// The reply was neither the JSON asked for nor `query: …` lines.
    Unparsable,
    /// The query was cut at `condense_max_tokens` or is longer than [`MAX_QUERY_CHARS`].
    TooLong,
    /// The query shares no topic word with the question or the caller's earlier turns.
    Unrelated,
}

impl Fallback {
    /// The reason as traces record it.
    pub fn reason(self) -> &'static str {
        match self {
            Fallback::Timeout => "timeout",
            Fallback::ProviderError => "provider_error",
            Fallback::BudgetExhausted => "budget_exhausted",
            Fallback::Empty => "empty",
            Fallback::Unparsable => "unparsable",
            Fallback::TooLong => "too_long",
            Fallback::Unrelated => "unrelated",
        }
    }

    fn of_gateway(e: &GatewayError) -> Fallback {
        match e {
            GatewayError::BudgetExhausted(_) => Fallback::BudgetExhausted,
            GatewayError::AllFailed {
                last: Some(ProviderError::Timeout { .. }),
                ..
            } => Fallback::Timeout,
            _ => Fallback::ProviderError,
        }
    }
}

/// A reply that could be read: whether the caller asks for a person, and the query or why it
/// cannot be used. (A reply whose query is unusable may still say the caller wants a person.)
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub human: bool,
    pub query: Result<String, Fallback>,
}

/// Reads the model's reply `text` (which ended with `finish`) for `question` after the
/// caller's `earlier` turns: a JSON object `{"query", "human"}` — alone, in a code fence or
/// with words around it — or else lines `query: …` and `human: yes|no`.
pub fn read_reply(
    text: &str,
    finish: Option<FinishReason>,
    question: &str,
    earlier: &[String],
) -> Result<Reply, Fallback> {
    if text.trim().is_empty() {
        return Err(Fallback::Empty);
    }
    let (query, human) = read_json(text).or_else(|| read_lines(text)).ok_or(
        if finish == Some(FinishReason::Length) {
            Fallback::TooLong
        } else {
            Fallback::Unparsable
        },
    )?;
    let query = check_query(&query, finish, question, earlier);
    Ok(Reply { human, query })
}

/// `(query, human)` from the first `{…}` of `text` that is a JSON object with a string
/// `query`.
fn read_json(text: &str) -> Option<(String, bool)> {
    let start = text.find('{')?;
    let end = text.rfind('}')?;
    let v: Value = serde_json::from_str(text.get(start..=end)?).ok()?;
    let query = v.get("query")?.as_str()?.to_string();
    Some((query, v.get("human").is_some_and(truthy)))
}

/// `(query, human)` from lines `query: …` and `human: …` (any case, quotes stripped).
fn read_lines(text: &str) -> Option<(String, bool)> {
    let field = |name: &str| {
        text.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            let k = k.trim().trim_matches(|c| c == '"' || c == '*' || c == '-');
            k.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().trim_matches(|c| c == '"' || c == ',').to_string())
        })
    };
    let query = field("query")?;
    let human = field("human").is_some_and(|h| truthy(&Value::String(h)));
    Some((query, human))
}

/// `true`, or a string saying yes.
fn truthy(v: &Value) -> bool {
    match v {
        Value::Bool(b) => *b,
        Value::String(s) => matches!(s.trim().to_lowercase().as_str(), "true" | "yes"),
        _ => false,
    }
}

/// The query, whitespace collapsed, if it can be searched with: not empty, not cut off, not
/// over-long, and sharing a topic word with what the caller wrote.
fn check_query(
    query: &str,
    finish: Option<FinishReason>,
    question: &str,
    earlier: &[String],
) -> Result<String, Fallback> {
    let query = query.split_whitespace().collect::<Vec<_>>().join(" ");
    if !query.chars().any(char::is_alphanumeric) {
        return Err(Fallback::Empty);
    }
    if finish == Some(FinishReason::Length) || query.chars().count() > MAX_QUERY_CHARS {
        return Err(Fallback::TooLong);
    }
    let said: Vec<String> = std::iter::once(question)
        .chain(earlier.iter().map(String::as_str))
        .flat_map(salient)
        .collect();
    if !salient(&query).iter().any(|w| said.contains(w)) {
        return Err(Fallback::Unrelated);
    }
    Ok(query)
}

/// One condense call: the reply, or why there is none; the target that served (its tokens
/// and cost are metered once the call ended); the tries that failed before.
pub struct Call {
    pub reply: Result<ChatResponse, Fallback>,
    pub info: Option<TargetInfo>,
    pub attempts: Vec<Attempt>,
    /// The error behind a failure, for the trace.
    pub error: Option<String>,
}

/// Calls the condense route with `chat`, charged to `key`, giving up after `timeout` or at
/// `deadline` (the request's), whichever comes first. Dropping the stream on a time-out closes
/// the upstream request and settles the budget (a call cut off is charged what was reserved).
pub async fn call(
    router: &Router,
    chat: &ChatRequest,
    key: Option<&str>,
    timeout: Duration,
    deadline: Instant,
) -> Call {
    let until = (Instant::now() + timeout).min(deadline);
    let cancel = CancellationToken::new();
    let _cancel_on_exit = cancel.clone().drop_guard();
    let opened = tokio::time::timeout_at(
        until.into(),
        router.stream_until(ROUTE, chat, cancel, key, until),
    )
    .await;
    let failed = |reply, attempts, error: String| Call {
        reply: Err(reply),
        info: None,
        attempts,
        error: Some(error),
    };
    let (stream, info) = match opened {
        Err(_) => return failed(Fallback::Timeout, Vec::new(), "timed out".into()),
        Ok(Err(e)) => {
            let attempts = match &e {
                GatewayError::AllFailed { attempts, .. } => attempts.clone(),
                _ => Vec::new(),
            };
            return failed(Fallback::of_gateway(&e), attempts, e.to_string());
        }
        Ok(Ok(opened)) => opened,
    };
    let collected = tokio::time::timeout_at(until.into(), ChatResponse::collect(stream)).await;
    let (reply, error) = match collected {
        Ok(Ok(resp)) => (Ok(resp), None),
        Ok(Err(e)) => (Err(Fallback::ProviderError), Some(e.to_string())),
        Err(_) => (Err(Fallback::Timeout), Some("timed out".into())),
    };
    Call {
        attempts: info.attempts.clone(),
        reply,
        info: Some(info),
        error,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(text: &str) -> Result<Reply, Fallback> {
        let earlier = ["How long does delivery take?".to_string()];
        read_reply(text, Some(FinishReason::Stop), "And express?", &earlier)
    }

    fn query(q: &str) -> Result<Reply, Fallback> {
        Ok(Reply {
            human: false,
            query: Ok(q.into()),
        })
    }

    #[test]
    fn the_built_in_prompt_is_the_bundled_file_and_renders_fenced_turns() {
        let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("prompts/condense.v1.toml");
        let p = CondensePrompt::load(Some(&file)).expect("bundled");
        assert_eq!(p.version, "condense.v1");
        let built_in = CondensePrompt::load(None).expect("built-in");
        assert_eq!(
            (built_in.system, built_in.user),
            (p.system.clone(), p.user.clone())
        );
        let chat = p.render("And </latest> now?", &["Ship to Norway?".into()], 64);
        let user = &chat.messages[0].content;
        assert!(user.contains("- Ship to Norway?"), "{user}");
        assert!(user.contains("And &lt;/latest&gt; now?"), "{user}");
        assert_eq!(chat.max_tokens, Some(64));
        assert!(chat.output_schema.is_some());
        let alone = p.render("Refunds?", &[], 64);
        assert!(alone.messages[0].content.contains("(none)"));
    }

    #[test]
    fn json_is_read_alone_fenced_or_inside_prose_and_lines_as_a_fallback() {
        let want = "How long does express delivery take?";
        let json = format!(r#"{{"query": "{want}", "human": false}}"#);
        assert_eq!(read(&json), query(want));
        assert_eq!(read(&format!("```json\n{json}\n```")), query(want));
        assert_eq!(
            read(&format!("Sure! Here it is: {json} Hope it helps.")),
            query(want)
        );
        assert_eq!(read(&format!("Query: \"{want}\"\nHuman: no")), query(want));
        let human = read(r#"{"query": "express delivery", "human": "yes"}"#).expect("read");
        assert!(human.human);
    }

    #[test]
    fn garbage_empty_long_cut_and_unrelated_replies_are_refused_with_their_reason() {
        assert_eq!(read("   "), Err(Fallback::Empty));
        assert_eq!(read("banana banana banana"), Err(Fallback::Unparsable));
        assert_eq!(read(r#"{"answer": 3}"#), Err(Fallback::Unparsable));
        let bad = |text: &str| read(text).expect("read").query;
        assert_eq!(
            bad(r#"{"query": " ?! ", "human": false}"#),
            Err(Fallback::Empty)
        );
        let long = format!(
            r#"{{"query": "express {}", "human": false}}"#,
            "delivery ".repeat(60)
        );
        assert_eq!(bad(&long), Err(Fallback::TooLong));
        assert_eq!(
            bad(r#"{"query": "What is the capital of France?", "human": false}"#),
            Err(Fallback::Unrelated)
        );
        let cut = read_reply(
            r#"{"query": "express delivery"#,
            Some(FinishReason::Length),
            "And express?",
            &[],
        );
        assert_eq!(cut, Err(Fallback::TooLong));
    }

    #[test]
    fn a_person_asked_for_counts_even_when_the_query_is_unusable() {
        let r = read(r#"{"query": "", "human": true}"#).expect("read");
        assert!(r.human);
        assert_eq!(r.query, Err(Fallback::Empty));
    }
}
