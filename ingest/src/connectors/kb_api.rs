//! The knowledge-base API connector: articles from a paginated JSON HTTP API, Zendesk Help
//! Center by default, any similar API (Intercom, Confluence, …) by configuring JSON pointers.
//!
//! Owns the HTTP side of a sync: token auth, following `next` links (cursor or offset
//! pagination, the `Link: rel="next"` header as a fallback), incremental listing from the
//! `updated_at` watermark, retries (HTTP 429 honours `Retry-After`; 5xx, timeouts and broken
//! bodies back off exponentially with jitter, a bounded number of times) and a hard per-request
//! timeout. Safety rule: the listing is `complete` (so unlisted articles get deleted) only when
//! a full, non-incremental listing reached its last page without any failure. An auth failure,
//! an unreadable or truncated page, exhausted retries, or a next link already visited (a cursor
//! loop) ends the listing with a `Failed` line naming the page and `complete: false`, and the
//! watermark is not advanced. Runs on a blocking thread (reqwest's blocking client).

use std::collections::{BTreeMap, HashSet};
use std::hash::{BuildHasher, Hasher};
use std::time::Duration;

use chrono::{DateTime, Utc};
use reqwest::StatusCode;
use reqwest::blocking::{Client, Response};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{Connector, Item, SyncState, SyncSummary};
use crate::IngestError;
use crate::extract::html_to_markdown;
use crate::normalise::{Zone, parse_timestamp, rfc3339_utc};
use crate::source::{Body, SourceDocument};

/// How requests authenticate. Tokens come from the config or, better, an environment variable.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum KbAuth {
    #[default]
    None,
    /// `Authorization: Bearer <token>` (OAuth tokens, Intercom, Confluence PATs).
    Bearer {
        #[serde(default)]
        token: Option<String>,
        #[serde(default)]
        token_env: Option<String>,
    },
    /// Zendesk API tokens: HTTP Basic with user `<email>/token` and the token as password.
    BasicToken {
        email: String,
        #[serde(default)]
        token: Option<String>,
        #[serde(default)]
        token_env: Option<String>,
    },
}

/// Body markup of the API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum BodyFormat {
    #[default]
    Html,
    Markdown,
    Text,
}

/// Where things are in a page and in an article, as JSON pointers (RFC 6901).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KbFields {
    /// The array of articles in a page.
    pub list: String,
    pub id: String,
    pub title: String,
    pub body: String,
    pub url: Option<String>,
    pub updated_at: Option<String>,
    /// A boolean; true → the article is skipped as a draft.
    pub draft: Option<String>,
    /// Next-page links, tried in order (absolute or relative URLs; null/missing → none).
    pub next: Vec<String>,
    /// A boolean; false → last page even if a next link is present.
    pub has_more: Option<String>,
    /// A boolean; true → last page (Zendesk incremental exports).
    pub end_of_stream: Option<String>,
    /// Metadata name → pointer into the article (arrays are joined with `; `).
    pub metadata: BTreeMap<String, String>,
}

