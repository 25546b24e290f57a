//! Scheduled source syncs: a source with a short `refresh` picks up a new file with no
//! external trigger, as an ordinary reindex job marked `"trigger": "schedule"`, and
//! `/admin/sources` shows its schedule; with PostgreSQL two replicas keeping the same schedule
//! run each scheduled sync once between them.

use std::time::Duration;

use serde_json::Value;

use crate::support::{self, ADMIN, TestApp, with_key};

async fn admin_get(app: &TestApp, uri: &str) -> Value {
    use tower::ServiceExt;
    let resp = app
        .router()
        .oneshot(with_key(support::get(uri), ADMIN))
        .await
        .expect("response");
    assert_eq!(resp.status(), axum::http::StatusCode::OK, "{uri}");
    support::body_json(resp).await
}

/// Source `name` of a `/admin/sources` answer.
fn source_named(sources: &Value, name: &str) -> Value {
    sources["sources"]
        .as_array()
        .expect("sources")
        .iter()
        .find(|s| s["name"] == name)
        .unwrap_or_else(|| panic!("no source {name}: {sources}"))
        .clone()
}

/// An app with an admin key and a `live` files source refreshed every `refresh`, holding one
/// page (`name`, `text`).
fn live_app(refresh: &str, (name, text): (&str, &str)) -> TestApp {
    TestApp::with_setup(|dir| {
        let live = dir.join("live");
        std::fs::create_dir_all(&live).expect("mkdir");
        std::fs::write(live.join(name), text).expect("write");
        format!(
            "[auth]\n[[auth.keys]]\nname = \"admin\"\nhash = \"{}\"\nscopes = [\"admin\", \"ask\", \"search\"]\nburst = 500\n[[sources]]\nname = \"live\"\nkind = \"files\"\npath = {live:?}\nrefresh = \"{refresh}\"\n",
            cairn::http::auth::hash_key(ADMIN)
        )
    })
}

