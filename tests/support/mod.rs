//! Scripted fake vendor servers for the provider tests: an axum server on 127.0.0.1:0 that
//! answers each request with the next scripted [`Reply`] (the last one repeats), streaming its
//! body frame by frame with optional delays and an abrupt connection drop, and records every
//! request it saw. [`Vendor`] renders each vendor's documented SSE wire format.
#![allow(dead_code)]

pub mod llama;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::Request;
use axum::http::{HeaderMap, Uri};
use axum::response::Response;

/// One piece of a scripted response body.
#[derive(Debug, Clone)]
pub enum Frame {
    Bytes(String),
    Delay(Duration),
    /// Abort the connection mid-body.
    Drop,
}

#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub frames: Vec<Frame>,
}

impl Reply {
    pub fn sse(frames: Vec<Frame>) -> Reply {
        Reply {
            status: 200,
            headers: vec![("content-type".into(), "text/event-stream".into())],
            frames,
        }
    }

    pub fn json(status: u16, body: &str) -> Reply {
        Reply {
            status,
            headers: vec![("content-type".into(), "application/json".into())],
            frames: vec![Frame::Bytes(body.to_string())],
        }
    }

    pub fn with_header(mut self, k: &str, v: &str) -> Reply {
        self.headers.push((k.into(), v.into()));
        self
    }
}

/// A request as the fake saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub path_and_query: String,
    pub headers: HeaderMap,
    pub body: serde_json::Value,
}

/// Computes a reply from the request body (a fake model that reads its prompt).
pub type Responder = Arc<dyn Fn(&serde_json::Value) -> Reply + Send + Sync>;

#[derive(Clone)]
struct State {
    script: Arc<Mutex<Vec<Reply>>>,
    respond: Option<Responder>,
    seen: Arc<Mutex<Vec<Seen>>>,
    abandoned: Arc<AtomicUsize>,
}

pub struct Fake {
    pub base: String,
    seen: Arc<Mutex<Vec<Seen>>>,
    abandoned: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

/// Counts a response body that was dropped before its last scripted frame was sent, which is
/// what the server sees when the client closes the connection mid-stream.
struct BodyWatch {
    finished: bool,
    abandoned: Arc<AtomicUsize>,
}

impl BodyWatch {
    /// The body ended as scripted (last frame or scripted drop): not a client disconnect.
    fn finish(mut self) {
        self.finished = true;
    }
}

impl Drop for BodyWatch {
    fn drop(&mut self) {
        if !self.finished {
            self.abandoned.fetch_add(1, Ordering::SeqCst);
        }
    }
}

impl Drop for Fake {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Fake {
    pub async fn start(script: Vec<Reply>) -> Fake {
        Self::launch(script, None).await
    }

    /// A fake whose every reply is computed by `respond` from the request body.
    pub async fn responding(
        respond: impl Fn(&serde_json::Value) -> Reply + Send + Sync + 'static,
    ) -> Fake {
        Self::launch(Vec::new(), Some(Arc::new(respond))).await
    }

    async fn launch(script: Vec<Reply>, respond: Option<Responder>) -> Fake {
        let state = State {
            script: Arc::new(Mutex::new(script)),
            respond,
            seen: Arc::new(Mutex::new(Vec::new())),
            abandoned: Arc::new(AtomicUsize::new(0)),
        };
        let seen = state.seen.clone();
        let abandoned = state.abandoned.clone();
        let app = axum::Router::new().fallback(move |uri: Uri, req: Request| {
            let state = state.clone();
            async move { handle(state, uri, req).await }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        // Send each frame when written, as vendors' servers do: with Nagle on, small SSE
        // frames wait for the client's delayed ACK (~40 ms on Linux).
        let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
            let _ = tcp.set_nodelay(true);
        });
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Fake {
            base: format!("http://{addr}"),
            seen,
            abandoned,
            task,
        }
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().expect("lock").clone()
    }

    pub fn hits(&self) -> usize {
        self.seen.lock().expect("lock").len()
    }

