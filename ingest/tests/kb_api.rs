//! KB API connector against a local fake Help Center (tiny_http on 127.0.0.1:0) that follows
//! the documented cursor-pagination shape.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cairn_ingest::connectors::kb_api::{KbApiConnector, KbApiOptions, KbAuth};
use cairn_ingest::{Connector, Item, SyncState, SyncSummary};
use serde_json::{Value, json};

/// What the fake server answers: status, extra headers, body.
type Reply = (u16, Vec<(&'static str, String)>, String);

struct FakeServer {
    server: Arc<tiny_http::Server>,
    base: String,
    /// (url, authorization header) of every request, in order.
    requests: Arc<Mutex<Vec<(String, String)>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl FakeServer {
    fn start<F>(handler: F) -> FakeServer
    where
        F: Fn(&str, &str, usize) -> Reply + Send + 'static,
    {
        let server = Arc::new(tiny_http::Server::http("127.0.0.1:0").expect("bind"));
        let port = server.server_addr().to_ip().expect("ip listener").port();
        let base = format!("http://127.0.0.1:{port}");
        let requests = Arc::new(Mutex::new(Vec::new()));
        let (s, r, b) = (server.clone(), requests.clone(), base.clone());
        let thread = std::thread::spawn(move || {
            for req in s.incoming_requests() {
                let url = req.url().to_string();
                let auth = req
                    .headers()
                    .iter()
                    .find(|h| h.field.equiv("Authorization"))
                    .map(|h| h.value.as_str().to_string())
                    .unwrap_or_default();
                let n = {
                    let mut log = r.lock().expect("log");
                    log.push((url.clone(), auth.clone()));
                    log.len()
                };
                let (status, headers, body) = handler(&b, &url, n);
                let mut resp = tiny_http::Response::from_string(body).with_status_code(status);
                resp.add_header(
                    tiny_http::Header::from_bytes("Content-Type", "application/json")
                        .expect("header"),
                );
                for (k, v) in headers {
                    resp.add_header(tiny_http::Header::from_bytes(k, v).expect("header"));
                }
                let _ = req.respond(resp);
            }
        });
        FakeServer {
            server,
            base,
            requests,
            thread: Some(thread),
        }
    }

    fn urls(&self) -> Vec<String> {
        self.requests
            .lock()
            .expect("log")
            .iter()
            .map(|(u, _)| u.clone())
            .collect()
    }
}

impl Drop for FakeServer {
    fn drop(&mut self) {
        self.server.unblock();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn article(id: u64, updated: &str, draft: bool) -> Value {
    json!({
        "id": id,
        "url": format!("https://example.zendesk.com/api/v2/help_center/en-us/articles/{id}.json"),
        "html_url": format!("https://example.zendesk.com/hc/en-us/articles/{id}"),
        "draft": draft,
        "updated_at": updated,
        "title": format!("Article {id}"),
        "locale": "en-us",
        "section_id": 36000000000101u64,
        "label_names": ["faq"],
        "body": format!("<h2>Part {id}</h2><p>Body of article <b>{id}</b>.</p><script>x()</script>"),
    })
}

/// A cursor page: `next` is the cursor of the following page, if any.
fn page(base: &str, articles: Vec<Value>, next: Option<&str>) -> String {
    json!({
        "articles": articles,
        "meta": {"has_more": next.is_some(), "after_cursor": next, "before_cursor": null},
        "links": {
            "next": next.map(|c| format!("{base}/api/v2/help_center/articles.json?page[size]=2&page[after]={c}")),
            "prev": null
        }
    })
    .to_string()
}

fn ok(body: String) -> Reply {
    (200, vec![], body)
}

fn options(base: &str) -> KbApiOptions {
    let mut o = KbApiOptions::new(&format!("{base}/api/v2/help_center/articles.json"));
    o.page_size = Some(2);
    o.auth = KbAuth::Bearer {
        token: Some("t0ken".into()),
        token_env: None,
    };
    o.timeout_secs = 5.0;
    o.max_retries = 3;
    o.backoff_base_ms = 10;
    o.backoff_max_ms = 50;
    o
}

fn run(options: KbApiOptions, state: &SyncState, full: bool) -> (Vec<Item>, SyncSummary) {
    let mut c = KbApiConnector::new("kb", options).expect("connector");
    let mut items = Vec::new();
    let summary = c
        .list(state, full, &mut |i| {
            items.push(i);
            true
        })
        .expect("list");
    (items, summary)
}

fn doc_ids(items: &[Item]) -> Vec<String> {
    items
        .iter()
        .filter_map(|i| match i {
            Item::Document(d) => Some(d.external_id.clone()),
            _ => None,
        })
        .collect()
}

#[test]
fn three_pages_with_429_and_500_are_listed_completely_and_drafts_skipped() {
    let page2_calls = Arc::new(AtomicUsize::new(0));
    let page3_calls = Arc::new(AtomicUsize::new(0));
    let (p2, p3) = (page2_calls.clone(), page3_calls.clone());
    let server = FakeServer::start(move |base, url, _| {
        if url.contains("page[after]=c2") {
            if p3.fetch_add(1, Ordering::SeqCst) == 0 {
                return (500, vec![], r#"{"error":"InternalError"}"#.into());
            }
            ok(page(
                base,
                vec![article(5, "2024-06-01T00:00:00Z", false)],
                None,
            ))
        } else if url.contains("page[after]=c1") {
            if p2.fetch_add(1, Ordering::SeqCst) == 0 {
                return (429, vec![("Retry-After", "1".into())], "{}".into());
            }
            ok(page(
                base,
                vec![
                    article(3, "2024-05-03T00:00:00Z", false),
                    article(4, "2024-07-04T12:30:00Z", false),
                ],
                Some("c2"),
            ))
        } else {
            ok(page(
                base,
                vec![
                    article(1, "2024-05-01T10:00:00Z", false),
                    article(2, "2024-08-01T00:00:00Z", true),
                ],
                Some("c1"),
            ))
        }
    });
    let started = Instant::now();
    let (items, summary) = run(options(&server.base), &SyncState::default(), true);
    assert!(
        started.elapsed() >= Duration::from_millis(950),
        "Retry-After was not honoured"
    );
    assert_eq!(doc_ids(&items), ["1", "3", "4", "5"]);
    assert!(items.iter().any(|i| matches!(i,
        Item::Skipped { external_id, reason } if external_id == "2" && reason.contains("draft"))));
    assert!(summary.complete, "{items:?}");
    // The draft's newer time does not move the watermark.
    assert_eq!(summary.watermark.as_deref(), Some("2024-07-04T12:30:00Z"));
    assert_eq!(page2_calls.load(Ordering::SeqCst), 2);
    assert_eq!(page3_calls.load(Ordering::SeqCst), 2);
    let urls = server.urls();
    assert_eq!(urls.len(), 5, "{urls:?}");
    assert!(urls[0].contains("page%5Bsize%5D=2") || urls[0].contains("page[size]=2"));
    let auth = server.requests.lock().expect("log")[0].1.clone();
    assert_eq!(auth, "Bearer t0ken");
    let Some(Item::Document(d)) = items.first() else {
        panic!("document first")
    };
    let cairn_ingest::Body::Markdown(md) = &d.body else {
        panic!("markdown")
    };
    assert!(md.starts_with("## Part 1"), "{md}");
    assert!(!md.contains("x()"), "{md}");
    assert_eq!(d.metadata["labels"], "faq");
    assert_eq!(
        d.url.as_deref(),
        Some("https://example.zendesk.com/hc/en-us/articles/1")
    );
}

#[test]
fn auth_failure_stops_with_a_clear_error_and_no_deletions() {
    let server = FakeServer::start(|_, _, _| {
        (
            401,
            vec![],
            r#"{"error":"Couldn't authenticate you"}"#.into(),
        )
    });
    let mut o = options(&server.base);
    o.auth = KbAuth::BasicToken {
        email: "agent@example.com".into(),
        token: Some("secret123".into()),
        token_env: None,
    };
    let (items, summary) = run(o, &SyncState::default(), true);
    assert!(!summary.complete);
    assert_eq!(summary.watermark, None);
    assert!(
        matches!(&items[..], [Item::Failed { error, .. }]
        if error.contains("401") && error.contains("auth")),
        "{items:?}"
    );
    // Not retried; Zendesk's API-token Basic form.
    let log = server.requests.lock().expect("log").clone();
    assert_eq!(log.len(), 1);
    assert_eq!(
        log[0].1,
        "Basic YWdlbnRAZXhhbXBsZS5jb20vdG9rZW46c2VjcmV0MTIz"
    );
}

#[test]
fn a_repeated_cursor_stops_the_listing_incomplete() {
    let server = FakeServer::start(|base, url, _| {
        if url.contains("page[after]=c1") {
            // Claims more, but points back at itself.
            ok(page(
                base,
                vec![article(3, "2024-05-03T00:00:00Z", false)],
                Some("c1"),
            ))
        } else {
            ok(page(
                base,
                vec![article(1, "2024-05-01T10:00:00Z", false)],
                Some("c1"),
            ))
        }
    });
    let (items, summary) = run(options(&server.base), &SyncState::default(), true);
    assert_eq!(doc_ids(&items), ["1", "3"]);
    assert!(!summary.complete);
    assert_eq!(summary.watermark, None);
    assert!(items.iter().any(|i| matches!(i,
        Item::Failed { error, .. } if error.contains("already visited"))));
    assert_eq!(server.urls().len(), 2);
}

#[test]
fn a_truncated_page_is_retried_then_ends_the_listing_incomplete() {
    let server = FakeServer::start(|base, url, _| {
        if url.contains("page[after]=c1") {
            ok(r#"{"articles":[{"id":3,"title":"Cut o"#.into())
        } else {
            ok(page(
                base,
                vec![article(1, "2024-05-01T10:00:00Z", false)],
                Some("c1"),
            ))
        }
    });
    let mut o = options(&server.base);
    o.max_retries = 2;
    let (items, summary) = run(o, &SyncState::default(), true);
    assert!(!summary.complete);
    assert_eq!(doc_ids(&items), ["1"]);
    assert!(items.iter().any(|i| matches!(i,
        Item::Failed { external_id, error }
            if external_id == "listing page 2" && error.contains("not valid JSON"))));
    assert_eq!(server.urls().len(), 4); // page 1, then page 2 three times
}

#[test]
fn a_hung_request_hits_the_hard_timeout() {
    let server = FakeServer::start(|base, _, _| {
        std::thread::sleep(Duration::from_millis(1500));
        ok(page(base, vec![], None))
    });
    let mut o = options(&server.base);
    o.timeout_secs = 0.3;
    o.max_retries = 1;
    let started = Instant::now();
    let (items, summary) = run(o, &SyncState::default(), true);
    assert!(!summary.complete);
    assert!(
        matches!(&items[..], [Item::Failed { error, .. }] if error.contains("timed out")),
        "{items:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[test]
fn incremental_run_sends_the_watermark_and_never_reconciles() {
    let server = FakeServer::start(|_, url, _| {
        if url.starts_with("/api/v2/help_center/incremental/articles.json?start_time=1714557600") {
            ok(json!({
                "articles": [article(3, "2024-05-03T00:00:00Z", false)],
                "next_page": null,
                "end_time": 1714694400,
                "count": 1
            })
            .to_string())
        } else {
            (404, vec![], "{}".into())
        }
    });
    let mut o = options(&server.base);
    o.incremental_url = Some(format!(
        "{}/api/v2/help_center/incremental/articles.json?start_time={{start_time}}",
        server.base
    ));
    let state = SyncState {
        watermark: Some("2024-05-01T10:00:00Z".into()),
        last_reconciled: None,
    };
    let (items, summary) = run(o.clone(), &state, false);
    assert_eq!(doc_ids(&items), ["3"], "{items:?}");
    assert!(!summary.complete, "an incremental listing must not delete");
    assert_eq!(summary.watermark.as_deref(), Some("2024-05-03T00:00:00Z"));
    assert_eq!(server.urls().len(), 1);

    // `full` ignores the watermark and walks the full listing.
    let (items, summary) = run(o, &state, true);
    assert!(!summary.complete);
    assert!(matches!(&items[..], [Item::Failed { error, .. }] if error.contains("404")));
    assert!(server.urls()[1].starts_with("/api/v2/help_center/articles.json"));
}

/// Serves `first` as page 1 and a healthy last page 2 (article 9) for anything else.
fn first_page_then_last(first: Value, link: Option<&'static str>) -> FakeServer {
    FakeServer::start(move |base, url, _| {
        if url.contains("page[after]=c1") {
            ok(page(
                base,
                vec![article(9, "2024-05-09T00:00:00Z", false)],
                None,
            ))
        } else {
            let headers = link
                .map(|l| vec![("Link", l.to_string())])
                .unwrap_or_default();
            (200, headers, first.to_string())
        }
    })
}

fn failed_errors(items: &[Item]) -> Vec<String> {
    items
        .iter()
        .filter_map(|i| match i {
            Item::Failed { error, .. } => Some(error.clone()),
            _ => None,
        })
        .collect()
}

/// Pages whose continuation is unknown end the listing incomplete (so a full sync deletes
/// nothing) with a failure that says why, however the page is broken.
#[test]
fn a_listing_whose_next_page_is_unknown_is_incomplete_with_the_reason() {
    let one = || vec![article(1, "2024-05-01T10:00:00Z", false)];
    let cases = [
        (
            json!({"articles": one(), "meta": {"has_more": true}, "links": {"next": "http://[::1"}}),
            "is not a URL",
        ),
        (
            json!({"articles": one(), "meta": {"has_more": true}, "links": {"next": null}}),
            "has no next-page link",
        ),
        (
            json!({"articles": one(), "meta": {"has_more": true}}),
            "has no next-page link",
        ),
        (
            json!({"articles": one(), "links": {"next": 42}}),
            "is not a string",
        ),
        (json!({"articles": one()}), "says neither"),
    ];
    for (first, reason) in cases {
        let server = first_page_then_last(first.clone(), None);
        let (items, summary) = run(options(&server.base), &SyncState::default(), true);
        assert_eq!(doc_ids(&items), ["1"], "{first}");
        assert!(
            !summary.complete,
            "{first}: an unknown end counted as complete"
        );
        assert_eq!(summary.watermark, None, "{first}");
        let errors = failed_errors(&items);
        assert!(
            errors.len() == 1 && errors[0].contains(reason),
            "{first}: expected one failure saying `{reason}`, got {errors:?}"
        );
        assert_eq!(server.urls().len(), 1, "{first}");
    }
}

/// What the API says ends a listing does end it, complete: `has_more` false, a null next-page
/// field, and a `Link` header without `rel="next"`.
#[test]
fn a_listing_the_api_says_is_over_is_complete() {
    let one = || vec![article(1, "2024-05-01T10:00:00Z", false)];
    let cases = [
        (
            json!({"articles": one(), "meta": {"has_more": false}}),
            None,
        ),
        (json!({"articles": one(), "next_page": null}), None),
        // An empty link says the same as null (a mutant that followed it went unnoticed).
        (json!({"articles": one(), "next_page": "  "}), None),
        (
            json!({"articles": one()}),
            Some(r#"<https://x.test/p?page=0>; rel="prev""#),
        ),
    ];
    for (first, link) in cases {
        let server = first_page_then_last(first.clone(), link);
        let (items, summary) = run(options(&server.base), &SyncState::default(), true);
        assert_eq!(doc_ids(&items), ["1"], "{first}");
        assert!(summary.complete, "{first} {link:?}: {items:?}");
        assert!(failed_errors(&items).is_empty(), "{first}");
    }
}

/// A `Link: <…>; rel="next"` header carries the listing on when the body names no next page
/// (cargo-mutants found the header's parser untested).
#[test]
fn a_link_header_next_page_is_followed() {
    let server = FakeServer::start(|base, url, _| {
        if url.contains("page[after]=c1") {
            ok(page(
                base,
                vec![article(9, "2024-05-09T00:00:00Z", false)],
                None,
            ))
        } else {
            let link = format!(
                "<{base}/api/v2/help_center/articles.json?page[size]=2&page[after]=c1>; rel=\"next\""
            );
            let body = json!({"articles": [article(1, "2024-05-01T10:00:00Z", false)]});
            (200, vec![("Link", link)], body.to_string())
        }
    });
    let (items, summary) = run(options(&server.base), &SyncState::default(), true);
    assert_eq!(doc_ids(&items), ["1", "9"], "{items:?}");
    assert!(summary.complete, "{items:?}");
}