#[tokio::test]
async fn a_source_with_a_short_refresh_syncs_without_any_trigger() {
    let app = live_app(
        "1s",
        ("first.md", "# First\n\nThe first page of the live folder."),
    );
    let sources = admin_get(&app, "/admin/sources").await;
    let live = source_named(&sources, "live");
    assert_eq!(live["schedule"]["refresh"], "1s", "{live:#}");
    assert!(live["schedule"]["next_run"].is_string(), "{live:#}");
    let manual = source_named(&sources, "samples");
    assert!(manual["schedule"].is_null(), "no refresh: manual only");

    std::fs::write(
        app.dir.path().join("live/zebra.md"),
        "# Zebra crossings\n\nQuokkaflux zebra crossings are painted every spring.",
    )
    .expect("write");
    let mut found = false;
    for _ in 0..300 {
        let hits = support::get_json(&app, "/search?q=Quokkaflux&mode=bm25").await;
        if hits["hits"].as_array().is_some_and(|h| !h.is_empty()) {
            found = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(found, "the new file was never indexed by the schedule");
    let jobs = admin_get(&app, "/admin/jobs").await;
    let scheduled: Vec<&Value> = jobs["jobs"]
        .as_array()
        .expect("jobs")
        .iter()
        .filter(|j| j["trigger"] == "schedule")
        .collect();
    assert!(!scheduled.is_empty(), "{jobs:#}");
    assert!(scheduled.iter().all(|j| j["source"] == "live"), "{jobs:#}");
    let live = source_named(&admin_get(&app, "/admin/sources").await, "live");
    assert!(live["schedule"]["last_run"].is_string(), "{live:#}");
    assert!(live["schedule"]["last_job"].is_string(), "{live:#}");
}

/// `last_run` is the source's latest sync, whoever ran it: a manual reindex between two
/// scheduled turns shows at once, not at the schedule's next turn (an hour away here).
#[tokio::test]
async fn last_run_shows_a_sync_made_between_scheduled_turns() {
    let app = live_app("1h", ("a.md", "# A\n\nA page."));
    let time = |v: &Value| {
        chrono::DateTime::parse_from_rfc3339(v.as_str().unwrap_or_default())
            .unwrap_or_else(|e| panic!("{v} is not a time: {e}"))
    };
    let before = source_named(&admin_get(&app, "/admin/sources").await, "live");
    let started_with = time(&before["last_sync"]);
    let job = support::reindex_and_wait(&app, r#"{"source":"live"}"#).await;
    assert_eq!(job["state"], "succeeded", "{job:#}");
    let live = source_named(&admin_get(&app, "/admin/sources").await, "live");
    let (last_run, last_sync) = (
        time(&live["schedule"]["last_run"]),
        time(&live["last_sync"]),
    );
    assert!(
        last_run > started_with,
        "last_run is the start-up sync's: {live:#}"
    );
    // The same sync, shown to the millisecond.
    assert!(
        (last_sync - last_run).num_milliseconds() == 0,
        "last_run {last_run} is not the last sync {last_sync}: {live:#}"
    );
}

#[tokio::test]
async fn a_scheduled_run_is_skipped_with_its_reason_while_another_job_holds_the_lock() {
    let app = live_app("1s", ("a.md", "# A\n\nA page."));
    // A manual full reindex of every source, slowed by a stalled store write, holds the lock.
    let job = start_full_reindex(&app).await;
    assert!(app.engine.inject_store_stall(Duration::from_secs(4)));
    let mut skipped = Value::Null;
    for _ in 0..100 {
        let sources = admin_get(&app, "/admin/sources").await;
        let live = source_named(&sources, "live");
        if live["schedule"]["last_skipped"].is_object() {
            skipped = live["schedule"]["last_skipped"].clone();
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let reason = skipped["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains(job["id"].as_str().expect("id")),
        "{skipped:#}"
    );
}

/// Queues a full reindex of every source, retrying while a scheduled job runs (at most 30 s).
async fn start_full_reindex(app: &TestApp) -> Value {
    use tower::ServiceExt;
    for _ in 0..300 {
        let req = with_key(
            support::post_json("/admin/reindex", r#"{"full": true}"#),
            ADMIN,
        );
        let resp = app.router().oneshot(req).await.expect("response");
        if resp.status() == axum::http::StatusCode::ACCEPTED {
            return support::body_json(resp).await;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("a manual reindex was never accepted");
}

/// Two replicas over one PostgreSQL index both keep a `refresh = "1s"` schedule of one shared
/// folder: between them each scheduled sync runs once — no scheduled job starts before the
/// previous one finished plus the refresh, whichever replica ran it — and both show the jobs.
#[test]
#[ignore = "needs PostgreSQL with pgvector: eval \"$(scripts/start-postgres.sh)\" sets CAIRN_PG_URL"]
fn with_postgres_each_scheduled_sync_runs_on_one_replica() {
    use crate::replicas::{Schema, pg_url};
    let schema = Schema::fresh(pg_url(), "schedule");
    let live = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        live.path().join("first.md"),
        "# First\n\nThe first page of the shared live folder.",
    )
    .expect("write");
    let config = schema.config(&format!(
        "[auth]\n[[auth.keys]]\nname = \"admin\"\nhash = \"{}\"\nscopes = [\"admin\", \"ask\", \"search\"]\nburst = 500\n[[sources]]\nname = \"live\"\nkind = \"files\"\npath = {:?}\nrefresh = \"1s\"\n",
        cairn::http::auth::hash_key(ADMIN),
        live.path()
    ));
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    // Built on the runtime's blocking threads (the PostgreSQL client is synchronous), so each
    // replica's schedule task starts on this runtime.
    let open = |config: String| {
        runtime
            .block_on(runtime.spawn_blocking(move || TestApp::with_config(&config)))
            .expect("replica starts")
    };
    let (a, b) = (open(config.clone()), open(config));
    let (from_a, from_b) = runtime.block_on(async {
        // Several refresh periods.
        tokio::time::sleep(Duration::from_secs(7)).await;
        (
            admin_get(&a, "/admin/jobs").await,
            admin_get(&b, "/admin/jobs").await,
        )
    });
    let scheduled = |jobs: &Value| -> Vec<Value> {
        let mut v: Vec<Value> = jobs["jobs"]
            .as_array()
            .expect("jobs")
            .iter()
            .filter(|j| j["trigger"] == "schedule")
            .cloned()
            .collect();
        v.sort_by_key(|j| j["created_at"].as_str().unwrap_or_default().to_string());
        v
    };
    let (runs, seen_by_b) = (scheduled(&from_a), scheduled(&from_b));
    assert!(runs.len() >= 2, "{from_a:#}");
    let ids = |v: &[Value]| v.iter().map(|j| j["id"].clone()).collect::<Vec<_>>();
    assert_eq!(
        ids(&runs),
        ids(&seen_by_b),
        "both replicas show the same jobs"
    );
    let at = |j: &Value, key: &str| {
        chrono::DateTime::parse_from_rfc3339(
            j[key].as_str().unwrap_or_else(|| panic!("{key}: {j}")),
        )
        .unwrap_or_else(|e| panic!("{key}: {e}: {j}"))
    };
    for pair in runs.windows(2) {
        let (done, next) = (at(&pair[0], "finished_at"), at(&pair[1], "created_at"));
        assert!(
            next - done >= chrono::Duration::milliseconds(950),
            "a scheduled sync started {} ms after the previous one finished (refresh 1 s): {:#}",
            (next - done).num_milliseconds(),
            Value::Array(runs.clone())
        );
    }
}