impl Default for KbFields {
    fn default() -> Self {
        KbFields {
            list: "/articles".into(),
            id: "/id".into(),
            title: "/title".into(),
            body: "/body".into(),
            url: Some("/html_url".into()),
            updated_at: Some("/updated_at".into()),
            draft: Some("/draft".into()),
            next: vec!["/links/next".into(), "/next_page".into()],
            has_more: Some("/meta/has_more".into()),
            end_of_stream: Some("/end_of_stream".into()),
            metadata: [
                ("locale", "/locale"),
                ("section_id", "/section_id"),
                ("labels", "/label_names"),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        }
    }
}

/// Settings of a knowledge-base API source (`kind = "kb_api"`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KbApiOptions {
    /// First page of the full listing, e.g.
    /// `https://<sub>.zendesk.com/api/v2/help_center/en-us/articles.json`.
    pub url: String,
    /// Incremental listing used when a watermark exists and the run is not `full`; `{start_time}`
    /// becomes the watermark in Unix seconds, `{updated_since}` in RFC 3339. Without it every run
    /// lists everything (unchanged articles are still not re-embedded).
    #[serde(default)]
    pub incremental_url: Option<String>,
    /// Page size asked for on the full listing (selects cursor pagination on Zendesk).
    #[serde(default = "default_page_size")]
    pub page_size: Option<u32>,
    #[serde(default = "default_page_size_param")]
    pub page_size_param: String,
    #[serde(default)]
    pub auth: KbAuth,
    #[serde(default)]
    pub body_format: BodyFormat,
    #[serde(default)]
    pub fields: KbFields,
    #[serde(default)]
    pub access_groups: Vec<String>,
    /// Hard limit for one request, body included.
    #[serde(default = "default_timeout_secs")]
    pub timeout_secs: f64,
    /// Retries of one page after 429/5xx/timeouts/broken bodies.
    #[serde(default = "default_max_retries")]
    pub max_retries: u32,
    /// First backoff delay; doubles per retry, with jitter, up to `backoff_max_ms`.
    #[serde(default = "default_backoff_base_ms")]
    pub backoff_base_ms: u64,
    #[serde(default = "default_backoff_max_ms")]
    pub backoff_max_ms: u64,
    /// Longest `Retry-After` honoured; a longer one is waited this long.
    #[serde(default = "default_max_retry_after_secs")]
    pub max_retry_after_secs: u64,
    /// Safety stop for runaway pagination.
    #[serde(default = "default_max_pages")]
    pub max_pages: usize,
}

fn default_page_size() -> Option<u32> {
    Some(100)
}
fn default_page_size_param() -> String {
    "page[size]".into()
}
fn default_timeout_secs() -> f64 {
    30.0
}
fn default_max_retries() -> u32 {
    5
}
fn default_backoff_base_ms() -> u64 {
    500
}
fn default_backoff_max_ms() -> u64 {
    30_000
}
fn default_max_retry_after_secs() -> u64 {
    120
}
fn default_max_pages() -> usize {
    100_000
}

impl KbApiOptions {
    /// Zendesk Help Center defaults for the given first-page URL.
    pub fn new(url: &str) -> KbApiOptions {
        KbApiOptions {
            url: url.to_string(),
            incremental_url: None,
            page_size: default_page_size(),
            page_size_param: default_page_size_param(),
            auth: KbAuth::None,
            body_format: BodyFormat::Html,
            fields: KbFields::default(),
            access_groups: Vec::new(),
            timeout_secs: default_timeout_secs(),
            max_retries: default_max_retries(),
            backoff_base_ms: default_backoff_base_ms(),
            backoff_max_ms: default_backoff_max_ms(),
            max_retry_after_secs: default_max_retry_after_secs(),
            max_pages: default_max_pages(),
        }
    }
}

enum Credentials {
    None,
    Bearer(String),
    Basic { user: String, token: String },
}

pub struct KbApiConnector {
    name: String,
    options: KbApiOptions,
    credentials: Credentials,
    client: Option<Client>,
}

/// Why fetching a page failed, and whether another try could help.
struct FetchError {
    message: String,
    retryable: bool,
    retry_after: Option<Duration>,
}

impl FetchError {
    fn fatal(message: String) -> FetchError {
        FetchError {
            message,
            retryable: false,
            retry_after: None,
        }
    }
    fn transient(message: String) -> FetchError {
        FetchError {
            message,
            retryable: true,
            retry_after: None,
        }
    }
}

fn resolve_token(
    source: &str,
    token: &Option<String>,
    env: &Option<String>,
) -> Result<String, IngestError> {
    let err = |message: String| IngestError::Connector {
        source_name: source.to_string(),
        message,
    };
    if let Some(var) = env {
        return std::env::var(var)
            .ok()
            .filter(|t| !t.trim().is_empty())
            .ok_or_else(|| {
                err(format!(
                    "auth.token_env: environment variable `{var}` is not set"
                ))
            });
    }
    token
        .clone()
        .filter(|t| !t.trim().is_empty())
        .ok_or_else(|| err("auth: set `token_env` (preferred) or `token`".into()))
}

