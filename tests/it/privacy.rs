//! Data minimisation and the audit log end to end: a remote provider (a fake that echoes the
//! placeholders it finds) never receives the e-mail address, phone number or card number of a
//! document or question; the caller's answer has them mapped back; citations quote the
//! unmasked chunk; the audit log names the provider with the hash of exactly what it received;
//! admin actions are logged under the key's name, never the key.

use axum::http::StatusCode;
use serde_json::{Value, json};
use tower::ServiceExt;

use crate::support::{self, ADMIN, TestApp, keyed_app, post_json, with_key};
use crate::vendors::{Fake, Reply, Vendor};

const EMAIL: &str = "billing.disputes@acme-corp.example";
const PHONE: &str = "+1 415 555 2671";
const CARD: &str = "4111 1111 1111 1111";
const ASKER: &str = "jane.roe@customer.example";

/// A model that answers with every placeholder of its prompt, split across deltas so one is
/// cut in the middle, and cites passage 1.
fn echoing_model(body: &Value) -> Reply {
    let user = body["messages"]
        .as_array()
        .and_then(|m| m.last())
        .and_then(|m| m["content"].as_str())
        .unwrap_or("");
    let mut found: Vec<&str> = Vec::new();
    let mut rest = user;
    while let Some(open) = rest.find('[') {
        let tail = &rest[open..];
        let Some(close) = tail.find(']') else { break };
        let candidate = &tail[..=close];
        if ["[email-", "[phone-", "[card-"]
            .iter()
            .any(|k| candidate.starts_with(k))
            && !found.contains(&candidate)
        {
            found.push(candidate);
        }
        rest = &tail[1..];
    }
    let text = format!("Billing disputes: {} [1].", found.join(" and "));
    let (a, b) = text.split_at(text.find("[email").map_or(0, |i| i + 4));
    Reply::sse(Vendor::Compatible.success(&[a, b]))
}

fn billing_app(fake: &Fake, extra: &str) -> TestApp {
    TestApp::with_setup(|dir| {
        let page = format!(
            "# Billing disputes\n\nBilling disputes are handled by email at {EMAIL} or by phone at {PHONE}. \
             The test card {CARD} is always declined.\n"
        );
        support::wiki_with_remote_model(dir, &fake.base, ("billing.md", &page), extra)
    })
}

async fn ask(app: &TestApp, question: &str) -> Value {
    support::ask_json(app, question).await
}

fn audit_lines(app: &TestApp) -> Vec<Value> {
    cairn::observe::audit::read(app.engine.audit.path()).expect("audit log")
}

const QUESTION: &str = "Who handles billing disputes? Reply to jane.roe@customer.example";

#[tokio::test]
async fn the_provider_never_sees_personal_data_and_the_caller_gets_it_back() {
    let fake = Fake::responding(echoing_model).await;
    let app = billing_app(&fake, "");
    let answer = ask(&app, QUESTION).await;

    // What the provider received: placeholders, none of the values.
    let seen = fake.seen();
    assert_eq!(seen.len(), 1, "{seen:?}");
    let sent = seen[0].body.to_string();
    for secret in [EMAIL, PHONE, CARD, ASKER, "4111111111111111", "555 2671"] {
        assert!(
            !sent.contains(secret),
            "{secret} reached the provider: {sent}"
        );
    }
    for placeholder in ["[email-1]", "[email-2]", "[phone-1]", "[card-1]"] {
        assert!(sent.contains(placeholder), "{placeholder} missing: {sent}");
    }

    // What the caller was shown: the values, mapped back (the split placeholder too).
    let text = answer["answer"].as_str().expect("answer");
    for value in [EMAIL, PHONE, CARD, ASKER] {
        assert!(text.contains(value), "{value} not mapped back: {text}");
    }
    assert!(
        !text.contains("[email-") && !text.contains("[phone-"),
        "{text}"
    );

    // The citation quotes the document as it is, verifiable against the chunk.
    let citations = answer["citations"].as_array().expect("citations");
    assert_eq!(citations.len(), 1, "{answer}");
    assert_eq!(citations[0]["title"], "Billing disputes", "{answer}");
    let quote = citations[0]["quote"].as_str().expect("quote");
    let doc = std::fs::read_to_string(app.dir.path().join("wiki/billing.md")).expect("doc");
    assert!(!quote.is_empty() && doc.contains(quote), "{quote}");
    assert!(!quote.contains("[email-"), "{quote}");

    // The audit log: which provider got it, the hash of exactly that prompt, no values.
    let trace_id = answer["trace_id"].as_str().expect("trace id");
    let lines = audit_lines(&app);
    let rec = lines
        .iter()
        .find(|l| l["event"] == "provider_request" && l["trace_id"] == trace_id)
        .unwrap_or_else(|| panic!("no audit record for {trace_id}: {lines:?}"));
    assert_eq!(rec["provider"], "remote");
    assert_eq!(rec["model"], "smollm2");
    assert_eq!(rec["route"], "answer");
    assert_eq!(rec["caller"], "anonymous");
    assert_eq!(rec["masked"], json!({"card": 1, "email": 2, "phone": 1}));
    assert!(rec.get("prompt").is_none(), "{rec}");
    let chunk_ids = rec["chunk_ids"].as_array().expect("chunk ids");
    assert!(
        chunk_ids.contains(&citations[0]["chunk_id"]),
        "{chunk_ids:?} vs {citations:?}"
    );
    let messages = seen[0].body["messages"].as_array().expect("messages");
    let received = format!(
        "{}\n\nuser: {}",
        messages[0]["content"].as_str().expect("system"),
        messages[1]["content"].as_str().expect("user"),
    );
    assert_eq!(
        rec["prompt_sha256"],
        cairn::observe::audit::sha256_hex(&received)
    );
    let log = std::fs::read_to_string(app.engine.audit.path()).expect("log");
    for secret in [EMAIL, PHONE, CARD, ASKER] {
        assert!(!log.contains(secret), "{secret} in the audit log");
    }

    // The answer carries the asker's own address, so it was not cached: asking again calls
    // the model again (the next test shows an answer without one is cached).
    ask(&app, QUESTION).await;
    assert_eq!(fake.seen().len(), 2);
}

