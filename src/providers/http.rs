//! Shared HTTP plumbing of the remote vendors: one `reqwest` client per provider, the mapping
//! of HTTP failures to [`ProviderError`], and the SSE driver that turns a response body into a
//! [`ChatStream`] through a vendor's pure decoder.
//!
//! SSE framing (multi-line `data:`, comments, CRLF, `event:` names) is parsed by the
//! `eventsource-stream` crate; vendors only see whole events.

use std::time::Duration;

use eventsource_stream::Eventsource;
use futures::StreamExt;
use reqwest::StatusCode;
use reqwest::header::HeaderMap;

use super::config::ProviderConfig;
use super::{ChatEvent, ChatStream, ProviderError};

/// What a provider needs to talk to its endpoint.
#[derive(Debug, Clone)]
pub struct Endpoint {
    pub name: String,
    pub base_url: String,
    pub api_key: Option<String>,
    pub key_var: String,
    pub client: reqwest::Client,
}

impl Endpoint {
    pub fn new(cfg: &ProviderConfig, default_base: &str) -> Result<Endpoint, String> {
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_millis(cfg.settings.timeout_connect_ms))
            .build()
            .map_err(|e| format!("providers.{}: cannot build the HTTP client: {e}", cfg.name))?;
        Ok(Endpoint {
            name: cfg.name.clone(),
            base_url: cfg
                .base_url
                .clone()
                .unwrap_or_else(|| default_base.to_string())
                .trim_end_matches('/')
                .to_string(),
            api_key: cfg.api_key.clone(),
            key_var: cfg
                .key_var
                .clone()
                .unwrap_or_else(|| "(no api_key configured)".into()),
            client,
        })
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base_url, path)
    }

    /// Sends a request; a non-2xx answer becomes a typed error.
    pub async fn send(
        &self,
        rb: reqwest::RequestBuilder,
        model: &str,
    ) -> Result<reqwest::Response, ProviderError> {
        let resp = rb.send().await.map_err(|e| self.transport_error(&e))?;
        if resp.status().is_success() {
            return Ok(resp);
        }
        let status = resp.status();
        let headers = resp.headers().clone();
        let body = resp.text().await.unwrap_or_default();
        Err(map_status(self, model, status, &headers, &body))
    }

    pub fn transport_error(&self, e: &reqwest::Error) -> ProviderError {
        if e.is_timeout() || e.is_connect() {
            ProviderError::Unavailable {
                provider: self.name.clone(),
                message: format!("cannot reach the endpoint: {e}"),
            }
        } else {
            ProviderError::Unavailable {
                provider: self.name.clone(),
                message: e.to_string(),
            }
        }
    }

    /// POSTs `body` as JSON to `path` with the bearer key (when one is set) and decodes the
    /// JSON reply; the non-streaming calls (embeddings, rerank) of the OpenAI-shaped vendors.
    pub async fn post_json<B, W>(
        &self,
        path: &str,
        body: &B,
        model: &str,
    ) -> Result<W, ProviderError>
    where
        B: serde::Serialize,
        W: serde::de::DeserializeOwned,
    {
        let mut rb = self.client.post(self.url(path)).json(body);
        if let Some(k) = &self.api_key {
            rb = rb.bearer_auth(k);
        }
        let resp = self.send(rb, model).await?;
        resp.json().await.map_err(|e| self.malformed(e.to_string()))
    }

    pub fn malformed(&self, message: impl Into<String>) -> ProviderError {
        ProviderError::Malformed {
            provider: self.name.clone(),
            message: message.into(),
        }
    }
}

/// `Retry-After` (seconds) or `retry-after-ms`, in milliseconds.
pub fn retry_after_ms(headers: &HeaderMap) -> Option<u64> {
    if let Some(ms) = headers
        .get("retry-after-ms")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<f64>().ok())
    {
        return Some(ms.max(0.0) as u64);
    }
    headers
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map(|s| (s.max(0.0) * 1000.0) as u64)
}