impl KbApiConnector {
    pub fn new(name: &str, options: KbApiOptions) -> Result<KbApiConnector, IngestError> {
        let err = |message: String| IngestError::Connector {
            source_name: name.to_string(),
            message,
        };
        reqwest::Url::parse(&options.url).map_err(|e| err(format!("bad `url`: {e}")))?;
        for (key, p) in [
            ("fields.list", &options.fields.list),
            ("fields.id", &options.fields.id),
            ("fields.title", &options.fields.title),
            ("fields.body", &options.fields.body),
        ] {
            if !p.is_empty() && !p.starts_with('/') {
                return Err(err(format!(
                    "`{key}` must be a JSON pointer starting with `/`"
                )));
            }
        }
        if !(options.timeout_secs > 0.0 && options.timeout_secs.is_finite()) {
            return Err(err("`timeout_secs` must be positive".into()));
        }
        let credentials = match &options.auth {
            KbAuth::None => Credentials::None,
            KbAuth::Bearer { token, token_env } => {
                Credentials::Bearer(resolve_token(name, token, token_env)?)
            }
            KbAuth::BasicToken {
                email,
                token,
                token_env,
            } => Credentials::Basic {
                user: format!("{email}/token"),
                token: resolve_token(name, token, token_env)?,
            },
        };
        Ok(KbApiConnector {
            name: name.to_string(),
            options,
            credentials,
            client: None,
        })
    }

