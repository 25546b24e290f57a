//! `[[sources]]` and `[chunking]`: the settings of the ingest crate's connectors and chunker,
//! which know nothing of config files, so their section lives here.

use std::collections::HashSet;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use cairn_ingest::ChunkerOptions;

use crate::config::section::{Check, ConfigError};

/// A `[[sources]]` table; `kind` selects the connector.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum RawSource {
    Files(RawFilesSource),
    Crm(RawCrmSource),
    KbApi(RawKbApiSource),
}

/// A `kind = "crm"` source: `name` plus the CRM connector's settings.
#[derive(Debug, Clone, Serialize)]
pub struct RawCrmSource {
    pub name: String,
    /// How often the source is synced on its own (humantime); none: only when asked.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refresh: Option<String>,
    #[serde(flatten)]
    pub options: cairn_ingest::connectors::crm::CrmOptions,
}

/// A `kind = "kb_api"` source: `name` plus the knowledge-base connector's settings.
#[derive(Debug, Clone, Serialize)]
pub struct RawKbApiSource {
    pub name: String,
    /// How often the source is synced on its own (humantime); none: only when asked.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refresh: Option<String>,
    #[serde(flatten)]
    pub options: cairn_ingest::connectors::kb_api::KbApiOptions,
}

/// A source table's own keys (`name`, `refresh`) and the connector's options.
type Split<T> = (String, Option<String>, T);

/// Splits `name` and `refresh` off a source table and deserialises the rest strictly into the
/// connector's options (`#[serde(flatten)]` would silently accept unknown keys).
fn name_and_options<'de, D, T>(d: D) -> Result<Split<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: serde::de::DeserializeOwned,
{
    use serde::de::Error;
    let mut map = serde_json::Map::<String, serde_json::Value>::deserialize(d)?;
    let name = match map.remove("name") {
        Some(serde_json::Value::String(s)) => s,
        Some(_) => return Err(D::Error::custom("`name` must be a string")),
        None => return Err(D::Error::missing_field("name")),
    };
    let refresh = match map.remove("refresh") {
        Some(serde_json::Value::String(s)) => Some(s),
        Some(_) => return Err(D::Error::custom("`refresh` must be a string like \"15m\"")),
        None => None,
    };
    let options =
        serde_json::from_value(serde_json::Value::Object(map)).map_err(D::Error::custom)?;
    Ok((name, refresh, options))
}

impl<'de> Deserialize<'de> for RawCrmSource {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let (name, refresh, options) = name_and_options(d)?;
        Ok(RawCrmSource {
            name,
            refresh,
            options,
        })
    }
}

impl<'de> Deserialize<'de> for RawKbApiSource {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let (name, refresh, options) = name_and_options(d)?;
        Ok(RawKbApiSource {
            name,
            refresh,
            options,
        })
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawFilesSource {
    pub name: String,
    /// How often the source is synced on its own (humantime); none: only when asked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refresh: Option<String>,
    pub path: PathBuf,
    #[serde(default)]
    pub include: Vec<String>,
    #[serde(default)]
    pub exclude: Vec<String>,
    #[serde(default)]
    pub url_base: Option<String>,
    #[serde(default)]
    pub access_groups: Vec<String>,
    #[serde(default = "default_max_file_bytes")]
    pub max_file_bytes: u64,
    /// Wall-clock limit for extracting one PDF; past it the file is reported failed.
    #[serde(default = "default_pdf_timeout_secs")]
    pub pdf_timeout_secs: u64,
    /// Try the `pdftotext` binary (poppler-utils) when pdf-extract fails, if it is installed.
    #[serde(default = "default_true")]
    pub pdftotext_fallback: bool,
}

fn default_pdf_timeout_secs() -> u64 {
    30
}

fn default_true() -> bool {
    true
}

fn default_max_file_bytes() -> u64 {
    50 * 1024 * 1024
}

impl RawSource {
    pub fn name(&self) -> &str {
        match self {
            RawSource::Files(s) => &s.name,
            RawSource::Crm(s) => &s.name,
            RawSource::KbApi(s) => &s.name,
        }
    }

    /// The groups a caller must hold one of to read this source's documents (none: anyone).
    pub fn access_groups(&self) -> &[String] {
        match self {
            RawSource::Files(s) => &s.access_groups,
            RawSource::Crm(s) => &s.options.access_groups,
            RawSource::KbApi(s) => &s.options.access_groups,
        }
    }