    /// How many response bodies were dropped (client gone) before their last frame.
    pub fn abandoned(&self) -> usize {
        self.abandoned.load(Ordering::SeqCst)
    }
}

async fn handle(state: State, uri: Uri, req: Request) -> Response {
    let headers = req.headers().clone();
    let body = axum::body::to_bytes(req.into_body(), 1 << 20)
        .await
        .unwrap_or_default();
    let body: serde_json::Value = serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
    let computed = state.respond.as_ref().map(|f| f(&body));
    state.seen.lock().expect("lock").push(Seen {
        path_and_query: uri
            .path_and_query()
            .map(|p| p.to_string())
            .unwrap_or_default(),
        headers,
        body,
    });
    let reply = if let Some(r) = computed {
        r
    } else {
        let mut s = state.script.lock().expect("lock");
        if s.len() > 1 {
            s.remove(0)
        } else {
            s[0].clone()
        }
    };
    let watch = BodyWatch {
        finished: false,
        abandoned: state.abandoned.clone(),
    };
    let frames = reply.frames.clone().into_iter();
    let stream = futures::stream::unfold((frames, watch), |(mut frames, mut watch)| async move {
        loop {
            match frames.next() {
                None => {
                    watch.finish();
                    return None;
                }
                Some(Frame::Delay(d)) => tokio::time::sleep(d).await,
                Some(Frame::Bytes(b)) => {
                    return Some((Ok::<_, std::io::Error>(Bytes::from(b)), (frames, watch)));
                }
                Some(Frame::Drop) => {
                    watch.finished = true;
                    let e = std::io::Error::other("scripted drop");
                    return Some((Err(e), (frames, watch)));
                }
            }
        }
    });
    let mut b = Response::builder().status(reply.status);
    for (k, v) in &reply.headers {
        b = b.header(k, v);
    }
    b.body(Body::from_stream(stream))
        .unwrap_or_else(|_| Response::new(Body::empty()))
}

/// A Messages stream whose content is one `tool_use` block per call, arguments streamed as
/// `input_json_delta` events (the first one empty, as the API sends it).
fn anthropic_tool_use(model: &str, calls: &[(&str, &str, &[&str])]) -> Vec<Frame> {
    let ev = |name: &str, json: String| Frame::Bytes(format!("event: {name}\ndata: {json}\n\n"));
    let mut f = vec![ev(
        "message_start",
        format!(
            r#"{{"type":"message_start","message":{{"id":"msg_01","type":"message","role":"assistant","content":[],"model":"{model}","stop_reason":null,"stop_sequence":null,"usage":{{"input_tokens":21,"output_tokens":1}}}}}}"#
        ),
    )];
    for (i, (id, name, parts)) in calls.iter().enumerate() {
        f.push(ev(
            "content_block_start",
            format!(
                r#"{{"type":"content_block_start","index":{i},"content_block":{{"type":"tool_use","id":"{id}","name":"{name}","input":{{}}}}}}"#
            ),
        ));
        for p in std::iter::once(&"").chain(parts.iter()) {
            let p = serde_json::to_string(p).expect("json");
            f.push(ev(
                "content_block_delta",
                format!(
                    r#"{{"type":"content_block_delta","index":{i},"delta":{{"type":"input_json_delta","partial_json":{p}}}}}"#
                ),
            ));
        }
        f.push(ev(
            "content_block_stop",
            format!(r#"{{"type":"content_block_stop","index":{i}}}"#),
        ));
    }
    f.push(ev(
        "message_delta",
        r#"{"type":"message_delta","delta":{"stop_reason":"tool_use","stop_sequence":null},"usage":{"output_tokens":7}}"#.into(),
    ));
    f.push(ev("message_stop", r#"{"type":"message_stop"}"#.into()));
    f
}

/// The vendors the fake can imitate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Vendor {
    OpenAi,
    Anthropic,
    Gemini,
    Mistral,
    Compatible,
}

fn data(json: &str) -> Frame {
    Frame::Bytes(format!("data: {json}\n\n"))
}

impl Vendor {
    /// The `base_url` a provider is configured with, relative to the fake's root.
    pub fn base_path(self) -> &'static str {
        match self {
            Vendor::Gemini => "/v1beta",
            _ => "/v1",
        }
    }

    pub fn model(self) -> &'static str {
        match self {
            Vendor::OpenAi => "gpt-4o-mini",
            Vendor::Anthropic => "claude-sonnet-4-5",
            Vendor::Gemini => "gemini-2.0-flash",
            Vendor::Mistral => "mistral-small-latest",
            Vendor::Compatible => "smollm2",
        }
    }

    /// The path (and query) the provider must call for a streamed chat.
    pub fn chat_path(self) -> String {
        match self {
            Vendor::Anthropic => "/v1/messages".into(),
            Vendor::Gemini => format!(
                "/v1beta/models/{}:streamGenerateContent?alt=sse",
                self.model()
            ),
            _ => "/v1/chat/completions".into(),
        }
    }

    /// The status a vendor uses for "overloaded".
    pub fn overloaded_status(self) -> u16 {
        match self {
            Vendor::Anthropic => 529,
            _ => 503,
        }
    }

    /// One text-delta event.
    pub fn text_frame(self, text: &str) -> Frame {
        let t = serde_json::to_string(text).expect("json");
        match self {
            Vendor::OpenAi | Vendor::Compatible | Vendor::Mistral => data(&format!(
                r#"{{"id":"chatcmpl-1","object":"chat.completion.chunk","created":1700000000,"model":"{}","choices":[{{"index":0,"delta":{{"content":{t}}},"logprobs":null,"finish_reason":null}}]}}"#,
                self.model()
            )),
            Vendor::Anthropic => Frame::Bytes(format!(
                "event: content_block_delta\ndata: {{\"type\":\"content_block_delta\",\"index\":0,\"delta\":{{\"type\":\"text_delta\",\"text\":{t}}}}}\n\n"
            )),
            Vendor::Gemini => data(&format!(
                r#"{{"candidates":[{{"content":{{"parts":[{{"text":{t}}}],"role":"model"}},"index":0}}],"modelVersion":"{}"}}"#,
                self.model()
            )),
        }
    }

    /// Events before the first text (role chunk, message_start, …).
    pub fn preamble(self) -> Vec<Frame> {
        match self {
            Vendor::OpenAi | Vendor::Compatible | Vendor::Mistral => vec![data(&format!(
                r#"{{"id":"chatcmpl-1","object":"chat.completion.chunk","created":1700000000,"model":"{}","choices":[{{"index":0,"delta":{{"role":"assistant","content":""}},"logprobs":null,"finish_reason":null}}]}}"#,
                self.model()
            ))],
            Vendor::Anthropic => vec![
                Frame::Bytes(format!(
                    "event: message_start\ndata: {{\"type\":\"message_start\",\"message\":{{\"id\":\"msg_01\",\"type\":\"message\",\"role\":\"assistant\",\"content\":[],\"model\":\"{}\",\"stop_reason\":null,\"stop_sequence\":null,\"usage\":{{\"input_tokens\":21,\"output_tokens\":1}}}}}}\n\n",
                    self.model()
                )),
                Frame::Bytes("event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n".into()),
                Frame::Bytes("event: ping\ndata: {\"type\": \"ping\"}\n\n".into()),
            ],
            Vendor::Gemini => vec![],
        }
    }

    /// Finish + usage (input 21, output 7) + end marker; usage appears only here.
    pub fn finale(self) -> Vec<Frame> {
        match self {
            Vendor::OpenAi | Vendor::Compatible => vec![
                data(&format!(
                    r#"{{"id":"chatcmpl-1","object":"chat.completion.chunk","created":1700000000,"model":"{}","choices":[{{"index":0,"delta":{{}},"logprobs":null,"finish_reason":"stop"}}]}}"#,
                    self.model()
                )),
                data(&format!(
                    r#"{{"id":"chatcmpl-1","object":"chat.completion.chunk","created":1700000000,"model":"{}","choices":[],"usage":{{"prompt_tokens":21,"completion_tokens":7,"total_tokens":28}}}}"#,
                    self.model()
                )),
                Frame::Bytes("data: [DONE]\n\n".into()),
            ],
            Vendor::Mistral => vec![
                data(&format!(
                    r#"{{"id":"a1","object":"chat.completion.chunk","created":1700000000,"model":"{}","choices":[{{"index":0,"delta":{{"content":""}},"finish_reason":"stop"}}],"usage":{{"prompt_tokens":21,"total_tokens":28,"completion_tokens":7}}}}"#,
                    self.model()
                )),
                Frame::Bytes("data: [DONE]\n\n".into()),
            ],
            Vendor::Anthropic => vec![
                Frame::Bytes("event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":0}\n\n".into()),
                Frame::Bytes("event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\",\"stop_sequence\":null},\"usage\":{\"output_tokens\":7}}\n\n".into()),
                Frame::Bytes("event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n".into()),
            ],
            Vendor::Gemini => vec![data(&format!(
                r#"{{"candidates":[{{"content":{{"parts":[{{"text":""}}],"role":"model"}},"finishReason":"STOP","index":0}}],"usageMetadata":{{"promptTokenCount":21,"candidatesTokenCount":7,"totalTokenCount":28}},"modelVersion":"{}"}}"#,
                self.model()
            ))],
        }
    }

    /// A whole successful stream of `parts`, with SSE framing variations: a comment line,
    /// CRLF line ends (OpenAI-like vendors), a `data:` split over two lines (Gemini), and a
    /// keep-alive comment between events.
    pub fn success(self, parts: &[&str]) -> Vec<Frame> {
        let mut f = vec![Frame::Bytes(": keep-alive\n\n".into())];
        f.extend(self.preamble());
        for (i, p) in parts.iter().enumerate() {
            f.push(self.text_frame(p));
            if i == 0 {
                f.push(Frame::Bytes(": still here\n\n".into()));
            }
        }
        f.extend(self.finale());
        match self {
            Vendor::OpenAi | Vendor::Mistral => f
                .into_iter()
                .map(|x| match x {
                    Frame::Bytes(b) => Frame::Bytes(b.replace('\n', "\r\n")),
                    o => o,
                })
                .collect(),
            Vendor::Gemini => {
                f.into_iter()
                    .map(|x| match x {
                        // Multi-line data: the JSON split over two `data:` lines.
                        Frame::Bytes(b) if b.contains(",\"modelVersion\"") => Frame::Bytes(
                            b.replacen(",\"modelVersion\"", ",\ndata: \"modelVersion\"", 1),
                        ),
                        o => o,
                    })
                    .collect()
            }
            _ => f,
        }
    }

    /// A whole stream in which the model calls tools instead of answering: `calls` are
    /// `(id, name, argument fragments)`. Vendors that stream arguments (OpenAI and compatible
    /// servers: `tool_calls` deltas by `index`; Anthropic: a `tool_use` block then
    /// `input_json_delta` events) get one SSE event per fragment; Mistral and Gemini send each
    /// call whole in one event, as their APIs do. Usage: input 21, output 7.
    pub fn tool_calls(self, calls: &[(&str, &str, &[&str])]) -> Vec<Frame> {
        let mut f = vec![Frame::Bytes(": keep-alive\n\n".into())];
        match self {
            Vendor::OpenAi | Vendor::Compatible => {
                f.extend(self.openai_tool_deltas(calls));
                f.push(self.openai_chunk(r#"{}"#, Some("tool_calls")));
                f.push(data(&format!(
                    r#"{{"id":"chatcmpl-1","object":"chat.completion.chunk","created":1700000000,"model":"{}","choices":[],"usage":{{"prompt_tokens":21,"completion_tokens":7,"total_tokens":28}}}}"#,
                    self.model()
                )));
                f.push(Frame::Bytes("data: [DONE]\n\n".into()));
            }
            Vendor::Mistral => {
                let whole: Vec<String> = calls
                    .iter()
                    .enumerate()
                    .map(|(i, (id, name, parts))| {
                        let args = serde_json::to_string(&parts.concat()).expect("json");
                        format!(
                            r#"{{"id":"{id}","function":{{"name":"{name}","arguments":{args}}},"index":{i}}}"#
                        )
                    })
                    .collect();
                f.push(data(&format!(
                    r#"{{"id":"a1","object":"chat.completion.chunk","created":1700000000,"model":"{}","choices":[{{"index":0,"delta":{{"tool_calls":[{}]}},"finish_reason":"tool_calls"}}],"usage":{{"prompt_tokens":21,"total_tokens":28,"completion_tokens":7}}}}"#,
                    self.model(),
                    whole.join(",")
                )));
                f.push(Frame::Bytes("data: [DONE]\n\n".into()));
            }
            Vendor::Anthropic => f.extend(anthropic_tool_use(self.model(), calls)),
            Vendor::Gemini => {
                let parts: Vec<String> = calls
                    .iter()
                    .map(|(_, name, parts)| {
                        format!(
                            r#"{{"functionCall":{{"name":"{name}","args":{}}}}}"#,
                            parts.concat()
                        )
                    })
                    .collect();
                f.push(data(&format!(
                    r#"{{"candidates":[{{"content":{{"parts":[{}],"role":"model"}},"finishReason":"STOP","index":0}}],"usageMetadata":{{"promptTokenCount":21,"candidatesTokenCount":7,"totalTokenCount":28}},"modelVersion":"{}"}}"#,
                    parts.join(","),
                    self.model()
                )));
            }
        }
        f
    }

    /// One Chat Completions chunk with `delta` and a finish reason.
    fn openai_chunk(self, delta: &str, finish: Option<&str>) -> Frame {
        let finish = finish.map_or("null".to_string(), |f| format!("\"{f}\""));
        data(&format!(
            r#"{{"id":"chatcmpl-1","object":"chat.completion.chunk","created":1700000000,"model":"{}","choices":[{{"index":0,"delta":{delta},"logprobs":null,"finish_reason":{finish}}}]}}"#,
            self.model()
        ))
    }

    /// `tool_calls` deltas: per call, one chunk with id, type, name and empty arguments, then one
    /// per argument fragment carrying only `index` and `function.arguments`.
    fn openai_tool_deltas(self, calls: &[(&str, &str, &[&str])]) -> Vec<Frame> {
        let mut f = Vec::new();
        for (i, (id, name, parts)) in calls.iter().enumerate() {
            let role = if i == 0 {
                r#""role":"assistant","content":null,"#
            } else {
                ""
            };
            f.push(self.openai_chunk(
                &format!(
                    r#"{{{role}"tool_calls":[{{"index":{i},"id":"{id}","type":"function","function":{{"name":"{name}","arguments":""}}}}]}}"#
                ),
                None,
            ));
            for p in *parts {
                let p = serde_json::to_string(p).expect("json");
                f.push(self.openai_chunk(
                    &format!(
                        r#"{{"tool_calls":[{{"index":{i},"function":{{"arguments":{p}}}}}]}}"#
                    ),
                    None,
                ));
            }
        }
        f
    }

    /// A stream whose first event is not valid JSON.
    pub fn malformed(self) -> Vec<Frame> {
        let bad = "data: {\"choices\": [\n\n".to_string();
        match self {
            Vendor::Anthropic => vec![Frame::Bytes(format!("event: message_start\n{bad}"))],
            _ => vec![Frame::Bytes(bad)],
        }
    }

    /// One text event, then the connection drops.
    pub fn dropped(self, text: &str) -> Vec<Frame> {
        let mut f = self.preamble();
        f.push(self.text_frame(text));
        f.push(Frame::Delay(Duration::from_millis(20)));
        f.push(Frame::Drop);
        f
    }

    /// A JSON error body in the vendor's shape.
    pub fn error_body(self, message: &str) -> String {
        match self {
            Vendor::Anthropic => format!(
                r#"{{"type":"error","error":{{"type":"overloaded_error","message":"{message}"}}}}"#
            ),
            Vendor::Gemini => format!(
                r#"{{"error":{{"code":503,"message":"{message}","status":"UNAVAILABLE"}}}}"#
            ),
            _ => format!(
                r#"{{"error":{{"message":"{message}","type":"server_error","param":null,"code":null}}}}"#
            ),
        }
    }
}