    fn client(&mut self) -> Result<Client, IngestError> {
        if let Some(c) = &self.client {
            return Ok(c.clone());
        }
        let timeout = Duration::from_secs_f64(self.options.timeout_secs);
        let client = Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(10)))
            .user_agent(concat!("cairn/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| IngestError::Connector {
                source_name: self.name.clone(),
                message: format!("cannot build HTTP client: {e}"),
            })?;
        self.client = Some(client.clone());
        Ok(client)
    }

    /// One GET of a page, its JSON and its `Link: rel="next"` target.
    fn fetch_once(&self, client: &Client, url: &str) -> Result<(Value, LinkNext), FetchError> {
        let mut req = client.get(url).header("Accept", "application/json");
        req = match &self.credentials {
            Credentials::None => req,
            Credentials::Bearer(t) => req.bearer_auth(t),
            Credentials::Basic { user, token } => req.basic_auth(user, Some(token)),
        };
        let resp: Response = req.send().map_err(|e| {
            if e.is_timeout() {
                FetchError::transient(format!("request timed out: {e}"))
            } else {
                FetchError::transient(format!("request failed: {e}"))
            }
        })?;
        let status = resp.status();
        if status == StatusCode::TOO_MANY_REQUESTS {
            return Err(FetchError {
                message: "rate limited (HTTP 429)".into(),
                retryable: true,
                retry_after: retry_after(&resp),
            });
        }
        if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
            return Err(FetchError::fatal(format!(
                "authentication failed (HTTP {}): check the source's `auth` token and its \
                 permissions",
                status.as_u16()
            )));
        }
        if status.is_server_error() || status == StatusCode::REQUEST_TIMEOUT {
            return Err(FetchError {
                message: format!("server error (HTTP {})", status.as_u16()),
                retryable: true,
                retry_after: retry_after(&resp),
            });
        }
        if !status.is_success() {
            return Err(FetchError::fatal(format!(
                "unexpected HTTP {} for {url}",
                status.as_u16()
            )));
        }
        let mut link_next = LinkNext::Absent;
        for value in resp.headers().get_all("link") {
            let value = value.to_str().unwrap_or_default();
            match link_rel_next(value) {
                Some(url) => {
                    link_next = LinkNext::Next(url);
                    break;
                }
                None => link_next = LinkNext::NoNext,
            }
        }
        let text = resp
            .text()
            .map_err(|e| FetchError::transient(format!("reading the body failed: {e}")))?;
        let json: Value = serde_json::from_str(&text).map_err(|e| {
            FetchError::transient(format!(
                "page is not valid JSON ({} bytes; truncated?): {e}",
                text.len()
            ))
        })?;
        Ok((json, link_next))
    }

    /// GET with bounded retries.
    fn fetch(&self, client: &Client, url: &str) -> Result<(Value, LinkNext), String> {
        let mut attempt = 0u32;
        loop {
            match self.fetch_once(client, url) {
                Ok(page) => return Ok(page),
                Err(e) if !e.retryable => return Err(e.message),
                Err(e) if attempt >= self.options.max_retries => {
                    return Err(format!(
                        "{} (gave up after {} attempts)",
                        e.message,
                        attempt + 1
                    ));
                }
                Err(e) => {
                    let wait = match e.retry_after {
                        Some(d) => d.min(Duration::from_secs(self.options.max_retry_after_secs)),
                        None => self.backoff(attempt),
                    };
                    tracing::warn!(
                        source = %self.name,
                        "{}; retrying in {:.1}s ({url})",
                        e.message,
                        wait.as_secs_f64()
                    );
                    std::thread::sleep(wait);
                    attempt += 1;
                }
            }
        }
    }

    /// Exponential backoff with "equal jitter": half fixed, half random.
    fn backoff(&self, attempt: u32) -> Duration {
        let base = self.options.backoff_base_ms.max(1);
        let cap = self.options.backoff_max_ms.max(base);
        let exp = base.saturating_mul(1u64 << attempt.min(30)).min(cap);
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u32(attempt);
        let jitter = h.finish() % (exp / 2 + 1);
        Duration::from_millis(exp / 2 + jitter)
    }

    fn start_url(&self, state: &SyncState, full: bool) -> Result<(String, bool), String> {
        if !full
            && let (Some(template), Some(mark)) = (&self.options.incremental_url, &state.watermark)
        {
            let since = parse_timestamp(mark, &Zone::utc())
                .map_err(|e| format!("stored watermark unusable: {e}"))?;
            let url = template
                .replace("{start_time}", &since.timestamp().to_string())
                .replace("{updated_since}", &rfc3339_utc(&since));
            return Ok((url, true));
        }
        let mut url = reqwest::Url::parse(&self.options.url).map_err(|e| e.to_string())?;
        if let Some(n) = self.options.page_size {
            let param = &self.options.page_size_param;
            if !url.query_pairs().any(|(k, _)| k == param.as_str()) {
                url.query_pairs_mut().append_pair(param, &n.to_string());
            }
        }
        Ok((url.to_string(), false))
    }

    /// One article as an item (a document, a skipped draft, or a failure).
    fn item(&self, article: &Value, page: usize, pos: usize) -> Item {
        let f = &self.options.fields;
        let Some(id) = pointer_string(article, &f.id).filter(|s| !s.is_empty()) else {
            return Item::Failed {
                external_id: format!("page {page} item {pos}"),
                error: format!("article has no id at `{}`", f.id),
            };
        };
        if let Some(p) = &f.draft
            && article.pointer(p).and_then(Value::as_bool) == Some(true)
        {
            return Item::Skipped {
                external_id: id,
                reason: "draft article".into(),
            };
        }
        let raw_body = pointer_string(article, &f.body).unwrap_or_default();
        let body = match self.options.body_format {
            BodyFormat::Html => Body::Markdown(html_to_markdown(&raw_body)),
            BodyFormat::Markdown => Body::Markdown(raw_body),
            BodyFormat::Text => Body::Text(raw_body),
        };
        let updated_at = f
            .updated_at
            .as_deref()
            .and_then(|p| pointer_string(article, p))
            .and_then(|s| parse_timestamp(&s, &Zone::utc()).ok());
        let mut metadata = BTreeMap::new();
        for (k, p) in &f.metadata {
            if let Some(v) = pointer_string(article, p).filter(|v| !v.is_empty()) {
                metadata.insert(k.clone(), v);
            }
        }
        let title = pointer_string(article, &f.title)
            .map(|t| t.trim().to_string())
            .filter(|t| !t.is_empty())
            .unwrap_or_else(|| format!("Article {id}"));
        Item::Document(SourceDocument {
            external_id: id,
            title,
            url: f.url.as_deref().and_then(|p| pointer_string(article, p)),
            updated_at,
            metadata,
            access_groups: self.options.access_groups.clone(),
            body,
        })
    }

    /// Ends the listing early: one failure line, no deletions, watermark kept.
    fn abort(
        &self,
        emit: &mut dyn FnMut(Item) -> bool,
        page: usize,
        error: String,
    ) -> Result<SyncSummary, IngestError> {
        tracing::error!(source = %self.name, "listing stopped at page {page}: {error}");
        emit(Item::Failed {
            external_id: format!("listing page {page}"),
            error,
        });
        Ok(SyncSummary::default())
    }

    /// Where the listing goes after `page`. Only the API can end a listing: a `has_more` of
    /// false, an `end_of_stream` of true, a next-link field that is present and null (or
    /// empty), or a `Link` header without `rel="next"`. A link that does not parse, `has_more`
    /// true without a link, or a page that says nothing about what follows leave the listing
    /// [`NextPage::Unknown`], and an unknown end never counts as a complete listing.
    fn next_page(&self, page: &Value, link: &LinkNext, current: &str) -> NextPage {
        let f = &self.options.fields;
        let flag = |pointer: &Option<String>| {
            pointer
                .as_deref()
                .and_then(|p| page.pointer(p))
                .and_then(Value::as_bool)
        };
        let has_more = flag(&f.has_more);
        if has_more == Some(false) || flag(&f.end_of_stream) == Some(true) {
            return NextPage::Last;
        }
        let mut body_said_last = false;
        let mut next = None;
        for pointer in &f.next {
            match page.pointer(pointer) {
                None => {}
                Some(Value::Null) => body_said_last = true,
                Some(Value::String(s)) if s.trim().is_empty() => body_said_last = true,
                Some(Value::String(s)) => {
                    next = Some(s.clone());
                    break;
                }
                Some(other) => {
                    return NextPage::Unknown(format!(
                        "the next-page link at `{pointer}` is not a string ({other}); \
                         check `fields.next`"
                    ));
                }
            }
        }
        if next.is_none()
            && let LinkNext::Next(url) = link
        {
            next = Some(url.clone());
        }
        match next {
            // Relative links (Confluence's `_links.next`) resolve against the current page.
            Some(next) => match reqwest::Url::parse(current).and_then(|base| base.join(&next)) {
                Ok(url) => NextPage::Url(url.to_string()),
                Err(e) => NextPage::Unknown(format!(
                    "the next-page link `{next}` is not a URL ({e}); the pages after it were not read"
                )),
            },
            None if has_more == Some(true) => NextPage::Unknown(
                "the page says more pages follow (`has_more` is true) but has no next-page link"
                    .into(),
            ),
            None if body_said_last || *link == LinkNext::NoNext => NextPage::Last,
            None => NextPage::Unknown(
                "the page says neither that it is the last nor where the next one is \
                 (no `has_more` / `end_of_stream` flag, no next-page link field, no Link \
                 header); check `fields.next` and `fields.has_more`"
                    .into(),
            ),
        }
    }
}