    /// Whether a caller holding `groups` may read this source's documents.
    pub fn readable_by(&self, groups: &[String]) -> bool {
        let needed = self.access_groups();
        needed.is_empty() || needed.iter().any(|g| groups.contains(g))
    }

    /// The `refresh` text as configured (none: synced only when asked).
    pub fn refresh_text(&self) -> Option<&str> {
        match self {
            RawSource::Files(s) => s.refresh.as_deref(),
            RawSource::Crm(s) => s.refresh.as_deref(),
            RawSource::KbApi(s) => s.refresh.as_deref(),
        }
    }

    /// How often the source syncs on its own (validated at load, so a bad value reads as
    /// none only in a config that was never validated).
    pub fn refresh(&self) -> Option<Duration> {
        humantime::parse_duration(self.refresh_text()?).ok()
    }

    pub fn kind(&self) -> &'static str {
        match self {
            RawSource::Files(_) => "files",
            RawSource::Crm(_) => "crm",
            RawSource::KbApi(_) => "kb_api",
        }
    }
}

/// `[chunking]` must leave room for a sentence.
pub fn check_chunking(chunking: &ChunkerOptions, cx: &Check) -> Result<(), ConfigError> {
    if chunking.max_tokens < 16 {
        return Err(cx.key_err("chunking.max_tokens", "must be at least 16"));
    }
    Ok(())
}

/// Checks every source's name (unique, safe in file names) and resolves its paths and token
/// references.
pub fn validate_sources(raw: Vec<RawSource>, cx: &Check) -> Result<Vec<RawSource>, ConfigError> {
    let mut names = HashSet::new();
    let mut sources = Vec::new();
    for (i, s) in raw.into_iter().enumerate() {
        let name = s.name().to_string();
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(cx.key_err(
                &format!("sources[{i}].name"),
                format!("`{name}` must be non-empty and use only letters, digits, - and _"),
            ));
        }
        if !names.insert(name.clone()) {
            return Err(cx.key_err(
                &format!("sources[{i}].name"),
                format!("`{name}` is used twice"),
            ));
        }
        check_refresh(&s, i, cx)?;
        sources.push(s.validate(i, cx)?);
    }
    Ok(sources)
}

/// Below this a `refresh` works but is warned about: each sync lists the whole source.
const SHORT_REFRESH: Duration = Duration::from_secs(60);

/// A source's `refresh` must be a humantime duration above zero; below a minute it is allowed
/// with a warning.
fn check_refresh(s: &RawSource, i: usize, cx: &Check) -> Result<(), ConfigError> {
    let Some(text) = s.refresh_text() else {
        return Ok(());
    };
    let key = format!("sources[{i}].refresh");
    match humantime::parse_duration(text) {
        Ok(d) if d.is_zero() => Err(cx.key_err(
            &key,
            "must be longer than zero; remove the key to sync only when asked",
        )),
        Ok(d) => {
            if d < SHORT_REFRESH {
                tracing::warn!(
                    source = s.name(),
                    refresh = text,
                    "a refresh below one minute lists the whole source that often; fine for tests and small folders"
                );
            }
            Ok(())
        }
        Err(e) => Err(cx.key_err(
            &key,
            format!("`{text}` is not a duration like \"15m\" or \"1h\": {e}"),
        )),
    }
}

impl RawSource {
    /// Resolves source `i`'s paths and token references and checks its patterns.
    fn validate(self, i: usize, cx: &Check) -> Result<RawSource, ConfigError> {
        Ok(match self {
            RawSource::Files(mut f) => {
                for (field, patterns) in [("include", &f.include), ("exclude", &f.exclude)] {
                    for p in patterns {
                        if let Some(reason) =
                            cairn_ingest::connectors::files::pattern_leaves_root(p)
                        {
                            return Err(cx.key_err(&format!("sources[{i}].{field}"), reason));
                        }
                    }
                }
                f.path = cx.path(&f.path);
                RawSource::Files(f)
            }
            RawSource::Crm(mut c) => {
                c.options.path = cx.path(&c.options.path);
                RawSource::Crm(c)
            }
            RawSource::KbApi(mut k) => {
                use cairn_ingest::connectors::kb_api::KbAuth;
                let key = format!("sources[{i}].auth.token");
                // Tokens are references; resolve them here so a missing variable stops startup.
                match &mut k.options.auth {
                    KbAuth::None => {}
                    KbAuth::Bearer { token, .. } | KbAuth::BasicToken { token, .. } => {
                        if let Some(t) = token.as_mut() {
                            *t = cx.secret(t, &key)?;
                        }
                    }
                }
                RawSource::KbApi(k)
            }
        })
    }
}