#[tokio::test]
async fn with_masking_off_the_provider_receives_the_text_as_is() {
    // The control for the test above: the fake does see values when nothing is masked.
    let fake = Fake::responding(echoing_model).await;
    let app = billing_app(&fake, "[privacy]\nmask = []\n");
    ask(&app, QUESTION).await;
    let sent = fake.seen()[0].body.to_string();
    assert!(sent.contains(EMAIL) && sent.contains(ASKER), "{sent}");
    let rec = audit_lines(&app)
        .into_iter()
        .find(|l| l["event"] == "provider_request")
        .expect("record");
    assert_eq!(rec["masked"], json!({}));
}

#[tokio::test]
async fn custom_patterns_are_masked_and_record_text_keeps_the_hashed_prompt() {
    let fake = Fake::responding(echoing_model).await;
    let app = billing_app(
        &fake,
        r#"
[privacy]
custom = [{ name = "ticket", pattern = "TICKET-[0-9]+" }]
[audit]
record_text = true
"#,
    );
    ask(&app, "Billing disputes for TICKET-4711?").await;
    let sent = fake.seen()[0].body.to_string();
    assert!(
        !sent.contains("TICKET-4711") && sent.contains("[ticket-1]"),
        "{sent}"
    );
    let rec = audit_lines(&app)
        .into_iter()
        .find(|l| l["event"] == "provider_request")
        .expect("record");
    let prompt = rec["prompt"].as_str().expect("prompt text recorded");
    assert_eq!(
        rec["prompt_sha256"],
        cairn::observe::audit::sha256_hex(prompt)
    );
    assert!(
        prompt.contains("[ticket-1]") && !prompt.contains(EMAIL),
        "{prompt}"
    );
    assert_eq!(rec["masked"]["ticket"], 1);
    // The model did not repeat the caller's ticket number, so the answer was cached.
    ask(&app, "Billing disputes for TICKET-4711?").await;
    assert_eq!(fake.seen().len(), 1);
}

#[tokio::test]
async fn reindex_is_audited_under_the_key_name_never_the_key() {
    let app = keyed_app();
    let resp = app
        .router()
        .oneshot(with_key(
            post_json("/admin/reindex", r#"{"source":"samples"}"#),
            ADMIN,
        ))
        .await
        .expect("response");
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    let job = support::body_json(resp).await;
    let lines = audit_lines(&app);
    let rec = lines
        .iter()
        .find(|l| l["event"] == "admin")
        .unwrap_or_else(|| panic!("no admin record: {lines:?}"));
    assert_eq!(rec["action"], "reindex");
    assert_eq!(rec["caller"], "admin");
    assert_eq!(rec["detail"]["job"], job["id"]);
    assert_eq!(rec["detail"]["source"], "samples");
    let log = std::fs::read_to_string(app.engine.audit.path()).expect("log");
    assert!(!log.contains(ADMIN), "the key itself is in the audit log");
    // A refused admin call (wrong scope) leaves no record.
    let resp = app
        .router()
        .oneshot(with_key(post_json("/admin/reindex", "{}"), support::BOT))
        .await
        .expect("response");
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    assert_eq!(audit_lines(&app).len(), lines.len());
}