/// What a page's `Link` header says about the next page.
#[derive(Debug, Clone, PartialEq, Eq)]
enum LinkNext {
    /// No `Link` header: the body must say.
    Absent,
    /// A `Link` header without `rel="next"`: the last page.
    NoNext,
    Next(String),
}

/// What follows a page of the listing.
#[derive(Debug, PartialEq, Eq)]
enum NextPage {
    /// The API said this page is the last.
    Last,
    Url(String),
    /// The listing cannot go on and the API did not say it ended: incomplete, with the reason.
    Unknown(String),
}

/// A JSON value as text: strings as they are, numbers and booleans printed, arrays of scalars
/// joined with `; `, null and missing → `None`.
fn pointer_string(v: &Value, pointer: &str) -> Option<String> {
    match v.pointer(pointer)? {
        Value::Null => None,
        Value::String(s) => Some(s.clone()),
        Value::Array(items) => {
            let parts: Vec<String> = items
                .iter()
                .filter_map(|i| match i {
                    Value::String(s) => Some(s.clone()),
                    Value::Null => None,
                    other => Some(other.to_string()),
                })
                .collect();
            Some(parts.join("; "))
        }
        other => Some(other.to_string()),
    }
}

/// `Retry-After` as seconds or an HTTP date.
fn retry_after(resp: &Response) -> Option<Duration> {
    let v = resp.headers().get("retry-after")?.to_str().ok()?.trim();
    if let Ok(secs) = v.parse::<f64>() {
        return (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs));
    }
    let at = DateTime::parse_from_rfc2822(v).ok()?.with_timezone(&Utc);
    (at - Utc::now()).to_std().ok().or(Some(Duration::ZERO))
}

