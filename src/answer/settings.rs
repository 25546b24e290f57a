//! `[answer]`: the prompt file, the route answers use, the texts shown when no answer can
//! be given, and the phrases that ask for a person.
//!
//! Must not: import the composed `Config` or the pipeline (the config loader imports this).

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::config::section::{Check, ConfigError};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawAnswer {
    /// A versioned prompt file; unset: the built-in prompt (`prompts/answer.v1.toml`).
    pub prompt: Option<PathBuf>,
    /// The route in `[routes]` used for answers.
    pub route: String,
    /// Shown to users when every provider of the route failed.
    pub fallback_text: String,
    pub no_answer_text: String,
    /// A question holding one of these (whole words, any case) asks for a person: its answer
    /// carries `handoff: {"reason": "requested"}`.
    pub handoff_phrases: Vec<String>,
}

impl Default for RawAnswer {
    fn default() -> Self {
        RawAnswer {
            prompt: None,
            route: "answer".into(),
            fallback_text:
                "The answer service is unavailable right now. The sources below may help.".into(),
            no_answer_text: "I don't know: nothing in the indexed sources answers this.".into(),
            handoff_phrases: crate::answer::handoff::default_phrases(),
        }
    }
}

impl RawAnswer {
    /// Checks that the route exists in the resolved `routes` and resolves the prompt path (when
    /// one is configured).
    pub fn validate<T>(
        mut self,
        cx: &Check,
        routes: &BTreeMap<String, T>,
    ) -> Result<RawAnswer, ConfigError> {
        if !routes.contains_key(&self.route) {
            return Err(cx.key_err(
                "answer.route",
                format!("route `{}` is not defined in [routes]", self.route),
            ));
        }
        self.prompt = self.prompt.map(|p| cx.path(&p));
        Ok(self)
    }
}
