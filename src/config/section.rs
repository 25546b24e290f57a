//! What every configuration section checks itself with: [`ConfigError`] (file, key, reason)
//! and [`Check`], the place a section is read from (the file, its directory for relative
//! paths, the environment for `env:` references).
//!
//! Must not: import a section or the composed `Config` — every section imports this, from any
//! layer, so it stays a leaf.

use std::path::{Path, PathBuf};

/// A configuration problem, with where it was found and what to do.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config {file}: {message}")]
    Invalid { file: String, message: String },
    #[error("config {file}: key `{key}`: {message}")]
    Key {
        file: String,
        key: String,
        message: String,
    },
}

/// Where a section is checked: the file it came from, that file's directory, and the
/// environment `env:` references are resolved in.
pub struct Check<'a> {
    pub origin: &'a str,
    pub base: &'a Path,
    pub env: &'a dyn Fn(&str) -> Option<String>,
}

impl Check<'_> {
    /// An error naming `key` in this file.
    pub fn key_err(&self, key: &str, message: impl Into<String>) -> ConfigError {
        ConfigError::Key {
            file: self.origin.into(),
            key: key.into(),
            message: message.into(),
        }
    }

    /// `p` resolved against the file's directory (absolute paths stay as they are).
    pub fn path(&self, p: &Path) -> PathBuf {
        resolve_path(self.base, p)
    }

    /// Resolves the secret reference `reference` (`env:NAME`) found at `key`.
    pub fn secret(&self, reference: &str, key: &str) -> Result<String, ConfigError> {
        resolve_secret(reference, key, self.origin, &self.env)
    }

    /// As [`Check::secret`]; `unset_hint` says what to do when the variable is unset.
    pub fn reference(
        &self,
        reference: &str,
        key: &str,
        unset_hint: &str,
    ) -> Result<String, ConfigError> {
        resolve_reference(reference, key, self.origin, &self.env, unset_hint)
    }
}

/// `p` resolved against `base` (absolute paths stay as they are).
pub fn resolve_path(base: &Path, p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        base.join(p)
    }
}

/// Resolves an `env:NAME` reference.
pub fn resolve_secret(
    reference: &str,
    key: &str,
    origin: &str,
    env: &impl Fn(&str) -> Option<String>,
) -> Result<String, ConfigError> {
    resolve_reference(
        reference,
        key,
        origin,
        env,
        "export it or remove this provider",
    )
}

/// Resolves an `env:NAME` reference; `unset_hint` says what to do when the variable is unset.
fn resolve_reference(
    reference: &str,
    key: &str,
    origin: &str,
    env: &impl Fn(&str) -> Option<String>,
    unset_hint: &str,
) -> Result<String, ConfigError> {
    let Some(var) = reference.strip_prefix("env:") else {
        return Err(ConfigError::Key {
            file: origin.into(),
            key: key.into(),
            message: "secrets must be references like \"env:VARIABLE\", not literal values".into(),
        });
    };
    match env(var) {
        Some(v) if !v.is_empty() => Ok(v),
        _ => Err(ConfigError::Key {
            file: origin.into(),
            key: key.into(),
            message: format!("environment variable {var} is not set; {unset_hint}"),
        }),
    }
}