/// The target of a `rel="next"` entry in a `Link` header.
fn link_rel_next(header: &str) -> Option<String> {
    header.split(',').find_map(|part| {
        let (target, params) = part.split_once(';')?;
        let is_next = params.split(';').any(|p| {
            let p = p.trim().to_ascii_lowercase();
            p == "rel=\"next\"" || p == "rel=next"
        });
        let t = target.trim();
        (is_next && t.starts_with('<') && t.ends_with('>')).then(|| t[1..t.len() - 1].to_string())
    })
}

impl Connector for KbApiConnector {
    fn name(&self) -> &str {
        &self.name
    }

    fn list(
        &mut self,
        state: &SyncState,
        full: bool,
        emit: &mut dyn FnMut(Item) -> bool,
    ) -> Result<SyncSummary, IngestError> {
        let client = self.client()?;
        let (mut url, incremental) =
            self.start_url(state, full)
                .map_err(|message| IngestError::Connector {
                    source_name: self.name.clone(),
                    message,
                })?;
        let mut visited: HashSet<String> = HashSet::new();
        let mut newest: Option<DateTime<Utc>> = None;
        let mut clean = true;
        let mut page_no = 0usize;
        loop {
            page_no += 1;
            if page_no > self.options.max_pages {
                return self.abort(
                    emit,
                    page_no,
                    format!("more than `max_pages` = {} pages", self.options.max_pages),
                );
            }
            visited.insert(url.clone());
            let (page, link_next) = match self.fetch(&client, &url) {
                Ok(p) => p,
                Err(e) => return self.abort(emit, page_no, format!("{e} ({url})")),
            };
            let Some(articles) = page
                .pointer(&self.options.fields.list)
                .and_then(Value::as_array)
            else {
                return self.abort(
                    emit,
                    page_no,
                    format!(
                        "page has no array at `{}` ({url})",
                        self.options.fields.list
                    ),
                );
            };
            for (pos, article) in articles.iter().enumerate() {
                let item = self.item(article, page_no, pos);
                match &item {
                    Item::Document(d) => {
                        if let Some(t) = d.updated_at {
                            newest = Some(newest.map_or(t, |n| n.max(t)));
                        }
                    }
                    Item::Failed { .. } => clean = false,
                    Item::Skipped { .. } => {}
                }
                if !emit(item) {
                    return Ok(SyncSummary::default());
                }
            }
            match self.next_page(&page, &link_next, &url) {
                NextPage::Last => break,
                NextPage::Unknown(reason) => return self.abort(emit, page_no, reason),
                NextPage::Url(next) if visited.contains(&next) => {
                    return self.abort(
                        emit,
                        page_no,
                        format!(
                            "the API returned a next link already visited ({next}); cursor loop"
                        ),
                    );
                }
                NextPage::Url(next) => url = next,
            }
        }
        let previous = state
            .watermark
            .as_deref()
            .and_then(|w| parse_timestamp(w, &Zone::utc()).ok());
        let watermark = match (newest, previous) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
        Ok(SyncSummary {
            complete: clean && !incremental,
            deleted: Vec::new(),
            watermark: if clean {
                watermark.map(|t| rfc3339_utc(&t))
            } else {
                None
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_header_next_is_found() {
        let h = r#"<https://x.test/a?page[after]=c1>; rel="next", <https://x.test/a?page[before]=c0>; rel="prev""#;
        assert_eq!(
            link_rel_next(h).as_deref(),
            Some("https://x.test/a?page[after]=c1")
        );
        assert_eq!(link_rel_next(r#"<https://x.test/p>; rel="prev""#), None);
    }

    #[test]
    fn backoff_grows_and_stays_bounded() {
        let mut o = KbApiOptions::new("https://x.test/articles.json");
        o.backoff_base_ms = 100;
        o.backoff_max_ms = 1000;
        let c = KbApiConnector::new("kb", o).expect("connector");
        for attempt in 0..40 {
            let d = c.backoff(attempt).as_millis() as u64;
            let exp = (100u64 << attempt.min(30)).min(1000);
            assert!(d >= exp / 2 && d <= exp, "attempt {attempt}: {d}ms");
        }
    }

    #[test]
    fn zendesk_example_pages_map_to_documents() {
        let c = KbApiConnector::new("kb", KbApiOptions::new("https://x.test/a.json"))
            .expect("connector");
        let page: Value = serde_json::json!({
            "articles": [{"id": 36000000000001u64, "title": "Reset", "draft": false,
                "html_url": "https://x.test/hc/1", "updated_at": "2024-05-01T10:00:00Z",
                "label_names": ["account", "password"], "locale": "en-us",
                "body": "<p>Go to <strong>Settings</strong> &gt; Security.</p>"},
                {"id": "2", "title": "Draft", "draft": true, "body": "<p>x</p>"},
                {"title": "No id"}],
            "meta": {"has_more": false}, "links": {"next": null}
        });
        let arts = page["articles"].as_array().expect("articles");
        match c.item(&arts[0], 1, 0) {
            Item::Document(d) => {
                assert_eq!(d.external_id, "36000000000001");
                assert_eq!(d.metadata["labels"], "account; password");
                assert!(
                    matches!(&d.body, Body::Markdown(m) if m.starts_with("Go to **Settings**")),
                    "{:?}",
                    d.body
                );
                assert_eq!(d.url.as_deref(), Some("https://x.test/hc/1"));
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(c.item(&arts[1], 1, 1), Item::Skipped { .. }));
        assert!(matches!(c.item(&arts[2], 1, 2), Item::Failed { .. }));
        assert_eq!(
            c.next_page(&page, &LinkNext::Absent, "https://x.test/a.json"),
            NextPage::Last
        );
    }

    #[test]
    fn link_rel_next_finds_the_next_target_in_any_of_its_spellings() {
        let quoted = r#"<https://x.test/a?p=1>; rel="prev", <https://x.test/a?p=3>; rel="next""#;
        assert_eq!(
            link_rel_next(quoted).as_deref(),
            Some("https://x.test/a?p=3")
        );
        let bare = "<https://x.test/a?p=2>; rel=next";
        assert_eq!(link_rel_next(bare).as_deref(), Some("https://x.test/a?p=2"));
        assert_eq!(link_rel_next(r#"<https://x.test/a?p=1>; rel="prev""#), None);
        assert_eq!(link_rel_next(r#"https://x.test/a; rel="next""#), None);
    }
}