/// Whether an error body says the prompt exceeds the model's context window (wording of
/// OpenAI, Anthropic, Gemini, Mistral and llama.cpp/vLLM servers).
pub fn is_context_length(body: &str) -> bool {
    let b = body.to_ascii_lowercase();
    [
        "context_length_exceeded",
        "context length",
        "context window",
        "prompt is too long",
        "exceeds the maximum number of tokens",
        "maximum context",
        "too many tokens",
        "exceed_context_size",
    ]
    .iter()
    .any(|p| b.contains(p))
}

/// Maps a failed HTTP status (and its body) to a typed error.
pub fn map_status(
    ep: &Endpoint,
    model: &str,
    status: StatusCode,
    headers: &HeaderMap,
    body: &str,
) -> ProviderError {
    let provider = ep.name.clone();
    let snippet: String = body.chars().take(300).collect();
    match status.as_u16() {
        401 | 403 => ProviderError::Auth {
            provider,
            key_var: ep.key_var.clone(),
        },
        429 => ProviderError::RateLimited {
            provider,
            retry_after_ms: retry_after_ms(headers),
        },
        400 | 413 | 422 if is_context_length(body) => ProviderError::ContextTooLong {
            model: model.to_string(),
        },
        408 | 500..=599 => ProviderError::Unavailable {
            provider,
            message: format!("HTTP {status}: {snippet}"),
        },
        404 => ProviderError::BadRequest {
            provider,
            message: format!("HTTP 404 (unknown model `{model}` or wrong base_url): {snippet}"),
        },
        _ => ProviderError::BadRequest {
            provider,
            message: format!("HTTP {status}: {snippet}"),
        },
    }
}

/// What a decoder made of one SSE event.
#[derive(Debug, Default, PartialEq)]
pub struct Decoded {
    pub events: Vec<ChatEvent>,
    /// The vendor's end-of-stream marker was seen.
    pub done: bool,
}

/// A vendor's pure SSE decoder: event name + data → internal events.
pub trait SseDecoder: Send + 'static {
    fn decode(&mut self, event: &str, data: &str) -> Result<Decoded, ProviderError>;
    /// Called at end of body: whether ending here is a clean finish (vendors without an
    /// explicit end marker finish on a finish reason).
    fn clean_eof(&self) -> bool {
        false
    }
}

/// Drives an SSE response through a decoder. Malformed data yields one error and ends the
/// stream; a body that ends before the vendor's end marker yields `Unavailable`.
pub fn sse_stream<D: SseDecoder>(name: String, resp: reqwest::Response, decoder: D) -> ChatStream {
    sse_events(name, resp.bytes_stream(), decoder)
}

/// As [`sse_stream`] over any stream of body pieces (split anywhere, even inside a UTF-8
/// character): the pure core of the provider stream mapping, bytes → internal events. The
/// fuzz target `sse` drives it with arbitrary bytes and splits.
pub fn sse_events<D, S, B, E>(name: String, body: S, decoder: D) -> ChatStream
where
    D: SseDecoder,
    S: futures::Stream<Item = Result<B, E>> + Send + 'static,
    B: AsRef<[u8]> + Send + 'static,
    E: std::fmt::Display + Send + 'static,
{
    let events = Box::pin(body.eventsource());
    let state = (events, decoder, std::collections::VecDeque::new(), false);
    let s = futures::stream::unfold(state, move |(mut events, mut dec, mut queue, mut ended)| {
        let name = name.clone();
        async move {
            loop {
                if let Some(ev) = queue.pop_front() {
                    return Some((ev, (events, dec, queue, ended)));
                }
                if ended {
                    return None;
                }
                match events.next().await {
                    Some(Ok(ev)) => match dec.decode(&ev.event, &ev.data) {
                        Ok(d) => {
                            queue.extend(d.events.into_iter().map(Ok));
                            ended = d.done;
                        }
                        Err(e) => {
                            queue.push_back(Err(e));
                            ended = true;
                        }
                    },
                    Some(Err(e)) => {
                        queue.push_back(Err(ProviderError::Unavailable {
                            provider: name.clone(),
                            message: format!("stream broken: {e}"),
                        }));
                        ended = true;
                    }
                    None => {
                        ended = true;
                        if !dec.clean_eof() {
                            queue.push_back(Err(ProviderError::Unavailable {
                                provider: name.clone(),
                                message: "the stream ended before the end marker".into(),
                            }));
                        }
                    }
                }
            }
        }
    });
    Box::pin(s)
}
